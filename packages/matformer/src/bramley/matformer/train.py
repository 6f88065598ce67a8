"""Joint MatFormer training on core's trainer: the recipe schema, the joint loss, per-granularity evaluation.

One optimizer step sums the weighted losses of every granularity on the same batch (the official MatFormer-OLMo and
scenic MatViT both sum them with weight 1): ``loss = sum_i w_i * L(model(x, ffn=granularity_i))``, one backward, so
under DDP the gradients are all-reduced once per step. ``loss.weights`` holds one weight per granularity, smallest
first (``null``: all 1).

Recipes have core's six sections (:mod:`bramley.core.recipe`). ``model`` names a MatViT or MatLM; ``data`` is core's
image data section (``source: digits | photos | folder``) extended with the text sources ``stdlib`` (this Python's
standard library) and ``text`` (local files), which train a MatLM on byte tokens.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.classification import ImageData, LossSection
from bramley.core.errors import ConfigError
from bramley.core.metrics import ClassificationMeter
from bramley.core.recipe import RecipeSchema

from .model import MatLM, MatViT
from .nested import granularity_specs, matformer_model

__all__ = ["RECIPES", "JointLoss", "MatFormerData", "MatFormerLoss", "granularity_eval", "train"]

TEXT_SOURCES = ("stdlib", "text")


@dataclass
class MatFormerData(ImageData):
    """``data``: core's image section, plus text for MatLM.

    ``source: stdlib | text`` trains a MatLM on byte tokens of this Python's standard library or of local files
    (``train`` / ``val``: a file or folder, ``pattern`` its glob), in windows of ``seq_len`` tokens; without ``val``,
    every ``1 / val_fraction``-th document is held out. ``max_tokens`` caps each split (the first tokens).
    """

    source: Literal["folder", "digits", "photos", "stdlib", "text"] = "folder"
    seq_len: int = 256
    pattern: str = "**/*.txt"
    val_fraction: float = 0.05
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seq_len < 1:
            raise ConfigError(f"data.seq_len must be >= 1, got {self.seq_len}")
        if not 0 < self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_tokens is not None and self.max_tokens <= self.seq_len:
            raise ConfigError(f"data.max_tokens ({self.max_tokens}) must exceed data.seq_len ({self.seq_len})")


@dataclass
class MatFormerLoss(LossSection):
    """``loss``: core's classification loss section (label smoothing, mixup, cutmix; images only) and ``weights``, one
    per granularity, smallest first (``null``: every granularity weighted 1, as the official code)."""

    weights: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.weights is not None and (not self.weights or any(not w >= 0 for w in self.weights)):
            raise ConfigError(f"loss.weights must be non-negative, one per granularity, got {self.weights}")


#: The recipe schema of ``bramley matformer train``.
RECIPES = RecipeSchema("matformer", data=MatFormerData, loss=MatFormerLoss, default_recipe="smoke")


def _specs_and_weights(model: nn.Module, weights: Sequence[float] | None) -> tuple[list[tuple[int, ...]], list[float]]:
    specs = granularity_specs(matformer_model(model))
    if weights is None:
        return specs, [1.0] * len(specs)
    if len(weights) != len(specs):
        sizes = [s[0] for s in specs]
        raise ConfigError(f"loss.weights has {len(weights)} weights for {len(specs)} granularities (sizes {sizes})")
    return specs, list(weights)


def _lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class JointLoss:
    """The trainer's ``loss_fn(model, batch)``: the weighted sum of every granularity's loss on one batch.

    Images: cross-entropy with label smoothing, or soft-target cross-entropy on a batch mixed once (timm's ``Mixup``)
    and shared by all granularities. Tokens (``(batch, seq + 1)`` windows): next-token cross-entropy. Reports each
    granularity's loss as ``loss_h<size>`` (``size`` = the first layer's FFN hidden size).

    Args:
        weights: one weight per granularity, smallest first (``None``: all 1).
        loss: the recipe's loss section (images).
        num_classes: classes (needed for mixup / cutmix).
    """

    def __init__(
        self, weights: Sequence[float] | None = None, loss: LossSection | None = None, num_classes: int | None = None
    ) -> None:
        loss = loss or LossSection(label_smoothing=0.0)
        self.weights = None if weights is None else list(weights)
        self.label_smoothing = loss.label_smoothing
        self.mixup_fn = None
        if loss.mixup > 0 or loss.cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(
                mixup_alpha=loss.mixup,
                cutmix_alpha=loss.cutmix,
                label_smoothing=loss.label_smoothing,
                num_classes=num_classes,
            )

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        specs, weights = _specs_and_weights(model, self.weights)
        if isinstance(batch, torch.Tensor):  # token windows
            inputs, targets = batch[:, :-1], batch[:, 1:]
            losses = [_lm_loss(model(inputs, ffn=s), targets) for s in specs]
        else:
            images, labels = batch
            if self.mixup_fn is not None and model.training:
                if images.shape[0] % 2:
                    raise ConfigError(f"mixup/cutmix need an even batch size, got {images.shape[0]}")
                images, soft = self.mixup_fn(images, labels)
                losses = [torch.sum(-soft * F.log_softmax(model(images, ffn=s), -1), -1).mean() for s in specs]
            else:
                losses = [
                    F.cross_entropy(model(images, ffn=s), labels, label_smoothing=self.label_smoothing) for s in specs
                ]
        total = sum(w * loss for w, loss in zip(weights, losses))
        return total, {f"loss_h{s[0]}": loss.detach() for s, loss in zip(specs, losses)}


@torch.no_grad()
def granularity_eval(model: nn.Module, loader: Iterable) -> dict[str, float]:
    """The trainer's ``eval_fn``: per granularity, top-1 / top-5 (%) for images or loss and perplexity for tokens."""
    specs = granularity_specs(matformer_model(model))
    metrics: dict[str, float] = {}
    meters = [ClassificationMeter() for _ in specs]
    sums, count = [0.0] * len(specs), 0
    text = False
    for batch in loader:
        if isinstance(batch, torch.Tensor):
            text = True
            inputs, targets = batch[:, :-1], batch[:, 1:]
            for i, spec in enumerate(specs):
                sums[i] += float(_lm_loss(model(inputs, ffn=spec), targets)) * targets.numel()
            count += targets.numel()
        else:
            images, labels = batch
            for meter, spec in zip(meters, specs):
                meter.update(model(images, ffn=spec), labels)
    for i, spec in enumerate(specs):
        if text:
            loss = sums[i] / max(count, 1)
            metrics[f"loss_h{spec[0]}"], metrics[f"ppl_h{spec[0]}"] = loss, math.exp(min(loss, 50.0))
        else:
            scores = meters[i].compute()
            metrics[f"top1_h{spec[0]}"], metrics[f"top5_h{spec[0]}"] = scores["top1"], scores["top5"]
    return metrics


def _check_recipe(recipe: Any) -> type:
    """The model class the recipe builds (on the meta device: no memory), with its data source checked against it."""
    from bramley.core.recipe import build_model

    with torch.device("meta"):
        model = build_model(recipe.model.name, recipe.model.kwargs)
    model = matformer_model(model, f"model.name={recipe.model.name}")
    if not model.nested:
        raise ConfigError(f"model.kwargs.granularities=null builds a dense model: {recipe.model.name} is not nested")
    _specs_and_weights(model, recipe.loss.weights)
    text = recipe.data.source in TEXT_SOURCES
    if text and not isinstance(model, MatLM):
        raise ConfigError(f"data.source={recipe.data.source} is text, but {recipe.model.name} is not a MatLM")
    if not text and not isinstance(model, MatViT):
        raise ConfigError(f"data.source={recipe.data.source} is images, but {recipe.model.name} is not a MatViT")
    if text and recipe.data.seq_len > model.max_seq_len:
        raise ConfigError(f"data.seq_len={recipe.data.seq_len} exceeds the model's max_seq_len={model.max_seq_len}")
    return type(model)


def train(recipe: Any, out_dir: str | os.PathLike | None) -> dict[str, Any]:
    """``bramley matformer train``: joint training of every granularity, evaluated per granularity."""
    from bramley.core.classification import train_image_classifier

    kind = _check_recipe(recipe)
    if kind is MatViT:
        make_loss = lambda n: JointLoss(recipe.loss.weights, recipe.loss, n)  # noqa: E731
        return train_image_classifier(recipe, out_dir, make_loss=make_loss, eval_fn=granularity_eval)
    from bramley.core.recipe import build_model
    from bramley.core.train import Trainer
    from bramley.core.train.distributed import init_distributed

    from .data import text_datasets

    init_distributed(recipe.train.device)
    data = recipe.data
    train_set, val_set = text_datasets(
        data.source,
        data.seq_len,
        train=data.train,
        val=data.val,
        pattern=data.pattern,
        val_fraction=data.val_fraction,
        max_tokens=data.max_tokens,
    )
    model = build_model(recipe.model.name, recipe.model.kwargs)
    trainer = Trainer(
        model,
        recipe.train_config(out_dir),
        train_data=train_set,
        loss_fn=JointLoss(recipe.loss.weights),
        eval_data=val_set,
        eval_fn=granularity_eval,
    )
    return {"metrics": trainer.fit(), "train_windows": len(train_set), "val_windows": len(val_set)}
