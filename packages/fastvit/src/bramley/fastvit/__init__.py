"""FastViT: a fast hybrid vision transformer using structural reparameterization."""

__version__ = "0.1.0"
