"""Bytes Are All You Need: Transformers Operating Directly On File Bytes."""

__version__ = "0.1.0"
