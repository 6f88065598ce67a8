"""The layout every backend gives the log-sum-exp: float32 (float64 for float64 inputs), shaped ``(heads, total)``
for packed inputs or ``(batch, heads, seq)`` for dense ones; empty when it was not asked for."""

from __future__ import annotations

import torch

__all__ = ["empty_lse", "lse_dtype", "lse_shape"]


def lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.promote_types(q.dtype, torch.float32)


def lse_shape(q: torch.Tensor, dense: bool) -> tuple[int, ...]:
    return (q.shape[0], q.shape[2], q.shape[1]) if dense else (q.shape[1], q.shape[0])


def empty_lse(q: torch.Tensor) -> torch.Tensor:
    """The placeholder returned in the LSE's place when nothing needs it."""
    return q.new_empty((0,), dtype=lse_dtype(q))
