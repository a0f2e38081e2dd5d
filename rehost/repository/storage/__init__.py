"""Storage backends for the repository behind one small protocol, plus wrappers."""
