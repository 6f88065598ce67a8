"""A small GPT in the OpenLM layout, trained on dense per-bucket batches or on packed document-masked rows.

The architecture follows OpenLM (the code base of the Dataset Decomposition paper): token embedding, pre-norm blocks
``x + attn(norm(x))`` / ``x + swiglu(norm(x))``, a final norm and an untied output projection, no biases, rotary
position embeddings with a configurable base (the paper's OpenLM patch raises it from 10,000 to 100,000), gain-only
LayerNorm (OpenLM's ``gain_only_lp_layer_norm``) or RMSNorm, and the SwiGLU width rule
``256 * ceil(8 * dim / 3 / 256)``.

Two forward modes, one set of weights:

- **dense causal** ``model(tokens)`` with ``tokens`` ``(batch, seq)``: a Dataset Decomposition batch (every row is one
  chunk of one document, all rows the same bucket length) or a concat-and-chunk row without document masking.
  Positions run ``0 .. seq - 1`` in every row.
- **packed, document-masked** ``model(tokens, cu_seqlens=...)`` with ``tokens`` ``(total,)``: documents attend only
  to themselves (varlen attention from :mod:`bramley.core.ops`). RoPE positions restart at 0 in every document, so a
  document sees exactly what it would see alone; this is also what a Dataset Decomposition chunk sees (each chunk
  starts at position 0), which keeps the masked baseline and DD comparable.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn

from bramley.core.data import ByteTokenizer
from bramley.core.layers import Attention, RMSNorm, RotaryEmbedding, SwiGLU
from bramley.core.packing import position_ids
from bramley.core.registry import register_model

__all__ = ["DDGPT", "Block", "dd_gpt_1b", "dd_gpt_410m", "dd_gpt_tiny", "openlm_swiglu_hidden"]

NORMS = ("layernorm", "rmsnorm")


def openlm_swiglu_hidden(dim: int) -> int:
    """OpenLM's (and lit-llama's) SwiGLU width: ``8/3 * dim`` rounded up to a multiple of 256."""
    return 256 * ((int(2 * 4 * dim / 3) + 256 - 1) // 256)


def _norm_layer(kind: str, dim: int, eps: float) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=False)  # gain only, as OpenLM's gain_only_lp_layer_norm
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


def _trunc_normal(weight: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(weight, std=std, a=-3 * std, b=3 * std)


# ----------------------------------------------------------------------------------------------------------- blocks
class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a SwiGLU MLP, each on a residual branch.

    Args:
        dim: model width.
        num_heads: attention heads.
        mlp_hidden: SwiGLU hidden width.
        norm: ``layernorm`` (gain only) or ``rmsnorm``.
        norm_eps: epsilon of the norms.
        qk_norm: normalize q and k over all heads (the block's norm type) before RoPE, as OpenLM's ``--qk-norm``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        qk_norm: bool = False,
    ):
        super().__init__()
        self.norm1 = _norm_layer(norm, dim, norm_eps)
        self.attn = Attention(
            dim,
            num_heads,
            qkv_bias=False,
            proj_bias=False,
            qk_norm="full" if qk_norm else None,
            norm_layer=partial(_norm_layer, norm, eps=norm_eps),
        )
        self.norm2 = _norm_layer(norm, dim, norm_eps)
        self.mlp = SwiGLU(dim, mlp_hidden, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, causal=True, rotary=rotary)
        return x + self.mlp(self.norm2(x))


# ------------------------------------------------------------------------------------------------------------ model
class DDGPT(nn.Module):
    """Decoder-only language model (OpenLM layout) for dense bucket batches and packed document-masked batches.

    Args:
        vocab_size: vocabulary (default: the byte tokenizer's 257 ids, 256 bytes + end-of-text).
        dim: model width.
        depth: number of blocks.
        num_heads: attention heads (``dim / num_heads`` must be even for RoPE).
        max_seq_len: longest sequence (document or row) the model accepts; longer inputs raise.
        rope_base: RoPE frequency base.
        mlp_hidden: SwiGLU width; ``None``: :func:`openlm_swiglu_hidden`.
        norm: ``layernorm`` (gain only, OpenLM) or ``rmsnorm``.
        norm_eps: norm epsilon (OpenLM: 1e-5).
        tie_embeddings: share the embedding and output matrices (OpenLM's paper configs: untied).
        qk_norm: q/k normalization before RoPE in every block (the official DD runs pass OpenLM's ``--qk-norm``;
            the recipes set it, the tiny reproduction model does not).
    """

    def __init__(
        self,
        vocab_size: int = ByteTokenizer.vocab_size,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        max_seq_len: int = 8192,
        rope_base: float = 10000.0,
        mlp_hidden: int | None = None,
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        tie_embeddings: bool = False,
        qk_norm: bool = False,
    ):
        super().__init__()
        if min(vocab_size, dim, depth, num_heads, max_seq_len) < 1:
            raise ValueError(
                f"vocab_size, dim, depth, num_heads and max_seq_len must be >= 1, got {vocab_size}, {dim}, {depth}, "
                f"{num_heads}, {max_seq_len}"
            )
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim ({dim}) / num_heads ({num_heads}) must be an even integer head size for RoPE")
        self.vocab_size = vocab_size
        self.dim = dim
        self.depth = depth
        self.num_heads = num_heads
        self.max_seq_len = max_seq_len
        self.mlp_hidden = openlm_swiglu_hidden(dim) if mlp_hidden is None else mlp_hidden
        self.tie_embeddings = tie_embeddings
        self.qk_norm = qk_norm
        self.embed = nn.Embedding(vocab_size, dim)
        self.rope = RotaryEmbedding(dim // num_heads, base=rope_base)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, self.mlp_hidden, norm, norm_eps, qk_norm) for _ in range(depth)
        )
        self.norm = _norm_layer(norm, dim, norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OpenLM's init: truncated normal with std ``1/sqrt(fan_in)``, output projections also scaled by depth."""
        std = 1.0 / math.sqrt(self.dim)
        _trunc_normal(self.embed.weight, std)
        if not self.tie_embeddings:
            _trunc_normal(self.head.weight, std)
        for layer_id, block in enumerate(self.blocks):
            depth_scale = 1.0 / math.sqrt(2 * (layer_id + 1))
            _trunc_normal(block.attn.qkv.weight, std)
            _trunc_normal(block.attn.proj.weight, std * depth_scale)
            _trunc_normal(block.mlp.w1.weight, std)
            _trunc_normal(block.mlp.w3.weight, std)
            _trunc_normal(block.mlp.w2.weight, depth_scale / math.sqrt(self.mlp_hidden))

    def _check_tokens(self, tokens: torch.Tensor, packed: bool) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be an int64/int32 tensor, got {getattr(tokens, 'dtype', type(tokens))}")
        if packed and tokens.dim() != 1:
            raise ValueError(f"packed tokens (with cu_seqlens) must be 1-D (total,), got shape {tuple(tokens.shape)}")
        if not packed and tokens.dim() != 2:
            raise ValueError(f"dense tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        if not packed and tokens.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len={self.max_seq_len}")

    def forward_features(
        self,
        tokens: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states, ``(batch, seq, dim)`` dense or ``(total, dim)`` packed."""
        packed = cu_seqlens is not None
        self._check_tokens(tokens, packed)
        if packed:
            if positions is None:
                positions = position_ids(cu_seqlens)
            if max_seqlen is None:
                max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if cu_seqlens.numel() > 1 else 0
            if max_seqlen > self.max_seq_len:
                raise ValueError(f"document length {max_seqlen} exceeds max_seq_len={self.max_seq_len}")
        elif positions is None:
            positions = torch.arange(tokens.shape[1], device=tokens.device)
        rotary = self.rope(positions)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, rotary, cu_seqlens, max_seqlen)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over the vocabulary from :meth:`forward_features`' output."""
        return self.head(x)

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits.

        Args:
            tokens: dense ``(batch, seq)`` (causal over each row) or packed ``(total,)`` with ``cu_seqlens``.
            cu_seqlens: int32 document offsets of packed ``tokens``: causal attention within each document only.
            max_seqlen: longest packed document (computed when omitted).
            positions: RoPE positions; default ``0 .. seq - 1`` per row (dense) or per document (packed).

        Returns:
            Logits ``(batch, seq, vocab)`` or ``(total, vocab)``.
        """
        x = self.forward_features(tokens, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, positions=positions)
        return self.forward_head(x)

    def num_parameters(self, embedding: bool = True) -> int:
        """Parameter count; without the input embedding table when ``embedding=False`` (the usual "N" of 6ND)."""
        n = sum(p.numel() for p in self.parameters())
        return n if embedding or self.tie_embeddings else n - self.embed.weight.numel()


# ---------------------------------------------------------------------------------------------------------- configs
# OpenLM model configs as used by the paper (open_lm/model_configs/open_lm_{410m,1b}.json with seq_len raised to 8192
# by apple/ml-dataset-decomposition's open_lm.patch); RoPE base 100,000 from the same patch.
CONFIGS: dict[str, dict] = {
    "dd_gpt_tiny": dict(dim=128, depth=4, num_heads=4, max_seq_len=1024, rope_base=10000.0),
    "dd_gpt_410m": dict(dim=1024, depth=24, num_heads=16, max_seq_len=8192, rope_base=100000.0),
    "dd_gpt_1b": dict(dim=2048, depth=24, num_heads=16, max_seq_len=8192, rope_base=100000.0),
}


def _example_tokens() -> tuple[tuple, dict]:
    """Two rows of 12 byte tokens (a dense bucket batch)."""
    return (torch.randint(0, ByteTokenizer.vocab_size, (2, 12)),), {}


def _build(name: str, **kwargs) -> DDGPT:
    return DDGPT(**{**CONFIGS[name], **kwargs})


# -------------------------------------------------------------------------------------------------------- factories
@register_model(example_inputs=_example_tokens, tags=("language-model", "dataset-decomposition"))
def dd_gpt_tiny(**kwargs) -> DDGPT:
    """Tiny GPT (dim 128, 4 blocks, 4 heads, context 1024) for the mini reproduction and tests."""
    return _build("dd_gpt_tiny", **kwargs)


@register_model(example_inputs=_example_tokens, tags=("language-model", "dataset-decomposition"))
def dd_gpt_410m(**kwargs) -> DDGPT:
    """OpenLM-410M shape (dim 1024, 24 blocks, 16 heads, context 8192, RoPE base 1e5); pass vocab_size=50432."""
    return _build("dd_gpt_410m", **kwargs)


@register_model(example_inputs=_example_tokens, tags=("language-model", "dataset-decomposition"))
def dd_gpt_1b(**kwargs) -> DDGPT:
    """OpenLM-1B shape (dim 2048, 24 blocks, 16 heads, context 8192, RoPE base 1e5); pass vocab_size=50432."""
    return _build("dd_gpt_1b", **kwargs)
