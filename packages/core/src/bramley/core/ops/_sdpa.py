"""The ``sdpa`` backend: scaled dot-product attention per run of documents, the fast CPU path.

A *run* is a stretch of adjacent documents of one length: a strided ``(count, heads, length, dim)`` view of the packed
tensors (a dense batch is one run), so each run is one batched kernel call and nothing is copied in. On CPU the calls
go straight to torch's fused flash-attention kernels for CPU (``aten._scaled_dot_product_flash_attention_for_cpu``
and its backward, what ``F.scaled_dot_product_attention`` runs), which return the LSE the backward needs anyway. Those
kernels write their outputs and gradients in ``(count, length, heads, dim)`` memory, the packed layout itself: a single
run is returned as a view, several runs are joined with one ``cat`` of one view each.

Every document runs whole: splitting long documents into tiles (forward merged by LSE, backward summed) was measured
slower at every length from 256 to 2,048 tokens, with 1 and 2 threads (the kernels' rate grows with the length).

On CUDA this backend is a correctness fallback (per-run ``F.scaled_dot_product_attention``, the backward recomputes
it under autograd); ``auto`` uses it there only where the GPU benchmark measured it fastest.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ._lse import empty_lse, lse_dtype, lse_shape

__all__ = ["sdpa_backward", "sdpa_forward"]


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
    """Packed ``(total, heads, dim)`` rows of a run as ``(count, heads, length, dim)``, a view."""
    return t[start : start + count * length].view(count, length, *t.shape[1:]).transpose(1, 2)


def _run_views(tensors, cu_seqlens):
    """Per run, ``(count, heads, length, dim)`` views of each of ``tensors`` (dense: the whole batch is one run)."""
    if tensors[0].numel() == 0:  # the kernels do not take empty shapes
        return
    if cu_seqlens is None:
        yield [t.transpose(1, 2) for t in tensors]
        return
    for run in _runs(cu_seqlens):
        yield [_token_view(t, *run) for t in tensors]


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
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=mask, scale=scale
        )
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
    outs, lses = [], []
    for qv, kv, vv in _run_views((q, k, v), cu_seqlens):
        o, l = _forward_run(qv, kv, vv, scale, window_left, window_right, need_lse)
        outs.append(o)
        lses.append(l)
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
    grads = ([], [], [])
    for gv, qv, kv, vv, ov, lv in _run_views((grad_out, q, k, v, out, lse_like_q), cu_seqlens):
        parts = _backward_run(gv, qv, kv, vv, ov, lv.squeeze(-1), scale, window_left, window_right)
        for part, grad in zip(grads, parts):
            part.append(grad)
    return tuple(_assemble(part, t, dense) for part, t in zip(grads, (q, k, v)))
