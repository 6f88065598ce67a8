"""Accuracy, calibration (ECE) and robustness (accuracy under image corruptions) of a classifier."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["CORRUPTIONS", "CalibrationMeter", "calibration_eval", "corrupt", "evaluate"]

ECE_BINS = 15


class CalibrationMeter:
    """Top-1 accuracy (%), mean negative log-likelihood and expected calibration error (%, ``bins`` equal-width
    confidence bins: the gap between accuracy and mean confidence per bin, weighted by the bin's share of samples)."""

    def __init__(self, bins: int = ECE_BINS) -> None:
        self.bins = bins
        self.confidence: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []
        self.nll = 0.0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        self.nll += float(F.cross_entropy(logits, labels, reduction="sum"))
        confidence, predicted = logits.softmax(-1).max(-1)
        self.confidence.append(confidence.cpu())
        self.correct.append((predicted == labels).cpu())

    def compute(self) -> dict[str, float]:
        """``{"top1", "nll", "ece"}``; an error if no sample was seen."""
        if not self.confidence:
            raise ValueError("evaluation data is empty")
        confidence, correct = torch.cat(self.confidence), torch.cat(self.correct).float()
        n = len(correct)
        bin_of = (confidence * self.bins).long().clamp_(0, self.bins - 1)  # bins (k/B, (k+1)/B]; confidence > 0
        count = torch.zeros(self.bins).index_add_(0, bin_of, torch.ones(n))
        gap = torch.zeros(self.bins).index_add_(0, bin_of, correct - confidence).abs()
        ece = float(gap.sum() / n) if count.sum() else 0.0
        return {"top1": 100.0 * float(correct.mean()), "nll": self.nll / n, "ece": 100.0 * ece}


def calibration_eval(model: nn.Module, loader: Iterable) -> dict[str, float]:
    """The trainer's ``eval_fn``: :class:`CalibrationMeter` over ``(images, labels)`` batches."""
    meter = CalibrationMeter()
    with torch.no_grad():
        for images, labels in loader:
            meter.update(model(images), labels)
    return meter.compute()


# --------------------------------------------------------------------------------------------------- corruptions
def _noise(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x + 0.08 * torch.randn(x.shape, generator=generator)


def _blur(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, [5, 5], [1.0, 1.0])


def _contrast(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(-3, -2, -1), keepdim=True)
    return mean + 0.4 * (x - mean)


#: Corruptions of an image in [0, 1] (one severity each, ImageNet-C-like): Gaussian noise (sigma 0.08), Gaussian blur
#: (sigma 1 px) and contrast reduced to 40%.
CORRUPTIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "noise": _noise,
    "blur": _blur,
    "contrast": _contrast,
}


def corrupt(images: torch.Tensor, name: str, mean: Sequence[float], std: Sequence[float], seed: int) -> torch.Tensor:
    """Corruption ``name`` of a batch of *normalized* images: un-normalized to [0, 1], corrupted, clipped and
    normalized again (the noise is drawn from ``seed``)."""
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    raw = images * s + m
    out = CORRUPTIONS[name](raw, torch.Generator().manual_seed(seed)).clamp(0.0, 1.0)
    return (out - m) / s


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    corruptions: Sequence[str] = tuple(CORRUPTIONS),
) -> dict[str, Any]:
    """Clean accuracy / NLL / ECE of ``model`` on ``data`` (``(image, label)`` items), and accuracy and ECE under
    each corruption; ``robust_top1`` is the mean corrupted accuracy."""
    model = model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    meters = {"clean": CalibrationMeter(), **{name: CalibrationMeter() for name in corruptions}}
    for step, (images, labels) in enumerate(loader):
        labels = labels.to(device)
        meters["clean"].update(model(images.to(device)), labels)
        for name in corruptions:
            corrupted = corrupt(images, name, mean, std, seed=step)
            meters[name].update(model(corrupted.to(device)), labels)
    results: dict[str, Any] = meters.pop("clean").compute()
    results["corruptions"] = {name: meter.compute() for name, meter in meters.items()}
    if corruptions:
        results["robust_top1"] = sum(r["top1"] for r in results["corruptions"].values()) / len(corruptions)
    return results
