"""The ``sdpa`` backend: scaled dot-product attention per run of documents, the fast CPU path.

A *run* is a stretch of adjacent documents of one length: a strided ``(count, heads, length, dim)`` view of the packed
tensors (a dense batch is one run), so each run is one batched kernel call and nothing is copied in. On CPU the calls
go straight to torch's fused flash-attention kernels for CPU (``aten._scaled_dot_product_flash_attention_for_cpu``
and its backward, what ``F.scaled_dot_product_attention`` runs), which return the LSE the backward needs anyway. Those
kernels write their outputs and gradients in ``(count, length, heads, dim)`` memory, the packed layout itself: a single
run is returned as a view, several runs are joined with one ``cat`` of one view each.

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


def _pieces(cu_seqlens: torch.Tensor, parts: int) -> list[tuple[int, int, int]]:
    """Several runs, each cut into at most ``parts`` pieces of adjacent documents, as ``(first row, documents,
    length)``; a single run stays whole (one call's output is returned as a view: pieces would need a ``cat``)."""
    runs = _runs(cu_seqlens)
    if len(runs) < 2:
        return runs
    pieces = []
    for start, count, length in runs:
        step = -(-count // parts)
        for first in range(0, count, step):
            pieces.append((start + first * length, min(step, count - first), length))
    return pieces


def _map_runs(function, tensors, cu_seqlens) -> list:
    """``function(views)`` per run (dense: the whole batch), where ``views`` are ``(count, heads, length, dim)`` views
    of each of ``tensors``; results in packed order. Several CPU threads: pieces of runs on single-threaded workers."""
    if tensors[0].numel() == 0:  # the kernels do not take empty shapes
        return []
    if cu_seqlens is None:
        return [function([t.transpose(1, 2) for t in tensors])]
    threads = torch.get_num_threads() if tensors[0].device.type == "cpu" else 1
    if threads == 1:
        return [function([_token_view(t, *run) for t in tensors]) for run in _runs(cu_seqlens)]
    pieces = _pieces(cu_seqlens, threads)
    costliest_first = sorted(range(len(pieces)), key=lambda i: -pieces[i][1] * pieces[i][2] ** 2)
    results = map_single_threaded(lambda i: function([_token_view(t, *pieces[i]) for t in tensors]), costliest_first)
    in_order = [None] * len(pieces)
    for i, result in zip(costliest_first, results):
        in_order[i] = result
    return in_order


def _assemble(parts: list[torch.Tensor], like: torch.Tensor, dense: bool) -> torch.Tensor:
    """The packed (or dense) tensor shaped like ``like`` from per-run ``(count, heads, length, dim)`` results: a view
    of a single run's result (the CPU kernels write ``(count, length, heads, dim)`` memory), else one ``cat``."""
    if not parts:
        return torch.zeros(like.shape, dtype=like.dtype, device=like.device)
    if dense:
        return parts[0].transpose(1, 2).contiguous()
    rows = [part.transpose(1, 2).reshape(-1, *like.shape[1:]) for part in parts]
    return rows[0].contiguous() if len(rows) == 1 else torch.cat(rows)


def _assemble_lse(parts: list[torch.Tensor], q: torch.Tensor, dense: bool) -> torch.Tensor:
    """``(heads, total)`` (or dense ``(batch, heads, seq)``) LSE from per-run ``(count, heads, length)`` results."""
    dtype = lse_dtype(q)
    if not parts:
        return q.new_zeros(lse_shape(q, dense), dtype=dtype)
    if dense:
        return parts[0].to(dtype).contiguous()
    rows = torch.cat([part.transpose(1, 2).reshape(-1, q.shape[1]) for part in parts])  # (total, heads)
    return rows.t().to(dtype).contiguous()


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
    dense = cu_seqlens is None
    results = _map_runs(
        lambda views: _forward_run(*views, scale, window_left, window_right, need_lse), (q, k, v), cu_seqlens
    )
    outs, lses = [o for o, _ in results], [l for _, l in results]
    if not need_lse:
        return _assemble(outs, q, dense), empty_lse(q)
    return _assemble(outs, q, dense), _assemble_lse(lses, q, dense)


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
    dense = cu_seqlens is None
    lse_like_q = (lse.transpose(1, 2) if dense else lse.t()).unsqueeze(-1)  # runs of it: (count, heads, length, 1)

    def backward_run(views):
        g, qv, kv, vv, o, l = views
        return _backward_run(g, qv, kv, vv, o, l.squeeze(-1), scale, window_left, window_right)

    results = _map_runs(backward_run, (grad_out, q, k, v, out, lse_like_q), cu_seqlens)
    grads = [[result[i] for result in results] for i in range(3)]
    return tuple(_assemble(part, t, dense) for part, t in zip(grads, (q, k, v)))
