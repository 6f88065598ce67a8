"""MatViT and MatLM: transformers whose every FFN is nested over its hidden units (MatFormer).

A MatFormer FFN with hidden size ``h`` holds sub-FFNs of the granularities ``h / g`` for the factors ``g`` (default
``8, 4, 2, 1``, as the official ``--matformer_factor=8``): granularity ``k`` is the first ``k`` rows of the
up-projection (and, for SwiGLU, of the gate too) and the first ``k`` columns of the down-projection. Joint training
(:mod:`bramley.matformer.train`) sums the losses of all granularities, so every prefix becomes a usable model.

One forward argument picks the sub-model: ``model(x, ffn=spec)`` where ``spec`` is ``None`` (the full model), one
hidden size for every layer, or one hidden size per layer (Mix'n'Match). :func:`bramley.matformer.nested.extract`
turns a spec into a standalone dense model (core ``Mlp`` / ``SwiGLU`` FFNs, ``granularities=None``) with the copied
weights.

- :class:`MatViT`: timm's ``VisionTransformer`` layout (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
  ``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``), class-token pooling, so a
  timm ViT state dict loads unchanged and the full model equals it. Inputs at another resolution than ``img_size`` get
  the position embedding resampled (bicubic, as timm's ``dynamic_img_size``).
- :class:`MatLM`: a decoder-only LM in the MatFormer-OLMo layout (pre-norm blocks, LayerNorm, GELU MLP with biases,
  multi-query attention optional, tied embeddings), with RoPE from core instead of OLMo's ALiBi (core has no ALiBi);
  SwiGLU FFNs too (``ffn="swiglu"``), nested correctly (the official slice of OLMo's fused SwiGLU projection is not).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.data import ByteTokenizer
from bramley.core.errors import ConfigError
from bramley.core.layers import Attention, DropPath, Mlp, RotaryEmbedding, SwiGLU
from bramley.core.layers.sliceable import SliceableMlp, SliceableSwiGLU
from bramley.core.registry import register_model

__all__ = [
    "DEFAULT_GRANULARITIES",
    "FFNS",
    "MatFormerModel",
    "MatLM",
    "MatViT",
    "check_granularities",
    "count_parameters",
    "lm_config",
    "matlm",
    "matlm_180m",
    "matvit",
    "matvit_s16",
    "matvit_ti16",
]

#: The official factors: ``--matformer_factor=8`` trains the hidden sizes ``h/8, h/4, h/2, h``.
DEFAULT_GRANULARITIES = (8, 4, 2, 1)
FFNS = ("gelu", "swiglu")

#: ``model(x, ffn=...)``: ``None`` (full), one hidden size for all layers, or one per layer.
FFNSpec = int | Sequence[int] | None


def check_granularities(granularities: Sequence[int], hidden: Sequence[int]) -> tuple[int, ...]:
    """Validate the division factors of the FFN hidden sizes; returns them sorted from the smallest sub-model up.

    Each factor must be a positive integer dividing every layer's hidden size; 1 (the full FFN) must be among them.

    Raises:
        ConfigError: naming the factor and the hidden size it does not divide.
    """
    factors = list(granularities)
    if not factors:
        raise ConfigError("granularities must not be empty (the default is 8, 4, 2, 1: hidden/8 .. hidden)")
    if any(not isinstance(g, int) or isinstance(g, bool) or g < 1 for g in factors):
        raise ConfigError(f"granularities must be positive integers (hidden / g), got {factors}")
    if len(set(factors)) != len(factors):
        raise ConfigError(f"granularities must not repeat, got {factors}")
    if 1 not in factors:
        raise ConfigError(f"granularities must include 1 (the full FFN), got {factors}")
    for layer, size in enumerate(hidden):
        bad = [g for g in factors if size % g]
        if bad:
            raise ConfigError(
                f"granularities {factors} do not divide the FFN hidden size {size} (layer {layer}): "
                f"{size} / {bad[0]} = {size / bad[0]:g} is not a whole number of units"
            )
    return tuple(sorted(factors, reverse=True))


def _per_layer(value: int | Sequence[int], depth: int, name: str) -> tuple[int, ...]:
    sizes = (value,) * depth if isinstance(value, int) else tuple(value)
    if len(sizes) != depth:
        raise ConfigError(f"{name} has {len(sizes)} entries for {depth} layers")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise ConfigError(f"{name} must be positive integers, got {list(sizes)}")
    return sizes


def _make_ffn(kind: str, dim: int, hidden: int, nested: bool, bias: bool, drop: float) -> nn.Module:
    if kind == "gelu":
        return SliceableMlp(dim, hidden, bias=bias, drop=drop) if nested else Mlp(dim, hidden, bias=bias, drop=drop)
    if kind == "swiglu":
        if drop:
            raise ConfigError("ffn='swiglu' has no dropout (core's SwiGLU); set drop_rate=0")
        return SliceableSwiGLU(dim, hidden, bias=bias) if nested else SwiGLU(dim, hidden, bias=bias)
    raise ConfigError(f"unknown ffn {kind!r}; choose one of {', '.join(FFNS)}")


# ----------------------------------------------------------------------------------------------------------- blocks
class Block(nn.Module):
    """Pre-norm block ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` with a nested (or dense) FFN; timm's names.

    Args:
        dim: model width.
        num_heads: attention heads.
        mlp_hidden: full FFN hidden size.
        nested: a sliceable FFN (``forward(x, hidden)``) or a dense core ``Mlp`` / ``SwiGLU`` (an extracted model).
        ffn: ``gelu`` (the ViT / OLMo MLP) or ``swiglu``.
        num_kv_heads: key/value heads (1: multi-query attention).
        bias: biases on the attention and FFN projections.
        norm_eps: LayerNorm epsilon.
        drop: dropout in the FFN and after the attention projection (train mode).
        drop_path: stochastic depth of both branches (train mode).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        *,
        nested: bool = True,
        ffn: str = "gelu",
        num_kv_heads: int | None = None,
        bias: bool = True,
        norm_eps: float = 1e-6,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.nested = nested
        self.mlp_hidden = mlp_hidden
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, num_kv_heads=num_kv_heads, qkv_bias=bias, proj_bias=bias, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = _make_ffn(ffn, dim, mlp_hidden, nested, bias, drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        hidden: int | None = None,
        *,
        causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), causal=causal, rotary=rotary))
        h = self.norm2(x)
        return x + self.drop_path2(self.mlp(h, hidden) if self.nested else self.mlp(h))


# ------------------------------------------------------------------------------------------------------------ models
class MatFormerModel(nn.Module):
    """What MatViT and MatLM share: per-layer FFN sizes, the granularities, and resolving a sub-model spec.

    Subclasses set ``blocks`` (an ``nn.ModuleList`` of :class:`Block`), ``mlp_hidden`` (per-layer full sizes),
    ``granularities`` (factors, largest first, or ``None`` for a dense model) and ``config`` (the constructor's
    arguments, from which :func:`~bramley.matformer.nested.extract` builds the dense sub-model).
    """

    blocks: nn.ModuleList
    mlp_hidden: tuple[int, ...]
    granularities: tuple[int, ...] | None
    config: dict[str, Any]

    @property
    def nested(self) -> bool:
        """Whether the FFNs are nested (``False`` for a dense, e.g. extracted, model)."""
        return self.granularities is not None

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def granularity_sizes(self) -> list[tuple[int, ...]]:
        """The per-layer hidden sizes of each trained granularity, smallest first (``[(h/8, ...), ..., (h, ...)]``)."""
        factors = self.granularities or (1,)
        return [tuple(h // g for h in self.mlp_hidden) for g in factors]

    def resolve_ffn(self, spec: FFNSpec) -> tuple[int, ...]:
        """Per-layer hidden sizes of a sub-model ``spec`` (see the module docstring), checked.

        Raises:
            ConfigError: a spec of the wrong length, a size outside ``1 .. hidden``, or a smaller size asked of a
                dense (not nested) model.
        """
        if spec is None:
            return self.mlp_hidden
        name = getattr(self, "model_config", {}).get("name", type(self).__name__)
        if isinstance(spec, int) and not isinstance(spec, bool):
            sizes = (spec,) * self.depth
        else:
            sizes = tuple(spec)
            if len(sizes) != self.depth:
                raise ConfigError(
                    f"a Mix'n'Match spec needs one FFN size per layer: {name} has {self.depth} layers, the spec has "
                    f"{len(sizes)} ({list(sizes)})"
                )
        for layer, (size, full) in enumerate(zip(sizes, self.mlp_hidden)):
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= full:
                raise ConfigError(f"FFN size {size!r} of layer {layer} is outside 1 .. {full} (its full hidden size)")
        if not self.nested and sizes != self.mlp_hidden:
            raise ConfigError(
                f"{name} is not nested (granularities=None: a dense or extracted model), so it runs only its own FFN "
                f"sizes {list(self.mlp_hidden)}, not {list(sizes)}"
            )
        return sizes

    def _run_blocks(self, x: torch.Tensor, ffn: FFNSpec, **kwargs: Any) -> torch.Tensor:
        sizes = self.resolve_ffn(ffn)
        for block, size, full in zip(self.blocks, sizes, self.mlp_hidden):
            x = block(x, None if size == full else size, **kwargs)
        return x


class MatViT(MatFormerModel):
    """Vision transformer with nested FFNs (MatViT), in timm's ``VisionTransformer`` layout.

    Args:
        img_size: native input resolution (the position embedding's grid; other sizes are resampled to).
        patch_size: square patch size.
        in_chans: input channels.
        num_classes: classifier outputs (0: the pooled features).
        embed_dim: width.
        depth: blocks.
        num_heads: attention heads.
        mlp_hidden: FFN hidden size, one for all layers or one per layer.
        granularities: nesting factors (hidden / g), ``None`` for a dense model.
        ffn: ``gelu`` (ViT) or ``swiglu``.
        drop_rate: dropout (FFN, attention projection).
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_hidden: int | Sequence[int] = 3072,
        granularities: Sequence[int] | None = DEFAULT_GRANULARITIES,
        ffn: str = "gelu",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.config = dict(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_hidden=mlp_hidden if isinstance(mlp_hidden, int) else list(mlp_hidden),
            granularities=None if granularities is None else list(granularities),
            ffn=ffn,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
        self.mlp_hidden = _per_layer(mlp_hidden, depth, "mlp_hidden")
        self.granularities = None if granularities is None else check_granularities(granularities, self.mlp_hidden)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.embed_dim, self.num_features = num_classes, embed_dim, embed_dim
        self.grid = img_size // patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid**2 + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        nested = self.granularities is not None
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, h, nested=nested, ffn=ffn, drop=drop_rate, drop_path=r)
            for h, r in zip(self.mlp_hidden, rates)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's ViT init: truncated normal (std 0.02) for linears and embeddings, zero biases, small cls token."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pos = self.pos_embed
        if grid != (self.grid, self.grid):
            prefix, table = pos[:, :1], pos[:, 1:].reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
            table = F.interpolate(table, size=grid, mode="bicubic", antialias=True, align_corners=False)
            pos = torch.cat([prefix, table.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
        return self.pos_drop(x + pos)

    def forward_features(self, x: torch.Tensor, ffn: FFNSpec = None) -> torch.Tensor:
        """Normed tokens ``(batch, 1 + patches, embed_dim)`` of the sub-model ``ffn``."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"MatViT expects images (batch, {self.in_chans}, H, W), got shape {tuple(x.shape)}")
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of patch_size {self.patch_size}")
        x = self.patch_embed.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.norm(self._run_blocks(self._pos_embed(x, grid), ffn))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Class-token pooling and the classifier."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor, ffn: FFNSpec = None) -> torch.Tensor:
        """Logits of the sub-model ``ffn`` (``None``: the full model)."""
        return self.forward_head(self.forward_features(x, ffn))

    def tokens_per_sample(self, image_size: int | None = None) -> int:
        """Tokens one image becomes (patches + class token) at ``image_size`` (default the native size)."""
        grid = (image_size or self.img_size) // self.patch_size
        return grid * grid + 1


class MatLM(MatFormerModel):
    """Decoder-only language model with nested FFNs (MatLM), the MatFormer-OLMo layout.

    Args:
        vocab_size: vocabulary (default: core's byte tokenizer, 257 ids).
        dim: width.
        depth: blocks.
        num_heads: query heads (``dim / num_heads`` even, for RoPE).
        num_kv_heads: key/value heads (1: multi-query attention, as the official configs).
        mlp_hidden: FFN hidden size, one for all layers or one per layer (official: ``8 * dim``).
        granularities: nesting factors (hidden / g), ``None`` for a dense model.
        ffn: ``gelu`` (official) or ``swiglu``.
        bias: biases on the projections (official: yes).
        max_seq_len: longest input.
        rope_base: RoPE base.
        tie_embeddings: the output projection is the embedding matrix (OLMo's).
        drop_rate: dropout after the embedding, in the FFN and after the attention projection.
    """

    def __init__(
        self,
        vocab_size: int = ByteTokenizer.vocab_size,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        mlp_hidden: int | Sequence[int] = 512,
        granularities: Sequence[int] | None = DEFAULT_GRANULARITIES,
        ffn: str = "gelu",
        bias: bool = True,
        max_seq_len: int = 1024,
        rope_base: float = 10000.0,
        tie_embeddings: bool = True,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ConfigError(f"dim ({dim}) / num_heads ({num_heads}) must be an even integer head size for RoPE")
        self.config = dict(
            vocab_size=vocab_size,
            dim=dim,
            depth=depth,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            mlp_hidden=mlp_hidden if isinstance(mlp_hidden, int) else list(mlp_hidden),
            granularities=None if granularities is None else list(granularities),
            ffn=ffn,
            bias=bias,
            max_seq_len=max_seq_len,
            rope_base=rope_base,
            tie_embeddings=tie_embeddings,
            drop_rate=drop_rate,
        )
        self.mlp_hidden = _per_layer(mlp_hidden, depth, "mlp_hidden")
        self.granularities = None if granularities is None else check_granularities(granularities, self.mlp_hidden)
        self.vocab_size, self.dim, self.max_seq_len, self.tie_embeddings = vocab_size, dim, max_seq_len, tie_embeddings
        self.embed = nn.Embedding(vocab_size, dim)
        self.embed_drop = nn.Dropout(drop_rate)
        self.rope = RotaryEmbedding(dim // num_heads, base=rope_base)
        nested = self.granularities is not None
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, h, nested=nested, ffn=ffn, num_kv_heads=num_kv_heads, bias=bias, norm_eps=1e-5,
                  drop=drop_rate)
            for h in self.mlp_hidden
        )  # fmt: skip
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """OLMo's init: normal with std 0.02 for every weight, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, ffn: FFNSpec = None) -> torch.Tensor:
        """Next-token logits ``(batch, seq, vocab)`` of the sub-model ``ffn`` for ``(batch, seq)`` token ids."""
        if tokens.dtype not in (torch.int64, torch.int32) or tokens.dim() != 2:
            raise ValueError(f"tokens must be int64 (batch, seq), got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] > self.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds max_seq_len={self.max_seq_len}")
        rotary = self.rope(torch.arange(tokens.shape[1], device=tokens.device))
        x = self._run_blocks(self.embed_drop(self.embed(tokens)), ffn, causal=True, rotary=rotary)
        return self.head(self.norm(x))

    def tokens_per_sample(self, seq_len: int | None = None) -> int:
        """Tokens of one sample (the sequence length; default ``max_seq_len``)."""
        return seq_len or self.max_seq_len


# ---------------------------------------------------------------------------------------------------------- configs
# MatViT: the scenic MatViT config's ViT shapes (B/16: width 768, 12 blocks, 12 heads, MLP 3072 nested
# 384/768/1536/3072). B/16 and L/16 exceed the shared model suite's budget, so they are built from `matvit` with the
# recipe's kwargs (recipes/matvit_b16_imagenet.yaml); Ti/16 and S/16 are registered by name.
VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "matvit": dict(img_size=16, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_hidden=256, num_classes=10),
    "matvit_ti16": dict(embed_dim=192, depth=12, num_heads=3, mlp_hidden=768),
    "matvit_s16": dict(embed_dim=384, depth=12, num_heads=6, mlp_hidden=1536),
}
# MatLM: matformer-example-commands (RAIVNLab/MatFormer-OLMo): 8 blocks, 16 heads, d_model 512 / 1024 / 2048 for the
# runs named 180M / 460M / 1.3B, on configs/pile-tiny.yaml (mlp_ratio 8, GELU, biases, multi-query attention,
# context 2048). The byte tokenizer replaces GPT-NeoX's (no downloads), so the embedding is smaller than theirs.
LM_CONFIGS: dict[str, dict[str, Any]] = {
    "matlm": dict(dim=128, depth=4, num_heads=4, mlp_hidden=512, max_seq_len=1024),
    "matlm_180m": dict(dim=512, depth=8, num_heads=16, num_kv_heads=1, mlp_hidden=4096, max_seq_len=2048),
    "matlm_460m": dict(dim=1024, depth=8, num_heads=16, num_kv_heads=1, mlp_hidden=8192, max_seq_len=2048),
    "matlm_1300m": dict(dim=2048, depth=8, num_heads=16, num_kv_heads=1, mlp_hidden=16384, max_seq_len=2048),
}


def _example_tokens() -> tuple[tuple, dict]:
    """Two rows of 12 byte tokens."""
    return (torch.randint(0, ByteTokenizer.vocab_size, (2, 12)),), {}


def _build_vit(name: str, **kwargs: Any) -> MatViT:
    return MatViT(**{**VIT_CONFIGS[name], **kwargs})


def _build_lm(name: str, **kwargs: Any) -> MatLM:
    return MatLM(**{**LM_CONFIGS[name], **kwargs})


# -------------------------------------------------------------------------------------------------------- factories
@register_model(input_size=(3, 16, 16), tags=("image-classification", "matformer"))
def matvit(**kwargs: Any) -> MatViT:
    """MatViT of any shape (defaults: 16 px, patch 4, width 64, 4 blocks, MLP 256 nested 32..256, 10 classes)."""
    return _build_vit("matvit", **kwargs)


@register_model(input_size=224, tags=("image-classification", "matformer"))
def matvit_ti16(**kwargs: Any) -> MatViT:
    """MatViT-Ti/16 (width 192, 12 blocks, 3 heads, MLP 768 nested 96/192/384/768)."""
    return _build_vit("matvit_ti16", **kwargs)


@register_model(input_size=224, tags=("image-classification", "matformer"))
def matvit_s16(**kwargs: Any) -> MatViT:
    """MatViT-S/16 (width 384, 12 blocks, 6 heads, MLP 1536 nested 192/384/768/1536)."""
    return _build_vit("matvit_s16", **kwargs)


@register_model(example_inputs=_example_tokens, tags=("language-model", "matformer"))
def matlm(**kwargs: Any) -> MatLM:
    """MatLM of any shape (defaults: byte vocabulary, width 128, 4 blocks, 4 heads, MLP 512 nested 64..512)."""
    return _build_lm("matlm", **kwargs)


@register_model(example_inputs=_example_tokens, tags=("language-model", "matformer"))
def matlm_180m(**kwargs: Any) -> MatLM:
    """The official MatFormer-OLMo-180M shape (width 512, 8 blocks, 16 heads, MQA, MLP 4096) on byte tokens."""
    return _build_lm("matlm_180m", **kwargs)


def lm_config(name: str) -> dict[str, Any]:
    """The keyword arguments of an official MatLM shape (``matlm_180m``, ``matlm_460m``, ``matlm_1300m``)."""
    if name not in LM_CONFIGS:
        raise ConfigError(f"unknown MatLM shape {name!r}; known: {', '.join(LM_CONFIGS)}")
    return dict(LM_CONFIGS[name])


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())
