"""Input checks that step aside while a graph is captured, so checked models stay traceable and scriptable.

A check reads shapes and dtypes in Python, which torch.fx cannot do on its ``Proxy`` values (a ``TraceError``, or a
wrong ``ValueError`` naming a ``Proxy``) and which ``torch.jit.trace`` would only bake in as constants. Call sites
guard a check in two steps, because TorchScript compiles both sides of an ``and``::

    if not torch.jit.is_scripting():  # TorchScript skips the block (a static condition): nothing in it is compiled
        if not is_traced(x):
            check_image_batch(x, self.in_chans, "MyNet")
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_image_batch", "is_traced"]


def is_traced(x: Any) -> bool:
    """True while ``x`` is captured into a graph (a torch.fx ``Proxy``, or inside ``torch.jit.trace``)."""
    return isinstance(x, torch.fx.Proxy) or torch.jit.is_tracing()


def check_image_batch(x: Any, in_chans: int, owner: str) -> None:
    """Refuse anything but a floating-point ``(batch, in_chans, height, width)`` tensor, naming ``owner``.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: wrong number of dimensions or channels, or an integer / boolean dtype.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expects an image tensor (batch, {in_chans}, height, width), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{owner} expects images of shape (batch, {in_chans}, height, width), got {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"{owner} expects {in_chans} input channels: images of shape (batch, {in_chans}, height, width), "
            f"got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{owner} expects a floating-point image tensor, got {x.dtype}")
