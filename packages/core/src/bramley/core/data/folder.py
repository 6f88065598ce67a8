"""Real image datasets in ``root/<class>/<image>`` layout: torchvision's ImageFolder with ImageNet-style transforms.

Needs the ``vision`` extra of bramley-core (torchvision, pillow; timm for the auto-augment configs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from .._optional import optional_import

with optional_import("vision", "bramley.core.data.ImageFolder and the image transforms"):
    from torchvision import datasets
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def _auto_augment(config: str, size: tuple[int, int], mean: Sequence[float], interpolation: str) -> Callable:
    """timm's auto-augment family from its config strings; operates on PIL images."""
    with optional_import("vision", f"auto_augment={config!r}"):
        from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
        from timm.data.transforms import str_to_pil_interp

    hparams = {
        "translate_const": int(min(size) * 0.45),
        "img_mean": tuple(round(255 * m) for m in mean),
        "interpolation": str_to_pil_interp(interpolation),
    }
    if config.startswith("rand"):
        return rand_augment_transform(config, hparams)
    if config.startswith("augmix"):
        return augment_and_mix_transform(config, hparams)
    if config.startswith(("original", "v0", "3a")):
        return auto_augment_transform(config, hparams)
    if config == "trivialaugment":
        return T.TrivialAugmentWide(interpolation=InterpolationMode(interpolation))
    raise ValueError(
        f"unknown auto_augment {config!r}: use a timm config string such as 'rand-m9-mstd0.5-inc1', "
        "'augmix-m5-w4-d2', 'original' / 'v0', or 'trivialaugment'"
    )


def train_transform(
    image_size: int | Sequence[int] = 224,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    auto_augment: str | None = None,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """ImageNet training pipeline on PIL images: RandomResizedCrop, horizontal flip, optional auto-augment, normalize.

    ``auto_augment`` takes timm's config strings (``"rand-m9-mstd0.5-inc1"`` is RandAugment as in DeiT / FastViT,
    ``"augmix-..."``, ``"original"``) or ``"trivialaugment"`` (torchvision).
    """
    size = _size_pair(image_size)
    steps: list[Callable] = [
        T.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=InterpolationMode(interpolation))
    ]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    if auto_augment:
        steps.append(_auto_augment(auto_augment, size, mean, interpolation))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def eval_transform(
    image_size: int | Sequence[int] = 224,
    *,
    crop_pct: float = 0.875,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable:
    """ImageNet evaluation pipeline: resize to ``floor(size / crop_pct)``, center-crop ``size``, normalize.

    Square sizes resize the shorter side (aspect ratio kept, as timm does); ``(h, w)`` sizes resize both sides.
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    size = _size_pair(image_size)
    resized = tuple(math.floor(s / crop_pct) for s in size)
    resize_to = resized[0] if size[0] == size[1] else resized
    return T.Compose(
        [
            T.Resize(resize_to, interpolation=InterpolationMode(interpolation)),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


class ImageFolder(datasets.ImageFolder):
    """``torchvision.datasets.ImageFolder`` with the standard transforms and clear errors for bad folders.

    Args:
        root: folder with one sub-folder per class.
        train: use :func:`train_transform` (otherwise :func:`eval_transform`).
        image_size: output size, int or ``(h, w)``.
        crop_pct: eval center-crop fraction.
        auto_augment: training auto-augment config (see :func:`train_transform`).
        interpolation: ``"bilinear"`` or ``"bicubic"`` (any ``InterpolationMode`` value).
        transform: overrides the built transform entirely when given.
        target_transform: applied to the class index.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        train: bool = False,
        image_size: int | Sequence[int] = 224,
        crop_pct: float = 0.875,
        auto_augment: str | None = None,
        interpolation: str = "bilinear",
        transform: Callable | None = None,
        target_transform: Callable | None = None,
    ) -> None:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"image folder root {root} does not exist")
        if not root.is_dir():
            raise NotADirectoryError(f"image folder root {root} is not a directory")
        if not any(p.is_dir() for p in root.iterdir()):
            raise FileNotFoundError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
        if transform is None:
            if train:
                transform = train_transform(image_size, auto_augment=auto_augment, interpolation=interpolation)
            else:
                transform = eval_transform(image_size, crop_pct=crop_pct, interpolation=interpolation)
        try:
            super().__init__(str(root), transform=transform, target_transform=target_transform)
        except FileNotFoundError as err:  # torchvision: a class folder without a single valid image
            raise FileNotFoundError(f"image folder {root}: {err}") from err
        self.train = train


def image_folder_splits(
    root: str | Path, *, train_dir: str = "train", val_dir: str = "val", **kwargs
) -> dict[str, ImageFolder]:
    """``{"train": ImageFolder(root/train_dir, train=True), "val": ImageFolder(root/val_dir)}`` (ImageNet layout).

    Raises ``ValueError`` if the two splits do not have the same classes (indices would silently disagree).
    """
    root = Path(root)
    splits = {
        "train": ImageFolder(root / train_dir, train=True, **kwargs),
        "val": ImageFolder(root / val_dir, train=False, **kwargs),
    }
    if splits["train"].classes != splits["val"].classes:
        only_train = sorted(set(splits["train"].classes) - set(splits["val"].classes))
        only_val = sorted(set(splits["val"].classes) - set(splits["train"].classes))
        raise ValueError(f"train and val classes differ: only in train {only_train}, only in val {only_val}")
    return splits
