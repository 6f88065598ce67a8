"""Multi-domain data: the concatenated training set, UnED folders, and the mini domains made here.

Training items are ``(image, label, domain)``; a batch from :class:`~bramley.udon.sampler.DomainBatchSampler`
holds one domain. Evaluation items are ``(image, row)``: labels of UnED query splits may be lists, so they stay in
the dataset (``labels``) rather than in the batch.

The mini domains (for the smoke recipe, the tests and the mini reproduction) differ in difficulty and class count:

- ``digits``: scikit-learn's digits, 10 classes;
- ``rotated_digits``: the same images turned by 0/90/180/270 degrees, the class being (digit, turn): 40 classes,
  where a 6 turned by 180 degrees must be told from a 9;
- ``longtail``: core's procedural shapes, 64 classes (4 shapes x 4 colors x 2 textures x 2 counts), clutter and
  occlusion, a 20x long tail in training (most classes rare);
- ``shapes``: core's procedural shapes without clutter, 16 classes (shape x color), balanced.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from bramley.core.errors import DataError

from .uned import info_path, read_info_file

__all__ = ["MINI_DOMAINS", "EvalImages", "MultiDomainDataset", "UnedImages", "mini_domain"]

MINI_DOMAINS = ("digits", "rotated_digits", "longtail", "shapes")


class MultiDomainDataset(Dataset):
    """The concatenation of one dataset per domain; item ``i`` is ``(image, label, domain)``.

    Args:
        parts: ``(name, dataset)`` per domain; each dataset yields ``(image, label)`` with int labels and has
            ``targets`` (all labels, read without loading images).
        num_classes: classes per domain (default: one more than the largest label of each).

    Raises:
        DataError: a domain with no samples or a single class, a label outside ``[0, num_classes)``, or a
            multi-label entry (training labels are single ints).
    """

    def __init__(self, parts: Sequence[tuple[str, Dataset]], num_classes: Sequence[int] | None = None) -> None:
        if not parts:
            raise DataError("no training domain given")
        if num_classes is not None and len(num_classes) != len(parts):
            raise DataError(f"{len(num_classes)} class counts for {len(parts)} domains")
        self.names = [name for name, _ in parts]
        self.datasets = [ds for _, ds in parts]
        self.num_classes: list[int] = []
        for d, (name, ds) in enumerate(parts):
            targets = [int(t) for t in _targets(ds, name)]
            if not targets:
                raise DataError(f"domain {name!r} has no training samples")
            classes = num_classes[d] if num_classes is not None else max(targets) + 1
            bad = [t for t in targets if not 0 <= t < classes]
            if bad:
                raise DataError(f"domain {name!r} has label {bad[0]} outside [0, {classes}) ({len(bad)} such labels)")
            if len(set(targets)) < 2:
                raise DataError(f"domain {name!r} has a single class ({targets[0]}); a classifier needs at least 2")
            self.num_classes.append(classes)
        self.sizes = [len(ds) for ds in self.datasets]
        self.offsets = [sum(self.sizes[:d]) for d in range(len(self.sizes))]

    def __len__(self) -> int:
        return sum(self.sizes)

    def locate(self, index: int) -> tuple[int, int]:
        """``(domain, index within the domain)`` of global ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        domain = max(d for d, off in enumerate(self.offsets) if off <= index)
        return domain, index - self.offsets[domain]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        domain, local = self.locate(index)
        image, label = self.datasets[domain][local]
        return image, int(label), domain


def _targets(ds: Dataset, name: str) -> Sequence:
    targets = getattr(ds, "targets", None)
    if targets is None:
        raise DataError(f"domain {name!r}: its dataset has no targets")
    for t in targets:
        if isinstance(t, tuple | list):
            raise DataError(f"domain {name!r} has a multi-label training entry {t}; training labels are single ints")
    return targets.tolist() if isinstance(targets, torch.Tensor) else list(targets)


# ------------------------------------------------------------------------------------------------------- UnED
def _load_rgb(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


class UnedImages(Dataset):
    """One split of one UnED domain: ``<root>/info_files/<domain>/<split>.json`` and ``<root>/images/<path>``.

    Items are ``(image, label)`` (``label`` an int, or a tuple for a multi-label query entry); ``targets`` lists the
    labels; ``transform`` maps the PIL image to a tensor.
    """

    def __init__(self, root: str | os.PathLike, domain: str, split: str, transform: Callable) -> None:
        self.root, self.domain, self.split, self.transform = Path(root), domain, split, transform
        self.entries = read_info_file(info_path(root, domain, split))
        if not self.entries:
            raise DataError(f"{info_path(root, domain, split)} lists no images")
        self.targets = [e.label for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        entry = self.entries[index]
        return self.transform(_load_rgb(self.root / "images" / entry.path)), entry.label


class EvalImages(Dataset):
    """``(image, row)`` items over several ``(domain, split)`` parts, for embedding them in one pass.

    ``parts`` maps ``(domain, split)`` to a dataset of ``(image, label)``; ``spans[(domain, split)]`` is the
    ``(start, stop)`` of its rows, ``labels[(domain, split)]`` its labels.
    """

    def __init__(self, parts: dict[tuple[str, str], Dataset]) -> None:
        self.parts = parts
        self.keys = list(parts)
        self.spans: dict[tuple[str, str], tuple[int, int]] = {}
        start = 0
        for key in self.keys:
            self.spans[key] = (start, start + len(parts[key]))
            start += len(parts[key])
        self.labels = {key: list(_label_list(parts[key])) for key in self.keys}
        self._length = start

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:
        for key in self.keys:
            start, stop = self.spans[key]
            if start <= row < stop:
                return self.parts[key][row - start][0], row
        raise IndexError(f"row {row} out of range for {self._length} items")


def _label_list(ds: Dataset) -> list:
    targets = ds.targets
    return targets.tolist() if isinstance(targets, torch.Tensor) else list(targets)


# ------------------------------------------------------------------------------------------------ mini domains
class TensorImages(Dataset):
    """Images and labels held as tensors: ``(image, label)`` items, ``targets`` the labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.targets = images, labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


@functools.lru_cache(maxsize=32)
def _mini(name: str, split: str, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if name in ("digits", "rotated_digits"):
        from bramley.core.data import DigitsDataset

        images, labels = DigitsDataset(split, seed=seed, in_chans=3).tensors()
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        if name == "rotated_digits":
            g = torch.Generator().manual_seed(seed * 7 + {"train": 0, "val": 1, "test": 2}[split])
            turns = torch.randint(0, 4, (len(labels),), generator=g)
            images = torch.stack([torch.rot90(x, int(t), dims=(1, 2)) for x, t in zip(images, turns)])
            labels = labels * 4 + turns
        return images.contiguous(), labels
    from bramley.core.data import SyntheticDataset

    if name == "longtail":
        knobs = {"imbalance": 20.0, "train_size": 1600, "val_size": 256, "test_size": 640}
    elif name == "shapes":
        knobs = {"textures": ("solid",), "counts": (1,), "clutter": 0, "occlusion": 0.0, "imbalance": 1.0}
        knobs.update({"train_size": 800, "val_size": 160, "test_size": 320})
    else:
        raise DataError(f"unknown mini domain {name!r}; choose from {', '.join(MINI_DOMAINS)}")
    return SyntheticDataset(split, seed=seed, normalize=True, image_size=image_size, **knobs).tensors()


def mini_domain(name: str, split: str = "train", image_size: int = 24, seed: int = 0) -> TensorImages:
    """One split of a mini domain (see the module docstring) as ``(3, image_size, image_size)`` tensors."""
    if name not in MINI_DOMAINS:
        raise DataError(f"unknown mini domain {name!r}; choose from {', '.join(MINI_DOMAINS)}")
    images, labels = _mini(name, split, image_size, seed)
    return TensorImages(images, labels)


def num_mini_classes(name: str) -> int:
    """Classes of a mini domain (all of them, whether or not the training split shows each)."""
    return {"digits": 10, "rotated_digits": 40, "longtail": 64, "shapes": 16}[name]
