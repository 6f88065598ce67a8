"""Bytes Are All You Need: Transformers Operating Directly On File Bytes (ByteFormer)."""

from .batching import collate_packed, pack_samples
from .model import ByteFormer, byteformer_base, byteformer_small, byteformer_tiny

__version__ = "0.1.0"

__all__ = ["ByteFormer", "byteformer_base", "byteformer_small", "byteformer_tiny", "collate_packed", "pack_samples"]
