"""Matryoshka heads and the wrapper that puts one on any backbone.

``MatryoshkaLinear`` follows the official ``MRL_Linear_Layer`` semantics (RAIVNLab/MRL, ``MRL.py``): the forward
pass returns one logits tensor per nesting size, as a tuple in nesting order, where size ``m`` only sees the first
``m`` features. MRL keeps an independent ``Linear(m, num_classes)`` per size; MRL-E keeps one ``Linear(d, C)`` whose
weight is sliced to its first ``m`` columns for size ``m`` and whose bias is shared by every size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .embeddings import truncate_normalize
from .nesting import check_nesting, default_nesting

__all__ = [
    "MatryoshkaLinear",
    "MatryoshkaModel",
    "build_backbone",
    "build_mrl_model",
    "load_mrl_model",
    "save_mrl_model",
]


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
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
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
            raise ValueError(f"MatryoshkaLinear expects {self.in_features} features, got shape {tuple(x.shape)}")
        if self.efficient:
            w, b = self.shared.weight, self.shared.bias
            return tuple(F.linear(x[..., :m], w[:, :m], b) for m in self.nesting)
        return tuple(head(x[..., :m]) for head, m in zip(self.heads, self.nesting))

    def extra_repr(self) -> str:
        kind = "MRL-E" if self.efficient else "MRL"
        return f"{kind}, in_features={self.in_features}, num_classes={self.num_classes}, nesting={self.nesting}"


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

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim:
            raise ValueError(
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
    """Build a classifier-less backbone by name and return ``(module, feature_dim)``.

    Args:
        name: a bramley registry model name or a timm model name.
        source: ``"bramley"``, ``"timm"`` or ``"auto"`` (bramley registry first, then timm).
        **kwargs: passed to the model factory (``num_classes=0`` is added so the backbone returns pooled features).
    """
    from bramley.core.registry import create_model, list_models

    if source not in ("auto", "bramley", "timm"):
        raise ValueError(f"source must be 'auto', 'bramley' or 'timm', got {source!r}")
    kwargs = {"num_classes": 0, **kwargs}
    if source == "bramley" or (source == "auto" and name in list_models()):
        model = create_model(name, **kwargs)
    else:
        import timm

        if not timm.is_model(name):
            raise ValueError(f"unknown backbone {name!r}: neither a registered bramley model nor a timm model")
        model = timm.create_model(name, pretrained=False, **kwargs)
    feature_dim = getattr(model, "num_features", None)
    if not isinstance(feature_dim, int):
        raise ValueError(f"backbone {name!r} has no integer num_features; wrap it with MatryoshkaModel(feature_dim=..)")
    return model, feature_dim


def build_mrl_model(
    backbone: str,
    num_classes: int,
    nesting: Sequence[int] | None = None,
    efficient: bool = False,
    source: str = "auto",
    backbone_kwargs: dict[str, Any] | None = None,
) -> MatryoshkaModel:
    """A :class:`MatryoshkaModel` on a named backbone; the build recipe is kept in ``model.model_config``."""
    module, feature_dim = build_backbone(backbone, source, **(backbone_kwargs or {}))
    model = MatryoshkaModel(module, feature_dim, num_classes, nesting, efficient)
    model.model_config = {
        "backbone": backbone,
        "source": source,
        "num_classes": num_classes,
        "nesting": model.nesting,
        "efficient": efficient,
        "backbone_kwargs": dict(backbone_kwargs or {}),
    }
    return model


def save_mrl_model(model: MatryoshkaModel, path: str | os.PathLike) -> Path:
    """Save a model made by :func:`build_mrl_model` as safetensors with its build recipe in the metadata."""
    from bramley.core.checkpoint import save_checkpoint

    config = getattr(model, "model_config", None)
    if config is None or "backbone" not in config:
        raise ValueError("model has no MRL model_config; build it with build_mrl_model (or use save_checkpoint)")
    return save_checkpoint(model, path, config={"bramley_mrl": config})


def load_mrl_model(path: str | os.PathLike, device: str = "cpu") -> MatryoshkaModel:
    """Rebuild and load a model saved by :func:`save_mrl_model`."""
    from bramley.core.checkpoint import CheckpointError, load_checkpoint, read_metadata

    config = read_metadata(path).get("bramley_config")
    if not isinstance(config, dict) or "bramley_mrl" not in config:
        raise CheckpointError(f"checkpoint {path} was not written by save_mrl_model (no bramley_mrl config)")
    model = build_mrl_model(**config["bramley_mrl"])
    load_checkpoint(path, model, device=device)
    return model.to(device)
