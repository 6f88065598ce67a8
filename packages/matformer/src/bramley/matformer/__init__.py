"""MatFormer: nested transformers with Mix'n'Match sub-models."""

__version__ = "0.1.0"
