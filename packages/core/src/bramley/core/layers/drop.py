"""Stochastic depth (drop path) for dense batches and packed variable-length documents."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..packing import document_ids

__all__ = ["DropPath"]


class DropPath(nn.Module):
    """Stochastic depth: zero a whole residual branch per sample with probability ``drop_prob`` (train mode only).

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expectation is unchanged. Dense inputs ``(batch, ...)``
    draw one Bernoulli per row of dim 0, in ``x``'s dtype, exactly like timm's ``DropPath`` (same random stream, same
    arithmetic: ``x * (mask / keep)``), so a model trained with either gives the same numbers. Packed inputs
    ``(total, ...)`` with ``cu_seqlens`` draw one Bernoulli per *document*: all tokens of a document are dropped or
    kept together, as if the documents were a dense batch.

    Args:
        drop_prob: probability of dropping, in ``[0, 1)``.
        scale_by_keep: divide kept samples by ``1 - drop_prob`` (timm's default; off only for ablations).
    """

    def __init__(self, drop_prob: float = 0.0, *, scale_by_keep: bool = True):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Apply stochastic depth to ``x`` (dense ``(batch, ...)``, or packed ``(total, ...)`` with ``cu_seqlens``)."""
        if cu_seqlens is not None and not torch.jit.is_scripting():  # static False in TorchScript: not compiled
            _check_cu_seqlens(x, cu_seqlens)
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        if cu_seqlens is None:
            mask = x.new_empty([x.shape[0]] + [1] * (x.ndim - 1)).bernoulli_(keep)
        elif not torch.jit.is_scripting():  # TorchScript compiles only the dense path (a static condition)
            per_doc = x.new_empty(cu_seqlens.shape[0] - 1).bernoulli_(keep)
            mask = per_doc[document_ids(cu_seqlens, x.shape[0])].view([x.shape[0]] + [1] * (x.ndim - 1))
        else:
            raise RuntimeError("DropPath: packed documents (cu_seqlens) are not supported in TorchScript")
        if self.scale_by_keep:
            mask = mask.div_(keep)
        return x * mask

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}" + ("" if self.scale_by_keep else ", scale_by_keep=False")


def _check_cu_seqlens(x: torch.Tensor, cu_seqlens: torch.Tensor) -> None:
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be an int32 tensor, got {getattr(cu_seqlens, 'dtype', type(cu_seqlens))}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D with batch + 1 entries, got shape {tuple(cu_seqlens.shape)}")
    if x.dim() < 1:
        raise ValueError("DropPath needs at least a 1-D input")
    # Value check only where it costs no device sync (CPU, eager); on CUDA the attention op validates the same offsets.
    cheap = not cu_seqlens.is_cuda and not torch.compiler.is_compiling()
    if cheap and (int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != x.shape[0]):
        raise ValueError(
            f"cu_seqlens must run from 0 to the number of packed tokens ({x.shape[0]}), "
            f"got {int(cu_seqlens[0])}..{int(cu_seqlens[-1])}"
        )
