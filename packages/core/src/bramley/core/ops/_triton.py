"""Triton availability and mode-aware kernel compilation.

``triton.jit`` decides at decoration time whether a kernel is compiled or run by the CPU interpreter
(``TRITON_INTERPRET=1``). Kernels in this package are therefore plain functions that are wrapped here, at launch time,
for the mode that is active then, so a test can switch the interpreter on after import.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a Linux-only dependency
    triton = None
    tl = None

__all__ = ["interpreting", "jit", "tl", "triton", "triton_available", "triton_usable_for"]


def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return triton is not None


def interpreting() -> bool:
    """Whether Triton kernels currently run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_usable_for(tensor: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on ``tensor``: CUDA tensors, or CPU tensors under the interpreter."""
    if triton is None:
        return False
    if tensor.is_cuda:
        return True
    return tensor.device.type == "cpu" and interpreting()


@functools.cache
def _jit_for_mode(fn: Callable[..., Any], interpret: bool) -> Any:
    del interpret  # part of the cache key only: triton.jit reads the environment itself
    return triton.jit(fn)


def jit(fn: Callable[..., Any]) -> Any:
    """Return ``fn`` as a Triton kernel for the current mode (compiled or interpreted), cached per mode."""
    if triton is None:
        raise RuntimeError("Triton is not installed; the Triton kernels are unavailable (use the reference path)")
    return _jit_for_mode(fn, interpreting())
