"""Kernels with exact pure-PyTorch fallbacks: varlen flash attention and the packing gather/scatter."""

from ._attention import attention, normalize_window
from ._gather import gather_rows, scatter_rows
from ._reference import reference_attention

__all__ = ["attention", "gather_rows", "normalize_window", "reference_attention", "scatter_rows"]
