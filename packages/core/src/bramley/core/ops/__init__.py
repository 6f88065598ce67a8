"""Kernels with exact pure-PyTorch fallbacks: varlen attention (several backends) and the packing gather/scatter."""

from ._attention import BACKENDS, attention, debug_enabled, normalize_window, set_debug
from ._gather import gather_rows, scatter_rows
from ._reference import reference_attention

__all__ = [
    "BACKENDS",
    "attention",
    "debug_enabled",
    "gather_rows",
    "normalize_window",
    "reference_attention",
    "scatter_rows",
    "set_debug",
]
