"""rehost: move and protect whole servers by block-level replication."""

__version__ = "0.1.0"
