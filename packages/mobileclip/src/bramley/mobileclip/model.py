"""MobileCLIP image-text models: an MCi (FastViT) or ViT-B/16 image tower, a CLIP text tower, a logit scale.

Text towers (width 512, 8 heads, context 77, MLP 2048, pooled at the end-of-text token ``tokens.argmax(-1)``):

- S1, S2: 12 bidirectional pre-norm transformer blocks (core's :class:`~bramley.core.layers.clip.TextTransformer`).
- B: the same, causal.
- S0 ("MCt"): a :class:`TextRepMixerBlock`, 4 bidirectional transformer blocks, a :class:`TextRepMixerBlock`. The
  official ``RepMixerBlock`` is built with its default ``kernel_size=11`` (its docstring says 3; the code's 11 is what
  the released S0 weights hold), 1 x 11 depthwise convs along the sequence.

The text RepMixer works on ``(batch, width, seq)`` with 1-d convs: the official code runs the same 1 x k convs as
``Conv2d`` on ``(batch, width, 1, seq)`` (:mod:`.convert` reshapes the kernels). It reparameterizes like FastViT's
image RepMixer: ``x + gamma * (mixer(x) - norm(x))`` folds into one depthwise conv with a bias.

Image towers are :func:`bramley.fastvit` ``fastvit_mci0/1/2`` (bias-free 512-d projection head) or timm's
``vit_base_mci_224`` (MobileCLIP-B's ViT-B/16, class-token pooling, 512-d head), as open_clip builds them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from bramley.core.layers.clip import CLIP, TextBlock, TextTransformer
from bramley.core.registry import create_model, register_model

__all__ = [
    "MOBILECLIP_CONFIGS",
    "MobileCLIP",
    "TextConvFFN",
    "TextRepMixer",
    "TextRepMixerBlock",
    "example_inputs",
]


# ----------------------------------------------------------------------------------------------------------- blocks
class ConvNorm1d(nn.Sequential):
    """Bias-free depthwise 1-d conv then BatchNorm (children ``conv``, ``bn``), "same" padding."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The single conv's ``(weight, bias)`` equal to this module in eval mode."""
        scale = self.bn.weight / (self.bn.running_var + self.bn.eps).sqrt()
        return self.conv.weight * scale[:, None, None], self.bn.bias - self.bn.running_mean * scale


def _bn_kernel_bias(bn: nn.BatchNorm1d, kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A depthwise ``kernel_size`` conv equal to ``bn`` in eval mode (the identity kernel, scaled)."""
    scale = bn.weight / (bn.running_var + bn.eps).sqrt()
    kernel = torch.zeros(bn.num_features, 1, kernel_size, dtype=scale.dtype, device=scale.device)
    kernel[:, 0, kernel_size // 2] = scale
    return kernel, bn.bias - bn.running_mean * scale


class TextRepMixer(nn.Module):
    """Reparameterizable token mixer along the sequence: ``x + gamma * (mixer(x) - norm(x))``.

    ``mixer`` is a depthwise MobileOne branch pair (``identity`` BatchNorm + ``conv_kxk`` k-conv-BN, summed), ``norm``
    a BatchNorm, ``gamma`` a per-channel layer scale (init 1e-5). In eval mode all of it is one depthwise conv with a
    bias (:meth:`reparameterize`). There is no 1x1 "scale" branch: the official ``MobileOneBlock`` only adds one when
    ``kernel_size[0] > 1``, and the text mixer's kernel is ``(1, k)``.

    Args:
        dim: channels.
        kernel_size: odd conv size along the sequence (S0: 11).
        layer_scale_init_value: initial ``gamma``.
        inference_mode: build the fused conv directly (loads fused checkpoints).
    """

    def __init__(
        self, dim: int, kernel_size: int = 11, layer_scale_init_value: float = 1e-5, inference_mode: bool = False
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"TextRepMixer needs an odd kernel_size, got {kernel_size}")
        self.dim, self.kernel_size = dim, kernel_size
        self.reparam_conv: nn.Conv1d | None = None
        self.norm: nn.BatchNorm1d | None = None
        self.identity: nn.BatchNorm1d | None = None
        self.conv_kxk: ConvNorm1d | None = None
        self.layer_scale: nn.Parameter | None = None
        if inference_mode:
            self.reparam_conv = self._make_conv()
        else:
            self.norm = nn.BatchNorm1d(dim)
            self.identity = nn.BatchNorm1d(dim)
            self.conv_kxk = ConvNorm1d(dim, kernel_size)
            self.layer_scale = nn.Parameter(torch.full((dim, 1), float(layer_scale_init_value)))

    def _make_conv(self) -> nn.Conv1d:
        return nn.Conv1d(self.dim, self.dim, self.kernel_size, padding=self.kernel_size // 2, groups=self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        mixed = self.identity(x) + self.conv_kxk(x)
        return x + self.layer_scale * (mixed - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the branches, the norm, the layer scale and the residual into ``reparam_conv`` (no-op once fused)."""
        if self.reparam_conv is not None:
            return
        k = self.kernel_size
        w_conv, b_conv = self.conv_kxk.kernel_bias()
        w_id, b_id = _bn_kernel_bias(self.identity, k)
        w_norm, b_norm = _bn_kernel_bias(self.norm, k)
        gamma = self.layer_scale
        weight = gamma[:, :, None] * (w_conv + w_id - w_norm)
        weight[:, 0, k // 2] += 1  # the residual
        bias = gamma[:, 0] * (b_conv + b_id - b_norm)
        conv = self._make_conv().to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.norm = self.identity = self.conv_kxk = self.layer_scale = None
        self.reparam_conv = conv

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, reparameterized={self.reparam_conv is not None}"


class TextConvFFN(nn.Module):
    """ConvFFN along the sequence: depthwise k-conv-BN, then a pointwise ``fc1 -> GELU -> fc2`` MLP (1-convs)."""

    def __init__(self, dim: int, hidden: int, kernel_size: int = 11):
        super().__init__()
        self.conv = ConvNorm1d(dim, kernel_size)
        self.fc1 = nn.Conv1d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv1d(hidden, dim, 1)
        for conv in (self.conv.conv, self.fc1, self.fc2):  # the official init: trunc normal 0.02, zero bias
            nn.init.trunc_normal_(conv.weight, std=0.02)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


class TextRepMixerBlock(nn.Module):
    """MobileCLIP-S0's convolutional text block on ``(batch, seq, dim)``: RepMixer, then a layer-scaled ConvFFN.

    Args:
        dim: width.
        kernel_size: conv size along the sequence (the official code's default, 11).
        mlp_ratio: ConvFFN hidden width over ``dim``.
        layer_scale_init_value: initial layer scales.
        inference_mode: fused RepMixer.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 11,
        mlp_ratio: float = 4.0,
        layer_scale_init_value: float = 1e-5,
        inference_mode: bool = False,
    ):
        super().__init__()
        self.token_mixer = TextRepMixer(dim, kernel_size, layer_scale_init_value, inference_mode=inference_mode)
        self.mlp = TextConvFFN(dim, int(dim * mlp_ratio), kernel_size)
        self.layer_scale = nn.Parameter(torch.full((dim, 1), float(layer_scale_init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x.transpose(1, 2))
        x = x + self.layer_scale * self.mlp(x)
        return x.transpose(1, 2)


# ------------------------------------------------------------------------------------------------------------ model
class MobileCLIP(CLIP):
    """A MobileCLIP model: ``visual`` (image tower), ``text`` (text tower), ``logit_scale``.

    ``model(images, tokens)`` returns ``(image_features, text_features, logit_scale.exp())`` with L2-normalized
    features (open_clip's convention; the official inference code also clamps the scale at 100 there, open_clip and
    this model clamp the parameter during training instead).

    Args:
        image_tower: ``fastvit_mci0``, ``fastvit_mci1``, ``fastvit_mci2`` (bramley-fastvit) or ``vit_base_mci_224``
            (timm).
        text_tower: ``"transformer"`` (S1/S2/B) or ``"mct"`` (S0: RepMixer, transformer blocks, RepMixer).
        embed_dim: joint embedding width.
        image_kwargs: overrides for the image tower's factory (e.g. ``layers`` / ``embed_dims`` of a smaller MCi).
        text_kwargs: :class:`~bramley.core.layers.clip.TextTransformer` arguments (``layers`` counts transformer
            blocks; MCt adds its two RepMixer blocks), plus ``kernel_size`` for MCt.
        init_logit_scale: initial ``logit_scale`` (log of the multiplier).
        inference_mode: build reparameterizable parts fused (MCi towers, MCt's RepMixers).
    """

    def __init__(
        self,
        image_tower: str = "fastvit_mci0",
        text_tower: str = "transformer",
        embed_dim: int = 512,
        image_kwargs: dict[str, Any] | None = None,
        text_kwargs: dict[str, Any] | None = None,
        init_logit_scale: float = math.log(1 / 0.07),
        inference_mode: bool = False,
    ):
        visual = _image_tower(image_tower, embed_dim, dict(image_kwargs or {}), inference_mode)
        text = _text_tower(text_tower, embed_dim, dict(text_kwargs or {}), inference_mode)
        super().__init__(visual, text, init_logit_scale)
        self.image_tower, self.text_tower, self.embed_dim = image_tower, text_tower, embed_dim

    @property
    def context_length(self) -> int:
        return self.text.context_length


IMAGE_TOWERS = ("fastvit_mci0", "fastvit_mci1", "fastvit_mci2", "vit_base_mci_224")
TEXT_TOWERS = ("transformer", "mct")


def _image_tower(name: str, embed_dim: int, kwargs: dict[str, Any], inference_mode: bool) -> nn.Module:
    if name.startswith("fastvit_mci") and name in IMAGE_TOWERS:
        import bramley.fastvit  # noqa: F401  (registers the MCi towers)

        return create_model(name, num_classes=embed_dim, inference_mode=inference_mode, **kwargs)
    if name == "vit_base_mci_224":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=embed_dim, global_pool="token", **kwargs)
    raise ValueError(f"unknown image tower {name!r}; choose one of {', '.join(IMAGE_TOWERS)}")


def _text_tower(kind: str, embed_dim: int, kwargs: dict[str, Any], inference_mode: bool) -> TextTransformer:
    if kind not in TEXT_TOWERS:
        raise ValueError(f"unknown text tower {kind!r}; choose one of {', '.join(TEXT_TOWERS)}")
    kwargs = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12, **kwargs}
    kwargs["output_dim"] = embed_dim
    if kind == "transformer":
        return TextTransformer(**kwargs)
    kernel_size = kwargs.pop("kernel_size", 11)
    layers, width = kwargs.pop("layers"), kwargs["width"]
    mlp_ratio = kwargs.get("mlp_ratio", 4.0)

    def block(i: int) -> nn.Module:
        if i in (0, layers + 1):
            return TextRepMixerBlock(width, kernel_size, mlp_ratio, inference_mode=inference_mode)
        return TextBlock(width, kwargs["heads"], mlp_ratio, causal=kwargs.get("causal", True))

    return TextTransformer(layers=layers + 2, block_fn=block, **kwargs)


# ---------------------------------------------------------------------------------------------------------- configs
_S_TEXT = {"layers": 12, "causal": False}

#: The four released architectures (official ``mobileclip/configs/*.json``, open_clip's ``MobileCLIP-*.json``).
MOBILECLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "mobileclip_s0": dict(image_tower="fastvit_mci0", text_tower="mct", text_kwargs={"layers": 4, "causal": False}),
    "mobileclip_s1": dict(image_tower="fastvit_mci1", text_tower="transformer", text_kwargs=_S_TEXT),
    "mobileclip_s2": dict(image_tower="fastvit_mci2", text_tower="transformer", text_kwargs=_S_TEXT),
    "mobileclip_b": dict(image_tower="vit_base_mci_224", text_tower="transformer", text_kwargs={"layers": 12}),
}

#: The image size each model was trained and is evaluated at.
IMAGE_SIZES = {"mobileclip_s0": 256, "mobileclip_s1": 256, "mobileclip_s2": 256, "mobileclip_b": 224}


def example_inputs(image_size: int = 64, batch: int = 2, context_length: int = 77) -> tuple[tuple, dict]:
    """``((images, tokens), {})``: random images and CLIP-like token rows (start, words, end-of-text = row max)."""
    images = torch.randn(batch, 3, image_size, image_size)
    tokens = torch.randint(1, 997, (batch, context_length))
    tokens[:, 0] = 998
    for row in range(batch):
        end = int(torch.randint(2, context_length, ()))
        tokens[row, end] = 999
        tokens[row, end + 1 :] = 0
    return (images, tokens), {}


def _merge(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    cfg = {**MOBILECLIP_CONFIGS[name]}
    for key in ("image_kwargs", "text_kwargs"):  # nested overrides merge with the variant's
        if key in kwargs:
            cfg[key] = {**cfg.get(key, {}), **kwargs.pop(key)}
    return {**cfg, **kwargs}


# -------------------------------------------------------------------------------------------------------- factories
@register_model(tags=("mobileclip",), example_inputs=lambda: example_inputs(64))
def mobileclip_s0(**kwargs: Any) -> MobileCLIP:
    """MobileCLIP-S0: MCi0 image tower, MCt text tower (RepMixer + 4 transformer blocks + RepMixer)."""
    return MobileCLIP(**_merge("mobileclip_s0", kwargs))


@register_model(tags=("mobileclip",), example_inputs=lambda: example_inputs(64))
def mobileclip_s1(**kwargs: Any) -> MobileCLIP:
    """MobileCLIP-S1: MCi1 image tower, 12-block bidirectional text transformer."""
    return MobileCLIP(**_merge("mobileclip_s1", kwargs))


@register_model(tags=("mobileclip",), example_inputs=lambda: example_inputs(64))
def mobileclip_s2(**kwargs: Any) -> MobileCLIP:
    """MobileCLIP-S2: MCi2 image tower, 12-block bidirectional text transformer."""
    return MobileCLIP(**_merge("mobileclip_s2", kwargs))


@register_model(tags=("mobileclip",), example_inputs=lambda: example_inputs(224))
def mobileclip_b(**kwargs: Any) -> MobileCLIP:
    """MobileCLIP-B: ViT-B/16 image tower, 12-block causal text transformer."""
    return MobileCLIP(**_merge("mobileclip_b", kwargs))
