"""MobileOne's training recipe: core's image classification recipe plus the paper's weight-decay annealing.

Recipes (``recipes/*.yaml``) have the six sections of :mod:`bramley.core.recipe`. ``data`` is core's
:class:`~bramley.core.classification.ImageData` (ImageFolder roots ``data.train`` / ``data.val``, multi-scale
sampling, or the bundled digits); ``loss`` is core's :class:`~bramley.core.classification.LossSection` with one more
key, ``weight_decay_end`` (see :class:`MobileOneLoss`). Run with ``bramley-mobileone train --recipe imagenet --out DIR
data.train=... data.val=...``; on many GPUs with ``torchrun --nproc_per_node 8 -m bramley.mobileone.cli train ...``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from bramley.core.classification import ImageData, LossSection, accuracy_eval, train_image_classifier
from bramley.core.errors import ConfigError, DataError
from bramley.core.recipe import Recipe, RecipeSchema

__all__ = ["RECIPES", "MobileOneLoss", "WeightDecayCosine", "evaluate", "train"]


@dataclass
class MobileOneLoss(LossSection):
    """``loss``: label smoothing, mixup / cutmix (core's keys) and the paper's annealed weight-decay term.

    ``weight_decay_end``: anneal the weight decay from ``optim.weight_decay`` to this value with a cosine over the
    run (paper Sec. 3.3: "annealing the loss incurred by weight decay regularization"); ``null`` keeps it constant.
    """

    weight_decay_end: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weight_decay_end is not None and self.weight_decay_end < 0:
            raise ConfigError(f"loss.weight_decay_end must be >= 0, got {self.weight_decay_end}")


RECIPES = RecipeSchema("mobileone", data=ImageData, loss=MobileOneLoss, default_recipe="imagenet")


class WeightDecayCosine:
    """Trainer callback annealing weight decay from its initial value to ``end`` with a cosine over all steps.

    MobileOne anneals the weight decay coefficient with the same cosine as the learning rate (paper, Sec. 4:
    "relaxing regularization" for small models). Applied to every param group whose initial decay is non-zero.
    """

    def __init__(self, end: float):
        if end < 0:
            raise ConfigError(f"the final weight decay must be >= 0, got {end}")
        self.end = end
        self._start: list[float] | None = None

    def __call__(self, trainer) -> None:
        groups = trainer.optimizer.param_groups
        if self._start is None:
            self._start = [g.get("weight_decay", 0.0) for g in groups]
        progress = min(1.0, trainer.step / max(1, trainer.total_steps))
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        for group, start in zip(groups, self._start):
            if start > 0:
                group["weight_decay"] = self.end + (start - self.end) * factor

    def state_dict(self) -> dict[str, list[float] | None]:
        """The initial decays: after a resume the optimizer holds already-annealed values."""
        return {"start": self._start}

    def load_state_dict(self, state: dict[str, list[float] | None]) -> None:
        self._start = state["start"]


def train(recipe: Recipe, out_dir: str | os.PathLike | None) -> dict[str, Any]:
    """Train ``recipe`` (a resolved :data:`RECIPES` recipe) into the run folder ``out_dir``; returns the results.

    Core's :func:`~bramley.core.classification.train_image_classifier` with the weight-decay annealing callback when
    ``loss.weight_decay_end`` is set.
    """
    callbacks = []
    end = recipe.loss.weight_decay_end
    if end is not None:
        if end > recipe.optim.weight_decay:
            raise ConfigError(
                f"loss.weight_decay_end={end} exceeds optim.weight_decay={recipe.optim.weight_decay}: the decay "
                "anneals down to it"
            )
        callbacks.append(WeightDecayCosine(end))
    return train_image_classifier(recipe, out_dir, callbacks=callbacks)


def evaluate(
    model: nn.Module, root: str | Path, image_size: int = 224, crop_pct: float = 0.875, batch_size: int = 64
) -> dict[str, float]:
    """Top-1 / top-5 (%) and mean cross-entropy of ``model`` on the ImageFolder at ``root`` (eval transform), on the
    model's device."""
    from torch.utils.data import DataLoader

    from bramley.core.data import ImageFolder

    data = ImageFolder(root, image_size=image_size, crop_pct=crop_pct)
    num_classes = getattr(model, "num_classes", len(data.classes))
    if len(data.classes) != num_classes:
        raise DataError(f"{root} has {len(data.classes)} classes but the model predicts {num_classes}")
    loader = DataLoader(data, batch_size=batch_size)
    return accuracy_eval(device=next(model.parameters()).device)(model.eval(), loader)
