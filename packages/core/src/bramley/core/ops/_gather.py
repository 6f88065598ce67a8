"""Row gather and scatter with fill, the two halves of padded <-> packed; Triton on CUDA, torch elsewhere.

``gather_rows``: ``out[i] = src[index[i]]`` (``fill`` where ``index[i] < 0``); ``scatter_rows``: ``out[index[i]] =
src[i]`` with every other row ``fill``. :func:`bramley.core.packing.pack` is a gather and ``unpack`` a scatter with the
same index (the flat padded position of every packed token), and each one's backward is the other.

On CUDA both run one Triton gather kernel that writes every output byte once (a scatter gathers through the inverse
index, so padding rows are written, never pre-filled). On CPU they are ``index_select`` and ``new_full`` +
``index_copy_``: measured the fastest exact choices there (tools/bench_attention.py, BENCHMARKS.md). Masked fills
(``out[~valid] = fill``) and ``index_add_`` into zeros are avoided: on CPU each costs more than the copy itself.
"""

from __future__ import annotations

import math

import torch

from . import _triton
from ._triton import jit, tl

__all__ = ["gather_rows", "scatter_rows"]


def _gather_rows_kernel(
    SRC, DST, INDEX, FILL, n_rows, width, stride_src, stride_dst,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < n_rows
    src_rows = tl.load(INDEX + rows, mask=row_ok, other=-1).to(tl.int64)
    col_ok = cols < width
    take = (src_rows >= 0)[:, None] & col_ok[None, :]
    values = tl.load(SRC + src_rows[:, None] * stride_src + cols[None, :], mask=take, other=0)
    # The fill is read from memory in the source dtype: a scalar argument would be typed fp32 (or i32) by Triton and
    # round integer fills above 2**24 and float64 fills.
    values = tl.where(take, values, tl.load(FILL))
    tl.store(DST + rows.to(tl.int64)[:, None] * stride_dst + cols[None, :], values,
             mask=row_ok[:, None] & col_ok[None, :])  # fmt: skip


# ----------------------------------------------------------------------------------------------- implementations
def _gather_torch(src: torch.Tensor, index: torch.Tensor, fill: float | int, any_fill: bool) -> torch.Tensor:
    if not any_fill:
        return src.index_select(0, index)
    out = src.new_full((index.numel(), *src.shape[1:]), fill)
    rows = (index >= 0).nonzero().squeeze(1)
    return out.index_copy_(0, rows, src.index_select(0, index[rows]))


def _gather_triton(src: torch.Tensor, index: torch.Tensor, fill: float | int) -> torch.Tensor:
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
        fill_value = torch.full((1,), fill, dtype=src.dtype, device=src.device)
        jit(_gather_rows_kernel)[grid](
            flat, out, index.contiguous(), fill_value, rows, width, flat.stride(0), out.stride(0),
            BLOCK_R=block_r, BLOCK_W=block_w,
        )  # fmt: skip
    return out.view(rows, *src.shape[1:])


def _gather(
    src: torch.Tensor, index: torch.Tensor, fill: float | int, any_fill: bool, use_triton: bool
) -> torch.Tensor:
    return _gather_triton(src, index, fill) if use_triton else _gather_torch(src, index, fill, any_fill)


def _scatter(src: torch.Tensor, index: torch.Tensor, rows: int, fill: float | int, use_triton: bool) -> torch.Tensor:
    if use_triton:  # gather through the inverse index: one pass that also writes the fill rows
        inverse = torch.full((rows,), -1, dtype=torch.int64, device=src.device)
        inverse[index] = torch.arange(index.numel(), device=src.device)
        return _gather_triton(src, inverse, fill)
    return src.new_full((rows, *src.shape[1:]), fill).index_copy_(0, index.long(), src)


# ----------------------------------------------------------------------------------------------- autograd
class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, index, fill, any_fill, use_triton, unique):
        ctx.save_for_backward(index)
        ctx.src_rows, ctx.any_fill, ctx.use_triton, ctx.unique = src.shape[0], any_fill, use_triton, unique
        return _gather(src, index, fill, any_fill, use_triton)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        if ctx.any_fill:
            valid = index >= 0
            index, grad = index[valid], grad[valid]
        if ctx.unique:  # every source row receives at most one gradient row: write it, nothing to add up
            return _scatter(grad, index, ctx.src_rows, 0, ctx.use_triton), None, None, None, None, None
        grad_src = grad.new_zeros((ctx.src_rows, *grad.shape[1:]))
        return grad_src.index_add_(0, index, grad), None, None, None, None, None


class _ScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, index, rows, fill, use_triton):
        ctx.save_for_backward(index)
        ctx.use_triton = use_triton
        return _scatter(src, index, rows, fill, use_triton)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _gather(grad, index, 0, False, ctx.use_triton), None, None, None, None


# ----------------------------------------------------------------------------------------------- public
def _check_common(src: torch.Tensor, index: torch.Tensor, fill: float, backend: str) -> tuple[float | int, bool]:
    if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index must be a 1-D int32/int64 tensor, got {index.dtype} of shape {tuple(index.shape)}")
    if index.device != src.device:
        raise ValueError(f"index is on {index.device} but src is on {src.device}")
    if src.dim() == 0:
        raise ValueError("src must have a leading row dimension")
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if src.dtype == torch.bool:
        if fill not in (0, 1):
            raise ValueError(f"fill={fill!r} is not a bool value (0 or 1)")
        fill = int(fill)
    elif not (src.is_floating_point() or src.is_complex()):
        info = torch.iinfo(src.dtype)
        if not (math.isfinite(fill) and fill == int(fill) and info.min <= fill <= info.max):
            raise ValueError(f"fill={fill!r} is not representable in {src.dtype}")
        fill = int(fill)
    else:
        fill = float(fill)
    use_triton = backend == "triton" or (backend == "auto" and src.is_cuda and _triton.triton_available())
    if use_triton and not _triton.triton_usable_for(src):
        raise RuntimeError("backend='triton' needs triton and a CUDA tensor (or TRITON_INTERPRET=1 on CPU)")
    return fill, use_triton


def _repeated(index: torch.Tensor, rows: int) -> bool:
    """Whether the entries of a non-negative ``index`` (all ``< rows``) are not all distinct; O(rows + len)."""
    seen = torch.zeros(rows, dtype=torch.bool, device=index.device)
    seen[index] = True
    return int(seen.sum()) != index.numel()


def gather_rows(
    src: torch.Tensor, index: torch.Tensor, fill: float = 0.0, *, unique: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """``out[i] = src[index[i]]`` for ``index[i] >= 0``, else a row of ``fill``; differentiable w.r.t. ``src``.

    Args:
        src: ``(rows, ...)`` tensor; rows may have any trailing shape and any dtype (kept).
        index: 1-D int64/int32 row indices into ``src`` (``-1`` selects ``fill``).
        fill: value of the rows whose index is negative (must be exact in ``src.dtype``).
        unique: the non-negative entries of ``index`` are distinct (checked). The backward then writes each gradient
            row instead of accumulating into zeros: the same values, ~2.5x faster on CPU.
        backend: ``"auto"`` (Triton on CUDA, torch elsewhere), ``"triton"`` (CUDA or ``TRITON_INTERPRET=1``) or
            ``"torch"``.
    """
    fill, use_triton = _check_common(src, index, fill, backend)
    low, high = (int(v) for v in torch.aminmax(index)) if index.numel() else (0, -1)
    if high >= src.shape[0]:
        raise IndexError(f"index {high} is out of range for {src.shape[0]} rows")
    any_fill = low < 0
    if unique and index.numel() and _repeated(index[index >= 0] if any_fill else index, src.shape[0]):
        raise ValueError("unique=True but index repeats a row")
    return _GatherRows.apply(src, index, fill, any_fill, use_triton, unique)


def _gather_rows_trusted(src: torch.Tensor, index: torch.Tensor, *, backend: str) -> torch.Tensor:
    """:func:`gather_rows` with ``unique=True`` for an index its caller built valid (pack): no index checks."""
    fill, use_triton = _check_common(src, index, 0.0, backend)
    return _GatherRows.apply(src, index, fill, False, use_triton, True)


def scatter_rows(
    src: torch.Tensor, index: torch.Tensor, rows: int, fill: float = 0.0, *, backend: str = "auto"
) -> torch.Tensor:
    """``(rows, ...)`` output with ``out[index[i]] = src[i]`` and every row no index names set to ``fill``.

    The inverse of :func:`gather_rows` for an ``index`` of distinct rows; differentiable w.r.t. ``src`` (its
    gradient is the gather of the output gradient).

    Args:
        src: ``(n, ...)`` tensor, one row per entry of ``index``; any dtype (kept).
        index: 1-D int64/int32 tensor of ``n`` distinct rows in ``[0, rows)``.
        rows: number of output rows.
        fill: value of the rows no index names (must be exact in ``src.dtype``).
        backend: as for :func:`gather_rows`.
    """
    fill, use_triton = _check_common(src, index, fill, backend)
    if index.numel() != src.shape[0]:
        raise ValueError(f"index has {index.numel()} entries but src has {src.shape[0]} rows")
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if index.numel():
        low, high = (int(v) for v in torch.aminmax(index))
        if low < 0 or high >= rows:
            raise IndexError(f"index {low if low < 0 else high} is out of range for {rows} rows")
        if _repeated(index, rows):
            raise ValueError("index repeats a row: a scatter needs distinct rows")
    return _ScatterRows.apply(src, index, int(rows), fill, use_triton)


def _scatter_rows_trusted(
    src: torch.Tensor, index: torch.Tensor, rows: int, fill: float, *, backend: str
) -> torch.Tensor:
    """:func:`scatter_rows` for an index its caller built valid (unpack): no index checks."""
    fill, use_triton = _check_common(src, index, fill, backend)
    return _ScatterRows.apply(src, index, rows, fill, use_triton)
