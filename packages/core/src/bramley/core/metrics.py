"""Evaluation metrics shared by the method packages."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ClassificationMeter"]


class ClassificationMeter:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of a classifier, accumulated over an evaluation pass.

    ``meter.update(logits, labels)`` per batch, then ``meter.compute()``. Logits are scored in float32; with fewer
    than five classes top-5 is top-``num_classes``.
    """

    def __init__(self) -> None:
        self.correct1 = self.correct5 = self.total = 0
        self.loss_sum = 0.0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        self.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        self.correct1 += int((top[:, 0] == labels).sum())
        self.correct5 += int((top == labels[:, None]).any(dim=-1).sum())
        self.total += labels.numel()

    def compute(self) -> dict[str, float]:
        """``{"top1", "top5", "loss"}``; an error if no sample was seen."""
        if self.total == 0:
            raise ValueError("evaluation data is empty")
        n = self.total
        return {"top1": 100.0 * self.correct1 / n, "top5": 100.0 * self.correct5 / n, "loss": self.loss_sum / n}
