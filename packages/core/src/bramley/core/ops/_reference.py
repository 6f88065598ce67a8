"""Pure-PyTorch reference attention: the exact function the Triton kernels compute, differentiable by autograd.

Used on CPU, for float64, and as the oracle in tests. Scores are materialised per document (packed layout: documents
of equal length are batched together, e.g. the windows of windowed attention) or per batch (dense layout), so memory
is O(length^2) per document: fine for a reference, not for long sequences.
"""

from __future__ import annotations

import torch

__all__ = ["reference_attention", "reference_attention_backward", "visibility_mask"]


def visibility_mask(length: int, window_left: int, window_right: int, device: torch.device) -> torch.Tensor | None:
    """Boolean ``(length, length)`` mask of the keys each query may see, or ``None`` when it sees them all.

    Query ``i`` sees key ``j`` when ``i - window_left <= j <= i + window_right``; ``-1`` means unbounded on that side.
    """
    if window_left < 0 and window_right < 0:
        return None
    pos = torch.arange(length, device=device)
    offset = pos[None, :] - pos[:, None]  # key index minus query index
    mask = torch.ones(length, length, dtype=torch.bool, device=device)
    if window_left >= 0:
        mask &= offset >= -window_left
    if window_right >= 0:
        mask &= offset <= window_right
    return mask


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    window_left: int,
    window_right: int,
    compute_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention on ``(..., heads, length, dim)`` tensors; returns output in q's dtype and LSE in compute dtype."""
    group = q.shape[-3] // k.shape[-3]
    if group > 1:
        k = k.repeat_interleave(group, dim=-3)
        v = v.repeat_interleave(group, dim=-3)
    qc, kc, vc = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)
    scores = (qc @ kc.transpose(-1, -2)) * scale
    mask = visibility_mask(q.shape[-2], window_left, window_right, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    # A row with no visible key has lse = -inf; subtracting 0 instead keeps its probabilities at exactly 0.
    probs = torch.exp(scores - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
    out = (probs.to(compute_dtype) @ vc).to(q.dtype)
    return out, lse


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
    window_left: int = -1,
    window_right: int = -1,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention on validated inputs (see :func:`bramley.core.ops.attention` for the semantics).

    Args:
        q, k, v: packed ``(total, heads, dim)`` with ``cu_seqlens``, or dense ``(batch, seq, heads, dim)`` without.
        cu_seqlens: int32 ``(batch + 1,)`` document boundaries for the packed layout, ``None`` for dense.
        scale: multiplier of ``q @ k^T``.
        window_left, window_right: visible keys ``[i - left, i + right]`` of query ``i`` (``-1``: unbounded);
            causal attention is ``window_right = 0``.
        compute_dtype: dtype of the arithmetic; default float32 for half types, the input dtype otherwise.
            Running it in the input's half dtype gives the "same-dtype PyTorch baseline" of the accuracy tests.

    Returns:
        ``(out, lse)``: out like ``q``; LSE (natural log, float32 or the compute dtype if wider) of shape
        ``(heads, total)`` packed or ``(batch, heads, seq)`` dense. Rows without visible keys have out 0, LSE -inf.
    """
    if compute_dtype is None:
        compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    lse_dtype = torch.promote_types(compute_dtype, torch.float32)
    if cu_seqlens is None:
        out, lse = _attend(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale, window_left, window_right, compute_dtype
        )
        return out.transpose(1, 2).contiguous(), lse.to(lse_dtype)

    out = q.new_zeros(q.shape)
    lse = q.new_zeros((q.shape[1], q.shape[0]), dtype=lse_dtype)
    for rows, count, length in _equal_length_groups(cu_seqlens):
        o, l = _attend(*(_gather_docs(t, rows, count, length) for t in (q, k, v)), scale, window_left,
                       window_right, compute_dtype)  # fmt: skip
        out[rows] = o.transpose(1, 2).reshape(count * length, *q.shape[1:])
        lse[:, rows] = l.transpose(0, 1).reshape(q.shape[1], count * length).to(lse_dtype)
    return out, lse


def _equal_length_groups(cu_seqlens: torch.Tensor) -> list[tuple[torch.Tensor, int, int]]:
    """Documents grouped by length, so each group is one batched computation: ``(token rows, count, length)``.

    ``rows`` lists the packed rows of the group's documents, document after document (shape ``count * length``).
    """
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]
    groups = []
    for length in torch.unique(lengths).tolist():
        if length == 0:
            continue
        starts = cu[:-1][lengths == length]
        rows = (starts[:, None] + torch.arange(length, device=cu.device)[None, :]).reshape(-1)
        groups.append((rows, starts.numel(), length))
    return groups


def _gather_docs(t: torch.Tensor, rows: torch.Tensor, count: int, length: int) -> torch.Tensor:
    """Packed ``(total, heads, dim)`` rows of ``count`` documents of one length -> ``(count, heads, length, dim)``."""
    return t[rows].view(count, length, *t.shape[1:]).transpose(1, 2)


def _attend_backward(
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    window_left: int,
    window_right: int,
    compute_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`_attend` on ``(..., heads, length, dim)`` tensors, by the softmax-backward formulas."""
    heads, kv_heads = q.shape[-3], k.shape[-3]
    group = heads // kv_heads
    qc, kc, vc, doc = (t.to(compute_dtype) for t in (q, k, v, grad_out))
    if group > 1:
        kc = kc.repeat_interleave(group, dim=-3)
        vc = vc.repeat_interleave(group, dim=-3)
    scores = (qc @ kc.transpose(-1, -2)) * scale
    mask = visibility_mask(q.shape[-2], window_left, window_right, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse).unsqueeze(-1))
    grad_probs = doc @ vc.transpose(-1, -2)
    # d lse / d scores = probs, so an LSE gradient enters exactly like a shift of the softmax-backward's row term.
    row_term = (probs * grad_probs).sum(-1)
    if grad_lse is not None:
        row_term = row_term - grad_lse.to(compute_dtype)
    grad_scores = probs * (grad_probs - row_term.unsqueeze(-1))
    dq = (grad_scores @ kc) * scale
    dk = (grad_scores.transpose(-1, -2) @ qc) * scale
    dv = probs.transpose(-1, -2) @ doc
    if group > 1:  # sum the query heads that share a key/value head
        dk = dk.unflatten(-3, (kv_heads, group)).sum(-3)
        dv = dv.unflatten(-3, (kv_heads, group)).sum(-3)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def reference_attention_backward(
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
    window_left: int = -1,
    window_right: int = -1,
    compute_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of :func:`reference_attention` given the gradients of its output and (optionally) LSE."""
    if compute_dtype is None:
        compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    if cu_seqlens is None:
        dq, dk, dv = _attend_backward(
            grad_out.transpose(1, 2),
            grad_lse,
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            scale,
            window_left,
            window_right,
            compute_dtype,
        )
        return dq.transpose(1, 2).contiguous(), dk.transpose(1, 2).contiguous(), dv.transpose(1, 2).contiguous()

    # Contiguous like the fake op's outputs (zeros_like would keep the strides of a permuted q).
    dq, dk, dv = (torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    for rows, count, length in _equal_length_groups(cu_seqlens):
        grads = _attend_backward(
            _gather_docs(grad_out, rows, count, length),
            None if grad_lse is None else grad_lse[:, rows].view(-1, count, length).transpose(0, 1),
            *(_gather_docs(t, rows, count, length) for t in (q, k, v)),
            scale,
            window_left,
            window_right,
            compute_dtype,
        )
        for full, part in zip((dq, dk, dv), grads):
            full[rows] = part.transpose(1, 2).reshape(count * length, *full.shape[1:])
    return dq, dk, dv
