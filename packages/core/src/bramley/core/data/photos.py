"""scikit-learn's two sample photos (china.jpg, flower.jpg; 427x640 RGB) as a small labelled crop dataset.

Labels: with ``label="quadrant"`` (default) each photo is cut into a 2x2 grid and the class is
``photo * 4 + quadrant`` (quadrants numbered top-left, top-right, bottom-left, bottom-right), 8 classes; with
``label="photo"`` the class is the photo (2 classes).

No leakage: each quadrant is cut along its width into three vertical strips, ``train | val | test``, of widths
``1 - val_fraction - test_fraction``, ``val_fraction`` and ``test_fraction`` of the quadrant width. Every crop of a
split lies entirely inside that split's strips, so no pixel is shared between splits. Crop positions are drawn
uniformly inside the strip from ``numpy.random.default_rng([seed, split_id])`` and fixed for the dataset's lifetime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .splits import SPLITS, check_fractions

PHOTO_NAMES = ("china", "flower")
QUADRANT_NAMES = ("top_left", "top_right", "bottom_left", "bottom_right")


@dataclass(frozen=True)
class Box:
    """A pixel rectangle ``[top, bottom) x [left, right)`` in photo ``photo``."""

    photo: int
    top: int
    left: int
    bottom: int
    right: int

    def intersects(self, other: Box) -> bool:
        return (
            self.photo == other.photo
            and self.top < other.bottom
            and other.top < self.bottom
            and self.left < other.right
            and other.left < self.right
        )


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    order = [next(i for i, f in enumerate(bunch.filenames) if f.endswith(f"{name}.jpg")) for name in PHOTO_NAMES]
    return tuple(np.ascontiguousarray(bunch.images[i]) for i in order)


def split_regions(val_fraction: float = 0.2, test_fraction: float = 0.2) -> dict[str, list[tuple[int, Box]]]:
    """For each split, ``(class_index_with_quadrants, region)`` for every one of the 8 photo quadrants."""
    check_fractions(val_fraction, test_fraction)
    regions: dict[str, list[tuple[int, Box]]] = {name: [] for name in SPLITS}
    for p, photo in enumerate(_photos()):
        height, width = photo.shape[:2]
        rows = ((0, height // 2), (height // 2, height))
        cols = ((0, width // 2), (width // 2, width))
        for q in range(4):
            (top, bottom), (left, right) = rows[q // 2], cols[q % 2]
            quad_width = right - left
            n_val, n_test = round(val_fraction * quad_width), round(test_fraction * quad_width)
            edges = [left, right - n_val - n_test, right - n_test, right]
            for s, name in enumerate(SPLITS):
                regions[name].append((p * 4 + q, Box(p, top, edges[s], bottom, edges[s + 1])))
    return regions


class SamplePhotosDataset(Dataset):
    """Square crops of scikit-learn's sample photos labelled by photo quadrant (8 classes) or by photo (2 classes).

    Items are ``(image, label)``; ``image`` is ``transform(pil_crop)`` when ``transform`` is given, else a float32
    ``(3, crop_size, crop_size)`` tensor in [0, 1] (``as_tensor=True``) or the PIL crop. See the module docstring
    for the leakage-free region layout. With the defaults the train / val / test strips of a quadrant are
    192 / 64 / 64 pixels wide and 213 or 214 high.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        crop_size: side of the square crops; must fit the narrowest strip of the split.
        samples_per_class: crops per class in this split.
        label: ``"quadrant"`` or ``"photo"``.
        val_fraction: width share of each quadrant given to ``val``.
        test_fraction: width share of each quadrant given to ``test``.
        seed: seed of the crop positions.
        as_tensor: return tensors (otherwise PIL images) when no ``transform`` is given.
        transform: callable applied to the PIL crop.
    """

    def __init__(
        self,
        split: str = "train",
        *,
        crop_size: int = 32,
        samples_per_class: int = 64,
        label: str = "quadrant",
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        seed: int = 0,
        as_tensor: bool = True,
        transform: Callable | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if label not in ("quadrant", "photo"):
            raise ValueError(f"label must be 'quadrant' or 'photo', got {label!r}")
        if crop_size < 1 or samples_per_class < 1:
            raise ValueError(f"crop_size and samples_per_class must be >= 1, got {crop_size} and {samples_per_class}")
        regions = split_regions(val_fraction, test_fraction)[split]
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        self.boxes: list[Box] = []
        labels: list[int] = []
        for cls, region in regions:
            h, w = region.bottom - region.top, region.right - region.left
            if crop_size > min(h, w):
                raise ValueError(
                    f"crop_size {crop_size} does not fit the {split} region of {h}x{w} pixels; "
                    "use a smaller crop_size or a larger fraction for this split"
                )
            tops = region.top + rng.integers(0, h - crop_size + 1, samples_per_class)
            lefts = region.left + rng.integers(0, w - crop_size + 1, samples_per_class)
            for t, l in zip(tops.tolist(), lefts.tolist()):
                self.boxes.append(Box(region.photo, t, l, t + crop_size, l + crop_size))
                labels.append(cls if label == "quadrant" else region.photo)
        self.targets = torch.tensor(labels, dtype=torch.int64)
        if label == "quadrant":
            self.classes = tuple(f"{p}_{q}" for p in PHOTO_NAMES for q in QUADRANT_NAMES)
        else:
            self.classes = PHOTO_NAMES
        self.num_classes = len(self.classes)
        self.split = split
        self.as_tensor = as_tensor
        self.transform = transform

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int):
        b = self.boxes[index]
        pixels = _photos()[b.photo][b.top : b.bottom, b.left : b.right]
        if self.transform is not None:
            return self.transform(Image.fromarray(pixels)), int(self.targets[index])
        if self.as_tensor:
            return torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float().div_(255), int(self.targets[index])
        return Image.fromarray(pixels), int(self.targets[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All crops as ``X`` float32 ``(N, 3, S, S)`` in [0, 1] and ``y`` int64 ``(N,)`` (ignores ``transform``)."""
        photos = _photos()
        crops = np.stack([photos[b.photo][b.top : b.bottom, b.left : b.right] for b in self.boxes])
        return torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()).float().div_(255), self.targets.clone()
