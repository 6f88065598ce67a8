"""Kernels with exact pure-PyTorch fallbacks: varlen flash attention and the packing gather/scatter."""

from ._reference import reference_attention
from .attention import attention, normalize_window

__all__ = ["attention", "normalize_window", "reference_attention"]
