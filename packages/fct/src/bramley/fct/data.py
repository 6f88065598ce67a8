"""Datasets for FCT: a recipe's ``data`` section as datasets, and class-subset views (the old classes).

Every dataset yields ``(image, label)``; the evaluation split always keeps every class (as in the paper).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from bramley.core.errors import ConfigError, DataError

from .recipe import FCTData

__all__ = ["build_dataset", "class_subset", "dataset_labels", "num_old_classes"]


def dataset_labels(data: Dataset) -> torch.Tensor:
    """Integer labels of every item, without loading images where the dataset knows them."""
    if isinstance(data, Subset):
        return dataset_labels(data.dataset)[torch.as_tensor(data.indices, dtype=torch.long)]
    if isinstance(data, TensorDataset):
        return data.tensors[1].long()
    targets = getattr(data, "targets", None)
    if targets is None:
        return torch.tensor([int(data[i][1]) for i in range(len(data))])
    return torch.as_tensor(targets, dtype=torch.long)


def class_subset(data: Dataset, classes: int | Sequence[int] | None) -> Dataset:
    """Items whose label is one of ``classes`` (an int ``k`` means the first ``k`` classes, ``0..k-1``)."""
    if classes is None:
        return data
    labels = dataset_labels(data)
    keep = set(range(classes)) if isinstance(classes, int) else {int(c) for c in classes}
    present = set(labels.unique().tolist())
    missing = sorted(keep - present)
    if missing:
        raise DataError(
            f"class subset asks for classes {missing} that have no item (labels present: {sorted(present)})"
        )
    idx = torch.nonzero(torch.isin(labels, torch.tensor(sorted(keep)))).flatten()
    if isinstance(data, TensorDataset):
        return TensorDataset(*(t[idx] for t in data.tensors))
    return Subset(data, idx.tolist())


def num_old_classes(data: FCTData, num_classes: int) -> int:
    """How many classes (the first ones) the old model and the side-information model train on."""
    old = data.old_classes if data.old_classes is not None else num_classes // 2
    if not 1 <= old <= num_classes:
        raise DataError(f"data.old_classes={old} but the dataset has {num_classes} classes")
    return old


def _image_transforms(preset: str, image_size: int, train: bool):
    from torchvision import transforms as T

    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    if preset == "imagenet":  # official ImageNet transforms
        ops = (
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
            if train
            else [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
        )
    else:  # "cifar", the official CIFAR-100 transforms: upsample to the ImageNet resolution, flip when training
        ops = [T.Resize(image_size), T.CenterCrop(image_size)] + ([T.RandomHorizontalFlip()] if train else [])
    return T.Compose([*ops, T.ToTensor(), normalize])


def build_dataset(data: FCTData, split: str) -> tuple[Dataset, int]:
    """The ``split`` (``"train"`` or ``"val"``) of a recipe's ``data`` section and its number of classes.

    Raises:
        ConfigError: ``source: folder`` without ``root`` or ``image_size``.
        DataError: a folder does not exist or holds no images.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if data.source == "digits":
        from bramley.core.data import DigitsDataset

        ds = DigitsDataset(
            "train" if split == "train" else "test",
            val_fraction=0.0,
            test_fraction=data.test_fraction,
            seed=data.split_seed,
            image_size=data.image_size,
            in_chans=data.in_chans,
        )
        return TensorDataset(*ds.tensors()), ds.num_classes
    from torchvision.datasets import ImageFolder

    if not data.root:
        raise ConfigError(
            "data.root is not set: pass data.root=/path/to/dataset (holding data.train_dir, data.val_dir)"
        )
    if data.image_size is None:
        raise ConfigError("data.image_size is not set: source folder needs it (the paper's recipes use 224)")
    folder = Path(data.root) / (data.train_dir if split == "train" else data.val_dir)
    if not folder.is_dir():
        raise DataError(f"dataset folder {folder} does not exist")
    transform = _image_transforms(data.preset, data.image_size, split == "train")
    try:
        images = ImageFolder(str(folder), transform=transform)
    except FileNotFoundError as e:  # torchvision's "Couldn't find any class folder" / "Found no valid file"
        raise DataError(f"dataset folder {folder}: {e}") from None
    return images, len(images.classes)
