"""Row gather with fill: ``out[i] = src[index[i]]`` if ``index[i] >= 0`` else ``fill``; Triton on CUDA.

Padded -> packed and packed -> padded are both this one gather (with the forward or the inverse index), so each
direction reads and writes every byte once: the padding rows of an unpacked tensor are written, never pre-zeroed.
"""

from __future__ import annotations

import math

import torch

from . import _triton
from ._triton import jit, tl

__all__ = ["gather_rows"]


def _gather_rows_kernel(
    SRC, DST, INDEX, n_rows, width, stride_src, stride_dst, fill,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < n_rows
    src_rows = tl.load(INDEX + rows, mask=row_ok, other=-1).to(tl.int64)
    col_ok = cols < width
    take = (src_rows >= 0)[:, None] & col_ok[None, :]
    values = tl.load(SRC + src_rows[:, None] * stride_src + cols[None, :], mask=take, other=fill)
    tl.store(DST + rows.to(tl.int64)[:, None] * stride_dst + cols[None, :], values,
             mask=row_ok[:, None] & col_ok[None, :])  # fmt: skip


def _gather_rows_torch(src: torch.Tensor, index: torch.Tensor, fill: float) -> torch.Tensor:
    if src.shape[0] == 0:  # only fill rows can be asked of an empty source
        return src.new_full((index.numel(), *src.shape[1:]), fill)
    valid = index >= 0
    out = src.index_select(0, index.clamp(min=0))
    if not bool(valid.all()):
        out[~valid] = fill
    return out


def _gather_rows_triton(src: torch.Tensor, index: torch.Tensor, fill: float) -> torch.Tensor:
    rows = index.numel()
    flat = src.reshape(src.shape[0], -1)
    if flat.shape[1] > 0 and flat.stride(1) != 1:
        flat = flat.contiguous()
    width = flat.shape[1]
    out = torch.empty((rows, width), dtype=src.dtype, device=src.device)
    if rows and width:
        block_w = min(1024, max(16, 1 << (width - 1).bit_length()))
        block_r = max(1, 4096 // block_w) if not _triton.interpreting() else 4
        grid = (math.ceil(rows / block_r), math.ceil(width / block_w))
        jit(_gather_rows_kernel)[grid](
            flat, out, index.contiguous(), rows, width, flat.stride(0), out.stride(0), fill,
            BLOCK_R=block_r, BLOCK_W=block_w,
        )  # fmt: skip
    return out.view(rows, *src.shape[1:])


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, index, fill, use_triton):
        ctx.save_for_backward(index)
        ctx.src_rows = src.shape[0]
        return _gather_rows_triton(src, index, fill) if use_triton else _gather_rows_torch(src, index, fill)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        valid = index >= 0
        grad_src = grad.new_zeros((ctx.src_rows, *grad.shape[1:]))
        grad_src.index_add_(0, index[valid], grad[valid])
        return grad_src, None, None, None


def gather_rows(src: torch.Tensor, index: torch.Tensor, fill: float = 0.0, *, backend: str = "auto") -> torch.Tensor:
    """``out[i] = src[index[i]]`` for ``index[i] >= 0``, else a row of ``fill``; differentiable w.r.t. ``src``.

    Args:
        src: ``(rows, ...)`` tensor; rows may have any trailing shape.
        index: 1-D int64/int32 row indices into ``src`` (``-1`` selects ``fill``).
        fill: value of the rows whose index is negative.
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"triton"`` (CUDA or ``TRITON_INTERPRET=1``) or
            ``"torch"``.
    """
    if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index must be a 1-D int32/int64 tensor, got {index.dtype} of shape {tuple(index.shape)}")
    if index.device != src.device:
        raise ValueError(f"index is on {index.device} but src is on {src.device}")
    if src.dim() == 0:
        raise ValueError("src must have a leading row dimension")
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if index.numel() and int(index.max()) >= src.shape[0]:
        raise IndexError(f"index {int(index.max())} is out of range for {src.shape[0]} rows")
    use_triton = backend == "triton" or (backend == "auto" and src.is_cuda and _triton.triton_available())
    if use_triton and not _triton.triton_usable_for(src):
        raise RuntimeError("backend='triton' needs triton and a CUDA tensor (or TRITON_INTERPRET=1 on CPU)")
    return _GatherRows.apply(src, index, float(fill), use_triton)
