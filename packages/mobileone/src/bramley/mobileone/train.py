"""MobileOne's training recipe: core's image classification recipe, nothing of its own.

Recipes (``recipes/*.yaml``) have the six sections of :mod:`bramley.core.recipe`. ``data`` is core's
:class:`~bramley.core.classification.ImageData` (ImageFolder roots ``data.train`` / ``data.val``, multi-scale
sampling, or the bundled digits), ``loss`` core's :class:`~bramley.core.classification.LossSection`; the paper's
annealed weight decay is core's ``optim.weight_decay_end``. Run with ``bramley-mobileone train --recipe imagenet
--out DIR data.train=... data.val=...``; on many GPUs with ``torchrun --nproc_per_node 8 -m bramley.mobileone.cli
train ...``.
"""

from __future__ import annotations

from bramley.core.classification import ImageData, LossSection
from bramley.core.classification import evaluate_image_folder as evaluate
from bramley.core.recipe import RecipeSchema

__all__ = ["RECIPES", "evaluate"]

RECIPES = RecipeSchema("mobileone", data=ImageData, loss=LossSection, default_recipe="imagenet")
