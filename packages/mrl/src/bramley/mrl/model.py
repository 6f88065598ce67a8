"""Matryoshka heads, the model that puts one on a backbone, and the registered MRL models.

``MatryoshkaLinear`` follows the official ``MRL_Linear_Layer`` semantics (RAIVNLab/MRL, ``MRL.py``): the forward
pass returns one logits tensor per nesting size, as a tuple in nesting order, where size ``m`` only sees the first
``m`` features. MRL keeps an independent ``Linear(m, num_classes)`` per size; MRL-E keeps one ``Linear(d, C)`` whose
weight is sliced to its first ``m`` columns for size ``m`` and whose bias is shared by every size.

Registered models (``bramley.core.create_model(name, **kwargs)``), each taking ``num_classes``, ``nesting`` (default:
powers of two from 8 up to the feature dim) and ``efficient`` (MRL-E):

- ``mrl_resnet50``: the paper's model, a ResNet-50 (timm's, torchvision's layout) with a Matryoshka head;
  ``blurpool=True`` adds the BlurPool of FFCV's training pipeline, which the official checkpoints were trained with.
- ``mrl_backbone``: a Matryoshka head on any backbone named by a bramley or timm model name.
- ``mrl_mlp``: the mini reproduction's MLP on 8x8 digits.

Backbones are built with random weights: nothing is ever downloaded (official weights go through ``convert``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.errors import ConfigError, DataError
from bramley.core.registry import register_model

from .embeddings import truncate_normalize
from .nesting import check_nesting, default_nesting

__all__ = [
    "BlurPoolConv2d",
    "MatryoshkaLinear",
    "MatryoshkaModel",
    "apply_blurpool",
    "build_backbone",
    "mlp_backbone",
    "mrl_backbone",
    "mrl_mlp",
    "mrl_resnet50",
]


# ----------------------------------------------------------------------------------------------------------- blocks
class BlurPoolConv2d(nn.Module):
    """A strided convolution behind a fixed 3x3 binomial blur (FFCV's BlurPool, as in the official MRL training).

    The blur is depthwise, stride 1, zero padding 1, with the filter ``[1, 2, 1] x [1, 2, 1] / 16``; it is a constant,
    so it is not saved with the weights (``blur_filter`` is a non-persistent buffer).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16.0
        self.register_buffer("blur_filter", kernel.expand(conv.in_channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur_filter, padding=1, groups=self.conv.in_channels)
        return self.conv(blurred)


def apply_blurpool(module: nn.Module) -> nn.Module:
    """Put every strided convolution with at least 16 input channels behind a blur (FFCV's rule), in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= 16:
            setattr(module, name, BlurPoolConv2d(child))
        else:
            apply_blurpool(child)
    return module


class MatryoshkaLinear(nn.Module):
    """Linear classifier heads on nested prefixes of a feature vector.

    Args:
        in_features: feature dimension ``d`` of the input.
        num_classes: number of classes.
        nesting: increasing sizes ``m_1 < ... < m_k <= d``; default powers of two from 8 up to ``d``.
        efficient: MRL-E: one weight matrix shared by all sizes (sliced), one shared bias.
        bias: whether the heads have a bias.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        nesting: Sequence[int] | None = None,
        efficient: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.nesting = check_nesting(nesting if nesting is not None else default_nesting(in_features), in_features)
        self.efficient = efficient
        if efficient:
            self.shared = nn.Linear(self.nesting[-1], num_classes, bias=bias)
            self.heads = None
        else:
            self.shared = None
            self.heads = nn.ModuleList(nn.Linear(m, num_classes, bias=bias) for m in self.nesting)

    def reset_parameters(self) -> None:
        for layer in [self.shared] if self.efficient else self.heads:
            layer.reset_parameters()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.shape[-1] != self.in_features:
            raise DataError(f"MatryoshkaLinear expects {self.in_features} features, got shape {tuple(x.shape)}")
        if self.efficient:
            w, b = self.shared.weight, self.shared.bias
            return tuple(F.linear(x[..., :m], w[:, :m], b) for m in self.nesting)
        return tuple(head(x[..., :m]) for head, m in zip(self.heads, self.nesting))

    def extra_repr(self) -> str:
        kind = "MRL-E" if self.efficient else "MRL"
        return f"{kind}, in_features={self.in_features}, num_classes={self.num_classes}, nesting={self.nesting}"


def mlp_backbone(out_dim: int, in_features: int = 64, hidden: int = 256) -> nn.Sequential:
    """Flatten, then two ``Linear-BatchNorm-ReLU`` layers and a linear map to the ``out_dim`` representation."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_dim),
    )


# ------------------------------------------------------------------------------------------------------------ model
class MatryoshkaModel(nn.Module):
    """A backbone producing a ``feature_dim`` vector, followed by a :class:`MatryoshkaLinear` head.

    ``forward`` returns the tuple of per-size logits (train it with :class:`~bramley.mrl.losses.MatryoshkaLoss`);
    ``embed`` returns the Matryoshka representation itself, optionally truncated and L2-normalised.

    Args:
        backbone: any module mapping a batch to ``(batch, feature_dim)`` features (e.g. a timm model built with
            ``num_classes=0``).
        feature_dim: the backbone's output dimension.
        num_classes: classes of the head.
        nesting: nesting sizes (default powers of two up to ``feature_dim``).
        efficient: MRL-E head instead of MRL.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        num_classes: int,
        nesting: Sequence[int] | None = None,
        efficient: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = MatryoshkaLinear(feature_dim, num_classes, nesting, efficient)

    @property
    def nesting(self) -> list[int]:
        return self.head.nesting

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim:
            raise DataError(
                f"backbone returned features of shape {tuple(feats.shape)}, expected (batch, {self.feature_dim}); "
                "build timm backbones with num_classes=0 so they return pooled features"
            )
        return feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.head(self.forward_features(x))

    def embed(self, x: torch.Tensor, dim: int | None = None, normalize: bool = False) -> torch.Tensor:
        """The representation truncated to its first ``dim`` features (all by default), optionally normalised."""
        feats = self.forward_features(x)
        if dim is None and not normalize:
            return feats
        return truncate_normalize(feats, dim, normalize=normalize)


def build_backbone(name: str, source: str = "auto", **kwargs: Any) -> tuple[nn.Module, int]:
    """Build a classifier-less backbone by name, with random weights, and return ``(module, feature_dim)``.

    Args:
        name: a bramley registry model name or a timm model name.
        source: ``"bramley"``, ``"timm"`` or ``"auto"`` (bramley registry first, then timm).
        **kwargs: passed to the model factory (``num_classes=0`` is added so the backbone returns pooled features).

    Raises:
        ConfigError: an unknown name or source, ``pretrained`` weights asked for (nothing is downloaded), or a
            backbone without an integer ``num_features``.
    """
    from bramley.core.registry import create_model, list_models

    if source not in ("auto", "bramley", "timm"):
        raise ConfigError(f"source must be 'auto', 'bramley' or 'timm', got {source!r}")
    if kwargs.get("pretrained"):
        raise ConfigError(
            "pretrained backbones would be downloaded, which bramley never does: convert official MRL weights with "
            "`bramley mrl convert`, or load a trained checkpoint"
        )
    kwargs = {"num_classes": 0, **kwargs}
    kwargs.pop("pretrained", None)
    if source == "bramley" or (source == "auto" and name in list_models()):
        if name not in list_models():
            raise ConfigError(f"unknown backbone {name!r}: not a registered bramley model")
        model = create_model(name, **kwargs)
    else:
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"unknown backbone {name!r}: neither a registered bramley model nor a timm model")
        model = timm.create_model(name, pretrained=False, **kwargs)
    feature_dim = getattr(model, "num_features", None)
    if not isinstance(feature_dim, int):
        raise ConfigError(f"backbone {name!r} has no integer num_features; wrap it in MatryoshkaModel(feature_dim=..)")
    return model, feature_dim


# -------------------------------------------------------------------------------------------------------- factories
_TAGS = ("image-classification", "mrl")


@register_model(tags=_TAGS)
def mrl_resnet50(
    num_classes: int = 1000,
    nesting: Sequence[int] | None = None,
    efficient: bool = False,
    blurpool: bool = False,
    **backbone_kwargs: Any,
) -> MatryoshkaModel:
    """MRL ResNet-50 (the paper's model): 2048-d representation, nesting 8..2048; blurpool=True as FFCV trains."""
    backbone, feature_dim = build_backbone("resnet50", "timm", **backbone_kwargs)
    if blurpool:
        apply_blurpool(backbone)
    return MatryoshkaModel(backbone, feature_dim, num_classes, nesting, efficient)


@register_model(tags=_TAGS)
def mrl_backbone(
    backbone: str = "resnet18",
    source: str = "auto",
    num_classes: int = 1000,
    nesting: Sequence[int] | None = None,
    efficient: bool = False,
    **backbone_kwargs: Any,
) -> MatryoshkaModel:
    """Matryoshka head on any backbone named by a bramley or timm model name (random weights)."""
    module, feature_dim = build_backbone(backbone, source, **backbone_kwargs)
    return MatryoshkaModel(module, feature_dim, num_classes, nesting, efficient)


@register_model(tags=_TAGS, input_size=(1, 8, 8))
def mrl_mlp(
    num_classes: int = 10,
    feature_dim: int = 64,
    nesting: Sequence[int] | None = None,
    efficient: bool = False,
    in_features: int = 64,
    hidden: int = 256,
) -> MatryoshkaModel:
    """The mini reproduction's MLP (8x8 digits -> 256 -> 256 -> feature_dim) with a Matryoshka head."""
    return MatryoshkaModel(mlp_backbone(feature_dim, in_features, hidden), feature_dim, num_classes, nesting, efficient)
