"""Glue between Matryoshka models and :class:`bramley.core.train.Trainer`: loss, evaluation, embedding passes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

from .losses import MatryoshkaLoss

__all__ = ["embed_dataset", "mrl_eval_fn", "mrl_loss_fn", "nesting_accuracy"]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def mrl_loss_fn(loss: MatryoshkaLoss, nesting: Sequence[int]):
    """A Trainer ``loss_fn(model, (images, labels))`` returning the Matryoshka loss and each size's CE."""

    def loss_fn(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch[0], batch[1]
        per_size = loss.per_size(model(images), labels)
        weights = loss.relative_importance or [1.0] * len(per_size)
        total = (per_size * per_size.new_tensor(weights)).sum()
        return total, {f"ce_{m}": float(v) for m, v in zip(nesting, per_size.detach())}

    return loss_fn


def nesting_accuracy(logits: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Number of correct top-1 predictions of each size, shape ``(num_sizes,)``."""
    return torch.stack([(z.argmax(-1) == labels).sum() for z in logits])


def mrl_eval_fn(nesting: Sequence[int]):
    """A Trainer ``eval_fn`` reporting top-1 accuracy of every nesting size as ``top1_<size>``."""

    def eval_fn(model: nn.Module, loader: Iterable) -> dict[str, float]:
        correct, total = None, 0
        for images, labels in loader:
            hits = nesting_accuracy(model(images), labels)
            correct = hits if correct is None else correct + hits
            total += len(labels)
        if not total:
            raise ValueError("evaluation set is empty")
        return {f"top1_{m}": float(c) / total for m, c in zip(nesting, correct)}

    return eval_fn


@torch.no_grad()
def embed_dataset(
    model: nn.Module, data, batch_size: int = 256, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-size representations and labels of every item of a ``(image, label)`` dataset, in dataset order."""
    model = _unwrap(model).to(device).eval()
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    feats, labels = [], []
    for images, y in loader:
        feats.append(model.forward_features(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    if not feats:
        raise ValueError("dataset is empty")
    return torch.cat(feats), torch.cat(labels).long()
