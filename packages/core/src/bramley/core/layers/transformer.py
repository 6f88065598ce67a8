"""Transformer building blocks on :func:`bramley.core.ops.attention`: attention, rotary embeddings, MLPs, RMSNorm.

Blocks (pre-norm, post-norm, parallel, ...) differ per paper and live in the method packages; these are the parts
they share. Every module works on packed variable-length documents ``(total, dim)`` with ``cu_seqlens`` as well as on
dense batches ``(batch, seq, dim)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import attention

__all__ = ["Attention", "Mlp", "RMSNorm", "RotaryEmbedding", "SwiGLU", "apply_rotary", "rotate_half"]

QK_NORMS = (None, "head", "full")


# --------------------------------------------------------------------------------------------------------- rotary
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dim (the Llama / Hugging Face RoPE convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(..., tokens, heads, head_dim)`` by the angles of ``cos``/``sin`` ``(..., tokens, head_dim)``.

    ``cos``/``sin`` come from :class:`RotaryEmbedding`, broadcast over the heads and are cast to ``x``'s dtype
    (as in Llama); the result is ``x * cos + rotate_half(x) * sin``.
    """
    cos = cos.unsqueeze(-2).to(x.dtype)
    sin = sin.unsqueeze(-2).to(x.dtype)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer), Llama / Hugging Face "rotate_half" convention.

    Channel ``i < head_dim / 2`` is paired with channel ``i + head_dim / 2`` (not with its neighbour, as in Meta's
    original complex-number Llama code); pair ``i`` turns by ``position * base ** (-2i / head_dim)``. Hugging Face
    Llama/Mistral/Qwen checkpoints use this layout (their ``q_proj``/``k_proj`` rows are already permuted for it).

    ``rope(positions)`` returns ``(cos, sin)``, float32, shaped ``positions.shape + (head_dim,)``; pass them to
    :class:`Attention` (``rotary=``) or :func:`apply_rotary`. Nothing is cached or stored: the frequencies are
    recomputed in float32 on every call (a few hundred flops), so ``model.to(torch.bfloat16)`` cannot round them and
    there is no state-dict entry.

    Args:
        head_dim: per-head channels, even.
        base: the frequency base (Llama 1/2: 10000, Llama 3: 500000).
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"RotaryEmbedding needs a positive even head_dim, got {head_dim}")
        if not base > 0:
            raise ValueError(f"base must be positive, got {base}")
        self.head_dim = head_dim
        self.base = float(base)

    def inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        """The ``head_dim / 2`` angular frequencies, float32."""
        exponents = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.int64).float() / self.head_dim
        return 1.0 / (self.base**exponents)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(positions, torch.Tensor) or positions.is_floating_point() or positions.is_complex():
            raise TypeError(f"positions must be an integer tensor, got {getattr(positions, 'dtype', type(positions))}")
        freqs = positions.float().unsqueeze(-1) * self.inv_freq(positions.device)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


# ------------------------------------------------------------------------------------------------------ attention
class Attention(nn.Module):
    """Multi-head self-attention (MHA / GQA / MQA) on packed documents or dense batches.

    ``qkv`` is one fused ``Linear(dim, (num_heads + 2 * num_kv_heads) * head_dim)`` whose output rows are
    ``[q heads | k heads | v heads]``, each head's ``head_dim`` rows contiguous; ``proj`` is the output projection.
    With ``num_kv_heads == num_heads`` this is exactly timm's ``Attention`` (``qkv``, ``proj``), so timm ViT/DeiT
    weights load unchanged. Llama-style checkpoints with separate projections convert by concatenation:
    ``qkv.weight = cat([q_proj.weight, k_proj.weight, v_proj.weight])``, ``proj.weight = o_proj.weight`` (build with
    ``qkv_bias=False, proj_bias=False``; HF Llama's ``q_proj``/``k_proj`` already match this module's "rotate_half"
    RoPE). One fused GEMM instead of three is also the faster choice.

    The attention itself is :func:`bramley.core.ops.attention` (Triton flash attention on CUDA, the exact reference
    elsewhere) with its semantics for ``causal`` and ``window``; scale ``1 / sqrt(head_dim)``.

    Args:
        dim: model width (input and output channels).
        num_heads: query heads; must divide ``dim``.
        num_kv_heads: key/value heads (GQA); must divide ``num_heads``. ``None``: ``num_heads`` (MHA); 1: MQA.
        qkv_bias: bias on ``qkv``.
        proj_bias: bias on ``proj``.
        proj_drop: dropout on the output (train mode).
        qk_norm: normalize queries and keys before RoPE: ``None`` (off), ``"head"`` (over each head's ``head_dim``
            channels, as timm's ``qk_norm=True``) or ``"full"`` (over all heads' channels of q and of k, as OpenLM's
            ``--qk-norm``). The modules are ``q_norm`` / ``k_norm``.
        norm_layer: ``norm_layer(width)`` builds the q/k norms (default ``nn.LayerNorm``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        proj_drop: float = 0.0,
        qk_norm: str | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        if qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {qk_norm!r}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, (num_heads + 2 * num_kv_heads) * self.head_dim, bias=qkv_bias)
        self.qk_norm = qk_norm
        q_width, k_width = (self.head_dim, self.head_dim) if qk_norm == "head" else (dim, num_kv_heads * self.head_dim)
        self.q_norm = norm_layer(q_width) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(k_width) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        causal: bool = False,
        window: int | tuple[int, int] | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend within each document.

        Args:
            x: packed ``(total, dim)`` with ``cu_seqlens``, or dense ``(batch, seq, dim)``.
            cu_seqlens: int32 ``(batch + 1,)`` document offsets of packed ``x``; must be ``None`` for dense ``x``.
            max_seqlen: longest document (packed); computed from ``cu_seqlens`` if omitted (one host sync).
            causal: each token sees only itself and earlier tokens of its document.
            window: local attention, ``w`` or ``(left, right)`` as in :func:`bramley.core.ops.attention`.
            rotary: ``(cos, sin)`` from :class:`RotaryEmbedding` applied to q and k: ``(total, head_dim)`` packed
                (per-document positions, e.g. :func:`bramley.core.packing.position_ids`), ``(seq, head_dim)`` or
                ``(batch, seq, head_dim)`` dense.

        Returns:
            A tensor shaped like ``x``.
        """
        self._check_input(x, cu_seqlens)
        tokens = x.shape[:-1]
        q, k, v = self.qkv(x).split(
            [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim],
            dim=-1,
        )
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim))
        v = v.unflatten(-1, (self.num_kv_heads, self.head_dim))
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            cos, sin = self._check_rotary(rotary, tokens)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        out = attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, causal=causal, window=window)
        return self.proj_drop(self.proj(out.flatten(-2)))

    def _check_input(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None) -> None:
        if x.dim() not in (2, 3) or x.shape[-1] != self.dim:
            raise ValueError(
                f"Attention(dim={self.dim}) expects packed (total, {self.dim}) or dense (batch, seq, {self.dim}) "
                f"inputs, got shape {tuple(x.shape)}"
            )
        if x.dim() == 2 and cu_seqlens is None:
            raise ValueError("packed (total, dim) input needs cu_seqlens; pass (batch, seq, dim) for a dense batch")
        if x.dim() == 3 and cu_seqlens is not None:
            raise ValueError(
                f"cu_seqlens is for packed (total, dim) input, got dense input of shape {tuple(x.shape)} with it"
            )

    def _check_rotary(
        self, rotary: tuple[torch.Tensor, torch.Tensor], tokens: torch.Size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(rotary, (tuple, list)) and len(rotary) == 2):
            raise TypeError("rotary must be a (cos, sin) pair from RotaryEmbedding")
        cos, sin = rotary
        if cos.shape != sin.shape:
            raise ValueError(f"rotary cos and sin shapes differ: {tuple(cos.shape)} vs {tuple(sin.shape)}")
        # packed: exactly (total, head_dim); dense: (seq, head_dim) or (batch, seq, head_dim)
        ok = cos.dim() >= 2 and cos.shape[-1] == self.head_dim and cos.dim() - 1 <= len(tokens)
        ok = ok and tuple(cos.shape[:-1]) == tuple(tokens[len(tokens) - (cos.dim() - 1) :])
        if not ok:
            what = "packed (total, head_dim)" if len(tokens) == 1 else "dense (seq, head_dim) or (batch, seq, head_dim)"
            raise ValueError(
                f"rotary cos/sin must be {what} = {tuple(tokens)} + ({self.head_dim},) here, got {tuple(cos.shape)}"
            )
        return cos, sin

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}"


# ----------------------------------------------------------------------------------------------------------- MLPs
class Mlp(nn.Module):
    """``fc1 -> act -> drop -> fc2 -> drop``, the ViT MLP; children named as timm's ``Mlp`` (``fc1``, ``fc2``).

    Args:
        in_features: input channels.
        hidden_features: hidden channels (ViT: ``4 * in_features``).
        out_features: output channels; ``None``: ``in_features``.
        act_layer: activation class (called without arguments).
        bias: biases on ``fc1`` and ``fc2``.
        drop: dropout after the activation and after ``fc2`` (train mode).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
    ):
        super().__init__()
        out_features = in_features if out_features is None else out_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class SwiGLU(nn.Module):
    """The gated feed-forward of Llama: ``w2(silu(w1(x)) * w3(x))``.

    Names follow Meta's Llama code (``w1`` gate, ``w3`` up, ``w2`` down); Hugging Face calls them ``gate_proj``,
    ``up_proj``, ``down_proj``.

    Args:
        dim: input and output channels.
        hidden_features: hidden channels (Llama: about ``8/3 * dim``, rounded).
        bias: biases on the three projections (Llama: none).
    """

    def __init__(self, dim: int, hidden_features: int, bias: bool = False):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_features, bias=bias)
        self.w3 = nn.Linear(dim, hidden_features, bias=bias)
        self.w2 = nn.Linear(hidden_features, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


# ---------------------------------------------------------------------------------------------------------- norms
class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim with a learnable ``weight`` (init 1), as in Llama.

    The normalization runs in float32 (float64 for float64 inputs) and is cast back to the input dtype before the
    ``weight`` multiply (Llama's order), so bf16/fp16 activations do not lose precision in the mean of squares. Uses
    ``torch.nn.functional.rms_norm`` when torch has it.

    Args:
        dim: channels (last dim).
        eps: added to the mean square.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm(dim={self.dim}) expects (..., {self.dim}) inputs, got shape {tuple(x.shape)}")
        wide = x.to(torch.promote_types(x.dtype, torch.float32))  # float32, or float64 for float64 inputs
        if hasattr(F, "rms_norm"):
            normed = F.rms_norm(wide, (self.dim,), eps=self.eps)
        else:  # torch < 2.4
            normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"
