"""scikit-learn's bundled digits (1797 grayscale 8x8 images, 10 classes) as a torch dataset with fixed splits."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ._bundled import load_digits_arrays
from .splits import SPLITS, stratified_split

DIGITS_MAX_VALUE = 16.0  # sklearn stores the 8x8 images as integer counts 0..16


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    images, targets = load_digits_arrays()
    return images.astype(np.float32) / DIGITS_MAX_VALUE, targets


@lru_cache(maxsize=16)
def _split_arrays(
    split: str, val_fraction: float, test_fraction: float, seed: int, normalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _raw_digits()
    indices = stratified_split(labels, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    x = torch.from_numpy(images[indices[split]]).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    if normalize:  # statistics of the training split only, so val/test never leak into preprocessing
        train = images[indices["train"]]
        x = (x - float(train.mean())) / float(train.std())
    return x, torch.from_numpy(labels[indices[split]])


def _resize(x: torch.Tensor, image_size: int | None) -> torch.Tensor:
    if image_size is None or image_size == x.shape[-1]:
        return x
    squeeze = x.ndim == 3
    x = x.unsqueeze(0) if squeeze else x
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=image_size < 8)
    return x.squeeze(0) if squeeze else x


class DigitsDataset(Dataset):
    """One split of scikit-learn's digits: items are ``(image, label)`` with ``image`` a float32 ``(C, S, S)`` tensor.

    Splits are stratified and depend only on ``(seed, val_fraction, test_fraction)`` (see
    :func:`~bramley.core.data.splits.stratified_split`); with the defaults train/val/test hold 1259/179/359 images.
    Pixels are scaled to [0, 1] and, with ``normalize``, standardised with the mean/std of the *training* split.
    ``image_size`` upsamples bilinearly (``align_corners=False``) and ``in_chans=3`` repeats the gray channel so that
    ImageNet-shaped models accept the images.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        val_fraction: share of each class in ``val``.
        test_fraction: share of each class in ``test``.
        seed: split seed.
        image_size: output side length; ``None`` keeps 8x8.
        in_chans: 1 or 3.
        normalize: standardise with training-split statistics (otherwise values stay in [0, 1]).
        transform: optional callable applied to each image tensor after resizing.
    """

    num_classes = 10
    classes = tuple(str(i) for i in range(10))

    def __init__(
        self,
        split: str = "train",
        *,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        image_size: int | None = None,
        in_chans: int = 1,
        normalize: bool = True,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be a positive int or None, got {image_size}")
        self.split = split
        self.image_size = image_size
        self.in_chans = in_chans
        self.transform = transform
        self._images, targets = _split_arrays(split, float(val_fraction), float(test_fraction), seed, normalize)
        self.targets = targets.clone()  # the cached arrays stay untouched whatever callers do

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = _resize(self._images[index], self.image_size).expand(self.in_chans, -1, -1).clone()
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split at once: ``X`` float32 ``(N, in_chans, S, S)``, ``y`` int64 ``(N,)`` (no ``transform``)."""
        x = _resize(self._images, self.image_size).expand(-1, self.in_chans, -1, -1)
        x = x.clone(memory_format=torch.contiguous_format)
        return x, self.targets.clone()


def digits_tensors(split: str = "train", **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Shortcut for ``DigitsDataset(split, **kwargs).tensors()``: fast whole-tensor access for tiny models."""
    return DigitsDataset(split, **kwargs).tensors()


def digits_splits(**kwargs) -> dict[str, DigitsDataset]:
    """All three splits with the same arguments: ``{"train": ..., "val": ..., "test": ...}``."""
    return {split: DigitsDataset(split, **kwargs) for split in SPLITS}
