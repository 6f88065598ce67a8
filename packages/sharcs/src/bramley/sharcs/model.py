"""SHARCS models: a transformer encoder whose later layers run at the width a router picks per sample.

The first ``router_layer`` layers run at full width. A router, ``Linear(dim, 1024) - ReLU - Linear(1024, W)``, reads
the mean of their output tokens (padding excluded) and scores the ``W`` widths; the remaining layers are
width-adaptive: at width ``w`` they use the first ``w * dim`` channels of the residual stream, the first ``w * heads``
heads and the first ``w * mlp_hidden`` FFN units, and each has its own LayerNorm per width. The classifier reads the
first ``w * dim`` features.

- :class:`SharcsModel` is the routing logic every encoder shares: training at given widths
  (:meth:`~SharcsModel.forward_train`), batched routed inference grouped by predicted width
  (:meth:`~SharcsModel.predict`; no batch-size-1 limit), the confidence knob (:meth:`~SharcsModel.choose`) and
  FLOPs per width (:meth:`~SharcsModel.flops_per_width`, router included).
- :class:`SharcsViT` is bramley's small ViT (patches as tokens) on core's sliceable layers; with width 1 everywhere
  it is timm's ``VisionTransformer`` (same parameter names, :func:`load_timm_vit_state_dict`).
- :class:`SharcsTimmViT` wraps a timm ViT built by name (random init): its own ``nn.Linear`` layers run sliced
  (:func:`bramley.core.layers.sliceable.slice_linear`); only its LayerNorms after the router become one norm per
  width (:class:`~bramley.core.layers.sliceable.WidthLayerNorm`, initialised from the original).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bramley.core.errors import ConfigError
from bramley.core.layers import Attention, Mlp
from bramley.core.layers.sliceable import (
    SliceableAttention,
    SliceableMlp,
    WidthLayerNorm,
    check_widths,
    slice_linear,
    width_channels,
)
from bramley.core.registry import register_model

__all__ = [
    "DEFAULT_WIDTHS",
    "Router",
    "SharcsModel",
    "SharcsTimmViT",
    "SharcsViT",
    "load_timm_vit_state_dict",
    "sharcs_timm_vit",
    "sharcs_vit_digits",
    "sharcs_vit_tiny",
]

DEFAULT_WIDTHS = (0.25, 0.5, 1.0)


def check_sharcs_widths(widths: Sequence[float], num_heads: int, dim: int) -> tuple[float, ...]:
    """Core's width checks (ascending, in (0, 1], whole heads) plus SHARCS' own: full width (1.0) is one of them."""
    widths = check_widths(widths, num_heads=num_heads, dim=dim)
    if widths[-1] != 1.0:
        raise ConfigError(f"widths must include full width 1.0 (samples in no bucket run there), got {list(widths)}")
    return widths


def check_router_layer(router_layer: int, depth: int) -> int:
    """The router sits after layer ``router_layer`` (1-based): at least one layer before it and one after it."""
    if isinstance(router_layer, bool) or not isinstance(router_layer, int) or not 1 <= router_layer < depth:
        raise ConfigError(
            f"router_layer must be an integer in [1, {depth - 1}] (the router sits after that layer of the {depth}, "
            f"with at least one width-adaptive layer after it), got {router_layer!r}"
        )
    return router_layer


# ---------------------------------------------------------------------------------------------------------- router
class Router(nn.Module):
    """The SHARCS router: the mean of the non-padding tokens -> ``Linear(dim, hidden) - ReLU - Linear(hidden, W)``.

    Its ``W`` outputs are independent logits (trained with binary cross-entropy on the multi-hot bucket label).
    The official code averages padding tokens too in training but not in evaluation; here the mask is always used.
    """

    def __init__(self, dim: int, num_widths: int, hidden: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, num_widths)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``tokens`` ``(B, N, dim)``, ``mask`` ``(B, N)`` true on real tokens (``None``: all real) -> ``(B, W)``."""
        if mask is None:
            pooled = tokens.mean(1)
        else:
            weights = mask.to(tokens.dtype).unsqueeze(-1)
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.fc2(self.act(self.fc1(pooled)))


# ------------------------------------------------------------------------------------------------------ the method
class SharcsModel(nn.Module):
    """Routing shared by every SHARCS encoder. A subclass defines :meth:`stem` (input -> the full-width tokens after
    the router layer, and their padding mask) and :meth:`tail` (those tokens -> logits at one width), and holds
    ``widths``, ``router`` and ``num_classes``.

    ``model(x)`` in eval mode routes (:meth:`predict`'s logits); ``model(x, width=w)`` runs every sample at width
    ``w``; ``model(x, index=i)`` is :meth:`forward_train` (through a DDP wrapper); in train mode ``model(x)`` returns
    ``{"logits": (W, B, classes) at every width, "router_logits": (B, W)}`` (what a loss over every sub-network
    needs; SHARCS' own loss uses :meth:`forward_train`).
    """

    widths: tuple[float, ...]
    num_classes: int
    router: Router

    def stem(self, x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def tail(self, tokens: torch.Tensor, width: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def width_index(self, width: float) -> int:
        """Position of ``width`` in ``widths`` (a clear error for any other value)."""
        for i, w in enumerate(self.widths):
            if math.isclose(w, float(width)):
                return i
        raise ConfigError(f"width {width} is not one of this model's widths {list(self.widths)}")

    def choose(self, router_logits: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """The width index per sample. ``threshold=None``: the router's argmax (the paper). A threshold ``t`` in
        (0, 1) is the confidence knob: the narrowest width whose sigmoid score is at least ``t``, full width if none;
        a higher ``t`` sends more samples wide (more accuracy, more FLOPs), a lower one narrow."""
        if threshold is None:
            return router_logits.argmax(-1)
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"the routing threshold must be in (0, 1), got {threshold}")
        confident = torch.sigmoid(router_logits) >= threshold
        confident[:, -1] = True
        return confident.int().argmax(-1)  # the first (narrowest) confident width

    def _grouped_tail(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, index: torch.Tensor, skip_empty: bool = True
    ) -> torch.Tensor:
        """Run each sample's tail at ``widths[index[sample]]``, one batch per width, back in the input order."""
        out = tokens.new_zeros(tokens.shape[0], self.num_classes)
        tracing = torch.jit.is_tracing()
        for i, width in enumerate(self.widths):
            rows = (index == i).nonzero().squeeze(1)
            if skip_empty and not tracing and rows.numel() == 0:
                continue
            part = self.tail(tokens[rows], width, None if mask is None else mask[rows])
            out = out.index_copy(0, rows, part.to(out.dtype))
        return out

    def forward_train(self, x: Any, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: logits of each sample at ``widths[index[sample]]`` and the router logits ``(B, W)``."""
        tokens, mask = self.stem(x)
        return self._grouped_tail(tokens, mask, index), self.router(tokens, mask)

    def predict(self, x: Any, threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched routed inference: ``(logits, width index per sample)``. The batch is split by predicted width and
        each group runs once at its width (a sample's result does not depend on the rest of the batch)."""
        tokens, mask = self.stem(x)
        index = self.choose(self.router(tokens, mask), threshold)
        return self._grouped_tail(tokens, mask, index), index

    def forward_width(self, x: Any, width: float) -> torch.Tensor:
        """Every sample at ``width`` (the router is not run): the fixed-width sub-network."""
        self.width_index(width)
        tokens, mask = self.stem(x)
        return self.tail(tokens, width, mask)

    def forward(
        self, x: Any, width: float | None = None, threshold: float | None = None, index: torch.Tensor | None = None
    ) -> Any:
        if index is not None:
            return self.forward_train(x, index)
        if width is not None:
            return self.forward_width(x, width)
        if not self.training:
            return self.predict(x, threshold)[0]
        tokens, mask = self.stem(x)
        logits = torch.stack([self.tail(tokens, w, mask) for w in self.widths])
        return {"logits": logits, "router_logits": self.router(tokens, mask)}

    @torch.no_grad()
    def flops_per_width(self, x: Any) -> dict[str, Any]:
        """Forward FLOPs of one sample (``x`` holds exactly one) counted by ``torch.utils.flop_counter``.

        Returns ``{"router": router FLOPs, "fixed": [stem + tail at each width], "routed": [stem + router + tail at
        each width]}``: ``fixed`` is the cost of a width-``w`` network without router, ``routed`` what SHARCS pays
        for a sample routed to ``w``.
        """
        counter = FlopCounterMode(display=False)
        with counter:
            tokens, mask = self.stem(x)
        if tokens.shape[0] != 1:
            raise ValueError(f"flops_per_width counts one sample; got a batch of {tokens.shape[0]}")
        stem = counter.get_total_flops()
        with counter:
            self.router(tokens, mask)
        router = counter.get_total_flops()
        fixed = []
        for w in self.widths:
            with counter:
                self.tail(tokens, w, mask)
            fixed.append(stem + counter.get_total_flops())
        return {"router": router, "fixed": fixed, "routed": [f + router for f in fixed]}


# --------------------------------------------------------------------------------------------- bramley's own ViT
class Block(nn.Module):
    """A full-width pre-norm ViT block (timm's ``Block`` names: ``norm1``, ``attn``, ``norm2``, ``mlp``)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SliceableBlock(nn.Module):
    """A width-adaptive pre-norm ViT block on core's sliceable layers (one LayerNorm per width)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, widths: Sequence[float], qkv_bias: bool = True):
        super().__init__()
        self.norm1 = WidthLayerNorm(dim, widths, eps=1e-6)
        self.attn = SliceableAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = WidthLayerNorm(dim, widths, eps=1e-6)
        self.mlp = SliceableMlp(dim, mlp_hidden)
        self.heads = {w: width_channels(num_heads, w) for w in widths}
        self.hidden = {w: width_channels(mlp_hidden, w) for w in widths}

    def forward(self, x: torch.Tensor, width: float) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, width), self.heads[width])
        return x + self.mlp(self.norm2(x, width), self.hidden[width])


class SharcsViT(SharcsModel):
    """A ViT with a SHARCS router: class token + patch tokens, pre-norm blocks, class-token classifier.

    Args:
        img_size: input side (square).
        patch_size: patch side; ``img_size`` must be a multiple.
        in_chans: input channels.
        num_classes: classes.
        embed_dim: full width.
        depth: blocks.
        num_heads: heads at full width; every width must give whole heads.
        mlp_ratio: FFN hidden units / ``embed_dim``.
        widths: the sub-network widths, ascending, ending with 1.0.
        router_layer: the router sits after this block (1-based); the blocks after it are width-adaptive.
        router_hidden: the router's hidden units (the paper: 1024).
    """

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 10,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        widths: Sequence[float] = DEFAULT_WIDTHS,
        router_layer: int = 1,
        router_hidden: int = 1024,
    ):
        super().__init__()
        if img_size % patch_size:
            raise ConfigError(f"img_size ({img_size}) must be a multiple of patch_size ({patch_size})")
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.widths = check_sharcs_widths(widths, num_heads, embed_dim)
        self.router_layer = check_router_layer(router_layer, depth)
        mlp_hidden = int(embed_dim * mlp_ratio)
        for w in self.widths:
            width_channels(mlp_hidden, w)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden)
            if i < router_layer
            else SliceableBlock(embed_dim, num_heads, mlp_hidden, self.widths)
            for i in range(depth)
        )
        self.norm = WidthLayerNorm(embed_dim, self.widths, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self.router = Router(embed_dim, len(self.widths), router_hidden)
        self.channels = {w: width_channels(embed_dim, w) for w in self.widths}
        self.apply(_init_weights)
        nn.init.normal_(self.cls_token, std=1e-6)

    def stem(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if x.dim() != 4 or x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(
                f"SharcsViT expects images (batch, {self.in_chans}, {self.img_size}, {self.img_size}), "
                f"got {tuple(x.shape)}"
            )
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks[: self.router_layer]:
            x = block(x)
        return x, None

    def tail(self, tokens: torch.Tensor, width: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = tokens[..., : self.channels[width]]
        for block in self.blocks[self.router_layer :]:
            x = block(x, width)
        x = self.norm(x, width)
        return slice_linear(self.head, x[:, 0])


def _init_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated normal (std 0.02) linears, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def load_timm_vit_state_dict(model: SharcsViT, state: Mapping[str, torch.Tensor]) -> None:
    """Load a timm ``VisionTransformer`` state dict (class token, ``global_pool='token'``) into ``model``.

    A LayerNorm after the router becomes one norm per width, each starting from the first channels of the original
    (as the official code initialises its per-width norms). The router keeps its own weights. Strict otherwise:
    missing or unexpected keys are an error.
    """
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        per_width = [f"{prefix}.norms.{i}.{leaf}" for i in range(len(model.widths))]
        if per_width[0] in own:
            for target, c in zip(per_width, (model.channels[w] for w in model.widths)):
                mapped[target] = value[:c]
        else:
            mapped[key] = value
    mapped.update({k: v for k, v in own.items() if k.startswith("router.")})
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ConfigError(f"not a matching timm ViT state dict: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(mapped)


# ---------------------------------------------------------------------------------------------- a timm ViT by name
def _timm_vit_layers():
    from timm.layers import LayerScale
    from timm.layers import Mlp as TimmMlp
    from timm.layers.attention import Attention as TimmAttention
    from timm.models.vision_transformer import Block as TimmBlock
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer, TimmBlock, TimmAttention, TimmMlp, LayerScale


class SharcsTimmViT(SharcsModel):
    """SHARCS on a timm ``VisionTransformer`` created by name (random init: no download).

    The timm model is kept whole (``self.vit``, its state-dict names under ``vit.``); the blocks after the router run
    their own ``nn.Linear`` layers sliced, and their LayerNorms (and the final ones) are replaced by a
    :class:`WidthLayerNorm` initialised from them, which at full width *is* the original norm. So at width 1 this
    model computes exactly ``self.vit(x)``.

    Args:
        model_name: a timm ViT (``vit_*``, ``deit_*``) with plain ``Block``s: timm ``Attention`` without qk-norm,
            ``Mlp`` (no SwiGLU / gated FFN), LayerNorm; any other module is an error naming it.
        num_classes: classes.
        widths: ascending, ending with 1.0; each a whole number of the model's heads.
        router_layer: the router sits after this block (1-based).
        router_hidden: the router's hidden units.
        **timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``depth``, ...).
    """

    def __init__(
        self,
        model_name: str = "vit_small_patch16_224",
        num_classes: int = 1000,
        widths: Sequence[float] = (0.5, 1.0),
        router_layer: int = 1,
        router_hidden: int = 1024,
        **timm_kwargs: Any,
    ):
        super().__init__()
        import timm

        VisionTransformer, TimmBlock, TimmAttention, TimmMlp, LayerScale = _timm_vit_layers()
        try:
            vit = timm.create_model(
                model_name, pretrained=False, num_classes=num_classes, **{"dynamic_img_size": True, **timm_kwargs}
            )
        except (RuntimeError, TypeError) as e:  # "Unknown model (...)"; a non-ViT refuses dynamic_img_size
            raise ConfigError(f"timm cannot build {model_name!r} as a ViT: {e}") from None
        if not isinstance(vit, VisionTransformer):
            raise ConfigError(f"{model_name} is a timm {type(vit).__name__}, not a VisionTransformer")
        depth = len(vit.blocks)
        self.router_layer = check_router_layer(router_layer, depth)
        first = vit.blocks[0].attn
        dim = vit.embed_dim
        num_heads = getattr(first, "num_heads", 1)
        self.widths = check_sharcs_widths(widths, num_heads, dim)
        if vit.global_pool not in ("token", "avg", "avgmax", "max", ""):
            raise ConfigError(f"{model_name}: global_pool={vit.global_pool!r} cannot be sliced (attention pooling)")
        for i in range(self.router_layer, depth):
            _check_timm_block(vit.blocks[i], f"vit.blocks.{i}", TimmBlock, TimmAttention, TimmMlp, LayerScale)
            vit.blocks[i].norm1 = _width_norm(vit.blocks[i].norm1, dim, self.widths, f"vit.blocks.{i}.norm1")
            vit.blocks[i].norm2 = _width_norm(vit.blocks[i].norm2, dim, self.widths, f"vit.blocks.{i}.norm2")
        vit.norm = _width_norm(vit.norm, dim, self.widths, "vit.norm")
        vit.fc_norm = _width_norm(vit.fc_norm, dim, self.widths, "vit.fc_norm")
        if not isinstance(vit.head, nn.Linear):
            raise ConfigError(f"{model_name}: vit.head is {type(vit.head).__name__}; SHARCS slices an nn.Linear head")
        self.vit = vit
        self.num_classes = num_classes
        self.embed_dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.channels = {w: width_channels(dim, w) for w in self.widths}
        self.router = Router(dim, len(self.widths), router_hidden)

    def stem(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for block in vit.blocks[: self.router_layer]:
            x = block(x)
        return x, None

    def tail(self, tokens: torch.Tensor, width: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        vit = self.vit
        x = tokens[..., : self.channels[width]]
        heads = self.channels[width] // self.head_dim
        for block in vit.blocks[self.router_layer :]:
            x = x + block.drop_path1(_scale(block.ls1, self._attention(block.attn, block.norm1(x), heads)))
            x = x + block.drop_path2(_scale(block.ls2, _mlp(block.mlp, block.norm2(x), width)))
        x = vit.fc_norm(vit.pool(vit.norm(x)))
        return slice_linear(vit.head, vit.head_drop(x))

    def _attention(self, attn: nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
        dim, inner = self.embed_dim, heads * self.head_dim
        weight = attn.qkv.weight.view(3, dim, dim)[:, :inner, : x.shape[-1]].reshape(3 * inner, x.shape[-1])
        bias = None if attn.qkv.bias is None else attn.qkv.bias.view(3, dim)[:, :inner].reshape(-1)
        q, k, v = F.linear(x, weight, bias).unflatten(-1, (3, heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        drop = attn.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=drop).transpose(1, 2).flatten(2)
        return attn.proj_drop(slice_linear(attn.proj, out, x.shape[-1]))


def _mlp(mlp: nn.Module, x: torch.Tensor, width: float) -> torch.Tensor:
    """timm's ``Mlp`` on the first ``width`` of its hidden units and the first ``x.shape[-1]`` channels."""
    hidden = mlp.drop1(mlp.act(slice_linear(mlp.fc1, x, width_channels(mlp.fc1.out_features, width))))
    return mlp.drop2(slice_linear(mlp.fc2, hidden, x.shape[-1]))


def _scale(layer_scale: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``LayerScale`` (``x * gamma``) on the first channels, or ``nn.Identity``."""
    gamma = getattr(layer_scale, "gamma", None)
    return x if gamma is None else x * gamma[: x.shape[-1]]


def _check_timm_block(block: nn.Module, name: str, block_cls, attn_cls, mlp_cls, scale_cls) -> None:
    """Refuse a block SHARCS cannot slice, naming the module."""
    checks = [
        (block, block_cls, "a timm vision_transformer.Block"),
        (block.attn, attn_cls, "timm's Attention"),
        (block.mlp, mlp_cls, "timm's Mlp"),
    ]
    for module, cls, what in checks:
        if type(module) is not cls:
            sub = name if module is block else f"{name}.{'attn' if module is block.attn else 'mlp'}"
            raise ConfigError(f"{sub} is {type(module).__name__}, which SHARCS cannot slice (it slices {what})")
    attn, mlp = block.attn, block.mlp
    for sub in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(attn, sub, nn.Identity()), nn.Identity):
            raise ConfigError(
                f"{name}.attn.{sub} is {type(getattr(attn, sub)).__name__}; SHARCS slices no qk/scale norm"
            )
    if getattr(attn, "gate", None) is not None or attn.num_heads * attn.head_dim != attn.qkv.in_features:
        raise ConfigError(
            f"{name}.attn has a gate or an inner width other than the model width; SHARCS cannot slice it"
        )
    if not isinstance(mlp.norm, nn.Identity) or not isinstance(mlp.fc1, nn.Linear):
        raise ConfigError(
            f"{name}.mlp has a norm or a non-linear fc1 ({type(mlp.fc1).__name__}); SHARCS cannot slice it"
        )
    for sub in ("ls1", "ls2"):
        if not isinstance(getattr(block, sub), (nn.Identity, scale_cls)):
            raise ConfigError(f"{name}.{sub} is {type(getattr(block, sub)).__name__}; SHARCS slices timm's LayerScale")


def _width_norm(norm: nn.Module, dim: int, widths: Sequence[float], name: str) -> nn.Module:
    """A timm LayerNorm as one norm per width (each from the first channels of the original); Identity stays."""
    if isinstance(norm, nn.Identity):
        return norm
    if type(norm) not in (nn.LayerNorm,) and type(norm).__name__ != "LayerNorm":
        raise ConfigError(f"{name} is {type(norm).__name__}; SHARCS gives each width its own LayerNorm only")
    width_norm = WidthLayerNorm(dim, widths, eps=norm.eps)
    with torch.no_grad():
        for sub in width_norm.norms:
            c = sub.normalized_shape[0]
            if norm.weight is not None:
                sub.weight.copy_(norm.weight[:c])
            if norm.bias is not None:
                sub.bias.copy_(norm.bias[:c])
    return width_norm


# ------------------------------------------------------------------------------------------------------- factories
def _sharcs_vit(defaults: dict[str, Any], kwargs: dict[str, Any]) -> SharcsViT:
    return SharcsViT(**{**defaults, **kwargs})


@register_model(input_size=(3, 8, 8), tags=("sharcs", "vit"))
def sharcs_vit_digits(**kwargs: Any) -> SharcsViT:
    """The mini reproduction's ViT: 8x8 images as 16 patches of 2x2, width 64, 4 blocks of 4 heads, router after 1."""
    defaults = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=64, depth=4, num_heads=4, router_hidden=256)
    return _sharcs_vit(defaults, kwargs)


@register_model(input_size=(3, 32, 32), tags=("sharcs", "vit"))
def sharcs_vit_tiny(**kwargs: Any) -> SharcsViT:
    """A ViT-Tiny-shaped SHARCS model (width 192, 12 heads, depth 12) on 32x32 images in 4x4 patches."""
    defaults = dict(img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=12)
    return _sharcs_vit(defaults, kwargs)


@register_model(input_size=(3, 224, 224), tags=("sharcs", "vit", "timm"))
def sharcs_timm_vit(**kwargs: Any) -> SharcsTimmViT:
    """SHARCS on a timm ViT by name (``model_name``, default ``vit_small_patch16_224``, random init)."""
    return SharcsTimmViT(**kwargs)
