"""The portal: the REST API and the dashboard in one application, as ``rehost serve`` runs it.

The one place that imports both edges. The dashboard builds on the API (its sign-in, its
views), the API knows nothing of the dashboard, so mounting the two together lives above
both (``docs/design.md``, Layers).
"""
