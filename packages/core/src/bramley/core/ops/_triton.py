"""Triton availability and mode-aware kernel compilation.

``triton.jit`` decides at decoration time whether a kernel is compiled or run by the CPU interpreter
(``TRITON_INTERPRET=1``). Kernels in this package are therefore plain functions that are wrapped here, at launch time,
for the mode that is active then, so the interpreter can be switched on after import (as tests do).

Triton's own library functions (``tl.sum``, ``tl.max``, ``tl.zeros``, ...) are themselves jit functions created when
``triton.language`` was imported. If that happened with the interpreter off, an interpreted launch swaps them for
interpreted twins for the duration of the launch.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a Linux-only dependency
    triton = None
    tl = None

__all__ = ["device_function", "interpreting", "jit", "tl", "triton", "triton_available", "triton_usable_for"]


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


_twins: dict[Callable[..., Any], Any] = {}


def _interpreted_twin(jit_function: Any) -> Any:
    """The interpreted twin of a compiled-mode jit function, cached per Python function (not by the jit function's
    own hash, which reads its dependencies' globals: those may be twins already in the middle of a swap)."""
    from triton.runtime.interpreter import InterpretedFunction, _patch_lang

    class _Twin(InterpretedFunction):
        # InterpretedFunction.__call__ patches triton.language for the call but never undoes it; left patched,
        # later compiled-mode (GPU/AOT) builds in the same process would fail. Undo it after every call.
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            scope = _patch_lang(self.fn)
            try:
                return self.rewrite()(*args, **kwargs)
            finally:
                scope.restore()

    if jit_function.fn not in _twins:
        _twins[jit_function.fn] = _Twin(jit_function.fn)
    return _twins[jit_function.fn]


def device_function(fn: Callable[..., Any]) -> Any:
    """A Triton device function (a helper that kernels call) for both modes.

    It is always a compiled-mode ``JITFunction`` (whatever ``TRITON_INTERPRET`` says at import), so compiled kernels
    can call it; interpreted launches swap it for an interpreted twin, like Triton's own library functions.
    """
    if triton is None:
        return fn
    from triton.runtime.jit import JITFunction

    return JITFunction(fn)


@contextlib.contextmanager
def _interpretable_stdlib(kernel_globals: dict[str, Any] | None = None) -> Iterator[None]:
    """Temporarily replace compiled-mode jit functions of ``triton.language`` (and the device functions among a
    kernel's globals) by interpreted ones."""
    from triton.runtime.jit import JITFunction

    saved = []
    namespaces = [vars(module) for module in (tl, tl.standard, tl.math)]
    if kernel_globals is not None:
        namespaces.append(kernel_globals)
    for namespace in namespaces:
        saved += [(namespace, name, value) for name, value in namespace.items() if isinstance(value, JITFunction)]
    twins = [_interpreted_twin(value) for _, _, value in saved]  # all looked up before any global changes
    for (namespace, name, _), twin in zip(saved, twins):
        namespace[name] = twin
    try:
        yield
    finally:
        for namespace, name, value in saved:
            namespace[name] = value


class _InterpretedKernel:
    """``kernel[grid](...)`` for the interpreter, with Triton's library functions interpretable during the launch."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.kernel = triton.jit(fn)
        self.globals = fn.__globals__

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        def launch(*args: Any, **kwargs: Any) -> Any:
            with _interpretable_stdlib(self.globals):
                return self.kernel[grid](*args, **kwargs)

        return launch


@functools.cache
def _jit_for_mode(fn: Callable[..., Any], interpret: bool) -> Any:
    return _InterpretedKernel(fn) if interpret else triton.jit(fn)


def jit(fn: Callable[..., Any]) -> Any:
    """Return ``fn`` as a Triton kernel for the current mode (compiled or interpreted), cached per mode."""
    if triton is None:
        raise RuntimeError("Triton is not installed; the Triton kernels are unavailable (use the reference path)")
    return _jit_for_mode(fn, interpreting())
