"""Losses of reinforced training: KL divergence to soft targets, and online distillation (the teacher in the loop)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["OnlineDistillationLoss", "SoftTargetLoss", "kl_to_targets"]


def kl_to_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``KL(targets || softmax(logits))`` (targets are probability vectors; 0 log 0 = 0).

    Its gradient equals soft-target cross-entropy's; the value is 0 when the student matches the target exactly.
    """
    log_q = F.log_softmax(logits.float(), dim=-1)
    targets = targets.float()
    return (torch.xlogy(targets, targets) - targets * log_q).sum(-1).mean()


class SoftTargetLoss:
    """The trainer's ``loss_fn(model, (images, targets))`` on a :class:`~.data.ReinforcedDataset`: KL divergence to
    the batch's targets. Reports ``acc``: top-1 agreement with the targets' argmax (the label, or the teachers'
    top class on stored samples)."""

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, targets = batch
        logits = model(images)
        if targets.ndim == 1:  # evaluation batches carry integer labels
            return F.cross_entropy(logits.float(), targets), {"acc": (logits.argmax(-1) == targets).float().mean()}
        loss = kl_to_targets(logits, targets)
        return loss, {"acc": (logits.detach().argmax(-1) == targets.argmax(-1)).float().mean()}


class OnlineDistillationLoss:
    """Knowledge distillation with the teacher in the loop: KL divergence from the teacher ensemble's probabilities
    on the very batch the student sees (full probabilities, no top-k) to the student's.

    Args:
        teacher: ``images -> probabilities (B, C)`` (:class:`~.reinforce.TeacherEnsemble`), moved to the batch's
            device on first use.
    """

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher.eval()

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, targets = batch
        logits = model(images)
        if targets.ndim == 1:
            return F.cross_entropy(logits.float(), targets), {"acc": (logits.argmax(-1) == targets).float().mean()}
        with torch.no_grad():
            probs = self.teacher.to(images.device)(images)
        loss = kl_to_targets(logits, probs)
        return loss, {"acc": (logits.detach().argmax(-1) == targets.argmax(-1)).float().mean()}
