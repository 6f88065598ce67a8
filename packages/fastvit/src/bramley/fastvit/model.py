"""FastViT: a hybrid vision transformer whose token mixers fold into plain convolutions for inference.

Paper: "FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization", Vasu et al., ICCV 2023
(https://arxiv.org/abs/2303.14189). MobileCLIP's image towers MCi0/1/2 (https://arxiv.org/abs/2311.17049) are
FastViT variants and live here too.

Layout (stem -> 4 stages -> final conv -> classifier):

- stem: three MobileOne blocks (3x3 s2, depthwise 3x3 s2, 1x1), reduction 4.
- stage i: ``downsample`` (i > 0: :class:`PatchEmbed`, a 7x7 large-kernel conv with a 3x3 branch + 1x1 MobileOne
  block, stride 2), ``pos_emb`` (:class:`RepConditionalPosEnc` before attention stages), then ``blocks``:
  :class:`RepMixerBlock` (conv stages) or :class:`AttentionBlock` (stage 4 of SA/MA/MCi variants).
- ``final_conv``: a depthwise-grouped MobileOne block with squeeze-excite doubling the width, then pool + linear
  (MCi: MobileCLIP's bias-free projection).

Every reparameterizable module has ``reparameterize()``; :func:`bramley.core.layers.reparameterize_model` (deepest
first; :func:`reparameterize` here) fuses a whole model, and ``timm.utils.model.reparameterize_model`` (top down; it
also folds ConvFFN's conv-BN through ``ConvNorm.fuse``, which ours keeps, as the official code does) gives the same
outputs. Module and parameter names are timm's (``timm.models.fastvit``) except the squeeze-excite convs, which keep
the official ``se.reduce``/``se.expand`` names of the shared :class:`bramley.core.layers.SqueezeExcite`; see
:mod:`bramley.fastvit.convert` for the exact timm and official key maps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.features import StagedBackbone
from bramley.core.layers import (
    ConvNorm,
    DropPath,
    LayerScale2d,
    MobileOneBlock,
    SqueezeExcite,
    identity_kernel,
    pad_kernel,
    reparameterize_model,
)
from bramley.core.ops import attention
from bramley.core.registry import IMAGENET_MEAN, IMAGENET_STD, register_model

__all__ = [
    "FASTVIT_CONFIGS",
    "PRETRAINED_CFGS",
    "AttentionBlock",
    "ConvMlp",
    "FastVit",
    "FastVitStage",
    "PatchEmbed",
    "RepConditionalPosEnc",
    "RepMixer",
    "RepMixerBlock",
    "ReparamLargeKernelConv",
    "reparameterize",
]


# ----------------------------------------------------------------------------------------------------------- blocks


def _conv_from(kernel: torch.Tensor, bias: torch.Tensor, stride: int, groups: int) -> nn.Conv2d:
    """A biased conv holding ``kernel``/``bias`` with "same" padding for its (odd) kernel size."""
    out_chs, in_per_group, k, _ = kernel.shape
    conv = nn.Conv2d(in_per_group * groups, out_chs, k, stride=stride, padding=k // 2, groups=groups, bias=True)
    conv = conv.to(device=kernel.device, dtype=kernel.dtype)
    with torch.no_grad():
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
    return conv


class ReparamLargeKernelConv(nn.Module):
    """Large-kernel conv-BN with a parallel small-kernel conv-BN branch (RepLKNet style), foldable into one conv.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: the large kernel (7 in FastViT).
        stride: conv stride.
        groups: conv groups (FastViT: ``in_chs``).
        small_kernel: the small branch's kernel (3 in FastViT), ``None`` for none.
        use_se: squeeze-excite (hidden width ``out_chs / 4``) after the conv, as in MobileCLIP's downsampling layers.
        act_layer: activation after the conv; ``None`` for none. The official FastViT code computes a GELU here but
            discards its result, so FastViT checkpoints need ``None``; MobileCLIP applies it (timm: ``lkc_use_act``).
        inference_mode: build the fused conv directly.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        small_kernel: int | None = 3,
        use_se: bool = False,
        act_layer: Callable[[], nn.Module] | None = None,
        inference_mode: bool = False,
    ):
        super().__init__()
        if small_kernel is not None and small_kernel > kernel_size:
            raise ValueError(f"small_kernel ({small_kernel}) must not exceed kernel_size ({kernel_size})")
        self.in_chs, self.out_chs = in_chs, out_chs
        self.kernel_size, self.small_kernel = kernel_size, small_kernel
        self.stride, self.groups = stride, groups
        self.reparam_conv: nn.Conv2d | None = None
        self.large_conv: ConvNorm | None = None
        self.small_conv: ConvNorm | None = None
        if inference_mode:
            weight = torch.empty(out_chs, in_chs // groups, kernel_size, kernel_size)
            self.reparam_conv = _conv_from(weight, torch.zeros(out_chs), stride, groups)
            nn.init.kaiming_uniform_(self.reparam_conv.weight, a=5**0.5)
        else:
            self.large_conv = ConvNorm(in_chs, out_chs, kernel_size, stride=stride, groups=groups)
            if small_kernel is not None:
                self.small_conv = ConvNorm(in_chs, out_chs, small_kernel, stride=stride, groups=groups)
        self.se = SqueezeExcite(out_chs, rd_ratio=0.25) if use_se else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            out = self.reparam_conv(x)
        else:
            out = self.large_conv(x)
            if self.small_conv is not None:
                out = out + self.small_conv(x)
        return self.act(self.se(out))

    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the single conv equal to both branches in eval mode."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        kernel, bias = self.large_conv.kernel_bias()
        if self.small_conv is not None:
            small_k, small_b = self.small_conv.kernel_bias()
            kernel, bias = kernel + pad_kernel(small_k, self.kernel_size), bias + small_b
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both branches into ``reparam_conv`` (no-op once fused)."""
        if self.reparam_conv is not None:
            return
        kernel, bias = self.get_kernel_bias()
        self.reparam_conv = _conv_from(kernel, bias, self.stride, self.groups)
        self.large_conv = self.small_conv = None


class PatchEmbed(nn.Module):
    """Stage-entry downsampling: a 7x7 stride-2 large-kernel conv (with 3x3 branch) then a 1x1 MobileOne block."""

    def __init__(
        self,
        in_chs: int,
        embed_dim: int,
        patch_size: int = 7,
        stride: int = 2,
        use_se: bool = False,
        lkc_use_act: bool = False,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        inference_mode: bool = False,
    ):
        super().__init__()
        self.proj = nn.Sequential(
            ReparamLargeKernelConv(
                in_chs,
                embed_dim,
                kernel_size=patch_size,
                stride=stride,
                groups=in_chs,
                small_kernel=3,
                use_se=use_se,
                act_layer=act_layer if lkc_use_act else None,
                inference_mode=inference_mode,
            ),
            MobileOneBlock(embed_dim, embed_dim, 1, act_layer=act_layer, inference_mode=inference_mode),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class RepMixer(nn.Module):
    """The FastViT token mixer ``x + gamma * (mixer(x) - norm(x))``, foldable into one depthwise conv.

    ``mixer`` is a depthwise MobileOne block (kxk conv-BN + 1x1 conv-BN + BN skip) and ``norm`` a bare BatchNorm
    (as a branch-less MobileOne block). Because every part is linear in eval mode, the residual connection itself
    folds into the kernel: ``W = I + gamma * (W_mixer - W_norm)``, ``b = gamma * (b_mixer - b_norm)``. The fused
    model has no skip connection here, which is what makes it fast (fewer memory round trips).
    """

    def __init__(
        self, dim: int, kernel_size: int = 3, layer_scale_init_value: float | None = 1e-5, inference_mode: bool = False
    ):
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.reparam_conv: nn.Conv2d | None = None
        self.norm: MobileOneBlock | None = None
        self.mixer: MobileOneBlock | None = None
        self.layer_scale: nn.Module | None = None
        if inference_mode:  # starts as the identity, like a fresh unfused RepMixer (up to its 1e-5 layer scale)
            self.reparam_conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
            with torch.no_grad():  # plain fills: they also run on the meta device without decompositions
                self.reparam_conv.weight.zero_()[:, :, kernel_size // 2, kernel_size // 2] = 1
                self.reparam_conv.bias.zero_()
        else:
            common = dict(groups=dim, use_act=False)
            self.norm = MobileOneBlock(dim, dim, kernel_size, use_scale_branch=False, num_conv_branches=0, **common)
            self.mixer = MobileOneBlock(dim, dim, kernel_size, **common)
            self.layer_scale = (
                LayerScale2d(dim, layer_scale_init_value) if layer_scale_init_value is not None else nn.Identity()
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.layer_scale(self.mixer(x) - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold mixer, norm, layer scale and the skip connection into one depthwise conv (no-op once fused)."""
        if self.reparam_conv is not None:
            return
        w_mix, b_mix = self.mixer.get_kernel_bias()
        w_norm, b_norm = self.norm.get_kernel_bias()
        if isinstance(self.layer_scale, LayerScale2d):
            gamma = self.layer_scale.gamma.reshape(-1)
        else:
            gamma = torch.ones(self.dim, dtype=w_mix.dtype, device=w_mix.device)
        ident = identity_kernel(self.dim, self.kernel_size, groups=self.dim, dtype=w_mix.dtype, device=w_mix.device)
        kernel = ident + gamma.reshape(-1, 1, 1, 1) * (w_mix - w_norm)
        bias = gamma * (b_mix - b_norm)
        self.reparam_conv = _conv_from(kernel, bias, stride=1, groups=self.dim)
        self.mixer = self.norm = self.layer_scale = None


class ConvMlp(nn.Module):
    """FastViT's ConvFFN: depthwise 7x7 conv-BN, then a 1x1 expand / GELU / 1x1 project MLP."""

    def __init__(
        self,
        in_chs: int,
        hidden_chs: int,
        out_chs: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        drop: float = 0.0,
    ):
        super().__init__()
        out_chs = out_chs or in_chs
        self.conv = ConvNorm(in_chs, out_chs, 7, groups=in_chs)
        self.fc1 = nn.Conv2d(in_chs, hidden_chs, 1)
        self.act = act_layer()
        self.fc2 = nn.Conv2d(hidden_chs, out_chs, 1)
        self.drop = nn.Dropout(drop)
        for m in self.modules():  # the official ConvFFN init (truncated normal, std 0.02, zero bias)
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(self.conv(x)))
        return self.drop(self.fc2(self.drop(x)))


class RepConditionalPosEnc(nn.Module):
    """Conditional positional encoding ``x + dwconv7x7(x)`` (RepCPE), foldable into one depthwise conv."""

    def __init__(self, dim: int, kernel_size: int = 7, inference_mode: bool = False):
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.reparam_conv: nn.Conv2d | None = None
        self.pos_enc: nn.Conv2d | None = None
        conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=True)
        if inference_mode:
            self.reparam_conv = conv
        else:
            self.pos_enc = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        return x + self.pos_enc(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold the skip connection into the conv (no-op once fused)."""
        if self.reparam_conv is not None:
            return
        w = self.pos_enc.weight
        ident = identity_kernel(self.dim, self.kernel_size, groups=self.dim, dtype=w.dtype, device=w.device)
        self.reparam_conv = _conv_from(ident + w, self.pos_enc.bias, stride=1, groups=self.dim)
        self.pos_enc = None


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, core_op: bool = True) -> torch.Tensor:
    """Softmax attention on dense ``(batch, seq, heads, head_dim)`` tensors.

    ``bramley.core.ops.attention`` by default; PyTorch's ``scaled_dot_product_attention`` (the same function) when
    ``core_op`` is off, which exporters such as ONNX understand while the core custom op is opaque to them, and in
    TorchScript, which cannot compile the core op's Python dispatch. torch.fx keeps the call as one graph node.
    """
    if torch.jit.is_scripting() or not core_op:  # a static condition in TorchScript: the other branch is skipped
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    else:
        out = attention(q, k, v)
    return out


torch.fx.wrap("_attention")


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions of an NCHW map, computed by ``bramley.core.ops.attention``.

    Heads have ``head_dim`` channels (32 in FastViT); qkv has no bias, the output projection has one. Setting
    ``use_core_op = False`` computes the same attention with PyTorch's SDPA (used for ONNX export).
    """

    def __init__(self, dim: int, head_dim: int = 32, qkv_bias: bool = False, proj_drop: float = 0.0):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention dim {dim} is not divisible by head_dim {head_dim}")
        self.head_dim, self.num_heads = head_dim, dim // head_dim
        self.use_core_op = True
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = self.qkv(tokens).reshape(b, h * w, 3, self.num_heads, self.head_dim).unbind(2)  # (B, N, H, D) each
        out = _attention(q, k, v, self.use_core_op).reshape(b, h * w, c)
        out = self.proj_drop(self.proj(out))
        return out.transpose(1, 2).reshape(b, c, h, w)


class RepMixerBlock(nn.Module):
    """Conv stage block: RepMixer token mixing, then a layer-scaled ConvFFN residual."""

    def __init__(
        self,
        dim: int,
        kernel_size: int = 3,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
        inference_mode: bool = False,
    ):
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale_init_value, inference_mode=inference_mode)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.layer_scale = (
            LayerScale2d(dim, layer_scale_init_value) if layer_scale_init_value is not None else nn.Identity()
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        return x + self.drop_path(self.layer_scale(self.mlp(x)))


class AttentionBlock(nn.Module):
    """Attention stage block: BatchNorm + MHSA residual, then a ConvFFN residual, both layer-scaled."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        proj_drop: float = 0.0,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
    ):
        super().__init__()

        def scale() -> nn.Module:
            return LayerScale2d(dim, layer_scale_init_value) if layer_scale_init_value is not None else nn.Identity()

        self.norm = nn.BatchNorm2d(dim)
        self.token_mixer = Attention(dim, proj_drop=proj_drop)
        self.layer_scale_1 = scale()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.layer_scale_2 = scale()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.layer_scale_1(self.token_mixer(self.norm(x))))
        return x + self.drop_path2(self.layer_scale_2(self.mlp(x)))


class FastVitStage(nn.Module):
    """One stage: optional :class:`PatchEmbed` downsampling, optional RepCPE, then ``depth`` blocks."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        depth: int,
        token_mixer: str,
        downsample: bool,
        se_downsample: bool = False,
        pos_emb: bool = False,
        mlp_ratio: float = 4.0,
        repmixer_kernel_size: int = 3,
        down_patch_size: int = 7,
        down_stride: int = 2,
        lkc_use_act: bool = False,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        proj_drop_rate: float = 0.0,
        drop_path_rates: Sequence[float] = (),
        layer_scale_init_value: float | None = 1e-5,
        inference_mode: bool = False,
    ):
        super().__init__()
        if not downsample and dim != dim_out:
            raise ValueError(f"a stage without downsampling must keep its width ({dim} != {dim_out})")
        if token_mixer not in ("repmixer", "attention"):
            raise ValueError(f"unknown token mixer {token_mixer!r} (expected 'repmixer' or 'attention')")
        dpr = list(drop_path_rates) or [0.0] * depth
        self.downsample = (
            PatchEmbed(
                dim, dim_out, down_patch_size, down_stride, se_downsample, lkc_use_act, act_layer, inference_mode
            )
            if downsample
            else nn.Identity()
        )
        self.pos_emb = RepConditionalPosEnc(dim_out, inference_mode=inference_mode) if pos_emb else nn.Identity()
        if token_mixer == "repmixer":
            blocks = [
                RepMixerBlock(
                    dim_out,
                    repmixer_kernel_size,
                    mlp_ratio,
                    act_layer,
                    proj_drop_rate,
                    dpr[i],
                    layer_scale_init_value,
                    inference_mode,
                )
                for i in range(depth)
            ]
        else:
            blocks = [
                AttentionBlock(dim_out, mlp_ratio, act_layer, proj_drop_rate, dpr[i], layer_scale_init_value)
                for i in range(depth)
            ]
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.pos_emb(self.downsample(x)))


class ClassifierHead(nn.Module):
    """Dropout, then the classifier ``fc`` (a linear layer, or ``nn.Identity`` without classes) on pooled features.

    MCi's ``fc`` has no bias: MobileCLIP's image projection, pooled features times a bias-free ``(in, out)`` matrix.
    """

    def __init__(self, fc: nn.Module, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = fc

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


# ------------------------------------------------------------------------------------------------------------ model


class FastVit(StagedBackbone):
    """FastViT classifier / backbone, with timm's model interface (:class:`bramley.core.features.StagedBackbone`).

    Feature ``i`` (``forward_intermediates``, ``features_only``) is the end of stage ``i`` for every variant: for
    SA/MA/MCi models the 4th comes after the attention blocks (the official ``fork_feat`` taps the RepCPE before them).

    Args:
        layers: blocks per stage.
        embed_dims: widths per stage.
        mlp_ratios: ConvFFN expansion per stage.
        token_mixers: ``"repmixer"`` or ``"attention"`` per stage.
        pos_embs: RepCPE at the start of each stage (SA/MA/MCi: stage 4 only).
        se_downsamples: squeeze-excite in each stage's downsampling conv (MCi: stages 3 and 4).
        downsamples: downsample at the start of each stage (stage 0 never needs it: the stem has).
        lkc_use_act: apply GELU after the large-kernel downsampling conv (MCi: yes; FastViT: no, see
            :class:`ReparamLargeKernelConv`).
        in_chans: input channels.
        num_classes: classifier outputs; 0 for a pooled-feature model.
        global_pool: ``"avg"``, or ``""`` (with ``num_classes=0``) for the unpooled feature map.
        head_bias: give the classifier a bias (MCi: no, MobileCLIP's image projection has none).
        repmixer_kernel_size: RepMixer kernel.
        cls_ratio: width multiplier of ``final_conv``.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout in ConvFFN and attention projection.
        drop_path_rate: stochastic depth, linear from 0 over all blocks up to this value.
        layer_scale_init_value: initial layer scale (``None``: no layer scale).
        inference_mode: build the fused (reparameterized) structure directly, e.g. to load fused checkpoints.
    """

    classifier_name = "head.fc"
    __jit_unused_properties__: ClassVar[list[str]] = ["is_reparameterized"]  # Python-side, not compiled by TorchScript

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 6, 2),
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        token_mixers: Sequence[str] = ("repmixer",) * 4,
        pos_embs: Sequence[bool] = (False,) * 4,
        se_downsamples: Sequence[bool] = (False,) * 4,
        downsamples: Sequence[bool] = (False, True, True, True),
        lkc_use_act: bool = False,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        head_bias: bool = True,
        repmixer_kernel_size: int = 3,
        cls_ratio: float = 2.0,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-5,
        inference_mode: bool = False,
    ):
        super().__init__()
        n = len(layers)
        per_stage = {
            "embed_dims": embed_dims,
            "mlp_ratios": mlp_ratios,
            "token_mixers": token_mixers,
            "pos_embs": pos_embs,
            "se_downsamples": se_downsamples,
            "downsamples": downsamples,
        }
        for key, values in per_stage.items():
            if len(values) != n:
                raise ValueError(f"{key} has {len(values)} entries but layers has {n} stages")
        if n < 1 or any(d < 1 for d in layers):
            raise ValueError(f"layers must be positive block counts, got {tuple(layers)}")
        act_layer = nn.GELU
        self.in_chans = in_chans
        self.stem = nn.Sequential(
            MobileOneBlock(in_chans, embed_dims[0], 3, stride=2, act_layer=act_layer, inference_mode=inference_mode),
            MobileOneBlock(
                embed_dims[0],
                embed_dims[0],
                3,
                stride=2,
                groups=embed_dims[0],
                act_layer=act_layer,
                inference_mode=inference_mode,
            ),
            MobileOneBlock(embed_dims[0], embed_dims[0], 1, act_layer=act_layer, inference_mode=inference_mode),
        )
        dpr = torch.linspace(0, drop_path_rate, sum(layers), device="cpu").tolist()  # also under torch.device("meta")
        stages, prev_dim, reduction, feature_info = [], embed_dims[0], 4, []
        for i in range(n):
            downsample = bool(downsamples[i]) or prev_dim != embed_dims[i]
            if downsample and embed_dims[i] % prev_dim:
                raise ValueError(
                    f"embed_dims[{i}]={embed_dims[i]} must be a multiple of the previous width {prev_dim}: the "
                    "downsampling conv is grouped with one group per input channel"
                )
            stages.append(
                FastVitStage(
                    prev_dim,
                    embed_dims[i],
                    layers[i],
                    token_mixers[i],
                    downsample=downsample,
                    se_downsample=bool(se_downsamples[i]),
                    pos_emb=bool(pos_embs[i]),
                    mlp_ratio=mlp_ratios[i],
                    repmixer_kernel_size=repmixer_kernel_size,
                    lkc_use_act=lkc_use_act,
                    act_layer=act_layer,
                    proj_drop_rate=proj_drop_rate,
                    drop_path_rates=dpr[sum(layers[:i]) : sum(layers[: i + 1])],
                    layer_scale_init_value=layer_scale_init_value,
                    inference_mode=inference_mode,
                )
            )
            prev_dim = embed_dims[i]
            reduction *= 2 if downsample else 1
            feature_info.append(dict(num_chs=prev_dim, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.feature_info = feature_info
        num_features = int(embed_dims[-1] * cls_ratio)
        self.final_conv = MobileOneBlock(
            embed_dims[-1],
            num_features,
            3,
            groups=embed_dims[-1],
            use_se=True,
            act_layer=act_layer,
            inference_mode=inference_mode,
        )
        self.head = ClassifierHead(self.init_classifier(num_features, num_classes, global_pool, head_bias), drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout, classifier; ``pre_logits`` stops before the classifier."""
        return self.head(self.pool(x), pre_logits=pre_logits)

    @property
    def is_reparameterized(self) -> bool:
        """True when no train-time branch is left (every fusable block holds its ``reparam_conv``)."""
        return all(module.reparam_conv is not None for module in self.modules() if hasattr(module, "reparameterize"))


#: The README's name for :func:`bramley.core.layers.reparameterize_model`: fuses every RepMixer, RepCPE, large-kernel
#: conv and MobileOne block (a copy unless ``inplace``); the fused model's config says ``inference_mode=True``.
reparameterize = reparameterize_model


# ---------------------------------------------------------------------------------------------------------- configs

_SA = dict(token_mixers=("repmixer", "repmixer", "repmixer", "attention"), pos_embs=(False, False, False, True))
_MCI = dict(_SA, se_downsamples=(False, False, True, True), lkc_use_act=True, mlp_ratios=(3, 3, 3, 3), head_bias=False)

#: Architectures of the paper's Table 1 (FastViT) and MobileCLIP's image encoders (MCi), as the official code builds
#: them. SA36/MA36 use layer scale 1e-6 at init (official ``fastvit_sa36``/``fastvit_ma36``), the rest 1e-5. MCi
#: heads are MobileCLIP's bias-free projection to the 512-d embedding (parameter counts equal the official towers).
FASTVIT_CONFIGS: dict[str, dict[str, Any]] = {
    "fastvit_t8": dict(layers=(2, 2, 4, 2), embed_dims=(48, 96, 192, 384), mlp_ratios=(3, 3, 3, 3)),
    "fastvit_t12": dict(layers=(2, 2, 6, 2), embed_dims=(64, 128, 256, 512), mlp_ratios=(3, 3, 3, 3)),
    "fastvit_s12": dict(layers=(2, 2, 6, 2), embed_dims=(64, 128, 256, 512), mlp_ratios=(4, 4, 4, 4)),
    "fastvit_sa12": dict(_SA, layers=(2, 2, 6, 2), embed_dims=(64, 128, 256, 512), mlp_ratios=(4, 4, 4, 4)),
    "fastvit_sa24": dict(_SA, layers=(4, 4, 12, 4), embed_dims=(64, 128, 256, 512), mlp_ratios=(4, 4, 4, 4)),
    "fastvit_sa36": dict(
        _SA, layers=(6, 6, 18, 6), embed_dims=(64, 128, 256, 512), mlp_ratios=(4, 4, 4, 4), layer_scale_init_value=1e-6
    ),
    "fastvit_ma36": dict(
        _SA, layers=(6, 6, 18, 6), embed_dims=(76, 152, 304, 608), mlp_ratios=(4, 4, 4, 4), layer_scale_init_value=1e-6
    ),
    "fastvit_mci0": dict(_MCI, layers=(2, 6, 10, 2), embed_dims=(64, 128, 256, 512), num_classes=512),
    "fastvit_mci1": dict(_MCI, layers=(4, 12, 20, 4), embed_dims=(64, 128, 256, 512), num_classes=512),
    "fastvit_mci2": dict(_MCI, layers=(4, 12, 24, 4), embed_dims=(80, 160, 320, 640), num_classes=512),
}


def _cfg(**overrides: Any) -> dict[str, Any]:
    """timm's data and head config of a FastViT variant (``register_model(pretrained_cfg=...)``)."""
    cfg = dict(
        pool_size=(8, 8),  # the 256 px input over the 32x reduction
        crop_pct=0.9,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_classes=1000,
        first_conv=("stem.0.conv_kxk.0.conv", "stem.0.conv_scale.conv"),
        classifier="head.fc",
        license="apache-2.0",
        paper_name="FastViT: A Fast Hybrid Vision Transformer using Structural Reparameterization",
        paper_ids="arXiv:2303.14189",
        origin_url="https://github.com/apple/ml-fastvit",
    )
    return {**cfg, **overrides}


_MCI_CFG = dict(
    crop_pct=1.0,  # MobileCLIP's eval transform: resize to 256 (bilinear), center crop 256, no normalization
    interpolation="bilinear",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    num_classes=512,
    paper_name="MobileCLIP: Fast Image-Text Models through Multi-Modal Reinforced Training",
    paper_ids="arXiv:2311.17049",
    origin_url="https://github.com/apple/ml-mobileclip",
)

#: Each variant's ``pretrained_cfg``: the eval preprocessing of its recipe (``recipes/<name>.yaml``: 256 px, bicubic,
#: crop 0.9; 0.95 for SA36/MA36, as the official ``default_cfgs``) and, for MCi, MobileCLIP's own transform.
PRETRAINED_CFGS: dict[str, dict[str, Any]] = {
    **{name: _cfg() for name in ("fastvit_t8", "fastvit_t12", "fastvit_s12", "fastvit_sa12", "fastvit_sa24")},
    "fastvit_sa36": _cfg(crop_pct=0.95),
    "fastvit_ma36": _cfg(crop_pct=0.95),
    **{f"fastvit_mci{i}": _cfg(**_MCI_CFG) for i in range(3)},
}

#: Full-scale training drop-path rate per variant (official README commands, ImageNet-1k without distillation /
#: with hard distillation). MCi towers were trained by MobileCLIP's own recipe: not listed.
DROP_PATH_RATES: dict[str, tuple[float, float]] = {
    "fastvit_t8": (0.0, 0.0),
    "fastvit_t12": (0.0, 0.0),
    "fastvit_s12": (0.0, 0.0),
    "fastvit_sa12": (0.1, 0.0),
    "fastvit_sa24": (0.1, 0.05),
    "fastvit_sa36": (0.2, 0.1),
    "fastvit_ma36": (0.35, 0.2),
}


# -------------------------------------------------------------------------------------------------------- factories


def _create(variant: str, **kwargs: Any) -> FastVit:
    return FastVit(**{**FASTVIT_CONFIGS[variant], **kwargs})


@register_model(tags=("fastvit",), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_t8"])
def fastvit_t8(**kwargs: Any) -> FastVit:
    """FastViT-T8: 4 RepMixer stages, widths 48-384, MLP ratio 3."""
    return _create("fastvit_t8", **kwargs)


@register_model(tags=("fastvit",), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_t12"])
def fastvit_t12(**kwargs: Any) -> FastVit:
    """FastViT-T12: 4 RepMixer stages, widths 64-512, MLP ratio 3."""
    return _create("fastvit_t12", **kwargs)


@register_model(tags=("fastvit",), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_s12"])
def fastvit_s12(**kwargs: Any) -> FastVit:
    """FastViT-S12: 4 RepMixer stages, widths 64-512, MLP ratio 4."""
    return _create("fastvit_s12", **kwargs)


@register_model(tags=("fastvit",), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_sa12"])
def fastvit_sa12(**kwargs: Any) -> FastVit:
    """FastViT-SA12: RepMixer stages 1-3, RepCPE + attention stage 4."""
    return _create("fastvit_sa12", **kwargs)


@register_model(tags=("fastvit",), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_sa24"])
def fastvit_sa24(**kwargs: Any) -> FastVit:
    """FastViT-SA24: layers 4-4-12-4, attention stage 4."""
    return _create("fastvit_sa24", **kwargs)


@register_model(tags=("fastvit",), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_sa36"])
def fastvit_sa36(**kwargs: Any) -> FastVit:
    """FastViT-SA36: layers 6-6-18-6, attention stage 4."""
    return _create("fastvit_sa36", **kwargs)


@register_model(tags=("fastvit",), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_ma36"])
def fastvit_ma36(**kwargs: Any) -> FastVit:
    """FastViT-MA36: layers 6-6-18-6, widths 76-608, attention stage 4."""
    return _create("fastvit_ma36", **kwargs)


@register_model(tags=("fastvit", "mobileclip"), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_mci0"])
def fastvit_mci0(**kwargs: Any) -> FastVit:
    """MobileCLIP-S0 image tower MCi0: layers 2-6-10-2, SE downsampling, 512-d projection."""
    return _create("fastvit_mci0", **kwargs)


@register_model(tags=("fastvit", "mobileclip"), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_mci1"])
def fastvit_mci1(**kwargs: Any) -> FastVit:
    """MobileCLIP-S1 image tower MCi1: layers 4-12-20-4, SE downsampling, 512-d projection."""
    return _create("fastvit_mci1", **kwargs)


@register_model(tags=("fastvit", "mobileclip"), input_size=256, pretrained_cfg=PRETRAINED_CFGS["fastvit_mci2"])
def fastvit_mci2(**kwargs: Any) -> FastVit:
    """MobileCLIP-S2 image tower MCi2: layers 4-12-24-4, widths 80-640, SE downsampling, 512-d projection."""
    return _create("fastvit_mci2", **kwargs)
