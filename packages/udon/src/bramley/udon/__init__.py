"""UDON: universal image embeddings by dynamic online distillation."""

__version__ = "0.1.0"
