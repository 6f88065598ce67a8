"""The ``flash`` and ``flex`` backends: torch's own attention kernels behind bramley's ``attention`` signature.

``flash`` is ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention / cuDNN kernels in torch, CUDA fp16/bf16);
``flex`` is FlexAttention with a document (and causal / window) block mask. Both are composed of torch ops that carry
their own autograd and ``torch.compile`` support, so their forward and backward run at those kernels' own speed.
Neither differentiates its LSE; :class:`_LseGradient` adds that gradient (see its docstring).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch

from ._lse import lse_dtype

__all__ = ["flash_attention", "flash_available", "flex_attention"]


# What bramley passes to varlen_attn. An earlier varlen_attn took ``is_causal`` and no window or scale; torch 2.11's
# takes these but not ``enable_gqa`` (seen on an H200, 2026-12-04): there, key/value heads are repeated instead.
_VARLEN_NEEDS = frozenset({"scale", "window_size", "return_aux"})


_parameter_names: dict[Callable[..., object], frozenset[str]] = {}


def _parameters(function: Callable[..., object]) -> frozenset[str]:
    """``function``'s parameter names, cached (a plain dict: torch.compile warns about ``functools.cache`` here)."""
    names = _parameter_names.get(function)
    if names is None:
        names = _parameter_names[function] = frozenset(inspect.signature(function).parameters)
    return names


def flash_available() -> bool:
    """Whether this torch has ``torch.nn.attention.varlen.varlen_attn`` with a window and a scale (torch >= 2.11)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    return _parameters(varlen_attn) >= _VARLEN_NEEDS


# Read torch's signature at import: compiled code then only looks it up (on a cache miss dynamo would trace
# ``inspect.signature``: one more recompile, and perhaps a graph break on some torch).
flash_available()


class _LseGradient(torch.autograd.Function):
    """Passes an LSE through; its backward adds the LSE's own gradient with respect to q and k.

    ``d lse_i / d s_ij = p_ij``, so an LSE gradient ``g`` gives ``dq_i = scale * g_i * (P K)_i`` and
    ``dk_j = scale * (P^T (g * Q))_j``: one more forward of the attention with K as the values (``P K``), and the
    value gradient of that forward for the output gradient ``g * Q`` (``P^T (g * Q)``). Exact for any backend.
    """

    @staticmethod
    def forward(ctx, lse, q, k, attend, scale, per_row):
        ctx.save_for_backward(q, k)
        ctx.attend, ctx.scale, ctx.per_row = attend, scale, per_row
        return lse.view_as(lse)

    @staticmethod
    def backward(ctx, grad_lse):
        q, k = ctx.saved_tensors
        weight = ctx.per_row(grad_lse).float()  # the gradient of each query row, broadcast over dim
        with torch.enable_grad():
            values = k.detach().requires_grad_()
            keys_as_values = ctx.attend(q.detach(), k.detach(), values)
            (dk,) = torch.autograd.grad(keys_as_values, values, (weight * q.float()).to(keys_as_values.dtype))
        dq = ctx.scale * weight * keys_as_values.detach().float()
        return None, dq.to(q.dtype), (dk.float() * ctx.scale).to(k.dtype), None, None, None


def _differentiable_lse(lse, q, k, attend, scale, per_row):
    """``lse`` with the gradient of :class:`_LseGradient`; ``per_row(g)`` lays an LSE-shaped ``g`` out like ``q``."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return _LseGradient.apply(lse.detach(), q, k, attend, scale, per_row)
    return lse.detach()


# ------------------------------------------------------------------------------------------------------ flash
def varlen_attend(
    varlen_attn: Callable[..., object], cu_seqlens: torch.Tensor, max_seqlen: int, scale: float, window: tuple[int, int]
) -> Callable[..., object]:
    """``attend(q, k, v, aux=None)``: ``varlen_attn`` on packed documents, for any of its signatures that take a window
    and a scale; with fewer key/value heads it passes ``enable_gqa`` where that exists, else repeats them (each
    key/value head serves ``heads // kv_heads`` adjacent query heads either way)."""
    takes_gqa = "enable_gqa" in _parameters(varlen_attn)

    def attend(q, k, v, aux=None):
        group = q.shape[1] // k.shape[1]
        extra = {}
        if group > 1 and takes_gqa:
            extra["enable_gqa"] = True
        elif group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return varlen_attn(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, return_aux=aux, scale=scale, window_size=window,
            **extra,
        )  # fmt: skip

    return attend


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int,
    scale: float,
    window_left: int,
    window_right: int,
    return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``varlen_attn`` on validated inputs; dense inputs run as packed documents of equal length."""
    if not flash_available():
        raise RuntimeError(
            "backend='flash' needs torch.nn.attention.varlen.varlen_attn with window_size and scale (torch >= 2.11), "
            f"not in {torch.__version__}"
        )
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise RuntimeError(f"backend='flash' runs on CUDA fp16/bf16 tensors; got {q.dtype} on {q.device}")
    from torch.nn.attention.varlen import AuxRequest, varlen_attn

    return run_varlen(varlen_attn, AuxRequest, q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right,
                      return_lse)  # fmt: skip


def run_varlen(varlen_attn, aux_request, q, k, v, cu_seqlens, max_seqlen, scale, window_left, window_right, return_lse):
    """:func:`flash_attention` past its checks, with ``varlen_attn`` and its ``AuxRequest`` passed in (the tests run it
    on CPU with stand-ins of either signature)."""
    dense = cu_seqlens is None
    if dense:
        batch, seq = q.shape[:2]
        cu_seqlens = torch.arange(batch + 1, dtype=torch.int32, device=q.device) * seq
    packed = [t.flatten(0, 1) if dense else t for t in (q, k, v)]
    attend = varlen_attend(varlen_attn, cu_seqlens, max_seqlen, scale, (window_left, window_right))
    if not return_lse:
        out = attend(*packed)
        return (out.unflatten(0, q.shape[:2]) if dense else out), None
    out, lse = attend(*packed, aux_request(lse=True))
    lse = _differentiable_lse(lse.to(lse_dtype(q)), packed[0], packed[1], attend, scale, lambda g: g.t()[..., None])
    if dense:
        return out.unflatten(0, q.shape[:2]), lse.unflatten(1, q.shape[:2]).transpose(0, 1)
    return out, lse


# ------------------------------------------------------------------------------------------------------ flex
@functools.cache
def _compiled_flex() -> Callable[..., object]:
    from torch.nn.attention.flex_attention import flex_attention as flex

    return torch.compile(flex)


def _mask_mod(cu_seqlens: torch.Tensor | None, total: int, window_left: int, window_right: int):
    """FlexAttention ``mask_mod``: same document (packed) and inside the window; ``None`` when nothing is masked."""
    if cu_seqlens is None and window_left < 0 and window_right < 0:
        return None
    doc = None
    if cu_seqlens is not None:  # document of every token, without reading cu_seqlens on the host
        tokens = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
        doc = torch.searchsorted(cu_seqlens[1:].contiguous(), tokens, right=True)

    def mask_mod(b, h, q_idx, kv_idx):
        visible = q_idx >= 0 if doc is None else doc[q_idx] == doc[kv_idx]
        if window_left >= 0:
            visible = visible & (kv_idx >= q_idx - window_left)
        if window_right >= 0:
            visible = visible & (kv_idx <= q_idx + window_right)
        return visible

    return mask_mod


def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    scale: float,
    window_left: int,
    window_right: int,
    return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FlexAttention on validated inputs: packed documents as one sequence under a document block mask (the mask is
    built per call from ``cu_seqlens`` on the device); dense inputs as a batch under the window mask. Compiled on
    CUDA; eager on CPU, where this torch's FlexAttention has no backward."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as flex_eager

    dense = cu_seqlens is None
    if not q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError("backend='flex' has no backward on CPU in this torch; use backend='sdpa' to train on CPU")
    layout = [t.transpose(1, 2) if dense else t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)]
    length = layout[0].shape[2]
    mask_mod = _mask_mod(cu_seqlens, length, window_left, window_right)
    block_mask = None
    if mask_mod is not None and length > 0:
        block_mask = create_block_mask(mask_mod, None, None, length, length, device=q.device)
    flex = _compiled_flex() if q.is_cuda else flex_eager

    def attend(q_, k_, v_, aux=None):
        return flex(q_, k_, v_, block_mask=block_mask, scale=scale, enable_gqa=q_.shape[1] != k_.shape[1],
                    return_aux=aux)  # fmt: skip

    if length == 0:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        lse = q.new_empty((q.shape[0], q.shape[2], 0) if dense else (q.shape[1], 0), dtype=lse_dtype(q))
        return out, lse if return_lse else None
    if return_lse:
        out, aux = attend(*layout, AuxRequest(lse=True))
        lse = _differentiable_lse(aux.lse.to(lse_dtype(q)), *layout[:2], attend, scale, lambda g: g[..., None])
        lse = lse if dense else lse[0]
    else:
        out, lse = attend(*layout), None
    out = out.transpose(1, 2) if dense else out[0].transpose(0, 1)
    return out.contiguous(), lse
