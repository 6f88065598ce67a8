"""SHARCS training: the loss (task cross-entropy + router BCE), the recipe's loss section, evaluation, the train run.

One epoch: every sample is trained once, at the width of its bucket (full width during warm-up), and its hardness at
that width is recorded; at the end of the epoch :class:`~bramley.sharcs.hardness.HardnessTracker` turns the last
``window`` epochs into the next epoch's buckets. A batch may hold samples of several widths: the model runs each
width group once (:meth:`~bramley.sharcs.model.SharcsModel.forward_train`) and the loss is the batch mean, so every
sample counts once per epoch whatever its bucket. (The official sampler builds single-width batches, one width per
GPU, and its bucket padding cuts every bucket to the shortest; nothing is cut or repeated here.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from bramley.core.classification import ImageData
from bramley.core.errors import ConfigError
from bramley.core.recipe import RecipeSchema

from .hardness import HARDNESS, HardnessTracker, check_thresholds, hardness_of

__all__ = [
    "GLUE_RECIPES",
    "RECIPES",
    "IndexedDataset",
    "SharcsLossSection",
    "SharcsTrainLoss",
    "sharcs_eval",
    "train",
    "train_glue",
]

#: The paper's three-bucket config (official configs/main.yaml): confident samples narrow, the rest wide.
PAPER_THRESHOLDS = {0.25: [0.7, 1.0], 0.5: [0.4, 0.9], 1.0: [0.0, 0.5]}


@dataclass
class SharcsLossSection:
    """``loss``: the SHARCS objective and how hardness labels are made.

    ``thresholds`` maps every model width to a ``[low, high]`` range of the hardness (rules in
    :mod:`bramley.sharcs.hardness`; ``null``: the paper's main config, for widths 0.25 / 0.5 / 1); ``window`` epochs
    of history decide a bucket; the first ``warmup_epochs`` train at full width. ``fixed_width`` trains every sample
    at that width after the warm-up (no router loss): the fixed-width baseline "trained the same way".
    """

    thresholds: dict[float, list[float]] | None = None
    hardness: Literal["probability", "entropy"] = "probability"
    window: int = 1
    warmup_epochs: int = 1
    task_weight: float = 1.0
    router_weight: float = 1.0
    label_smoothing: float = 0.0
    fixed_width: float | None = None

    def __post_init__(self) -> None:
        if self.hardness not in HARDNESS:
            raise ConfigError(f"loss.hardness must be one of {HARDNESS}, got {self.hardness!r}")
        if self.window < 1:
            raise ConfigError(f"loss.window must be >= 1, got {self.window}")
        if self.warmup_epochs < self.window:
            raise ConfigError(
                f"loss.warmup_epochs ({self.warmup_epochs}) must be >= loss.window ({self.window}): the first buckets "
                "need a full window of history"
            )
        if self.task_weight < 0 or self.router_weight < 0:
            raise ConfigError("loss.task_weight and loss.router_weight must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")


#: The recipe schema of ``bramley sharcs train`` (image data: an ImageFolder or the bundled digits).
RECIPES = RecipeSchema("sharcs", data=ImageData, loss=SharcsLossSection, default_recipe="imagenet_deit_small")


class IndexedDataset(Dataset):
    """``(x, y) -> (x, y, index)``: the loss needs each sample's index to look up and record its hardness."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        for name in ("classes", "num_classes", "targets"):
            if hasattr(dataset, name):
                setattr(self, name, getattr(dataset, name))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index][:2]
        return x, y, index

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def _module(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / FSDP wrap the model


class SharcsTrainLoss:
    """The trainer's ``loss_fn(model, (x, y, index))``: ``task_weight * CE + router_weight * BCE(router, buckets)``.

    Reports ``ce``, ``router_bce``, ``router_acc`` (the router's top width is one of the sample's buckets) and
    ``mean_width`` (of the widths trained in the batch).
    """

    def __init__(self, tracker: HardnessTracker, loss: SharcsLossSection) -> None:
        self.tracker = tracker
        self.loss = loss
        self.widths = tracker.widths
        self.fixed = None if loss.fixed_width is None else self._index(loss.fixed_width)

    def _index(self, width: float) -> int:
        for i, w in enumerate(self.widths):
            if abs(w - width) < 1e-9:
                return i
        raise ConfigError(f"loss.fixed_width={width} is not one of the model's widths {list(self.widths)}")

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y, indices = batch
        labels, index = self.tracker.targets(indices)
        warm = self.tracker.epoch < self.tracker.warmup_epochs
        if self.fixed is not None and not warm:
            index = torch.full_like(index, self.fixed)
        labels, index = labels.to(y.device), index.to(y.device)
        logits, router_logits = model(x, index=index)  # through the DDP wrapper, so gradients are synchronised
        ce = F.cross_entropy(logits, y, label_smoothing=self.loss.label_smoothing)
        bce = F.binary_cross_entropy_with_logits(router_logits.float(), labels)
        router_weight = 0.0 if self.fixed is not None else self.loss.router_weight
        self.tracker.record(indices, hardness_of(logits, y, self.loss.hardness))
        widths = torch.tensor(self.widths, device=y.device)
        extras = {
            "ce": ce.detach(),
            "router_bce": bce.detach(),
            "router_acc": labels.gather(1, router_logits.detach().argmax(1, keepdim=True)).mean(),
            "mean_width": widths[index].mean(),
        }
        return self.loss.task_weight * ce + router_weight * bce, extras


@torch.no_grad()
def sharcs_eval(model: nn.Module, loader: Iterable) -> dict[str, float]:
    """The trainer's ``eval_fn``: routed top-1 (%), mean routed width, and top-1 of every fixed width."""
    module = _module(model)
    widths = module.widths
    correct = torch.zeros(len(widths) + 1)
    width_sum, total = 0.0, 0
    for batch in loader:
        x, y = batch[0], batch[1]
        logits, index = module.predict(x)
        correct[-1] += (logits.argmax(-1) == y).sum().cpu()
        width_sum += float(torch.tensor(widths, device=index.device)[index].sum())
        for i, w in enumerate(widths):
            correct[i] += (module.forward_width(x, w).argmax(-1) == y).sum().cpu()
        total += len(y)
    if total == 0:
        raise ConfigError("the evaluation set is empty")
    metrics = {"top1": 100.0 * float(correct[-1]) / total, "mean_width": width_sum / total}
    metrics.update({f"top1_w{w:g}": 100.0 * float(c) / total for w, c in zip(widths, correct[:-1])})
    return metrics


def resolve_thresholds(
    thresholds: dict[float, list[float]] | None, widths: tuple[float, ...], hardness: str = "probability"
) -> dict[float, tuple[float, float]]:
    """The recipe's ranges checked against the model's widths; ``None`` is the paper's main config."""
    if thresholds is None:
        if widths != tuple(float(w) for w in PAPER_THRESHOLDS) or hardness != "probability":
            raise ConfigError(
                f"loss.thresholds is not set: the paper's default is for widths 0.25, 0.5, 1 and probability "
                f"hardness; give one [low, high] range per width of {list(widths)}"
            )
        thresholds = PAPER_THRESHOLDS
    return check_thresholds(thresholds, widths, hardness)


def model_widths(recipe: Any) -> tuple[float, ...]:
    """The widths of the recipe's model, built on the meta device (its configuration errors surface here)."""
    from bramley.core.recipe import build_model

    with torch.device("meta"):
        model = build_model(recipe.model.name, {"num_classes": 2, **recipe.model.kwargs})
    widths = getattr(model, "widths", None)
    if widths is None:
        raise ConfigError(f"model.name={recipe.model.name} is not a SHARCS model (sharcs_vit_*, sharcs_timm_vit)")
    return tuple(widths)


def _train_with_hardness(recipe, out_dir, widths, thresholds, train_data, val_data, collate_fn=None) -> dict[str, Any]:
    """Core's classification training with the hardness tracker as callback and the SHARCS loss; adds the buckets."""
    from bramley.core.classification import train_classifier

    loss = recipe.loss
    tracker = HardnessTracker(
        len(train_data), widths, thresholds, loss.window, loss.warmup_epochs, loss.hardness, recipe.train.seed
    )
    results = train_classifier(
        recipe,
        out_dir,
        IndexedDataset(train_data),
        val_data,
        loss_fn=SharcsTrainLoss(tracker, loss),
        eval_fn=sharcs_eval,
        collate_fn=collate_fn,
        callbacks=[tracker],
    )
    results["buckets"] = tracker.bucket_sizes()
    return results


def train(recipe: Any, out_dir: str | os.PathLike | None) -> dict[str, Any]:
    """``bramley sharcs train``: SHARCS on an image classification recipe; returns the final metrics and buckets."""
    from bramley.core.classification import build_image_datasets
    from bramley.core.train.distributed import init_distributed

    widths = model_widths(recipe)
    thresholds = resolve_thresholds(recipe.loss.thresholds, widths, recipe.loss.hardness)
    if recipe.data.multiscale.enabled:
        raise ConfigError("data.multiscale is not supported by SHARCS training (hardness is tracked per sample)")
    init_distributed(recipe.train.device)
    train_data, val_data, _, _ = build_image_datasets(recipe.data, recipe.train.seed, recipe.train.batch_size)
    return _train_with_hardness(recipe, out_dir, widths, thresholds, train_data, val_data)


def _glue_schema() -> RecipeSchema:
    from .glue import GlueData

    return RecipeSchema("sharcs", data=GlueData, loss=SharcsLossSection, default_recipe="glue_roberta")


#: The recipe schema of ``bramley sharcs train-glue`` (GLUE TSV files, a Hugging Face BERT / RoBERTa).
GLUE_RECIPES = _glue_schema()


def train_glue(recipe: Any, out_dir: str | os.PathLike | None) -> dict[str, Any]:
    """``bramley sharcs train-glue``: SHARCS on a GLUE task's local TSV files with a ``sharcs_hf`` model."""
    from functools import partial

    from bramley.core.train.distributed import init_distributed

    from .glue import GlueDataset, collate_text, load_tokenizer

    widths = model_widths(recipe)
    thresholds = resolve_thresholds(recipe.loss.thresholds, widths, recipe.loss.hardness)
    data = recipe.data
    if not data.train:
        raise ConfigError("data.train is not set: pass data.train=/path/to/<task>/train.tsv")
    tokenizer = load_tokenizer(data.tokenizer)
    init_distributed(recipe.train.device)
    make = partial(GlueDataset, task=data.task, tokenizer=tokenizer, max_length=data.max_length, truncate=data.truncate)
    train_data = make(data.train)
    val_data = make(data.val) if data.val else None
    collate = partial(collate_text, pad_id=train_data.pad_id)
    return _train_with_hardness(recipe, out_dir, widths, thresholds, train_data, val_data, collate)
