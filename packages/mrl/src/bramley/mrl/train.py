"""The MRL classification recipe: its loss section, the trainer's loss and per-size evaluation, the train run.

Recipes (``bramley mrl train --recipe NAME|FILE``) have core's six sections (:mod:`bramley.core.recipe`): ``model``
names a registered MRL model (``mrl_resnet50``, ``mrl_backbone``, ``mrl_mlp``), ``data`` is core's
:class:`~bramley.core.classification.ImageData` and ``loss`` is :class:`MatryoshkaLossSection`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from bramley.core.classification import ImageData
from bramley.core.errors import ConfigError
from bramley.core.metrics import ClassificationMeter
from bramley.core.recipe import RecipeSchema

from .losses import MatryoshkaLoss

__all__ = ["RECIPES", "MatryoshkaLossSection", "MatryoshkaTrainLoss", "nesting_eval", "train"]


@dataclass
class MatryoshkaLossSection:
    """``loss``: the Matryoshka loss, cross-entropy summed over the nesting sizes.

    ``relative_importance`` holds one non-negative weight per nesting size (``null``: every size weighted 1).
    """

    label_smoothing: float = 0.1
    relative_importance: list[float] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.relative_importance is not None and (
            not self.relative_importance or any(w < 0 for w in self.relative_importance)
        ):
            raise ConfigError(
                f"loss.relative_importance must be non-negative weights, one per nesting size, got "
                f"{self.relative_importance}"
            )


#: The recipe schema of ``bramley mrl train``.
RECIPES = RecipeSchema("mrl", data=ImageData, loss=MatryoshkaLossSection, default_recipe="imagenet_resnet50")


def _nesting(model: nn.Module) -> list[int]:
    module = getattr(model, "module", model)  # DDP / FSDP wrap the model
    nesting = getattr(module, "nesting", None)
    if nesting is None:
        raise ConfigError(f"{type(module).__name__} is not an MRL model (no nesting sizes); use an mrl_* model")
    return nesting


class MatryoshkaTrainLoss:
    """The trainer's ``loss_fn(model, (images, labels))``: :class:`MatryoshkaLoss`, with each size's cross-entropy
    reported as ``ce_<size>``.

    Args:
        label_smoothing: cross-entropy label smoothing.
        relative_importance: one weight per nesting size (default all 1); checked against the model's sizes on the
            first batch.
    """

    def __init__(self, label_smoothing: float = 0.0, relative_importance: list[float] | None = None) -> None:
        self.loss = MatryoshkaLoss(relative_importance, label_smoothing)

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = batch[0], batch[1]
        nesting = _nesting(model)
        weights = self.loss.relative_importance
        if weights is not None and len(weights) != len(nesting):
            raise ConfigError(f"loss.relative_importance has {len(weights)} weights for the nesting sizes {nesting}")
        per_size = self.loss.per_size(model(images), labels)
        total = (per_size * per_size.new_tensor(weights or [1.0] * len(per_size))).sum()
        return total, {f"ce_{m}": v for m, v in zip(nesting, per_size.detach())}


@torch.no_grad()
def nesting_eval(model: nn.Module, loader: Iterable) -> dict[str, float]:
    """The trainer's ``eval_fn``: top-1 and top-5 accuracy (%) of every nesting size, as ``top1_<size>``."""
    nesting = _nesting(model)
    meters = [ClassificationMeter() for _ in nesting]
    for images, labels in loader:
        for meter, logits in zip(meters, model(images)):
            meter.update(logits, labels)
    metrics: dict[str, float] = {}
    for m, meter in zip(nesting, meters):
        scores = meter.compute()
        metrics[f"top1_{m}"], metrics[f"top5_{m}"] = scores["top1"], scores["top5"]
    return metrics


def train(recipe: Any, out_dir: str | os.PathLike) -> dict[str, Any]:
    """``bramley mrl train``: core's image classification run with the Matryoshka loss and per-size evaluation."""
    from bramley.core.classification import train_image_classifier
    from bramley.core.registry import get_model_entry, list_models

    name = recipe.model.name
    if name in list_models() and get_model_entry(name).package != "mrl":
        mrl_models = ", ".join(list_models(package="mrl"))
        raise ConfigError(f"model.name={name} is not an MRL model; choose one of {mrl_models}")
    nesting = _check_model(recipe)
    weights = recipe.loss.relative_importance
    if weights is not None and nesting is not None and len(weights) != len(nesting):
        raise ConfigError(f"loss.relative_importance has {len(weights)} weights for the nesting sizes {nesting}")
    loss = MatryoshkaTrainLoss(recipe.loss.label_smoothing, weights)
    return train_image_classifier(recipe, out_dir, loss_fn=loss, eval_fn=nesting_eval)


def _check_model(recipe: Any) -> list[int] | None:
    """Build the recipe's model on the meta device (no memory, no initialisation), so that its mistakes (a mistyped
    argument, nesting sizes above the feature dim) are reported before the data is read; returns its nesting sizes,
    or ``None`` when it cannot be built there (the real build then reports any problem)."""
    from bramley.core.recipe import build_model

    try:
        with torch.device("meta"):
            model = build_model(recipe.model.name, {"num_classes": 1, **recipe.model.kwargs})
    except ConfigError:
        raise
    except Exception:
        return None
    return _nesting(model)
