"""Public varlen attention: argument checks, backend choice and dispatch, torch custom ops.

Every backend computes the same function (see :func:`attention`). ``triton``, ``sdpa`` and ``reference`` run through
two torch custom ops (``bramley::attention_fwd`` / ``bramley::attention_bwd``) with fake implementations, so
``attention`` traces into ``torch.compile`` graphs (``fullgraph=True``) as two opaque nodes, on CPU and CUDA alike. In
eager mode the same implementations run through a plain ``autograd.Function``: calling a custom op the first time
imports ``torch._dynamo`` (several seconds), which eager users should not pay for. ``flash`` and ``flex`` are torch's
own differentiable, compilable ops (:mod:`._flash_flex`).

The GPU backends read no device tensor on the host: ``cu_seqlens`` values are checked only in debug mode
(:func:`set_debug`, on in the tests) or by the backends that read them on the host anyway (``sdpa``, ``reference``),
and ``max_seqlen`` comes from the caller (``pack`` returns it). Only ``triton`` and ``flash`` need it; omitted, it is
read from ``cu_seqlens`` (one device sync).
"""

from __future__ import annotations

import math
import os

import torch

from . import _triton
from ._auto import auto_backend
from ._flash_flex import flash_attention, flex_attention
from ._lse import empty_lse, lse_dtype, lse_shape
from ._reference import reference_attention, reference_attention_backward
from ._sdpa import sdpa_backward, sdpa_forward

__all__ = ["BACKENDS", "SUPPORTED_DTYPES", "attention", "debug_enabled", "normalize_window", "set_debug"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
BACKENDS = ("auto", "triton", "flash", "flex", "sdpa", "reference")
_NEEDS_MAX_SEQLEN = ("triton", "flash")
_READS_OFFSETS = ("sdpa", "reference")  # they read cu_seqlens on the host anyway, so checking it costs no sync
_debug = os.environ.get("BRAMLEY_OPS_DEBUG", "0").lower() not in ("", "0", "false", "off", "no")


def set_debug(enabled: bool) -> bool:
    """Check ``cu_seqlens`` values in every :func:`attention` call (one device sync each on CUDA); returns the
    previous setting. Off by default (``BRAMLEY_OPS_DEBUG=1`` turns it on at import); the tests turn it on."""
    global _debug
    previous, _debug = _debug, bool(enabled)
    return previous


def debug_enabled() -> bool:
    """Whether :func:`attention` checks ``cu_seqlens`` values (see :func:`set_debug`)."""
    return _debug


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


def _check_cu_seqlens(cu_seqlens: torch.Tensor, total: int, max_seqlen: int | None) -> None:
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
    if max_seqlen is not None and longest > max_seqlen:
        raise ValueError(f"max_seqlen={max_seqlen} is smaller than the longest document ({longest})")


def _check_backend(q: torch.Tensor, backend: str) -> None:
    """A clear error for a backend that cannot run these inputs (``flash``/``flex`` check their own)."""
    if backend == "triton" and not (q.dtype in TRITON_DTYPES and _triton.triton_usable_for(q)):
        raise RuntimeError(
            f"backend='triton' needs triton and a CUDA tensor (or TRITON_INTERPRET=1 on CPU) of dtype "
            f"fp16/bf16/fp32; got {q.dtype} on {q.device}"
        )


def _per_row(grad_lse: torch.Tensor, dense: bool) -> torch.Tensor:
    """An LSE-shaped tensor laid out like q (``(total, heads, 1)`` packed, ``(batch, seq, heads, 1)`` dense)."""
    return (grad_lse.transpose(1, 2) if dense else grad_lse.t()).unsqueeze(-1)


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
    need_lse: bool,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    del deterministic  # a backward setting; the op carries it so that the backward receives it
    if backend in _READS_OFFSETS and cu_seqlens is not None:
        _check_cu_seqlens(cu_seqlens, q.shape[0], None if max_seqlen < 0 else max_seqlen)
    if backend == "triton":
        from . import _attention_triton

        out, lse = _attention_triton.forward(q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right)
    elif backend == "sdpa":
        return sdpa_forward(q, k, v, cu_seqlens, scale, window_left, window_right, need_lse)
    else:
        out, lse = reference_attention(q, k, v, cu_seqlens, scale, window_left, window_right)
    return out, lse if need_lse else empty_lse(q)


_attention_fwd = torch.library.custom_op("bramley::attention_fwd", _forward_impl, mutates_args=())


@_attention_fwd.register_fake
def _attention_fwd_fake(
    q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right, backend, need_lse, deterministic=False
):
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if not need_lse:
        return out, empty_lse(q)
    return out, q.new_empty(lse_shape(q, cu_seqlens is None), dtype=lse_dtype(q))


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
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from . import _attention_triton

        return _attention_triton.backward(
            grad_out,
            grad_lse,
            q,
            k,
            v,
            out,
            lse,
            cu_seqlens,
            max_seqlen,
            scale,
            window_left,
            window_right,
            deterministic,
        )
    if backend == "reference":
        return reference_attention_backward(grad_out, grad_lse, q, k, v, cu_seqlens, scale, window_left, window_right)
    return _sdpa_backward_once_rounded(grad_out, grad_lse, q, k, v, out, lse, cu_seqlens, scale, window_left,
                                       window_right)  # fmt: skip


def _sdpa_backward_once_rounded(grad_out, grad_lse, q, k, v, out, lse, cu_seqlens, scale, window_left, window_right):
    """The ``sdpa`` backward, fp16/bf16 computed in fp32 and rounded once at the end.

    torch's half-precision kernels miss flash-attn's accuracy rule on their own: on CPU their dK and dV errors were 2-4x
    the same-dtype baseline's on causal documents of 129-2,049 tokens (the CPU kernel, F.scaled_dot_product_attention's
    too), on an H200 dK's was 75x (bf16, causal, GQA; the fp32 cases passed). fp32 costs the CPU's bf16 backward about
    a fifth of its speed (measured 0.83x, 2026-12-04). The LSE's gradient, ``dq += scale g (P K)``, ``dk += scale P^T
    (g Q)`` (``d lse_i / d s_ij = p_ij``), is added before the rounding too.
    """
    window = (window_left, window_right)
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    grad_out, q_, k_, v_, out = (t.to(work) for t in (grad_out, q, k, v, out))
    dq, dk, dv = sdpa_backward(grad_out, q_, k_, v_, out, lse, cu_seqlens, scale, *window)
    if grad_lse is not None:
        weight = _per_row(grad_lse, cu_seqlens is None)
        keys_as_values, _ = sdpa_forward(q_, k_, k_, cu_seqlens, scale, *window, need_lse=False)
        _, _, dk_lse = sdpa_backward(weight * q_, q_, k_, k_, keys_as_values, lse, cu_seqlens, scale, *window)
        dq = dq + scale * weight * keys_as_values
        dk = dk + scale * dk_lse
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


_attention_bwd = torch.library.custom_op("bramley::attention_bwd", _backward_impl, mutates_args=())


@_attention_bwd.register_fake
def _attention_bwd_fake(
    grad_out,
    grad_lse,
    q,
    k,
    v,
    out,
    lse,
    cu_seqlens,
    max_seqlen,
    scale,
    window_left,
    window_right,
    backend,
    deterministic=False,
):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right, backend, _, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.args = (max_seqlen, scale, window_left, window_right, backend, deterministic)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _attention_bwd(grad_out, grad_lse, q, k, v, out, lse, cu_seqlens, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None, None


_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class _EagerAttention(torch.autograd.Function):
    """The custom op's forward/backward for eager mode (same implementations, no dynamo import)."""

    @staticmethod
    def forward(
        ctx, q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right, backend, need_lse, deterministic
    ):
        out, lse = _forward_impl(q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right, backend, need_lse)
        ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
        ctx.args = (max_seqlen, scale, window_left, window_right, backend, deterministic)
        ctx.set_materialize_grads(False)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        dq, dk, dv = _backward_impl(grad_out, grad_lse, q, k, v, out, lse, cu_seqlens, *ctx.args)
        return dq, dk, dv, None, None, None, None, None, None, None, None


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
    deterministic: bool = False,
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
            documents are allowed. Its values are checked in debug mode (:func:`set_debug`) and by the backends
            that read it on the host anyway (``sdpa``, ``reference``); never with a device sync otherwise.
        max_seqlen: longest document, as :func:`bramley.core.packing.pack` returns it. The ``triton`` and ``flash``
            backends need it; omitted, it is read from ``cu_seqlens`` (one device sync, which also breaks CUDA-graph
            capture).
        causal: each query sees only keys at or before its position (sets ``right = 0``).
        scale: multiplier of ``q @ k^T``; default ``1 / sqrt(dim)``.
        window: local attention: ``None`` (global), an int ``w`` meaning ``(w, w)`` (each query sees ``w`` keys on
            each side, i.e. ``2w + 1`` keys; ``w`` before and itself when causal), or ``(left, right)``. A side that
            reaches past the longest document is unbounded.
        return_lse: also return the log-sum-exp of the scaled scores (natural log, float32; float64 for float64
            inputs), shaped ``(heads, total)`` packed or ``(batch, heads, seq)`` dense. It is differentiable. Only
            computed when asked (or when the backward needs it).
        backend: ``"auto"`` (the measured-fastest backend for the device, dtype, head dim and features, from the
            table the GPU benchmark writes: ``sdpa`` on CPU), ``"triton"`` (bramley's kernels; CUDA, or CPU under
            ``TRITON_INTERPRET=1`` for tests), ``"flash"`` (torch's ``varlen_attn``; CUDA fp16/bf16), ``"flex"``
            (FlexAttention; no backward on CPU), ``"sdpa"`` (torch's fused SDPA kernels per run of equal-length
            documents) or ``"reference"`` (plain math, float64-capable: the oracle).
        deterministic: the ``triton`` backward's algorithm. ``False`` (default, the faster design): one fused kernel
            per key block that adds dQ (and dK/dV under GQA) with fp32 atomics, so gradients may differ in the last
            bits from run to run. ``True``: the split backward (no atomics), bit-identical across runs. ``sdpa`` and
            ``reference`` on CPU are deterministic either way; torch's own kernels (``flash``, ``flex``, ``sdpa``
            on CUDA) follow ``torch.use_deterministic_algorithms`` instead.

    Returns:
        The output, shaped and typed like ``q`` (contiguous), and the LSE if ``return_lse``. Empty documents
        contribute no rows; rows without visible keys (impossible with ``left, right >= 0``) are zeros, LSE ``-inf``.
    """
    _check_inputs(q, k, v, cu_seqlens)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    left, right = normalize_window(window, causal)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    dense = cu_seqlens is None
    if dense:
        if max_seqlen is not None and max_seqlen != q.shape[1]:
            raise ValueError(f"max_seqlen={max_seqlen} does not match the dense sequence length {q.shape[1]}")
        max_seqlen = q.shape[1]
    if backend == "auto":
        backend = auto_backend(q, k, left, right)
    if not dense and _debug and backend not in _READS_OFFSETS and not torch.compiler.is_compiling():
        _check_cu_seqlens(cu_seqlens, q.shape[0], max_seqlen)
    _check_backend(q, backend)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if max_seqlen is None and backend in _NEEDS_MAX_SEQLEN:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
    if max_seqlen is not None:  # a side that reaches past every document is the unbounded side
        left, right = (-1 if side >= max_seqlen else side for side in (left, right))
    if backend == "flash":
        out, lse = flash_attention(q, k, v, cu_seqlens, int(max_seqlen), float(scale), left, right, return_lse)
        return (out, lse) if return_lse else out
    if backend == "flex":
        out, lse = flex_attention(q, k, v, cu_seqlens, float(scale), left, right, return_lse)
        return (out, lse) if return_lse else out
    args = (q, k, v, cu_seqlens, -1 if max_seqlen is None else int(max_seqlen), float(scale), left, right, backend,
            return_lse or needs_grad, deterministic)  # fmt: skip
    out, lse = _attention_fwd(*args) if torch.compiler.is_compiling() else _EagerAttention.apply(*args)
    return (out, lse) if return_lse else out
