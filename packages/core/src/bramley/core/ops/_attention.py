"""Public varlen attention: argument checks, dispatch (Triton on CUDA, reference elsewhere) and torch custom ops.

Both paths compute the same function. The forward and backward are registered as torch custom ops
(``bramley::attention_fwd`` / ``bramley::attention_bwd``) with fake implementations, so ``attention`` traces into
``torch.compile`` graphs (``fullgraph=True``) as two opaque nodes, on CPU and CUDA alike. In eager mode the same
implementations run through a plain ``autograd.Function``: calling a custom op the first time imports
``torch._dynamo`` (several seconds), which eager users should not pay for.
"""

from __future__ import annotations

import math

import torch

from . import _triton
from ._reference import reference_attention, reference_attention_backward

__all__ = ["SUPPORTED_DTYPES", "attention", "normalize_window"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
BACKENDS = ("auto", "triton", "reference")


def normalize_window(window: int | tuple[int, int] | None, causal: bool) -> tuple[int, int]:
    """Turn the ``window``/``causal`` arguments into ``(left, right)`` key offsets, ``-1`` meaning unbounded.

    ``None`` is ``(-1, -1)``; an int ``w >= 0`` is ``(w, w)``; ``causal=True`` sets ``right = 0``.
    """
    if window is None:
        left, right = -1, -1
    elif isinstance(window, bool):
        raise TypeError("window must be None, an int or a (left, right) pair of ints, not a bool")
    elif isinstance(window, int):
        if window < 0:
            raise ValueError(f"window must be >= 0 (use None for global attention), got {window}")
        left, right = window, window
    elif isinstance(window, (tuple, list)) and len(window) == 2 and all(isinstance(w, int) for w in window):
        left, right = int(window[0]), int(window[1])
        if left < -1 or right < -1:
            raise ValueError(f"window sides must be >= -1 (-1 = unbounded), got {tuple(window)}")
    else:
        raise TypeError(f"window must be None, an int or a (left, right) pair of ints, got {window!r}")
    if causal:
        right = 0
    return left, right


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"unsupported dtype {q.dtype}; expected one of {[str(d) for d in SUPPORTED_DTYPES]}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.dim() == 3:
        if cu_seqlens is None:
            raise ValueError(
                "packed (total, heads, dim) inputs need cu_seqlens; pass 4-D (batch, seq, heads, dim) "
                "tensors for the dense layout"
            )
        layout = "packed (total, heads, dim)"
    elif q.dim() == 4:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens is only for the packed 3-D layout; got 4-D dense q with cu_seqlens")
        layout = "dense (batch, seq, heads, dim)"
    else:
        raise ValueError(
            f"q must be 3-D packed (total, heads, dim) or 4-D dense (batch, seq, heads, dim), "
            f"got shape {tuple(q.shape)}"
        )
    if k.dim() != q.dim() or v.dim() != q.dim():
        raise ValueError(
            f"q, k, v must all be {layout}; got shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(
            f"q and k/v must have the same tokens ({layout}); got shapes {tuple(q.shape)} and "
            f"{tuple(k.shape)} (cross-attention with different lengths is not supported)"
        )
    heads, kv_heads = q.shape[-2], k.shape[-2]
    if kv_heads == 0 or heads % kv_heads != 0:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads}) for GQA/MQA")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k/v head dims differ: {q.shape[-1]} vs {k.shape[-1]}")
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"unsupported head dim {q.shape[-1]}; supported: 1..{MAX_HEAD_DIM}")
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor):
            raise TypeError(f"cu_seqlens must be an int32 tensor, got {type(cu_seqlens).__name__}")
        if cu_seqlens.dtype != torch.int32:
            raise TypeError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise ValueError(f"cu_seqlens must be 1-D with batch + 1 entries, got shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens.device != q.device:
            raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but q is on {q.device}")


def _check_cu_seqlens(cu_seqlens: torch.Tensor, total: int, max_seqlen: int) -> None:
    """Value checks (one host sync on CUDA): starts at 0, non-decreasing, ends at ``total``, lengths <= max_seqlen."""
    cu = cu_seqlens.cpu()
    if int(cu[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(cu[0])}")
    if int(cu[-1]) != total:
        raise ValueError(f"cu_seqlens must end at the number of tokens ({total}), got {int(cu[-1])}")
    lengths = cu[1:] - cu[:-1]
    if lengths.numel() and int(lengths.min()) < 0:
        bad = int(torch.nonzero(lengths < 0)[0, 0])
        raise ValueError(f"cu_seqlens must be non-decreasing; it decreases at index {bad + 1}")
    longest = int(lengths.max()) if lengths.numel() else 0
    if longest > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} is smaller than the longest document ({longest})")


def _use_triton(q: torch.Tensor, backend: str) -> bool:
    if backend == "reference":
        return False
    capable = q.dtype in TRITON_DTYPES and _triton.triton_usable_for(q)
    if backend == "triton":
        if not capable:
            raise RuntimeError(
                f"backend='triton' needs triton and a CUDA tensor (or TRITON_INTERPRET=1 on CPU) "
                f"of dtype fp16/bf16/fp32; got {q.dtype} on {q.device}"
            )
        return True
    return capable and q.is_cuda


def _lse_shape(q: torch.Tensor, dense: bool) -> tuple[int, ...]:
    return (q.shape[0], q.shape[2], q.shape[1]) if dense else (q.shape[1], q.shape[0])


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------- custom ops
def _forward_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int,
    scale: float,
    window_left: int,
    window_right: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if cu_seqlens is not None:
        _check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen)
    if _use_triton(q, backend):
        from . import _attention_triton

        return _attention_triton.forward(q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right)
    return reference_attention(q, k, v, cu_seqlens, scale, window_left, window_right)


_attention_fwd = torch.library.custom_op("bramley::attention_fwd", _forward_impl, mutates_args=())


@_attention_fwd.register_fake
def _attention_fwd_fake(q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right, backend):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(_lse_shape(q, cu_seqlens is None), dtype=_lse_dtype(q))
    return out, lse


def _backward_impl(
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int,
    scale: float,
    window_left: int,
    window_right: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if _use_triton(q, backend):
        from . import _attention_triton

        return _attention_triton.backward(
            grad_out, grad_lse, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, window_left, window_right
        )
    return reference_attention_backward(grad_out, grad_lse, q, k, v, cu_seqlens, scale, window_left, window_right)


_attention_bwd = torch.library.custom_op("bramley::attention_bwd", _backward_impl, mutates_args=())


@_attention_bwd.register_fake
def _attention_bwd_fake(
    grad_out, grad_lse, q, k, v, out, lse, cu_seqlens, max_seqlen, scale, window_left, window_right, backend
):
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.args = (max_seqlen, scale, window_left, window_right, backend)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _attention_bwd(grad_out, grad_lse, q, k, v, out, lse, cu_seqlens, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The custom op's forward/backward for eager mode (same implementations, no dynamo import)."""

    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right, backend):
        out, lse = _forward_impl(q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right, backend)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.args = (max_seqlen, scale, window_left, window_right, backend)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        dq, dk, dv = _backward_impl(grad_out, grad_lse, q, k, v, out, lse, cu_seqlens, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None


# --------------------------------------------------------------------------------------------------- public API
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    causal: bool = False,
    scale: float | None = None,
    window: int | tuple[int, int] | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention over packed variable-length documents or a dense batch.

    Each query attends only to keys of its own document. Query ``i`` (position within its document) sees key ``j``
    when ``i - left <= j <= i + right`` for ``(left, right)`` from ``window``/``causal`` (``-1``: unbounded), the
    semantics of flash-attn's ``window_size``. Queries and keys of a document have the same length, so causal is the
    usual lower-triangular mask (flash-attn's bottom-right alignment coincides with top-left here).

    Args:
        q: ``(total, heads, dim)`` packed with ``cu_seqlens``, or ``(batch, seq, heads, dim)`` dense.
        k, v: like ``q`` with ``kv_heads`` heads; ``heads`` must be a multiple of ``kv_heads`` (GQA/MQA).
        cu_seqlens: int32 ``(batch + 1,)`` offsets of the documents in the packed tensors (0, ..., total); empty
            documents are allowed.
        max_seqlen: longest document; computed from ``cu_seqlens`` when omitted (checked either way).
        causal: each query sees only keys at or before its position (sets ``right = 0``).
        scale: multiplier of ``q @ k^T``; default ``1 / sqrt(dim)``.
        window: local attention: ``None`` (global), an int ``w`` meaning ``(w, w)`` (each query sees ``w`` keys on
            each side, i.e. ``2w + 1`` keys; ``w`` before and itself when causal), or ``(left, right)``.
        return_lse: also return the log-sum-exp of the scaled scores (natural log, float32; float64 for float64
            inputs), shaped ``(heads, total)`` packed or ``(batch, heads, seq)`` dense. It is differentiable.
        backend: ``"auto"`` (Triton kernels for CUDA fp16/bf16/fp32, the reference elsewhere), ``"triton"`` (also
            on CPU under ``TRITON_INTERPRET=1``, for tests) or ``"reference"``.

    Returns:
        The output, shaped and typed like ``q`` (contiguous), and the LSE if ``return_lse``. Empty documents
        contribute no rows; rows without visible keys (impossible with ``left, right >= 0``) are zeros, LSE ``-inf``.
    """
    _check_inputs(q, k, v, cu_seqlens)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    left, right = normalize_window(window, causal)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    if cu_seqlens is None:
        if max_seqlen is not None and max_seqlen != q.shape[1]:
            raise ValueError(f"max_seqlen={max_seqlen} does not match the dense sequence length {q.shape[1]}")
        max_seqlen = q.shape[1]
    elif max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
    args = (q, k, v, cu_seqlens, int(max_seqlen), float(scale), left, right, backend)
    out, lse = _attention_fwd(*args) if torch.compiler.is_compiling() else _EagerAttention.apply(*args)
    return (out, lse) if return_lse else out
