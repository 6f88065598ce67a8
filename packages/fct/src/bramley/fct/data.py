"""Datasets for FCT: class-subset views (old model = first half of the classes) of digits or an image folder.

Every dataset yields ``(image, label)``; the full evaluation set always keeps all classes (as in the paper).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["build_dataset", "class_subset", "dataset_labels"]


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
        raise ValueError(
            f"class subset asks for classes {missing} that have no item (labels present: {sorted(present)})"
        )
    idx = torch.nonzero(torch.isin(labels, torch.tensor(sorted(keep)))).flatten()
    if isinstance(data, TensorDataset):
        return TensorDataset(*(t[idx] for t in data.tensors))
    return Subset(data, idx.tolist())


def _image_transforms(preset: str, image_size: int, train: bool):
    from torchvision import transforms as T

    normalize = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    if preset == "imagenet":  # official ImageNet transforms
        ops = (
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
            if train
            else [T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)]
        )
    elif preset == "cifar":  # official CIFAR-100 transforms: upsample to the ImageNet resolution, flip when training
        ops = [T.Resize(image_size), T.CenterCrop(image_size)] + ([T.RandomHorizontalFlip()] if train else [])
    else:
        raise ValueError(f"unknown transform preset {preset!r}; choose 'imagenet' or 'cifar'")
    return T.Compose([*ops, T.ToTensor(), normalize])


def build_dataset(cfg: Mapping[str, Any], split: str, classes: int | None = None) -> Dataset:
    """The ``split`` (``"train"`` or ``"val"``) of the dataset described by a recipe's ``data`` section.

    ``cfg["name"]`` is ``"digits"`` (bundled; ``test_fraction`` of each class is the evaluation split) or
    ``"image_folder"`` (``root/<train_dir>`` and ``root/<val_dir>`` in torchvision ImageFolder layout, like the
    official ``training`` / ``validation`` folders). ``classes`` keeps the first ``classes`` classes only.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    name = cfg.get("name")
    if name == "digits":
        from bramley.core.data import DigitsDataset

        ds = DigitsDataset(
            "train" if split == "train" else "test",
            val_fraction=0.0,
            test_fraction=float(cfg.get("test_fraction", 0.35)),
            seed=int(cfg.get("split_seed", 0)),
            image_size=cfg.get("image_size"),
            in_chans=int(cfg.get("in_chans", 1)),
        )
        data: Dataset = TensorDataset(*ds.tensors())
    elif name == "image_folder":
        from torchvision.datasets import ImageFolder

        if not cfg.get("root"):
            raise ValueError("data.root is required for image_folder data: pass data.root=/path/to/dataset")
        folder = Path(cfg["root"]) / cfg.get("train_dir" if split == "train" else "val_dir", "")
        if not folder.is_dir():
            raise FileNotFoundError(f"dataset folder {folder} does not exist")
        tf = _image_transforms(cfg.get("preset", "imagenet"), int(cfg.get("image_size", 224)), split == "train")
        data = ImageFolder(str(folder), transform=tf)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose 'digits' or 'image_folder'")
    return class_subset(data, classes)
