"""Accuracy against FLOPs of a SHARCS model: every fixed width, the router, and the router's confidence knob."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from bramley.core.errors import ConfigError, DataError

from .model import SharcsModel

__all__ = ["accuracy_vs_flops", "eval_dataset", "routed_outputs", "sample_input"]


def eval_dataset(source: str | os.PathLike, image_size: int, crop_pct: float = 0.875) -> Dataset:
    """``"digits"`` (scikit-learn's bundled digits, test split, 3 channels) or an ImageFolder root."""
    if str(source) == "digits":
        from bramley.core.data import DigitsDataset

        return DigitsDataset("test", seed=0, image_size=image_size, in_chans=3)
    from bramley.core.data import ImageFolder

    return ImageFolder(source, image_size=image_size, crop_pct=crop_pct)


def sample_input(dataset: Dataset) -> torch.Tensor:
    """One sample of ``dataset`` as a batch of one (what FLOPs are counted on)."""
    if len(dataset) == 0:
        raise DataError("the dataset is empty")
    return dataset[0][0].unsqueeze(0)


@torch.no_grad()
def routed_outputs(
    model: SharcsModel, dataset: Dataset, thresholds: Sequence[float | None], batch_size: int = 256
) -> dict[str, Any]:
    """One pass over ``dataset``: labels, router logits and the logits at every width (the stem runs once)."""
    device = next(model.parameters()).device
    labels, router, per_width = [], [], [[] for _ in model.widths]
    for batch in DataLoader(dataset, batch_size=batch_size):
        x, y = batch[0].to(device), batch[1]
        tokens, mask = model.stem(x)
        router.append(model.router(tokens, mask).cpu())
        for i, w in enumerate(model.widths):
            per_width[i].append(model.tail(tokens, w, mask).argmax(-1).cpu())
        labels.append(y)
    if not labels:
        raise DataError("the evaluation set is empty")
    return {
        "labels": torch.cat(labels),
        "router_logits": torch.cat(router),
        "predictions": torch.stack([torch.cat(p) for p in per_width]),  # (widths, samples)
    }


def accuracy_vs_flops(
    model: SharcsModel,
    dataset: Dataset,
    thresholds: Sequence[float] = (),
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """Rows ``{mode, top1, mean_width, mflops, flops_vs_full}``: every fixed width (no router), the router's argmax
    and each confidence threshold. FLOPs per sample come from :meth:`SharcsModel.flops_per_width` (router included
    for routed rows); ``flops_vs_full`` is relative to the full-width network without router.

    Routing a sample to width ``w`` gives exactly its width-``w`` prediction (a sample's result does not depend on
    its batch), so every row is read from one pass that runs each width on every sample.
    """
    for t in thresholds:
        if not 0.0 < t < 1.0:
            raise ConfigError(f"confidence thresholds must be in (0, 1), got {t}")
    model = model.eval()
    flops = model.flops_per_width(sample_input(dataset).to(next(model.parameters()).device))
    out = routed_outputs(model, dataset, thresholds, batch_size)
    labels, predictions = out["labels"], out["predictions"]
    correct = predictions == labels.unsqueeze(0)  # (widths, samples)
    full = flops["fixed"][-1]
    widths = torch.tensor(model.widths)
    rows = []
    for i, w in enumerate(model.widths):
        rows.append(_row(f"width {w:g}", correct[i].float().mean(), w, flops["fixed"][i], full))
    for t in (None, *thresholds):
        index = model.choose(out["router_logits"], t)
        top1 = correct.gather(0, index.unsqueeze(0)).float().mean()
        mean_flops = float(torch.tensor(flops["routed"], dtype=torch.float64)[index].mean())
        mode = "SHARCS (router argmax)" if t is None else f"SHARCS (confidence {t:g})"
        row = _row(mode, top1, float(widths[index].mean()), mean_flops, full)
        row["share"] = {f"{w:g}": float((index == i).float().mean()) for i, w in enumerate(model.widths)}
        rows.append(row)
    return rows


def _row(mode: str, top1: torch.Tensor, width: float, flops: float, full: float) -> dict[str, Any]:
    return {
        "mode": mode,
        "top1": 100.0 * float(top1),
        "mean_width": float(width),
        "mflops": flops / 1e6,
        "flops_vs_full": flops / full,
    }
