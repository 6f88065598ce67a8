"""ByteFormer's training recipe: core's classification recipe on packed byte batches.

Recipes (``recipes/*.yaml``) have the six sections of :mod:`bramley.core.recipe`. ``data`` is :class:`ByteData`
(where the bytes come from and how they are encoded or transformed); ``loss`` is core's
:class:`~bramley.core.classification.LossSection` (label smoothing; mixup and cutmix mix images, so they stay 0).
Batches are packed (``tokens``, ``cu_seqlens``, ``labels``), never padded: a fixed number of samples
(``train.batch_size``) or, for sources of static byte lengths, a byte budget per batch (``data.batch_tokens``).

The paper's recipe (apple/corenet ``projects/byteformer/*.yaml``): AdamW (betas 0.9 / 0.999, weight decay 0.05, no
decay on norms and biases), cosine from lr 1e-3 to 2e-5 over 300 epochs with linear warmup from 1e-6 (7500
iterations on ImageNet, 500 on Speech Commands), label smoothing 0.1, EMA (momentum 1e-4 = decay 0.9999), mixed
precision, 48 samples per GPU with 2 accumulation steps (8 GPUs for ImageNet, 4 for Speech Commands).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from bramley.core.classification import LossSection, train_classifier
from bramley.core.errors import ConfigError, DataError
from bramley.core.recipe import Recipe, RecipeSchema

from .batching import collate_packed, token_budget_sampler

__all__ = ["SCHEMA", "ByteData", "ByteLoss", "build_datasets", "packed_forward", "run_training"]


@dataclass
class ByteData:
    """``data`` of a ByteFormer recipe.

    ``source``: ``image_folder`` (ImageFolder roots ``train`` / ``val``, cropped as in the paper and encoded with
    ``spec`` on the fly), ``audio_folder`` (``<root>/<class>/<clip>.wav``, re-encoded with ``spec``), ``byte_folder``
    (files written once by ``encode``, read raw; ``spec`` holds byte transforms only, e.g. ``permute:3``, or is
    empty), or the bundled ``digits`` (scikit-learn's digits at ``image_size`` pixels, ``channels`` 1 = gray or 3 =
    RGB) and ``audio`` (the generated six-class task, ``clips_per_class``) encoded with ``spec``.

    ``batch_tokens``: pack batches of at most this many bytes (best-fit decreasing) instead of ``train.batch_size``
    samples; only for sources whose byte lengths do not change between epochs (not ``image_folder``'s random crops).
    """

    source: Literal["image_folder", "audio_folder", "byte_folder", "digits", "audio"] = "image_folder"
    train: str | None = None
    val: str | None = None
    spec: str = "tiff"
    image_size: int = 224
    channels: Literal[1, 3] = 3
    crop_pct: float = 0.875
    rand_augment: bool = True
    batch_tokens: int | None = None
    clips_per_class: int | None = None

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ConfigError(f"data.image_size must be >= 1, got {self.image_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"data.crop_pct must be in (0, 1], got {self.crop_pct}")
        for key in ("batch_tokens", "clips_per_class"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must be >= 1 (or null), got {getattr(self, key)}")


@dataclass
class ByteLoss(LossSection):
    """``loss``: core's classification loss keys; mixup and cutmix mix images, not packed bytes, so they stay 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mixup or self.cutmix:
            raise ConfigError("loss.mixup and loss.cutmix mix image batches; ByteFormer trains on packed bytes: keep 0")


SCHEMA = RecipeSchema("byteformer", data=ByteData, loss=ByteLoss, default_recipe="imagenet_tiff")


def packed_forward(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of a packed batch ``(tokens, cu_seqlens, labels)``: how batches reach the model."""
    tokens, cu_seqlens, labels = batch
    return model(tokens, cu_seqlens), labels


def build_datasets(data: ByteData, seed: int = 0) -> tuple[Any, Any]:
    """``(train, val)`` datasets of ``(bytes, label)`` items for a :class:`ByteData` section (``val`` may be None).

    Folders are scanned and every file checked here, before any training step; a bad ``spec`` is a
    :class:`ConfigError` naming ``data.spec``.
    """
    from . import datasets as ds
    from .encodings import parse_encoding, parse_transforms

    try:
        parse_transforms(data.spec) if data.source == "byte_folder" else parse_encoding(data.spec)
    except ValueError as err:
        what = "byte transforms (or empty)" if data.source == "byte_folder" else "an encoding spec"
        raise ConfigError(f"data.spec={data.spec!r} for data.source={data.source}: needs {what}: {err}") from None
    if data.source in ("digits", "audio"):
        if data.train or data.val:
            raise ConfigError(f"data.source={data.source} is bundled data: data.train / data.val must stay null")
        if data.source == "digits":
            size, channels = data.image_size, data.channels
            make = lambda split: ds.digits_bytes(data.spec, split, image_size=size, channels=channels, seed=seed)  # noqa: E731
        else:
            kwargs = {"clips_per_class": data.clips_per_class} if data.clips_per_class else {}
            make = lambda split: ds.audio_bytes(data.spec, split, seed=seed, **kwargs)  # noqa: E731
        return make("train"), make("val")
    if not data.train:
        raise ConfigError(f"data.train is not set: pass data.train=/path/to/train (data.source={data.source})")

    def folder(root: str, train: bool):
        if data.source == "byte_folder":
            return ds.ByteFolder(root, transforms=data.spec or None, seed=seed)
        if data.source == "audio_folder":
            return ds.EncodedDataset(ds.AudioFolder(root), data.spec, seed=seed)
        return ds.image_folder_bytes(
            root,
            data.spec,
            train=train,
            image_size=data.image_size,
            crop_pct=data.crop_pct,
            rand_augment=data.rand_augment and train,
            seed=seed,
        )

    train = folder(data.train, True)
    val = folder(data.val, False) if data.val else None
    if val is not None and list(val.classes) != list(train.classes):
        raise DataError(f"{data.train} and {data.val} have different classes: {train.classes} vs {val.classes}")
    return train, val


def run_training(recipe: Recipe, out_dir: Path | None) -> dict[str, Any]:
    """Train ``recipe`` on packed batches into the run folder ``out_dir``; returns core's classification results."""
    from bramley.core.train.distributed import init_distributed

    from . import model as _  # noqa: F401  (registers the variants)

    init_distributed(recipe.train.device)  # before the token-budget sampler, which shards by rank
    data = recipe.data
    train, val = build_datasets(data, seed=recipe.train.seed)
    sampler = None
    if data.batch_tokens is not None:
        if data.source == "image_folder":
            raise ConfigError("data.batch_tokens needs static byte lengths: random crops of image folders change them")
        sampler = token_budget_sampler(train, data.batch_tokens, seed=recipe.train.seed)
    return train_classifier(
        recipe, out_dir, train, val, forward=packed_forward, batch_sampler=sampler, collate_fn=collate_packed
    )
