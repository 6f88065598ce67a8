"""The classification recipe: the one train/eval loop of every bramley classifier, fed by the packages.

A package gives its recipes the sections below (or its own data section, e.g. byte files) and calls
:func:`train_classifier` with its datasets, loss and callbacks. The run's outputs are the standard run folder of
:mod:`bramley.core.recipe` (``model.safetensors``, ``ema.safetensors``, ``metrics.jsonl``, ``checkpoint.pt``)::

    data:  {source: folder, train: /data/imagenet/train, val: /data/imagenet/val, image_size: 224, ...}
    loss:  {label_smoothing: 0.1, mixup: 0.0, cutmix: 0.0}

``data.source`` ``digits`` and ``photos`` train on scikit-learn's bundled images (no files needed): the smoke
recipes use them to check an install in seconds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ConfigError, DataError
from .metrics import ClassificationMeter
from .progress import track

__all__ = [
    "ClassificationLoss",
    "ImageData",
    "LossSection",
    "MultiScale",
    "accuracy_eval",
    "build_image_datasets",
    "image_forward",
    "num_classes_of",
    "train_classifier",
    "train_image_classifier",
]

#: ``forward(model, batch) -> (logits, labels)``: how a package's batches reach its model.
Forward = Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]]


def image_forward(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(model(images), labels)`` of an ``(images, labels)`` batch."""
    images, labels = batch
    return model(images), labels


# ---------------------------------------------------------------------------------------------------- sections
@dataclass
class MultiScale:
    """``data.multiscale``: variable-resolution batches (:class:`bramley.core.data.VariableBatchSampler`)."""

    enabled: bool = False
    min_size: int = 128
    max_size: int = 320
    num_scales: int = 5
    curriculum_epochs: int = 0


@dataclass
class ImageData:
    """``data`` of an image classification recipe.

    ``source: folder`` reads ``train`` (and optionally ``val``): ImageFolder roots, ``<root>/<class>/<image>``.
    ``digits`` / ``photos`` use scikit-learn's bundled images, at ``image_size``.
    """

    source: Literal["folder", "digits", "photos"] = "folder"
    train: str | None = None
    val: str | None = None
    image_size: int = 224
    val_image_size: int | None = None
    crop_pct: float = 0.875
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    auto_augment: str | None = None
    random_erasing: float = 0.0
    multiscale: MultiScale = field(default_factory=MultiScale)

    def __post_init__(self) -> None:
        if self.image_size < 1 or (self.val_image_size is not None and self.val_image_size < 1):
            raise ConfigError(f"data.image_size must be >= 1, got {self.image_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"data.crop_pct must be in (0, 1], got {self.crop_pct}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ConfigError(f"data.random_erasing must be in [0, 1], got {self.random_erasing}")


@dataclass
class LossSection:
    """``loss`` of a classification recipe: label smoothing, and mixup / cutmix (timm's ``Mixup``) when > 0."""

    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError(f"loss.mixup and loss.cutmix must be >= 0, got {self.mixup} and {self.cutmix}")


# -------------------------------------------------------------------------------------------------------- data
def build_image_datasets(data: ImageData, seed: int, batch_size: int):
    """``(train, val, batch_sampler, collate_fn)`` for an :class:`ImageData` section.

    ``val`` is ``None`` when no validation folder is given; ``batch_sampler`` and ``collate_fn`` are set for
    multi-scale training only (call after ``init_distributed``: the sampler shards by rank).
    """
    if data.source != "folder":
        if data.multiscale.enabled:
            raise ConfigError("data.multiscale needs data.source=folder (the bundled sets are fixed-size tensors)")
        return (*_bundled(data, seed), None, None)
    if not data.train:
        raise ConfigError("data.train is not set: pass data.train=/path/to/train (one sub-folder per class)")
    from .data import ImageFolder

    val_size = data.val_image_size or data.image_size
    common = {"interpolation": data.interpolation}
    val = ImageFolder(data.val, image_size=val_size, crop_pct=data.crop_pct, **common) if data.val else None
    if not data.multiscale.enabled:
        train = ImageFolder(data.train, transform=_TrainTransform(data)(data.image_size, data.image_size))
        _check_same_classes(train, val)
        return train, val, None, None
    from .data import MultiScaleDataset, VariableBatchSampler, multiscale_collate

    raw = ImageFolder(data.train, transform=_keep_pil)
    _check_same_classes(raw, val)
    ms = data.multiscale
    sampler = VariableBatchSampler(
        raw,
        base_batch_size=batch_size,
        base_size=data.image_size,
        min_size=ms.min_size,
        max_size=ms.max_size,
        num_scales=ms.num_scales,
        curriculum_epochs=ms.curriculum_epochs,
        seed=seed,
    )
    return MultiScaleDataset(raw, _TrainTransform(data), seed=seed), val, sampler, multiscale_collate


def _bundled(data: ImageData, seed: int):
    from .data import DigitsDataset, SamplePhotosDataset

    if data.source == "digits":
        make = lambda split: DigitsDataset(split, seed=seed, image_size=data.image_size, in_chans=3)  # noqa: E731
    else:
        make = lambda split: SamplePhotosDataset(split, seed=seed, crop_size=data.image_size)  # noqa: E731
    return make("train"), make("val")


def _keep_pil(image):
    return image


class _TrainTransform:
    """``(h, w) -> training transform`` (a class, so DataLoader workers can pickle it)."""

    def __init__(self, data: ImageData) -> None:
        self.auto_augment, self.interpolation, self.random_erasing = (
            data.auto_augment,
            data.interpolation,
            data.random_erasing,
        )

    def __call__(self, h: int, w: int):
        from .data import train_transform

        transform = train_transform((h, w), auto_augment=self.auto_augment, interpolation=self.interpolation)
        if not self.random_erasing:
            return transform
        from timm.data.random_erasing import RandomErasing
        from torchvision import transforms

        erasing = RandomErasing(probability=self.random_erasing, mode="pixel", device="cpu")
        return transforms.Compose([transform, erasing])


def _check_same_classes(train: Any, val: Any) -> None:
    if val is not None and list(val.classes) != list(train.classes):
        raise DataError(f"train and val have different classes: {list(train.classes)} vs {list(val.classes)}")


def num_classes_of(dataset: Any) -> int:
    """The number of classes of a dataset (its ``classes``, or one more than its largest target)."""
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return len(classes)
    if getattr(dataset, "num_classes", None) is not None:
        return int(dataset.num_classes)
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) == 0:
        raise DataError(f"cannot tell the number of classes of {type(dataset).__name__} (no classes or targets)")
    return int(max(targets)) + 1


# -------------------------------------------------------------------------------------------------- loss, eval
class ClassificationLoss:
    """Cross-entropy with label smoothing, and mixup / cutmix when set: ``loss_fn(model, batch)`` for the trainer.

    With mixup or cutmix (timm's ``Mixup``, which also smooths the mixed targets) the loss is soft-target
    cross-entropy on the mixed batch; evaluation batches (model in eval mode) are never mixed. Reports the batch's
    top-1 accuracy as ``acc`` (against the unmixed labels).

    Args:
        num_classes: classes of the model's logits.
        loss: the recipe's :class:`LossSection`.
        forward: ``forward(model, batch) -> (logits, labels)`` (images by default; packed bytes, ...). Mixup and
            cutmix mix ``(images, labels)`` batches only.
    """

    def __init__(self, num_classes: int, loss: LossSection | None = None, forward: Forward = image_forward) -> None:
        loss = loss or LossSection()
        self.label_smoothing = loss.label_smoothing
        self.forward = forward
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
        if self.mixup_fn is not None and model.training:
            images, labels = batch
            if images.shape[0] % 2:
                raise DataError(f"mixup/cutmix need an even batch size, got {images.shape[0]}")
            mixed, targets = self.mixup_fn(images, labels)
            logits, _ = self.forward(model, (mixed, labels))
            loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits, labels = self.forward(model, batch)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return loss, {"acc": (logits.detach().argmax(-1) == labels).float().mean()}


def accuracy_eval(
    forward: Forward = image_forward, device: torch.device | str | None = None
) -> Callable[[nn.Module, Iterable], dict[str, float]]:
    """``eval_fn(model, loader)``: top-1 / top-5 accuracy (%) and mean cross-entropy over the loader (its progress
    reported through :func:`bramley.core.progress.track`). With ``device``, batches are moved there first (the
    trainer's loaders already deliver them on the model's device)."""
    from .train.data import move_to_device

    @torch.no_grad()
    def eval_fn(model: nn.Module, loader: Iterable) -> dict[str, float]:
        meter = ClassificationMeter()
        for batch in track(loader, desc="eval", unit="batches"):
            meter.update(*forward(model, batch if device is None else move_to_device(batch, torch.device(device))))
        return meter.compute()

    return eval_fn


def evaluate_image_folder(
    model: nn.Module,
    root: str | os.PathLike,
    image_size: int = 224,
    crop_pct: float = 0.875,
    batch_size: int = 64,
    interpolation: str = "bilinear",
) -> dict[str, float]:
    """Top-1 / top-5 (%) and mean cross-entropy of ``model`` on the ImageFolder at ``root`` under the eval transform
    (resize to ``image_size / crop_pct``, center crop ``image_size``), on the model's device. A folder whose class
    count differs from the model's is a :class:`DataError`.

    On CPU, convolution weights run in channels_last (:func:`bramley.core.layers.channels_last_inference`: MobileOne's
    fused forward 1.3-1.7x faster at batch 16; the model is left as it was). Other devices run the model as it is
    (not measured there)."""
    from .data import ImageFolder
    from .layers import channels_last_inference

    data = ImageFolder(root, image_size=image_size, crop_pct=crop_pct, interpolation=interpolation)
    num_classes = getattr(model, "num_classes", len(data.classes))
    if len(data.classes) != num_classes:
        raise DataError(f"{root} has {len(data.classes)} classes but the model predicts {num_classes}")
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
    device = next(model.parameters()).device
    with channels_last_inference(model) if device.type == "cpu" else contextlib.nullcontext():
        return accuracy_eval(device=device)(model.eval(), loader)


# ---------------------------------------------------------------------------------------------------------- run
def train_classifier(
    recipe: Any,
    out_dir: str | os.PathLike | None,
    train_data: Any,
    val_data: Any = None,
    *,
    loss_fn: Callable | None = None,
    make_loss: Callable[[int], Callable] | None = None,
    eval_fn: Callable | None = None,
    forward: Forward = image_forward,
    batch_sampler: Any = None,
    collate_fn: Callable | None = None,
    callbacks: Sequence[Callable] = (),
    model_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build ``recipe.model`` for the data's classes, train it with the core trainer, write the run folder.

    Args:
        recipe: a resolved :class:`bramley.core.recipe.Recipe`.
        out_dir: the run folder (``None``: keep nothing on disk).
        train_data: the training dataset (its ``classes`` give ``num_classes``).
        val_data: optional evaluation dataset with the same classes.
        loss_fn: the trainer's loss; default :class:`ClassificationLoss` from ``recipe.loss``.
        make_loss: ``make_loss(num_classes) -> loss_fn``, for a loss that needs the data's number of classes (a
            teacher with a classifier head); instead of ``loss_fn``.
        eval_fn: the trainer's evaluation; default :func:`accuracy_eval`.
        forward: how a batch reaches the model (for the default loss and the default evaluation).
        batch_sampler, collate_fn, callbacks: passed to :class:`bramley.core.train.Trainer`.
        model_kwargs: factory arguments the package decides (merged over ``recipe.model.kwargs``).

    Returns:
        ``{"metrics": final metrics, "num_classes": n, "classes": [...]}`` (classes when the data names them).
    """
    from .recipe import build_model
    from .train import Trainer

    if loss_fn is not None and make_loss is not None:
        raise TypeError("give loss_fn or make_loss, not both")
    num_classes = num_classes_of(train_data)
    if make_loss is not None:
        loss_fn = make_loss(num_classes)
    kwargs = {**recipe.model.kwargs, **(model_kwargs or {})}
    if kwargs.setdefault("num_classes", num_classes) != num_classes:
        raise ConfigError(
            f"model.kwargs.num_classes={kwargs['num_classes']} but the training data has {num_classes} classes"
        )
    model = build_model(recipe.model.name, kwargs)
    trainer = Trainer(
        model,
        recipe.train_config(out_dir),
        train_data=train_data,
        loss_fn=loss_fn or ClassificationLoss(num_classes, recipe.loss, forward),
        eval_data=val_data,
        eval_fn=(eval_fn or accuracy_eval(forward)) if val_data is not None else None,
        batch_sampler=batch_sampler,
        collate_fn=collate_fn,
        callbacks=callbacks,
    )
    results: dict[str, Any] = {"metrics": trainer.fit(), "num_classes": num_classes}
    classes = getattr(train_data, "classes", None)
    if classes is not None:
        results["classes"] = list(classes)
    return results


def train_image_classifier(
    recipe: Any,
    out_dir: str | os.PathLike | None,
    *,
    loss_fn: Callable | None = None,
    make_loss: Callable[[int], Callable] | None = None,
    eval_fn: Callable | None = None,
    callbacks: Sequence[Callable] = (),
    model_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`train_classifier` on the datasets of an :class:`ImageData` section (``recipe.data``), multi-scale
    sampling included; joins the process group first under ``torchrun`` (the sampler shards by rank)."""
    from .train.distributed import init_distributed

    init_distributed(recipe.train.device)
    train, val, sampler, collate = build_image_datasets(recipe.data, recipe.train.seed, recipe.train.batch_size)
    return train_classifier(
        recipe,
        out_dir,
        train,
        val,
        loss_fn=loss_fn,
        make_loss=make_loss,
        eval_fn=eval_fn,
        batch_sampler=sampler,
        collate_fn=collate,
        callbacks=callbacks,
        model_kwargs=model_kwargs,
    )
