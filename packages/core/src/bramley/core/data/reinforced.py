"""Reinforced datasets: augmentations that replay bit for bit, and teacher outputs stored once, read every epoch.

Dataset Reinforcement (Faghri et al., ICCV 2023) and MobileCLIP's reinforced training run a teacher over many
augmentations of every image once, store what the teacher said together with the *parameters* of each augmentation
(a few integers, not the pixels), and at training time replay a stored augmentation on the original image to get
exactly the input the teacher saw. This module holds both halves.

**Replayable augmentations.** :class:`ReplayableAugment` is RandomResizedCrop + horizontal flip + RandAugment +
normalize + RandomErasing (the paper's ImageNet+ configuration, :class:`AugmentConfig`) on uint8 ``(C, H, W)``
images. ``sample(image, seed)`` returns ``(tensor, params)``; ``replay(image, params)`` rebuilds the same tensor bit
for bit (sampling *is* drawing the parameters and replaying them). ``params`` is a small JSON-able dict::

    {"src": [H, W],              the original image's size (replay on another image is an error)
     "crop": [top, left, h, w],  the RandomResizedCrop box in the original image
     "flip": 0 | 1,              horizontal flip after the crop
     "ops": [[op, level], ...],  RandAugment: index into RAND_AUGMENT_OPS and the signed magnitude bin
                                 (level -9 = bin 9 negated; level 0 is magnitude 0); [] when RandAugment was skipped
     "erase": [top, left, h, w, seed]}   RandomErasing box on the output (absent: not erased); ``seed`` draws the
                                 erase noise (``erase_value="random"``) and is 0 for constant fills

RandAugment's operations and magnitudes are torchvision's (``torchvision.transforms.RandAugment``: tested equal).

**Stored teacher outputs.** :class:`ReinforcedWriter` writes per-sample records (any named tensors with a leading
sample axis: top-k probabilities and class ids, CLIP embeddings, ...) plus each sample's augmentation parameters to
``shard-NNNNN.safetensors`` files under one folder with a ``manifest.json``. Shards cover fixed sample ranges and are
written atomically (temporary file, then rename), so a killed run resumes with :meth:`ReinforcedWriter.pending`
and produces the same files as an uninterrupted one. :class:`ReinforcedStore` reads them back lazily; a truncated or
corrupt shard is a :class:`~bramley.core.errors.DataError` naming that file, and the other shards stay readable.
Nothing is unpickled: safetensors tensors and JSON only.

:func:`topk_sparsify` and :func:`densify` convert between full probability vectors and stored top-k records.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .._optional import optional_import
from ..errors import ConfigError, DataError
from ..threads import torch_threads

__all__ = [
    "DENSIFY_METHODS",
    "FORMAT",
    "RAND_AUGMENT_OPS",
    "AugmentConfig",
    "FieldSpec",
    "ReinforcedStore",
    "ReinforcedWriter",
    "ReplayableAugment",
    "augmentation_seed",
    "densify",
    "topk_sparsify",
]

FORMAT = "bramley-reinforced"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: RandAugment's operations in torchvision's order (the stored ``op`` indexes this tuple).
RAND_AUGMENT_OPS = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
_SIGNED_OPS = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
_NO_MAGNITUDE_OPS = {"Identity", "AutoContrast", "Equalize"}
_ERASE_SEED_BOUND = 2**31  # erase-noise seeds stay exact in any JSON reader (below 2**53 would do; ints are compact)
_ATTEMPTS = 10  # box draws before falling back, as torchvision's RandomResizedCrop and RandomErasing


# ------------------------------------------------------------------------------------------------ augmentations
@dataclass(frozen=True)
class AugmentConfig:
    """The augmentations :class:`ReplayableAugment` samples (defaults: the paper's ImageNet+ configuration).

    Args:
        size: output ``(height, width)`` (an int: square).
        scale, ratio: RandomResizedCrop's area fraction and aspect ratio ranges.
        interpolation: resampling of the crop (``"bilinear"`` or ``"bicubic"``, antialiased).
        hflip: probability of a horizontal flip.
        rand_augment: probability of applying RandAugment (0: never; the paper uses 1).
        num_ops, magnitude, num_magnitude_bins: RandAugment's settings (torchvision's defaults: 2, 9, 31).
        erase: probability of RandomErasing (the paper: 0.25).
        erase_scale, erase_ratio: RandomErasing's area fraction and aspect ratio ranges.
        erase_value: ``"zeros"`` (erased pixels become 0 after normalization, as torchvision's default) or
            ``"random"`` (standard-normal noise, as timm's pixel mode, drawn from the stored seed).
        mean, std: normalization applied to the [0, 1] image before erasing.
    """

    size: int | tuple[int, int] = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    hflip: float = 0.5
    rand_augment: float = 1.0
    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31
    erase: float = 0.25
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_value: Literal["zeros", "random"] = "zeros"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(int(s) for s in self.size)
        object.__setattr__(self, "size", size)
        for name in ("scale", "ratio", "erase_scale", "erase_ratio", "mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"augment size must be a positive int or (height, width), got {self.size}")
        for name in ("hflip", "rand_augment", "erase"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment {name} probability must be in [0, 1], got {getattr(self, name)}")
        for name in ("scale", "erase_scale"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi <= 1.0:
                raise ConfigError(f"augment {name} must satisfy 0 < low <= high <= 1, got {(lo, hi)}")
        for name in ("ratio", "erase_ratio"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi:
                raise ConfigError(f"augment {name} must satisfy 0 < low <= high, got {(lo, hi)}")
        if self.num_ops < 0 or self.num_magnitude_bins < 1 or not 0 <= self.magnitude < self.num_magnitude_bins:
            raise ConfigError(
                f"RandAugment needs num_ops >= 0 and 0 <= magnitude < num_magnitude_bins, got num_ops={self.num_ops}, "
                f"magnitude={self.magnitude}, num_magnitude_bins={self.num_magnitude_bins}"
            )
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ConfigError(f"augment interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}")
        if self.erase_value not in ("zeros", "random"):
            raise ConfigError(f"augment erase_value must be 'zeros' or 'random', got {self.erase_value!r}")
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ConfigError(f"augment mean and std need one value per channel, std > 0: {self.mean}, {self.std}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings (what a manifest stores); :meth:`from_dict` rebuilds the config."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AugmentConfig:
        """The config of :meth:`to_dict`'s output; unknown keys are a :class:`ConfigError`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown augment setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def augmentation_seed(seed: int, index: int, augmentation: int) -> int:
    """The seed of augmentation ``augmentation`` of sample ``index``: independent of order, workers and batching."""
    if min(seed, index, augmentation) < 0:
        raise ValueError(f"seed, index and augmentation must be non-negative, got {(seed, index, augmentation)}")
    state = np.random.SeedSequence([seed, index, augmentation]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return float(torch.empty(1).uniform_(low, high, generator=generator).item())


def _randint(generator: torch.Generator, high: int) -> int:
    """An int in ``[0, high)``."""
    return int(torch.randint(high, (1,), generator=generator).item())


def _draw_box(
    generator: torch.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    strict: bool,
) -> tuple[int, int, int, int] | None:
    """torchvision's box draw (area fraction in ``scale``, log-uniform aspect in ``ratio``, up to 10 tries).

    ``strict``: the box must be smaller than the image (RandomErasing); otherwise it may cover it (RandomResizedCrop).
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_ATTEMPTS):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        fits = (h < height and w < width) if strict else (0 < w <= width and 0 < h <= height)
        if fits and h > 0 and w > 0:
            return _randint(generator, height - h + 1), _randint(generator, width - w + 1), h, w
    return None


def _center_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop's fallback: the largest centered box with an aspect ratio inside ``ratio``."""
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _magnitudes(op: str, num_bins: int, height: int, width: int) -> torch.Tensor | None:
    """torchvision's RandAugment magnitude bins of ``op`` for an image of ``(height, width)`` (None: no magnitude)."""
    if op in ("ShearX", "ShearY"):
        return torch.linspace(0.0, 0.3, num_bins)
    if op == "TranslateX":
        return torch.linspace(0.0, 150.0 / 331.0 * width, num_bins)
    if op == "TranslateY":
        return torch.linspace(0.0, 150.0 / 331.0 * height, num_bins)
    if op == "Rotate":
        return torch.linspace(0.0, 30.0, num_bins)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return torch.linspace(0.0, 0.9, num_bins)
    if op == "Posterize":
        return 8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int()
    if op == "Solarize":
        return torch.linspace(255.0, 0.0, num_bins)
    return None


def _apply_op(image: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One RandAugment operation on a uint8 image, as torchvision applies it (nearest interpolation, no fill)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    nearest = InterpolationMode.NEAREST
    if op in ("ShearX", "ShearY"):
        angle = math.degrees(math.atan(magnitude))
        shear = [angle, 0.0] if op == "ShearX" else [0.0, angle]
        return F.affine(
            image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=nearest, center=[0, 0]
        )
    if op in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if op == "TranslateX" else [0, int(magnitude)]
        return F.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=nearest)
    if op == "Rotate":
        return F.rotate(image, magnitude, interpolation=nearest)
    adjust = {
        "Brightness": F.adjust_brightness,
        "Color": F.adjust_saturation,
        "Contrast": F.adjust_contrast,
        "Sharpness": F.adjust_sharpness,
    }
    if op in adjust:
        return adjust[op](image, 1.0 + magnitude)
    if op == "Posterize":
        return F.posterize(image, int(magnitude))
    if op == "Solarize":
        return F.solarize(image, magnitude)
    if op == "AutoContrast":
        return F.autocontrast(image)
    if op == "Equalize":
        return F.equalize(image)
    return image  # Identity


class ReplayableAugment:
    """RandomResizedCrop + flip + RandAugment + normalize + RandomErasing whose every draw is stored and replayable.

    ``sample`` draws parameters from a seed and replays them, so ``replay(image, params)`` on the same image gives
    the same tensor bit for bit (on the same machine and library versions: the operations are deterministic CPU
    kernels). Images are uint8 tensors ``(C, H, W)`` (C = 1 or 3) or PIL images; the output is float32
    ``(C, *config.size)``, normalized.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()
        with optional_import("vision", "bramley.core.data.reinforced.ReplayableAugment"):
            import torchvision  # noqa: F401

    # ------------------------------------------------------------------------------------------------ sampling
    def draw(self, height: int, width: int, seed: int | torch.Generator) -> dict[str, Any]:
        """Parameters of one augmentation of an ``(height, width)`` image, from ``seed`` (an int or a generator)."""
        c = self.config
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
        box = _draw_box(generator, height, width, c.scale, c.ratio, strict=False)
        params: dict[str, Any] = {"src": [height, width], "crop": list(box or _center_box(height, width, c.ratio))}
        params["flip"] = int(_uniform(generator, 0.0, 1.0) < c.hflip)
        apply = c.num_ops and _uniform(generator, 0.0, 1.0) < c.rand_augment
        params["ops"] = self.draw_rand_augment(generator) if apply else []
        if _uniform(generator, 0.0, 1.0) < c.erase:
            erase = _draw_box(generator, c.size[0], c.size[1], c.erase_scale, c.erase_ratio, strict=True)
            if erase is not None:
                noise_seed = _randint(generator, _ERASE_SEED_BOUND) if c.erase_value == "random" else 0
                params["erase"] = [*erase, noise_seed]
        return params

    def draw_rand_augment(self, generator: torch.Generator) -> list[list[int]]:
        """RandAugment's ``[op, signed level]`` pairs, drawn in torchvision's order (op, then sign if signed)."""
        ops = []
        for _ in range(self.config.num_ops):
            op = _randint(generator, len(RAND_AUGMENT_OPS))
            level = 0 if RAND_AUGMENT_OPS[op] in _NO_MAGNITUDE_OPS else self.config.magnitude
            if RAND_AUGMENT_OPS[op] in _SIGNED_OPS and _randint(generator, 2):
                level = -level
            ops.append([op, level])
        return ops

    def sample(self, image: Any, seed: int | torch.Generator) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(augmented image, params)``: a random augmentation from ``seed`` and what replays it."""
        image = as_uint8_image(image)
        params = self.draw(image.shape[-2], image.shape[-1], seed)
        return self.replay(image, params), params

    # -------------------------------------------------------------------------------------------------- replay
    def replay(self, image: Any, params: Mapping[str, Any]) -> torch.Tensor:
        """The augmentation ``params`` describes, applied to ``image`` (a :class:`DataError` when they do not fit)."""

        image = as_uint8_image(image)
        self.validate(params, image.shape[-2], image.shape[-1])
        if image.shape[0] != len(self.config.mean):
            raise DataError(
                f"the image has {image.shape[0]} channels but augment mean/std have {len(self.config.mean)}"
            )
        # One intra-op thread: one image's operations are too small to split, and splitting them costs up to 5x on a
        # loaded 2-core machine (measured: 10 ms vs 2 ms per 16 px augmentation). DataLoader workers already run
        # single-threaded (then nothing changes); in the main process the count is restored afterwards.
        with torch_threads(1):
            return self._replay(image, params)

    def _replay(self, image: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        c = self.config
        top, left, h, w = params["crop"]
        mode = InterpolationMode.BILINEAR if c.interpolation == "bilinear" else InterpolationMode.BICUBIC
        out = F.resized_crop(image, top, left, h, w, list(c.size), interpolation=mode, antialias=True)
        if params["flip"]:
            out = F.hflip(out)
        out = self.apply_rand_augment(out, params["ops"])
        out = F.normalize(out.float().div_(255.0), c.mean, c.std)
        if "erase" in params:
            top, left, h, w, noise_seed = params["erase"]
            if c.erase_value == "random":
                noise = torch.randn((out.shape[0], h, w), generator=torch.Generator().manual_seed(noise_seed))
                out[:, top : top + h, left : left + w] = noise
            else:
                out[:, top : top + h, left : left + w] = 0.0
        return out

    def apply_rand_augment(self, image: torch.Tensor, ops: Sequence[Sequence[int]]) -> torch.Tensor:
        """RandAugment's ``[op, signed level]`` pairs applied in order to a uint8 image (torchvision's operations)."""
        for op, level in ops:
            name = RAND_AUGMENT_OPS[op]
            bins = _magnitudes(name, self.config.num_magnitude_bins, image.shape[-2], image.shape[-1])
            magnitude = 0.0 if bins is None else float(bins[abs(level)].item())
            image = _apply_op(image, name, -magnitude if level < 0 else magnitude)
        return image

    def validate(self, params: Mapping[str, Any], height: int, width: int) -> None:
        """Raise :class:`DataError` unless ``params`` is a well-formed augmentation of an ``(height, width)`` image."""
        c = self.config
        if not isinstance(params, Mapping):
            raise DataError(f"augmentation parameters must be a mapping, got {type(params).__name__}")
        missing = {"src", "crop", "flip", "ops"} - set(params)
        unknown = set(params) - {"src", "crop", "flip", "ops", "erase"}
        if missing or unknown:
            raise DataError(
                f"augmentation parameters {dict(params)} have missing keys {sorted(missing)} / unknown keys "
                f"{sorted(unknown)}"
            )
        if _ints(params["src"], 2) != [height, width]:
            raise DataError(
                f"augmentation parameters were drawn for a {params['src']} image, not this {[height, width]} image "
                "(the stored data does not match the dataset)"
            )
        top, left, h, w = _ints(params["crop"], 4, "crop")
        if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
            raise DataError(f"crop {params['crop']} (top, left, h, w) does not fit a {height}x{width} image")
        if params["flip"] not in (0, 1):
            raise DataError(f"flip must be 0 or 1, got {params['flip']!r}")
        if not isinstance(params["ops"], (list, tuple)) or len(params["ops"]) > max(c.num_ops, 0):
            raise DataError(f"ops must be a list of at most {c.num_ops} [op, level] pairs, got {params['ops']!r}")
        for pair in params["ops"]:
            op, level = _ints(pair, 2, "ops")
            if not 0 <= op < len(RAND_AUGMENT_OPS) or abs(level) >= c.num_magnitude_bins:
                raise DataError(
                    f"RandAugment op {pair} is out of range (op < {len(RAND_AUGMENT_OPS)}, |level| < "
                    f"{c.num_magnitude_bins})"
                )
            name = RAND_AUGMENT_OPS[op]
            if (level < 0 and name not in _SIGNED_OPS) or (level and name in _NO_MAGNITUDE_OPS):
                raise DataError(f"RandAugment op {pair}: {name} takes no {'magnitude' if level > 0 else 'sign'}")
        if "erase" in params:
            top, left, h, w, noise_seed = _ints(params["erase"], 5, "erase")
            size_h, size_w = c.size
            if h < 1 or w < 1 or top < 0 or left < 0 or top + h > size_h or left + w > size_w:
                raise DataError(f"erase box {params['erase'][:4]} does not fit the {size_h}x{size_w} output")
            if not 0 <= noise_seed < _ERASE_SEED_BOUND:
                raise DataError(f"erase seed must be in [0, 2**31), got {noise_seed}")


def _ints(value: Any, length: int, name: str = "src") -> list[int]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != length
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise DataError(f"augmentation parameter {name!r} must be {length} integers, got {value!r}")
    return list(value)


def as_uint8_image(image: Any) -> torch.Tensor:
    """A uint8 ``(C, H, W)`` tensor (C = 1 or 3) from such a tensor or a PIL image; anything else is a DataError."""
    if not isinstance(image, torch.Tensor):
        from torchvision.transforms import functional as F

        try:
            image = F.pil_to_tensor(image)
        except TypeError:
            raise DataError(f"expected a uint8 (C, H, W) tensor or a PIL image, got {type(image).__name__}") from None
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3) or min(image.shape[1:]) < 1:
        raise DataError(
            f"expected a uint8 (C, H, W) image with 1 or 3 channels, got {image.dtype} {tuple(image.shape)} "
            "(convert float images in [0, 1] with (x * 255).round().to(torch.uint8))"
        )
    return image


# ------------------------------------------------------------------------------------------------ top-k targets
DENSIFY_METHODS = ("smooth", "zeros")


def topk_sparsify(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest probabilities of each row of ``probs`` ``(..., C)`` and their class ids, largest first."""
    if not 1 <= k <= probs.shape[-1]:
        raise ConfigError(f"top-k must be in [1, number of classes = {probs.shape[-1]}], got {k}")
    values, ids = probs.topk(k, dim=-1)
    return values, ids


def densify(values: torch.Tensor, ids: torch.Tensor, num_classes: int, method: str = "smooth") -> torch.Tensor:
    """A full probability vector ``(..., num_classes)`` from stored top-k ``values`` and class ``ids`` ``(..., k)``.

    ``"smooth"`` keeps the top-k probabilities and spreads the remaining mass ``1 - sum`` evenly over the other
    classes (the paper's ImageNet+ setting). ``"zeros"`` keeps the top-k probabilities, renormalized to sum to 1, and
    gives every other class 0. (The official code applies a softmax to the stored probabilities in its "zeros"
    branch, which flattens the target toward uniform over the k classes; here they are renormalized.) A remainder
    below 0 (rounding of stored values) is clamped to 0 and the top-k renormalized. Every result sums to 1.
    """
    if method not in DENSIFY_METHODS:
        raise ConfigError(f"densify method must be one of {DENSIFY_METHODS}, got {method!r}")
    if values.shape != ids.shape:
        raise DataError(f"top-k values {tuple(values.shape)} and class ids {tuple(ids.shape)} differ in shape")
    k = values.shape[-1]
    if k > num_classes or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes)):
        raise DataError(f"stored class ids must be {k} distinct ids in [0, {num_classes}), got ids up to {ids.max()}")
    values = values.float().clamp_min(0.0)
    total = values.sum(-1, keepdim=True)
    rest = (1.0 - total).clamp_min(0.0)
    if method == "smooth" and k < num_classes:
        out = (rest / (num_classes - k)).expand(*values.shape[:-1], num_classes).clone()
        return out.scatter_(-1, ids.long(), values / (total + rest))
    out = values.new_zeros(*values.shape[:-1], num_classes)
    return out.scatter_(-1, ids.long(), values / total.clamp_min(torch.finfo(torch.float32).tiny))


# ------------------------------------------------------------------------------------------------------ storage
@dataclass(frozen=True)
class FieldSpec:
    """One stored per-sample tensor: its dtype and its shape without the sample axis (``[NS, k]``, ``[NS, D]``)."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.dtype not in _DTYPES:
            raise ConfigError(f"field dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if any(s < 0 for s in self.shape):
            raise ConfigError(f"field shape must be non-negative, got {self.shape}")


_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
}


def _shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


class _Layout:
    """What a manifest fixes: sample count, shard size, fields, augmentations per sample, free-form metadata."""

    def __init__(self, manifest: Mapping[str, Any], where: str) -> None:
        try:
            if manifest["format"] != FORMAT or manifest["version"] != FORMAT_VERSION:
                raise DataError(f"{where} is not a {FORMAT} v{FORMAT_VERSION} manifest")
            self.num_samples = int(manifest["num_samples"])
            self.shard_size = int(manifest["shard_size"])
            self.num_augmentations = int(manifest["num_augmentations"])
            self.fields = {name: FieldSpec(spec["dtype"], spec["shape"]) for name, spec in manifest["fields"].items()}
            self.meta = dict(manifest.get("meta", {}))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{where} is not a valid manifest ({type(e).__name__}: {e})") from None
        self.num_shards = -(-self.num_samples // self.shard_size) if self.num_samples else 0

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_samples))


def _manifest(
    num_samples: int, shard_size: int, num_augmentations: int, fields: Mapping[str, FieldSpec], meta: Mapping
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "num_samples": num_samples,
        "shard_size": shard_size,
        "num_augmentations": num_augmentations,
        "fields": {name: {"dtype": f.dtype, "shape": list(f.shape)} for name, f in fields.items()},
        "meta": dict(meta),
    }


def _atomic_write(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` to a temporary file, flush it to disk, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ReinforcedWriter:
    """Write a reinforced dataset: ``root/manifest.json`` and one safetensors shard per ``shard_size`` samples.

    Opening a folder that already has a manifest resumes it: the settings must be the same (else
    :class:`DataError`), shards already written are kept and :meth:`pending` lists the rest. Each shard is written
    whole and renamed into place, so a run killed at any point leaves only complete shards.

    Args:
        root: the output folder (created).
        num_samples: samples of the dataset (records are indexed ``0 .. num_samples - 1``).
        fields: name -> :class:`FieldSpec` of every stored tensor (e.g. ``{"probs": FieldSpec("float16", [NS, k]),
            "ids": FieldSpec("int32", [NS, k])}``).
        num_augmentations: stored augmentations per sample (0: records carry no augmentation parameters).
        shard_size: samples per shard.
        meta: JSON-able settings stored in the manifest (augment config, teachers, seed, dataset description); a
            resumed run must give the same.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_samples: int,
        fields: Mapping[str, FieldSpec],
        num_augmentations: int = 0,
        shard_size: int = 1024,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if num_samples < 1 or shard_size < 1 or num_augmentations < 0:
            raise ConfigError(
                f"need num_samples >= 1, shard_size >= 1, num_augmentations >= 0; got {num_samples}, {shard_size}, "
                f"{num_augmentations}"
            )
        if not fields or "index" in fields:
            raise ConfigError("give at least one field; 'index' is reserved (the stored sample ids)")
        self.root = Path(root)
        manifest = _manifest(num_samples, shard_size, num_augmentations, fields, meta or {})
        manifest = json.loads(json.dumps(manifest))  # normalized as it will be read back (tuples -> lists)
        path = self.root / MANIFEST_NAME
        if path.exists():
            existing = _read_manifest(path)
            if existing != manifest:
                diff = sorted(k for k in manifest if existing.get(k) != manifest[k])
                raise DataError(
                    f"{self.root} holds a reinforced dataset with other settings ({', '.join(diff)} differ): resume "
                    "with the same settings or write to a new folder"
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1) + "\n"))
        self.layout = _Layout(manifest, str(path))

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards

    def shard_range(self, shard: int) -> range:
        """The sample indices shard ``shard`` holds."""
        return self.layout.shard_range(shard)

    def pending(self) -> list[int]:
        """Shards not yet written (a shard that does not load, e.g. truncated by a copy, counts as not written)."""
        store = ReinforcedStore(self.root)
        return [s for s in range(self.num_shards) if not store.shard_ok(s)]

    def write_shard(
        self, shard: int, tensors: Mapping[str, torch.Tensor], params: Sequence[Sequence[Mapping]] | None = None
    ) -> Path:
        """Write shard ``shard``: every field for its samples (leading axis = :meth:`shard_range`), and per sample
        its ``num_augmentations`` augmentation parameter dicts. Returns the shard's path."""
        from safetensors.torch import save_file

        layout = self.layout
        if not 0 <= shard < layout.num_shards:
            raise ValueError(f"shard {shard} out of range [0, {layout.num_shards})")
        rows = layout.shard_range(shard)
        if set(tensors) != set(layout.fields):
            raise ValueError(f"shard fields {sorted(tensors)} differ from the manifest's {sorted(layout.fields)}")
        out = {"index": torch.arange(rows.start, rows.stop, dtype=torch.int64)}
        for name, spec in layout.fields.items():
            value = tensors[name]
            expected = (len(rows), *spec.shape)
            if tuple(value.shape) != expected:
                raise ValueError(f"field {name!r} of shard {shard} has shape {tuple(value.shape)}, expected {expected}")
            out[name] = value.detach().to("cpu", _DTYPES[spec.dtype]).contiguous()
        header: dict[str, Any] = {"format": FORMAT, "shard": shard}
        if layout.num_augmentations:
            if params is None or len(params) != len(rows):
                raise ValueError(f"shard {shard} needs augmentation parameters for its {len(rows)} samples")
            if any(len(p) != layout.num_augmentations for p in params):
                raise ValueError(f"every sample needs {layout.num_augmentations} augmentation parameter dicts")
            header["params"] = [list(p) for p in params]
        elif params is not None:
            raise ValueError("this dataset stores no augmentations (num_augmentations=0) but params were given")
        # one metadata key: safetensors writes several in hash order, and equal runs must give equal bytes
        metadata = {FORMAT: json.dumps(header, separators=(",", ":"))}
        path = self.root / _shard_name(shard)
        _atomic_write(path, lambda tmp: save_file(out, str(tmp), metadata=metadata))
        return path


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the manifest ({e})") from None


class ReinforcedStore:
    """Read a reinforced dataset written by :class:`ReinforcedWriter`; ``store[i]`` is sample ``i``'s record.

    A record is ``{"index": i, <field>: tensor (per-sample shape), "params": [dict, ...]}`` (``params`` when the
    dataset stores augmentations). Shards load lazily and the last few stay cached; a missing, truncated or corrupt
    shard raises :class:`DataError` naming its file when one of its samples is read, and only then.

    Args:
        root: the folder holding ``manifest.json``.
        cache_shards: shards kept in memory.
    """

    def __init__(self, root: str | os.PathLike, cache_shards: int = 4) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST_NAME
        if not path.is_file():
            raise DataError(f"{self.root} is not a reinforced dataset (no {MANIFEST_NAME})")
        self.layout = _Layout(_read_manifest(path), str(path))
        self.cache_shards = max(1, cache_shards)
        self._cache: OrderedDict[int, tuple[dict[str, torch.Tensor], list | None]] = OrderedDict()

    # ------------------------------------------------------------------------------------------------ layout
    @property
    def num_augmentations(self) -> int:
        return self.layout.num_augmentations

    @property
    def fields(self) -> dict[str, FieldSpec]:
        return dict(self.layout.fields)

    @property
    def meta(self) -> dict[str, Any]:
        """The JSON-able settings the writer stored (augment config, teachers, ...)."""
        return dict(self.layout.meta)

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards

    def __len__(self) -> int:
        return self.layout.num_samples

    def shard_path(self, shard: int) -> Path:
        return self.root / _shard_name(shard)

    def check_dataset(self, num_samples: int, what: str = "the dataset") -> None:
        """Raise :class:`DataError` unless the store has one record per sample of a dataset of ``num_samples``."""
        if num_samples != len(self):
            raise DataError(f"{self.root} holds {len(self)} samples but {what} has {num_samples}: they do not match")

    def missing(self) -> list[int]:
        """Shards whose file does not exist (an unfinished reinforce run)."""
        return [s for s in range(self.num_shards) if not self.shard_path(s).exists()]

    def shard_ok(self, shard: int) -> bool:
        """Whether shard ``shard`` exists and loads with the manifest's layout."""
        try:
            self._load(shard)
        except DataError:
            return False
        return True

    def verify(self) -> dict[int, str]:
        """Load every shard: ``{shard: error}`` of those that are missing, truncated, corrupt or do not fit."""
        problems = {}
        for shard in range(self.num_shards):
            try:
                self._load(shard)
            except DataError as e:
                problems[shard] = str(e)
        return problems

    # ---------------------------------------------------------------------------------------------------- read
    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        index %= len(self)
        shard, row = divmod(index, self.layout.shard_size)
        tensors, params = self._load(shard)
        record: dict[str, Any] = {name: tensors[name][row] for name in self.layout.fields}
        record["index"] = int(tensors["index"][row])
        if params is not None:
            record["params"] = params[row]
        return record

    def records(self, indices: Iterable[int]) -> list[dict[str, Any]]:
        """``[store[i] for i in indices]``."""
        return [self[i] for i in indices]

    def _load(self, shard: int) -> tuple[dict[str, torch.Tensor], list | None]:
        if shard in self._cache:
            self._cache.move_to_end(shard)
            return self._cache[shard]
        path = self.shard_path(shard)
        if not path.exists():
            raise DataError(f"{path} is missing: the reinforce run did not finish (resume it to write the shard)")
        loaded = self._read(shard, path)
        self._cache[shard] = loaded
        while len(self._cache) > self.cache_shards:
            self._cache.popitem(last=False)
        return loaded

    def _read(self, shard: int, path: Path) -> tuple[dict[str, torch.Tensor], list | None]:
        from safetensors import SafetensorError, safe_open

        bad = f"{path} is truncated or corrupt"
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise DataError(f"{bad} ({str(e).splitlines()[0][:120]}); the other shards are unaffected") from None
        rows = self.layout.shard_range(shard)
        expected = {"index": ((len(rows),), torch.int64)}
        expected.update({n: ((len(rows), *s.shape), _DTYPES[s.dtype]) for n, s in self.layout.fields.items()})
        for name, (shape, dtype) in expected.items():
            value = tensors.get(name)
            if value is None or tuple(value.shape) != shape or value.dtype != dtype:
                got = None if value is None else f"{value.dtype} {tuple(value.shape)}"
                raise DataError(f"{path}: field {name!r} is {got}, the manifest says {dtype} {shape}")
        if not torch.equal(tensors["index"], torch.arange(rows.start, rows.stop)):
            raise DataError(f"{path} holds sample ids other than {rows.start}..{rows.stop - 1}: it belongs elsewhere")
        params = None
        if self.layout.num_augmentations:
            try:
                params = json.loads(metadata[FORMAT])["params"]
            except (KeyError, TypeError, json.JSONDecodeError) as e:
                raise DataError(f"{bad}: augmentation parameters unreadable ({e})") from None
            if len(params) != len(rows) or any(len(p) != self.layout.num_augmentations for p in params):
                raise DataError(f"{path}: augmentation parameters do not match the manifest's layout")
        return tensors, params
