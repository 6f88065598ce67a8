"""MobileOne's training recipe: core's image classification recipe, nothing of its own.

Recipes (``recipes/*.yaml``) have the six sections of :mod:`bramley.core.recipe`. ``data`` is core's
:class:`~bramley.core.classification.ImageData` (ImageFolder roots ``data.train`` / ``data.val``, multi-scale
sampling, or the bundled digits), ``loss`` core's :class:`~bramley.core.classification.LossSection`; the paper's
annealed weight decay is core's ``optim.weight_decay_end``. Run with ``bramley-mobileone train --recipe imagenet
--out DIR data.train=... data.val=...``; on many GPUs with ``torchrun --nproc_per_node 8 -m bramley.mobileone.cli
train ...``.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from bramley.core.classification import ImageData, LossSection, accuracy_eval
from bramley.core.errors import DataError
from bramley.core.recipe import RecipeSchema

__all__ = ["RECIPES", "evaluate"]

RECIPES = RecipeSchema("mobileone", data=ImageData, loss=LossSection, default_recipe="imagenet")


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
