"""Datasets of Dataset Reinforcement: raw images in, replayed augmentations and soft targets out.

:class:`RawImages` serves the *original* images (uint8 ``(C, H, W)``) a reinforced dataset's augmentation parameters
refer to: core's procedural images, scikit-learn's digits or an ImageFolder. :class:`ReinforcedDataset` is the
training set of the paper: with probability ``p`` it picks one of a sample's stored augmentations, replays it bit for
bit and returns the stored teacher target (densified); otherwise it draws a fresh augmentation and returns the
(smoothed) one-hot label. ``p = 0`` never reads the store: the plain baseline with the same augmentations.
:class:`EvalImages` is the matching evaluation set (``(image, label)``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from bramley.core.data import SharedEpoch, sample_seed
from bramley.core.data.reinforced import AugmentConfig, ReinforcedStore, ReplayableAugment, densify
from bramley.core.errors import ConfigError, DataError

__all__ = ["EvalImages", "RawImages", "ReinforcedDataset", "raw_images"]

SOURCES = ("synthetic", "digits", "folder")


# ---------------------------------------------------------------------------------------------------- raw images
class RawImages(Dataset):
    """Original images as uint8 ``(C, H, W)`` tensors with integer labels: ``(image, label)`` items.

    Args:
        images: a uint8 ``(N, C, H, W)`` tensor, or a callable ``index -> uint8 (C, H, W)`` (images on disk).
        targets: ``(N,)`` int64 labels.
        classes: class names.
        description: what the images are (stored in a reinforced dataset's manifest, checked when reading it).
    """

    def __init__(self, images: Any, targets: torch.Tensor, classes: tuple[str, ...], description: str) -> None:
        self._images = images
        self.targets = targets
        self.classes = tuple(classes)
        self.num_classes = len(self.classes)
        self.description = description

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, index: int) -> torch.Tensor:
        """Original image ``index`` (uint8 ``(C, H, W)``)."""
        return self._images[index] if isinstance(self._images, torch.Tensor) else self._images(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.image(index), int(self.targets[index])


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


class _FolderImage:
    """``index -> uint8 (3, H, W)`` of an ImageFolder's files (a class, so DataLoader workers can pickle it)."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples

    def __call__(self, index: int) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        path = self.samples[index][0]
        try:
            with Image.open(path) as image:
                return pil_to_tensor(image.convert("RGB"))
        except OSError as e:
            raise DataError(f"{path}: cannot read the image ({e})") from None


def raw_images(
    source: str,
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    image_size: int = 32,
    seed: int = 0,
    synthetic: Mapping[str, Any] | None = None,
) -> RawImages:
    """The original images of a split: ``source`` is ``synthetic`` (core's procedural images, ``synthetic`` knobs
    passed to :class:`~bramley.core.data.SyntheticConfig`), ``digits`` (scikit-learn's, upsampled to
    ``image_size``, 3 channels) or ``folder`` (``root/<class>/<image>``; ``split`` is ignored)."""
    if source == "synthetic":
        from bramley.core.data import SyntheticDataset

        data = SyntheticDataset(split, seed=seed, image_size=image_size, **dict(synthetic or {}))
        images = torch.stack([_to_uint8(data.render(i)) for i in range(len(data))])
        knobs = ",".join(f"{k}={v}" for k, v in sorted((synthetic or {}).items()))
        return RawImages(images, data.targets.clone(), data.classes, f"synthetic:{split}:{image_size}:{seed}:{knobs}")
    if source == "digits":
        from bramley.core.data import DigitsDataset

        x, y = DigitsDataset(split, seed=seed, image_size=image_size, in_chans=3, normalize=False).tensors()
        return RawImages(_to_uint8(x), y, DigitsDataset.classes, f"digits:{split}:{image_size}:{seed}")
    if source == "folder":
        if root is None or not os.path.isdir(root):
            raise ConfigError(f"data source 'folder' needs an existing ImageFolder root, got {root}")
        from torchvision.datasets import ImageFolder

        folder = ImageFolder(str(root))
        if not folder.samples:
            raise DataError(f"{root} holds no images (expected {root}/<class>/<image>)")
        targets = torch.tensor(folder.targets, dtype=torch.int64)
        return RawImages(_FolderImage(folder.samples), targets, tuple(folder.classes), f"folder:{os.fspath(root)}")
    raise ConfigError(f"data source must be one of {SOURCES}, got {source!r}")


# ------------------------------------------------------------------------------------------------------ training
class ReinforcedDataset(Dataset):
    """The paper's training set: ``(image, target)`` with ``target`` a probability vector over the classes.

    With probability ``p`` a sample's item replays one of its stored augmentations (chosen uniformly) and returns the
    stored teacher probabilities, densified (:func:`~bramley.core.data.reinforced.densify`); otherwise a fresh
    augmentation from the same :class:`AugmentConfig` and the one-hot label smoothed by ``label_smoothing``. Every
    draw depends only on ``(seed, epoch, index)`` (call :meth:`set_epoch`; core's trainer does).

    Args:
        images: the original images the store was made from.
        store: the reinforced dataset (its folder or a :class:`ReinforcedStore`); ``None`` only with ``p = 0``.
        p: probability of a stored augmentation, in [0, 1] (the paper: 0.99). 0 never reads the store (the official
            code turns ``p = 0`` into 1; here it means what it says).
        densify: ``"smooth"`` or ``"zeros"`` (see :func:`~bramley.core.data.reinforced.densify`).
        augment: the augmentations of the fresh branch; default: the store's (and without a store, ``AugmentConfig``).
        label_smoothing: smoothing of the one-hot targets of the fresh branch.
        seed: the sampling seed.
    """

    def __init__(
        self,
        images: RawImages,
        store: ReinforcedStore | str | os.PathLike | None,
        p: float = 0.99,
        densify: str = "smooth",
        augment: AugmentConfig | None = None,
        label_smoothing: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"p (probability of a stored augmentation) must be in [0, 1], got {p}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        densify_method = densify
        from bramley.core.data.reinforced import DENSIFY_METHODS

        if densify_method not in DENSIFY_METHODS:
            raise ConfigError(f"densify must be one of {DENSIFY_METHODS}, got {densify_method!r}")
        if store is not None and not isinstance(store, ReinforcedStore):
            store = ReinforcedStore(store)
        if store is None and p > 0:
            raise ConfigError(
                f"p={p} needs a reinforced dataset (run `reinforce` first), or set p=0 for plain training"
            )
        if store is not None:
            check_store(store, images)
            stored = AugmentConfig.from_dict(store.meta["augment"])
            if augment is not None and augment != stored:
                raise ConfigError("the augment settings differ from the reinforced dataset's: omit them to use its own")
            augment = stored
        self.images, self.store, self.p, self.densify = images, store, float(p), densify_method
        self.augment = ReplayableAugment(augment or AugmentConfig())
        self.label_smoothing, self.seed = label_smoothing, seed
        self.classes, self.num_classes = images.classes, images.num_classes
        self._epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self._epoch.get(), index))
        image, label = self.images[index]
        stored = self.p > 0 and float(torch.rand(1, generator=generator)) < self.p
        if stored:
            record = self.store[index]
            if int(record["label"]) != label:
                raise DataError(
                    f"sample {index}: the reinforced dataset {self.store.root} has label {int(record['label'])}, the "
                    f"dataset {label}: it was made from other data"
                )
            j = int(torch.randint(self.store.num_augmentations, (1,), generator=generator))
            target = densify(record["probs"][j], record["ids"][j], self.num_classes, self.densify)
            return self.augment.replay(image, record["params"][j]), target
        out, _ = self.augment.sample(image, generator)
        target = torch.full((self.num_classes,), self.label_smoothing / self.num_classes)
        target[label] += 1.0 - self.label_smoothing
        return out, target


def check_store(store: ReinforcedStore, images: RawImages) -> None:
    """Raise :class:`DataError` unless ``store`` was made from ``images`` (sizes, classes, description)."""
    store.check_dataset(len(images), f"the dataset ({images.description})")
    meta = store.meta
    for key in ("augment", "num_classes", "topk"):
        if key not in meta:
            raise DataError(f"{store.root} is not a classification reinforcement (its manifest has no {key!r})")
    if meta["num_classes"] != images.num_classes:
        raise DataError(
            f"{store.root} was made for {meta['num_classes']} classes but the dataset has {images.num_classes}"
        )
    if meta.get("data") not in (None, images.description):
        raise DataError(f"{store.root} was made from {meta['data']!r}, not from {images.description!r}")


# ------------------------------------------------------------------------------------------------------------ eval
class EvalImages(Dataset):
    """``(normalized image, label)`` of original images: resized (shorter side to ``size / crop_pct``) and center
    cropped to ``size`` when their size differs, normalized with ``mean`` / ``std``."""

    def __init__(
        self,
        images: RawImages,
        size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_pct: float = 0.875,
        transform: Any = None,
    ) -> None:
        self.images, self.size, self.crop_pct, self.transform = images, size, crop_pct, transform
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        self.classes, self.num_classes, self.targets = images.classes, images.num_classes, images.targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from torchvision.transforms import functional as F

        image, label = self.images[index]
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = F.resize(image, round(self.size / self.crop_pct), antialias=True)
            image = F.center_crop(image, [self.size, self.size])
        out = (image.float() / 255.0 - self.mean) / self.std
        if self.transform is not None:
            out = self.transform(out)
        return out, label
