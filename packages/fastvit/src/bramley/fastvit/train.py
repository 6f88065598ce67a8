"""FastViT's ImageNet recipe on core's classification recipe, plus the paper's optional hard distillation.

The paper's recipe (Sec. 4.1 and the official ``train.py``/README of apple/ml-fastvit), in ``recipes/fastvit_*.yaml``:
AdamW, lr 1e-3 for a global batch of 1024 (8 GPUs x 128), weight decay 0.05, 300 epochs with 5 warmup epochs (from
1e-6) and cosine decay to 1e-5, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25, mixup/cutmix, label
smoothing 0.1, model EMA (decay 0.9995), 256 px, per-variant stochastic depth, and optional hard distillation
(DeiT-style, RegNetY-16GF teacher, alpha 0.5) on the classifier output itself (FastViT has no distillation token).
Data, augmentation, mixup/cutmix and the training loop are core's (:mod:`bramley.core.classification`); this module
adds the ``loss.distillation`` keys and the loss that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.classification import ClassificationLoss, ImageData, LossSection
from bramley.core.errors import ConfigError
from bramley.core.recipe import Recipe, RecipeSchema

__all__ = ["SCHEMA", "Distillation", "FastVitLoss", "HardDistillationLoss", "build_teacher", "run_training"]


@dataclass
class Distillation:
    """``loss.distillation``: DeiT-style hard distillation on the classifier output (``type: hard``).

    The teacher is a bramley model (``teacher``: a run folder, ``save_pretrained`` folder or ``.safetensors`` file)
    or a timm model (``teacher_timm``, e.g. ``regnety_160``) with its weights in ``teacher_checkpoint`` (no downloads).
    """

    type: Literal["none", "hard"] = "none"
    alpha: float = 0.5
    teacher: str | None = None
    teacher_timm: str | None = None
    teacher_checkpoint: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"loss.distillation.alpha must be in [0, 1], got {self.alpha}")

    def check(self) -> None:
        """The settings that depend on each other (checked once the recipe is complete, before any data is read)."""
        if self.type == "none":
            return
        if not (self.teacher or self.teacher_timm):
            raise ConfigError("loss.distillation.type=hard needs loss.distillation.teacher or .teacher_timm")
        if self.teacher_timm and not self.teacher_checkpoint:
            raise ConfigError(
                "loss.distillation.teacher_timm needs loss.distillation.teacher_checkpoint (no downloads)"
            )


@dataclass
class FastVitLoss(LossSection):
    """``loss``: core's label smoothing / mixup / cutmix, and the optional hard distillation."""

    distillation: Distillation = field(default_factory=Distillation)


SCHEMA = RecipeSchema("fastvit", data=ImageData, loss=FastVitLoss, default_recipe="fastvit_t8")


class HardDistillationLoss:
    """``(1 - alpha) * loss + alpha * CE(logits, teacher(images).argmax())`` around core's :class:`ClassificationLoss`.

    The teacher sees exactly the images the student saw (mixed by mixup/cutmix when they are on): core's loss hands
    them to :meth:`_forward`, which keeps them for the distillation term.
    """

    def __init__(self, num_classes: int, loss: FastVitLoss, teacher: nn.Module) -> None:
        self.base = ClassificationLoss(num_classes, loss, forward=self._forward)
        self.teacher = teacher.eval().requires_grad_(False)
        self.alpha = loss.distillation.alpha
        self._seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def _forward(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        logits = model(images)
        self._seen = (images, logits)
        return logits, labels

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, stats = self.base(model, batch)
        images, logits = self._seen
        self._seen = None
        self.teacher.to(images.device)
        with torch.no_grad():
            teacher_labels = self.teacher(images).argmax(dim=-1)
        distill = F.cross_entropy(logits, teacher_labels)
        total = (1 - self.alpha) * loss + self.alpha * distill
        return total, {**stats, "base_loss": loss.detach(), "distill_loss": distill.detach()}


def build_teacher(distillation: Distillation, num_classes: int = 1000) -> nn.Module | None:
    """The distillation teacher in eval mode (``None`` without distillation); a timm teacher is built with
    ``num_classes`` outputs, a bramley one must have them."""
    distillation.check()
    if distillation.type == "none":
        return None
    if distillation.teacher:
        from bramley.core.checkpoint import load_model

        teacher = load_model(distillation.teacher)
        teacher_classes = getattr(teacher, "num_classes", num_classes)
        if teacher_classes != num_classes:
            raise ConfigError(f"the teacher predicts {teacher_classes} classes, the training data has {num_classes}")
        return teacher
    import timm

    from bramley.core.checkpoint import check_state_dict
    from bramley.core.convert import load_official_file

    try:
        teacher = timm.create_model(distillation.teacher_timm, pretrained=False, num_classes=num_classes)
    except RuntimeError as e:  # timm: "Unknown model (...)"
        raise ConfigError(f"loss.distillation.teacher_timm: {e}") from None
    state = load_official_file(distillation.teacher_checkpoint)
    check_state_dict(teacher, state, source=f"teacher checkpoint {distillation.teacher_checkpoint}")
    teacher.load_state_dict(state)
    return teacher.eval()


def run_training(recipe: Recipe, out_dir: Path) -> dict[str, Any]:
    """Train ``recipe`` into the run folder ``out_dir`` (the ``train`` verb's run function); returns the results.

    The number of classes comes from the training data; ``model.kwargs`` holds the factory arguments (per-variant
    ``drop_path_rate``).
    """
    from bramley.core.classification import ClassificationLoss, train_image_classifier

    recipe.loss.distillation.check()

    def make_loss(num_classes: int):
        teacher = build_teacher(recipe.loss.distillation, num_classes)
        if teacher is None:
            return ClassificationLoss(num_classes, recipe.loss)
        return HardDistillationLoss(num_classes, recipe.loss, teacher)

    return train_image_classifier(recipe, out_dir, make_loss=make_loss)
