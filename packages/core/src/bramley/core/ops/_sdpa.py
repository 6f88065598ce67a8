"""The ``sdpa`` backend: scaled dot-product attention per run of documents, the fast CPU path.

A *run* is a stretch of adjacent documents of one length: a strided ``(count, heads, length, dim)`` view of the packed
tensors (a dense batch is one run), so each run is one batched kernel call and nothing is copied in. On CPU the calls
go straight to torch's fused flash-attention kernels for CPU (``aten._scaled_dot_product_flash_attention_for_cpu``
and its backward, what ``F.scaled_dot_product_attention`` runs), which return the LSE the backward needs anyway. Those
kernels write their outputs and gradients in ``(count, length, heads, dim)`` memory, the packed layout itself: a single
run is returned as a view; with several runs, whoever computed a run copies it into its rows of the packed output.

Every document runs whole: splitting long documents into tiles (forward merged by LSE, backward summed) was measured
slower at every length from 256 to 2,048 tokens, with 1 and 2 threads (the kernels' rate grows with the length).

With several CPU threads and several runs, the runs (a long one cut into one piece per thread) go to single-threaded
workers, costliest first (:func:`bramley.core.threads.map_single_threaded`), instead of one multi-threaded kernel call
after another: on a machine where another process holds a core, each such call waits for its descheduled thread. The
kernels compute every row on one thread, so the result is the same bit for bit with any thread count.

On CUDA this backend is a correctness fallback (per-run ``F.scaled_dot_product_attention``, the backward recomputes
it under autograd); ``auto`` uses it there only where the GPU benchmark measured it fastest.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ..threads import map_single_threaded
from ._lse import empty_lse, lse_dtype, lse_shape

__all__ = ["sdpa_backward", "sdpa_forward"]

# torch's Python binding of the CPU kernel: the same op as ``torch.ops.aten``'s, without that wrapper's overhead.
_cpu_flash_forward = getattr(
    torch, "_scaled_dot_product_flash_attention_for_cpu", torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
)


# ------------------------------------------------------------------------------------------------------ runs
def _runs(cu_seqlens: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(first row, documents, length)`` of every run of adjacent non-empty documents of equal length."""
    runs: list[tuple[int, int, int]] = []
    for start, end in itertools.pairwise(cu_seqlens.tolist()):
        length = end - start
        if length == 0:
            continue
        if runs and runs[-1][2] == length and runs[-1][0] + runs[-1][1] * length == start:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, length)
        else:
            runs.append((start, 1, length))
    return runs


def _token_view(t: torch.Tensor, start: int, count: int, length: int) -> torch.Tensor:
    """Packed ``(total, heads, dim)`` rows of a run as ``(count, heads, length, dim)``, a view (one ``as_strided``:
    a slice, ``view`` and ``transpose`` cost three Python calls per tensor and run)."""
    rows, heads, dim = t.stride()
    return t.as_strided(
        (count, t.shape[1], length, t.shape[2]), (length * rows, heads, rows, dim), t.storage_offset() + start * rows
    )


def _lse_view(lse: torch.Tensor, start: int, count: int, length: int) -> torch.Tensor:
    """A run's columns of the packed ``(heads, total)`` LSE as ``(count, heads, length)``, the kernels' LSE shape."""
    return lse.as_strided((count, lse.shape[0], length), (length, lse.stride(0), 1), lse.storage_offset() + start)


def _pieces(cu_seqlens: torch.Tensor, parts: int) -> list[tuple[int, int, int]]:
    """The runs, each cut into at most ``parts`` pieces of adjacent documents, as ``(first row, documents, length)``;
    a single run stays whole (it is returned as the kernel's output, see :func:`_per_run`)."""
    runs = _runs(cu_seqlens)
    if len(runs) < 2 or parts < 2:
        return runs
    pieces = []
    for start, count, length in runs:
        step = -(-count // parts)
        for first in range(0, count, step):
            pieces.append((start + first * length, min(step, count - first), length))
    return pieces


def _per_run(function, tensors, cu_seqlens, outputs) -> list[torch.Tensor | None]:
    """``function`` on every run of documents, its results laid out as the packed (or dense) outputs.

    ``function(views)`` takes ``(count, heads, length, dim)`` views of each of ``tensors`` and returns one result per
    output, shaped ``(count, heads, length, dim)`` or, for an LSE, ``(count, heads, length)`` (``None``: not kept).
    Dense input or a single run: one call, whose results are returned in the packed ``(total, heads, dim)`` / dense
    ``(batch, seq, heads, dim)`` layout (views: the kernels' output memory already is that layout) and an LSE as
    ``(heads, total)`` / ``(batch, heads, seq)``. Several runs: ``outputs()`` makes the packed outputs and each run's
    results are copied into its rows by the thread that computed it (with several CPU threads, the single-threaded
    worker that ran it), so no multi-threaded ``cat`` follows: on a machine where another process holds a core, a
    16 MB ``cat`` on two threads was measured at 120-160 ms instead of ~1 ms in about one call in five.
    """
    dense = cu_seqlens is None
    threads = torch.get_num_threads() if tensors[0].device.type == "cpu" else 1
    pieces = None if dense else _pieces(cu_seqlens, threads)
    if dense or len(pieces) == 1:
        views = [t.transpose(1, 2) if dense else _token_view(t, *pieces[0]) for t in tensors]
        laid_out = []
        for result in function(views):
            if result is not None and result.dim() == 4:  # (count, heads, length, dim)
                count, heads, length, dim = result.shape
                result = result.transpose(1, 2)
                result = result if dense else result.reshape(count * length, heads, dim)
            elif result is not None and not dense:  # an LSE, (count, heads, length)
                result = result.transpose(0, 1).reshape(result.shape[1], -1)
            laid_out.append(result)
        return laid_out
    gathered = outputs()

    def run(piece: tuple[int, int, int]) -> None:
        results = function([_token_view(t, *piece) for t in tensors])
        for result, out in zip(results, gathered):
            if out is not None:
                (_token_view(out, *piece) if out.dim() == 3 else _lse_view(out, *piece)).copy_(result)

    map_single_threaded(run, sorted(pieces, key=lambda piece: -piece[1] * piece[2] ** 2))  # costliest first
    return gathered


def _mask(length: int, window_left: int, window_right: int, like: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
    """``(is_causal, additive mask or None)`` of the window on a ``length`` document (sides past it are unbounded)."""
    left = -1 if window_left >= length - 1 else window_left
    right = -1 if window_right >= length - 1 else window_right
    if left < 0 and right < 0:
        return False, None
    if left < 0 and right == 0:
        return True, None
    offset = torch.arange(length, device=like.device)
    offset = offset[None, :] - offset[:, None]  # key index minus query index
    visible = torch.ones(length, length, dtype=torch.bool, device=like.device)
    if left >= 0:
        visible &= offset >= -left
    if right >= 0:
        visible &= offset <= right
    return False, torch.zeros(length, length, dtype=like.dtype, device=like.device).masked_fill_(~visible, -math.inf)


# ------------------------------------------------------------------------------------------------------ kernels
def _forward_run(q, k, v, scale, window_left, window_right, need_lse):
    """``(out, lse or None)`` of one run: ``(count, heads, length, dim)`` views in, ``(count, heads, length)`` LSE."""
    causal, mask = _mask(q.shape[2], window_left, window_right, q)
    if q.device.type == "cpu":
        out, lse = _cpu_flash_forward(q, k, v, 0.0, causal, attn_mask=mask, scale=scale)
        return out, lse if need_lse else None  # the kernel computes the LSE anyway; kept only when asked
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out, _scores_lse(q, k, causal, mask, scale) if need_lse else None


def _scores_lse(q, k, causal, mask, scale):
    """LSE from materialised scores (the CUDA fallback only; fp32 or wider)."""
    group = q.shape[1] // k.shape[1]
    dtype = lse_dtype(q)
    scores = (q.to(dtype) @ k.to(dtype).repeat_interleave(group, dim=1).transpose(-1, -2)) * scale
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), -math.inf)
    elif mask is not None:
        scores = scores + mask
    return torch.logsumexp(scores, dim=-1)


def _backward_run(grad_out, q, k, v, out, lse, scale, window_left, window_right):
    """``(dq, dk, dv)`` of one run, each ``(count, heads, length, dim)``, given the run's output and LSE."""
    causal, mask = _mask(q.shape[2], window_left, window_right, q)
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out, q, k, v, out, lse, 0.0, causal, attn_mask=mask, scale=scale
        )
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (q, k, v)]
        recomputed = F.scaled_dot_product_attention(
            *inputs, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
        return torch.autograd.grad(recomputed, inputs, grad_out)


# ------------------------------------------------------------------------------------------------------ public
def sdpa_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
    window_left: int,
    window_right: int,
    need_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` on validated inputs (packed with ``cu_seqlens`` or dense); ``lse`` is empty unless
    ``need_lse``. Reads ``cu_seqlens`` on the host (a device sync on CUDA)."""
    lse_like = {"dtype": lse_dtype(q), "device": q.device}
    if q.numel() == 0:  # the kernels do not take empty shapes
        return torch.zeros(q.shape, dtype=q.dtype, device=q.device), (
            torch.zeros(lse_shape(q, cu_seqlens is None), **lse_like) if need_lse else empty_lse(q)
        )

    def forward_run(views):
        return _forward_run(*views, scale, window_left, window_right, need_lse)

    def outputs():
        lse = torch.empty(lse_shape(q, False), **lse_like) if need_lse else None
        return [torch.empty(q.shape, dtype=q.dtype, device=q.device), lse]

    out, lse = _per_run(forward_run, (q, k, v), cu_seqlens, outputs)
    return out.contiguous(), lse.to(lse_like["dtype"]).contiguous() if need_lse else empty_lse(q)


def sdpa_backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
    window_left: int,
    window_right: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` from the output gradient and the forward's output and LSE."""
    if q.numel() == 0:
        return tuple(torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    dense = cu_seqlens is None
    lse_like_q = (lse.transpose(1, 2) if dense else lse.t()).unsqueeze(-1)  # runs of it: (count, heads, length, 1)

    def backward_run(views):
        g, qv, kv, vv, o, l = views
        return _backward_run(g, qv, kv, vv, o, l.squeeze(-1), scale, window_left, window_right)

    def outputs():
        return [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v)]

    grads = _per_run(backward_run, (grad_out, q, k, v, out, lse_like_q), cu_seqlens, outputs)
    return tuple(grad.contiguous() for grad in grads)
