"""MobileOne (Vasu et al., "An Improved One millisecond Mobile Backbone", CVPR 2023, arXiv:2206.04040).

A plain feed-forward stack of MobileOne blocks: each stage repeats (3x3 depthwise block, 1x1 pointwise block) pairs,
every block over-parameterized at train time (``num_conv_branches`` conv-BN branches + 1x1 scale branch + BN skip)
and folded into one conv by :func:`bramley.core.layers.reparameterize_model`. Architecture facts follow the official
code (github.com/apple/ml-mobileone, ``mobileone.py``):

- depths (2, 8, 10, 1) block pairs at strides 4, 8, 16, 32; base widths (64, 128, 256, 512) x per-variant multipliers;
- stem: one 3x3 stride-2 block, ``min(64, int(64 * w0))`` channels, a single conv branch in every variant;
- S0 uses 4 conv branches, S1-S4 one; S4 puts squeeze-excite in the last 5 pairs of stage 3 and in stage 4;
- ReLU everywhere, global average pool, linear classifier.

Module names match timm's ``byobnet`` MobileOne (``stem``, ``stages.{i}.{j}``) so state dicts map by renaming only
the SE and head keys (see :mod:`bramley.mobileone.convert`). timm's model interface comes from
:class:`bramley.core.features.StagedBackbone`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn

from bramley.core.features import StagedBackbone
from bramley.core.layers import MobileOneBlock
from bramley.core.registry import IMAGENET_MEAN, IMAGENET_STD, register_model

__all__ = ["PRETRAINED_CFG", "VARIANTS", "MobileOne", "MobileOneConfig", "build_mobileone"]


@dataclass(frozen=True)
class MobileOneConfig:
    """Architecture of one MobileOne variant (values from the official ``PARAMS`` table)."""

    width_multipliers: tuple[float, float, float, float]
    num_conv_branches: int = 1
    se_blocks: tuple[int, int, int, int] = (0, 0, 0, 0)
    depths: tuple[int, int, int, int] = (2, 8, 10, 1)
    base_channels: tuple[int, int, int, int] = (64, 128, 256, 512)


VARIANTS: dict[str, MobileOneConfig] = {
    "s0": MobileOneConfig((0.75, 1.0, 1.0, 2.0), num_conv_branches=4),
    "s1": MobileOneConfig((1.5, 1.5, 2.0, 2.5)),
    "s2": MobileOneConfig((1.5, 2.0, 2.5, 4.0)),
    "s3": MobileOneConfig((2.0, 2.5, 3.0, 4.0)),
    "s4": MobileOneConfig((3.0, 3.5, 3.5, 4.0), se_blocks=(0, 0, 5, 1)),
}


class MobileOne(StagedBackbone):
    """MobileOne classifier / backbone, with timm's model interface.

    Args:
        width_multipliers: per-stage multipliers of ``base_channels``.
        depths: number of (depthwise, pointwise) block pairs per stage.
        num_conv_branches: over-parameterization factor ``k`` of every stage block (the stem always has one).
        se_blocks: how many trailing block pairs of each stage use squeeze-excite.
        base_channels: stage widths before the multipliers.
        num_classes: classifier outputs; 0 gives a backbone returning pooled features.
        in_chans: input channels.
        global_pool: ``"avg"``, or ``""`` (with ``num_classes=0``) for the unpooled feature map.
        inference_mode: build the fused architecture directly (to load fused checkpoints).
        drop_rate: dropout before the classifier (0 in the paper).
        use_scale_branch: train-time 1x1 scale branches (ablation switch; on in the paper).
        use_identity: train-time BatchNorm skip branches (ablation switch; on in the paper).
    """

    classifier_name = "fc"

    def __init__(
        self,
        width_multipliers: Sequence[float] = (0.75, 1.0, 1.0, 2.0),
        depths: Sequence[int] = (2, 8, 10, 1),
        num_conv_branches: int = 1,
        se_blocks: Sequence[int] = (0, 0, 0, 0),
        base_channels: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        inference_mode: bool = False,
        drop_rate: float = 0.0,
        use_scale_branch: bool = True,
        use_identity: bool = True,
    ):
        super().__init__()
        if not len(width_multipliers) == len(depths) == len(se_blocks) == len(base_channels):
            raise ValueError("width_multipliers, depths, se_blocks and base_channels need one entry per stage")
        if any(se > d for se, d in zip(se_blocks, depths)):
            raise ValueError(f"se_blocks {tuple(se_blocks)} exceed the stage depths {tuple(depths)}")
        if in_chans < 1:
            raise ValueError(f"need in_chans >= 1, got {in_chans}")
        self.in_chans = in_chans
        branch_kwargs = dict(
            inference_mode=inference_mode, use_scale_branch=use_scale_branch, use_identity=use_identity
        )

        stem_chs = min(base_channels[0], int(base_channels[0] * width_multipliers[0]))
        self.stem = MobileOneBlock(in_chans, stem_chs, 3, stride=2, **branch_kwargs)
        stages, in_chs, reduction, feature_info = [], stem_chs, 2, []
        for i, (base, mult, depth, n_se) in enumerate(zip(base_channels, width_multipliers, depths, se_blocks)):
            out_chs = int(base * mult)
            blocks = []
            for j in range(depth):
                use_se = j >= depth - n_se
                kw = dict(branch_kwargs, use_se=use_se, num_conv_branches=num_conv_branches)
                blocks.append(MobileOneBlock(in_chs, in_chs, 3, stride=2 if j == 0 else 1, groups=in_chs, **kw))
                blocks.append(MobileOneBlock(in_chs, out_chs, 1, **kw))
                in_chs = out_chs
            stages.append(nn.Sequential(*blocks))
            reduction *= 2
            feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.feature_info = feature_info
        self.final_conv = nn.Identity()  # the last stage ends the trunk
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = self.init_classifier(in_chs, num_classes, global_pool)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, dropout, classifier; ``pre_logits`` stops before the classifier."""
        x = self.head_drop(self.pool(x))
        return x if pre_logits else self.fc(x)


# --- configs --------------------------------------------------------------------------------------------------------
#: ``register_model(pretrained_cfg=...)`` of every variant: the eval preprocessing of ``recipes/imagenet.yaml``
#: (224 px, bilinear, crop 0.875) and timm's head / first-conv names for this layout.
PRETRAINED_CFG: dict[str, Any] = dict(
    pool_size=(7, 7),  # the 224 px input over the 32x reduction
    crop_pct=0.875,
    interpolation="bilinear",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    num_classes=1000,
    first_conv=("stem.conv_kxk.0.conv", "stem.conv_scale.conv"),
    classifier="fc",
    license="apache-2.0",
    paper_name="MobileOne: An Improved One millisecond Mobile Backbone",
    paper_ids="arXiv:2206.04040",
    origin_url="https://github.com/apple/ml-mobileone",
)


# --- factories --------------------------------------------------------------------------------------------------------
def build_mobileone(variant: str, **kwargs) -> MobileOne:
    """MobileOne-``variant`` (``"s0"``..``"s4"``) with ``kwargs`` such as ``num_classes``, ``in_chans``."""
    variant = variant.removeprefix("mobileone_")
    if variant not in VARIANTS:
        raise ValueError(f"unknown MobileOne variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    arch = asdict(VARIANTS[variant])
    overlap = sorted(set(arch) & set(kwargs))
    if overlap:
        raise ValueError(
            f"mobileone_{variant} fixes {overlap}; build MobileOne(...) directly for a custom architecture"
        )
    return MobileOne(**arch, **kwargs)


@register_model(tags=("mobileone", "image-classification"), pretrained_cfg=PRETRAINED_CFG)
def mobileone_s0(**kwargs) -> MobileOne:
    """MobileOne-S0 (k=4 branches, 2.1M fused params, 71.4% ImageNet top-1 in the paper)."""
    return build_mobileone("s0", **kwargs)


@register_model(tags=("mobileone", "image-classification"), pretrained_cfg=PRETRAINED_CFG)
def mobileone_s1(**kwargs) -> MobileOne:
    """MobileOne-S1 (4.8M fused params, 75.9% ImageNet top-1 in the paper)."""
    return build_mobileone("s1", **kwargs)


@register_model(tags=("mobileone", "image-classification"), pretrained_cfg=PRETRAINED_CFG)
def mobileone_s2(**kwargs) -> MobileOne:
    """MobileOne-S2 (7.8M fused params, 77.4% ImageNet top-1 in the paper)."""
    return build_mobileone("s2", **kwargs)


@register_model(tags=("mobileone", "image-classification"), pretrained_cfg=PRETRAINED_CFG)
def mobileone_s3(**kwargs) -> MobileOne:
    """MobileOne-S3 (10.1M fused params, 78.1% ImageNet top-1 in the paper)."""
    return build_mobileone("s3", **kwargs)


@register_model(tags=("mobileone", "image-classification"), pretrained_cfg=PRETRAINED_CFG)
def mobileone_s4(**kwargs) -> MobileOne:
    """MobileOne-S4 (SE in the last stages, 14.8M fused params, 79.4% ImageNet top-1 in the paper)."""
    return build_mobileone("s4", **kwargs)
