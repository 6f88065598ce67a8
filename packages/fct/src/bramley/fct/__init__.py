"""Forward Compatible Training for large-scale embedding retrieval."""

__version__ = "0.1.0"
