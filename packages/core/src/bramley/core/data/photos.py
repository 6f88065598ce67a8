"""scikit-learn's two sample photos (china.jpg, flower.jpg; 427x640 RGB) as a small labelled crop dataset.

Labels: with ``label="quadrant"`` (default) each photo is cut into a 2x2 grid and the class is
``photo * 4 + quadrant`` (quadrants numbered top-left, top-right, bottom-left, bottom-right), 8 classes; with
``label="photo"`` the class is the photo (2 classes).

No leakage: each quadrant is cut into a ``grid x grid`` array of blocks (default 4x4, blocks of about 53x80
pixels) and the blocks are dealt to the splits by a permutation drawn from ``numpy.random.default_rng([seed, 0])``:
``round(test_fraction * grid**2)`` blocks to ``test``, ``round(val_fraction * grid**2)`` to ``val``, the rest to
``train``. Every crop lies entirely inside one block of its own split, so no pixel is shared between splits, while
every split still covers the whole quadrant (contiguous strips would make held-out crops come from a different part
of the scene). Crop positions are drawn from ``default_rng([seed, 1 + split_index])``: a random block of the split,
then a uniform position inside it; they are fixed for the dataset's lifetime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.utils.data import Dataset

from ._bundled import load_sample_photo
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
    return tuple(load_sample_photo(name) for name in PHOTO_NAMES)


def split_regions(
    val_fraction: float = 0.2, test_fraction: float = 0.2, *, grid: int = 4, seed: int = 0
) -> dict[str, list[tuple[int, Box]]]:
    """For each split, the ``(quadrant_class, block)`` pairs it owns (see the module docstring for the layout)."""
    check_fractions(val_fraction, test_fraction)
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    n_blocks = grid * grid
    n_test, n_val = round(test_fraction * n_blocks), round(val_fraction * n_blocks)
    if n_blocks - n_test - n_val < 1 or (val_fraction > 0 and n_val == 0) or (test_fraction > 0 and n_test == 0):
        raise ValueError(
            f"a {grid}x{grid} grid cannot give every split a block with val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}; use a larger grid"
        )
    rng = np.random.default_rng([seed, 0])
    regions: dict[str, list[tuple[int, Box]]] = {name: [] for name in SPLITS}
    for p, photo in enumerate(_photos()):
        height, width = photo.shape[:2]
        rows = ((0, height // 2), (height // 2, height))
        cols = ((0, width // 2), (width // 2, width))
        for q in range(4):
            (top, bottom), (left, right) = rows[q // 2], cols[q % 2]
            ys = np.linspace(top, bottom, grid + 1).round().astype(int)
            xs = np.linspace(left, right, grid + 1).round().astype(int)
            order = rng.permutation(n_blocks)
            owner = {
                int(b): ("test" if k < n_test else "val" if k < n_test + n_val else "train")
                for k, b in enumerate(order)
            }
            for b in range(n_blocks):
                r, c = divmod(b, grid)
                box = Box(p, int(ys[r]), int(xs[c]), int(ys[r + 1]), int(xs[c + 1]))
                regions[owner[b]].append((p * 4 + q, box))
    return regions


class SamplePhotosDataset(Dataset):
    """Square crops of scikit-learn's sample photos labelled by photo quadrant (8 classes) or by photo (2 classes).

    Items are ``(image, label)``; ``image`` is ``transform(pil_crop)`` when ``transform`` is given, else a float32
    ``(3, crop_size, crop_size)`` tensor in [0, 1] (``as_tensor=True``) or the PIL crop. See the module docstring
    for the leakage-free block layout. With the defaults each quadrant has 16 blocks of about 53x80 pixels:
    10 for train, 3 for val, 3 for test.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        crop_size: side of the square crops; must fit inside one block (53 pixels with ``grid=4``).
        samples_per_class: crops per class in this split.
        label: ``"quadrant"`` or ``"photo"``.
        val_fraction: share of each quadrant's blocks given to ``val``.
        test_fraction: share of each quadrant's blocks given to ``test``.
        grid: blocks per quadrant side.
        seed: seed of the block assignment and of the crop positions.
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
        grid: int = 4,
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
        regions = split_regions(val_fraction, test_fraction, grid=grid, seed=seed)[split]
        if not regions:
            raise ValueError(f"split {split!r} has no blocks: its fraction is 0")
        smallest = min(min(b.bottom - b.top, b.right - b.left) for _, b in regions)
        if crop_size > smallest:
            raise ValueError(
                f"crop_size {crop_size} does not fit the smallest {grid}x{grid}-grid block ({smallest} pixels); "
                "use a smaller crop_size or grid"
            )
        by_class: dict[int, list[Box]] = {}
        for cls, box in regions:
            by_class.setdefault(cls, []).append(box)
        rng = np.random.default_rng([seed, 1 + SPLITS.index(split)])
        self.boxes: list[Box] = []
        labels: list[int] = []
        for cls, blocks in sorted(by_class.items()):
            for k in rng.integers(0, len(blocks), samples_per_class).tolist():
                block = blocks[k]
                t = block.top + int(rng.integers(0, block.bottom - block.top - crop_size + 1))
                l = block.left + int(rng.integers(0, block.right - block.left - crop_size + 1))
                self.boxes.append(Box(block.photo, t, l, t + crop_size, l + crop_size))
                labels.append(cls if label == "quadrant" else block.photo)
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
        if self.as_tensor and self.transform is None:
            return torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float().div_(255), int(self.targets[index])
        from PIL import Image  # pillow loaded the photos already (bundled extra)

        image = Image.fromarray(pixels)
        return (self.transform(image) if self.transform is not None else image), int(self.targets[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All crops as ``X`` float32 ``(N, 3, S, S)`` in [0, 1] and ``y`` int64 ``(N,)`` (ignores ``transform``)."""
        photos = _photos()
        crops = np.stack([photos[b.photo][b.top : b.bottom, b.left : b.right] for b in self.boxes])
        return torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()).float().div_(255), self.targets.clone()
