"""Procedural images with difficulty knobs, for mini reproductions where the bundled digits saturate.

A class is one combination of shape x color x texture x count ("2 red striped triangles"); every image draws that
many objects of the class, each with its own scale, position, rotation and color jitter, over a noisy background with
optional clutter (segments and specks) and occluding bars. :class:`SyntheticDataset` serves seeded, leak-free
train / val / test splits like :class:`~bramley.core.data.DigitsDataset`, with a long-tailed training split on
request; :mod:`.synthetic_scenes` composes scenes of several objects with boxes and relations from the same
primitives.

Every image is a pure function of ``(config, seed, split, index)``: its random draws come from
``numpy.random.SeedSequence(seed, spawn_key=(split, 1, index))`` and touch no global RNG, so items are identical in
any order, with any number of DataLoader workers, on any machine with the same numpy.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .splits import SPLITS

# -------------------------------------------------------------------------------------------------------- vocabulary
SHAPES = ("circle", "square", "triangle", "cross", "ring", "hexagon", "star", "rhombus")
COLORS = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.72, 0.18),
    "blue": (0.16, 0.36, 0.96),
    "yellow": (0.96, 0.86, 0.10),
    "magenta": (0.86, 0.18, 0.80),
    "cyan": (0.10, 0.80, 0.86),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.94, 0.94, 0.94),
}
TEXTURES = ("solid", "striped", "checkered", "dotted", "shaded")
_PLURALS = {"cross": "crosses"}
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
_LABELS_STREAM, _ITEMS_STREAM = 0, 1  # spawn-key slots: a split's label order, then one stream per item
_DARK = 0.35  # brightness of a texture's "off" parts relative to the object's color
ConfigT = TypeVar("ConfigT", bound=Any)  # a config dataclass


# ------------------------------------------------------------------------------------------------- signed distances
# Signed distance (negative inside) of each shape, in units of the object's half size: every shape fits the unit disc.
def _length(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(x * x + y * y)


def _box(x: np.ndarray, y: np.ndarray, bx: float, by: float) -> np.ndarray:
    dx, dy = np.abs(x) - bx, np.abs(y) - by
    return _length(np.maximum(dx, 0.0), np.maximum(dy, 0.0)) + np.minimum(np.maximum(dx, dy), 0.0)


def _triangle(x: np.ndarray, y: np.ndarray, r: float = 0.82) -> np.ndarray:  # circumradius 2r/sqrt(3)
    k = math.sqrt(3.0)
    x, y = np.abs(x) - r, -y + r / k  # apex up in image coordinates (y grows downwards)
    fold = x + k * y > 0
    x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
    x = x - np.clip(x, -2 * r, 0.0)
    return -_length(x, y) * np.sign(y)


def _hexagon(x: np.ndarray, y: np.ndarray, r: float = 0.82) -> np.ndarray:
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    x, y = np.abs(x), np.abs(y)
    dot = np.minimum(kx * x + ky * y, 0.0)
    x, y = x - 2 * dot * kx, y - 2 * dot * ky
    x, y = x - np.clip(x, -kz * r, kz * r), y - r
    return _length(x, y) * np.sign(y)


def _star(x: np.ndarray, y: np.ndarray, r: float = 0.98, inner: float = 0.45) -> np.ndarray:
    k1x, k1y = 0.809016994375, -0.587785252292
    x, y = np.abs(x), -y
    dot = np.maximum(k1x * x + k1y * y, 0.0)
    x, y = x - 2 * dot * k1x, y - 2 * dot * k1y
    dot = np.maximum(-k1x * x + k1y * y, 0.0)
    x, y = x + 2 * dot * k1x, y - 2 * dot * k1y
    x, y = np.abs(x), y - r
    bax, bay = inner * -k1y, inner * k1x - 1.0
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0.0, r)
    return _length(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)


def _rhombus(x: np.ndarray, y: np.ndarray, bx: float = 0.95, by: float = 0.55) -> np.ndarray:
    x, y = np.abs(x), np.abs(y)
    h = np.clip(((bx - 2 * x) * bx - (by - 2 * y) * by) / (bx * bx + by * by), -1.0, 1.0)
    d = _length(x - 0.5 * bx * (1 - h), y - 0.5 * by * (1 + h))
    return d * np.sign(x * by + y * bx - bx * by)


_SDF: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda x, y: _length(x, y) - 0.9,
    "square": lambda x, y: _box(x, y, 0.68, 0.68),
    "triangle": _triangle,
    "cross": lambda x, y: np.minimum(_box(x, y, 0.92, 0.3), _box(x, y, 0.3, 0.92)),
    "ring": lambda x, y: np.abs(_length(x, y) - 0.68) - 0.24,
    "hexagon": _hexagon,
    "star": _star,
    "rhombus": _rhombus,
}


def _pattern(texture: str, u: np.ndarray, v: np.ndarray, phase: float) -> np.ndarray:
    """Brightness in [_DARK, 1] of ``texture`` at object coordinates ``(u, v)`` (about 3 periods across an object)."""
    if texture == "solid":
        return np.ones_like(u)
    if texture == "striped":
        on = (u * 1.5 + phase) % 1.0 < 0.5
    elif texture == "checkered":
        on = (np.floor(u * 1.5 + phase) + np.floor(v * 1.5 + phase)) % 2 == 0
    elif texture == "dotted":
        fu, fv = (u * 1.75 + phase) % 1.0 - 0.5, (v * 1.75 + phase) % 1.0 - 0.5
        on = fu * fu + fv * fv < 0.3**2
    else:  # shaded: a linear ramp across the object
        return _DARK + (1 - _DARK) * np.clip((u + 1) / 2, 0.0, 1.0)
    return np.where(on, 1.0, _DARK)


# ------------------------------------------------------------------------------------------------------ rendering
@dataclass(frozen=True)
class ObjectSpec:
    """One object to draw: what it is and where (center and half size as fractions of the image side)."""

    shape: str
    color: str
    texture: str
    cx: float
    cy: float
    half_size: float
    angle: float = 0.0  # radians
    rgb: tuple[float, float, float] | None = None  # jittered color; None: the palette's
    phase: float = 0.0  # texture phase

    @property
    def name(self) -> str:
        """``"red striped circle"``."""
        return f"{self.color} {self.texture} {self.shape}"


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centers in [0, 1]
    return coords[None, :], coords[:, None]


def object_layer(obj: ObjectSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``alpha`` ``(S, S)`` in [0, 1] (anti-aliased over one pixel) and colors ``(S, S, 3)`` of one object."""
    xs, ys = _grid(size)
    cos, sin = math.cos(obj.angle), math.sin(obj.angle)
    dx, dy = (xs - obj.cx) / obj.half_size, (ys - obj.cy) / obj.half_size
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # object frame: rotated by -angle
    alpha = np.clip(0.5 - _SDF[obj.shape](u, v) * obj.half_size * size, 0.0, 1.0)
    rgb = np.asarray(obj.rgb if obj.rgb is not None else COLORS[obj.color], dtype=np.float32)
    shade = _pattern(obj.texture, u, v, obj.phase)
    return alpha.astype(np.float32), (shade[..., None] * rgb).astype(np.float32)


def composite(canvas: np.ndarray, alpha: np.ndarray, rgb: np.ndarray | Sequence[float]) -> None:
    """Paint ``rgb`` over ``canvas`` ``(S, S, 3)`` in place with coverage ``alpha`` ``(S, S)``."""
    a = alpha[..., None]
    canvas *= 1.0 - a
    canvas += a * np.asarray(rgb, dtype=np.float32)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark, slightly tinted canvas ``(S, S, 3)`` with a random linear gradient."""
    xs, ys = _grid(size)
    level = rng.uniform(0.05, 0.4) + rng.uniform(-0.05, 0.05, size=3)
    theta, amplitude = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.15)
    ramp = amplitude * ((xs - 0.5) * math.cos(theta) + (ys - 0.5) * math.sin(theta))
    return np.clip(level[None, None, :] + ramp[..., None], 0.0, 1.0).astype(np.float32)


def draw_clutter(canvas: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Paint ``count`` distractors in place: thin segments and small specks in palette or gray colors."""
    size = canvas.shape[0]
    xs, ys = _grid(size)
    palette = [*COLORS.values(), (0.5, 0.5, 0.5)]
    for _ in range(count):
        rgb = np.asarray(palette[rng.integers(len(palette))]) * rng.uniform(0.6, 1.0)
        x0, y0 = rng.uniform(0, 1, size=2)
        if rng.random() < 0.5:  # segment: distance to the segment minus half a pixel
            theta, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.1, 0.4)
            ex, ey = length * math.cos(theta), length * math.sin(theta)
            t = np.clip(((xs - x0) * ex + (ys - y0) * ey) / (length * length), 0.0, 1.0)
            dist = _length(xs - x0 - t * ex, ys - y0 - t * ey) * size - 0.5
        else:  # speck: a dot of radius 0.7-1.5 pixels
            dist = _length(xs - x0, ys - y0) * size - rng.uniform(0.7, 1.5)
        composite(canvas, np.clip(0.5 - dist, 0.0, 1.0).astype(np.float32), rgb)


def occlude(
    canvas: np.ndarray, rng: np.random.Generator, box: tuple[float, float, float, float], fraction: float
) -> None:
    """Paint a flat gray bar over ``fraction`` of ``box`` (left, top, right, bottom in [0, 1]), across one axis."""
    size = canvas.shape[0]
    left, top, right, bottom = (round(c * size) for c in box)
    gray = rng.uniform(0.15, 0.65)
    if rng.random() < 0.5:  # vertical bar spanning the box's height
        width = max(1, round(fraction * (right - left)))
        start = left + int(rng.integers(0, max(1, right - left - width + 1)))
        canvas[max(top, 0) : bottom, max(start, 0) : start + width] = gray
    else:
        height = max(1, round(fraction * (bottom - top)))
        start = top + int(rng.integers(0, max(1, bottom - top - height + 1)))
        canvas[max(start, 0) : start + height, max(left, 0) : right] = gray


def mask_box(alpha: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight box (left, top, right, bottom, fractions of the side) of the pixels ``alpha >= 0.5``; None if empty."""
    rows, cols = np.flatnonzero((alpha >= 0.5).any(1)), np.flatnonzero((alpha >= 0.5).any(0))
    if len(rows) == 0:
        return None
    size = alpha.shape[0]
    return cols[0] / size, rows[0] / size, (cols[-1] + 1) / size, (rows[-1] + 1) / size


def place(
    rng: np.random.Generator,
    radii: Sequence[float],
    slots: Sequence[tuple[float, float]] | None = None,
    jitter: float = 1.0,
    min_gap: float = 0.0,
    overlap: float = 0.0,
    tries: int = 50,
) -> list[tuple[float, float]]:
    """Centers for discs of the given ``radii`` inside the unit square, apart where possible.

    Each center is ``slot + jitter * (uniform - slot)`` (``slots`` default to uniform draws). Two discs are apart
    when their centers are at least ``(1 - overlap) * (r_i + r_j) + min_gap`` away; a center too close to an earlier
    one is redrawn up to ``tries`` times, then kept (crowded images may overlap more).
    """
    centers: list[tuple[float, float]] = []
    for i, r in enumerate(radii):
        lo, hi = min(r, 0.5), max(1 - r, 0.5)
        for _ in range(tries):
            ux, uy = rng.uniform(lo, hi, size=2)
            sx, sy = slots[i] if slots is not None else (ux, uy)
            cx, cy = sx + jitter * (ux - sx), sy + jitter * (uy - sy)
            apart = [
                math.hypot(cx - px, cy - py) >= (1 - overlap) * (r + radii[j]) + min_gap
                for j, (px, py) in enumerate(centers)
            ]
            if all(apart):
                break
        centers.append((float(cx), float(cy)))
    return centers


def jitter_color(rng: np.random.Generator, color: str, amount: float) -> tuple[float, float, float]:
    """The palette color plus uniform noise in ``[-amount, amount]`` per channel, clipped to [0, 1]."""
    rgb = np.clip(np.asarray(COLORS[color]) + rng.uniform(-amount, amount, size=3), 0.0, 1.0)
    return (float(rgb[0]), float(rgb[1]), float(rgb[2]))


def finish(canvas: np.ndarray, rng: np.random.Generator, noise: float) -> torch.Tensor:
    """Add Gaussian pixel noise, clip to [0, 1] and return a float32 ``(3, S, S)`` tensor."""
    if noise > 0:
        canvas += rng.normal(0.0, noise, size=canvas.shape).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(np.clip(canvas, 0.0, 1.0).transpose(2, 0, 1)))


def check_vocabulary(kind: str, names: Sequence[str], known: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless ``names`` is a non-empty list of distinct entries of ``known``."""
    unknown = [n for n in names if n not in known]
    if unknown or not names or len(set(names)) != len(names):
        problem = f"unknown {unknown}" if unknown else "empty or repeated entries"
        raise ConfigError(f"{kind}: {problem} in {list(names)}; choose distinct names from {list(known)}")


# -------------------------------------------------------------------------------------------------- classification
@dataclass(frozen=True)
class SyntheticConfig:
    """What :class:`SyntheticDataset` draws: the classes, the difficulty knobs and the split sizes.

    The defaults are calibrated (packages/core/README.md, "Procedural images"): 4 shapes x 4 colors x 2 textures x
    2 counts = 64 classes at 32x32 with clutter, occlusion and a 10x long tail, where the digits' pixel baselines
    saturate and these do not.

    Attributes:
        image_size: side of the square RGB images.
        shapes, colors, textures: the factors' values (names from ``SHAPES``, ``COLORS``, ``TEXTURES``).
        counts: how many objects of the class an image shows (a factor of the class too).
        object_size: an object's extent (its bounding disc's diameter) as a fraction of the image side.
        scale_jitter: each object's size is multiplied by a uniform draw in ``[1 - j, 1 + j]``.
        position_jitter: 0 puts objects on fixed slots (center; a ring around it for counts > 1), 1 anywhere.
        rotation: objects turn by a uniform angle in ``[-rotation, rotation]`` degrees (180: any orientation).
        color_jitter: uniform per-channel noise added to each object's palette color.
        clutter: distractors per image (thin segments, small specks), drawn behind the objects.
        occlusion: each object gets a gray bar over this fraction of its box (0: none).
        noise: standard deviation of the Gaussian pixel noise.
        imbalance: most / least frequent class in the train split (1: balanced; exponential profile as in CIFAR-LT;
            which classes are frequent is drawn from the seed). Val and test stay balanced.
        train_size, val_size, test_size: images per split.
    """

    image_size: int = 32
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    textures: tuple[str, ...] = ("solid", "striped")
    counts: tuple[int, ...] = (1, 2)
    object_size: float = 0.4
    scale_jitter: float = 0.25
    position_jitter: float = 1.0
    rotation: float = 180.0
    color_jitter: float = 0.1
    clutter: int = 4
    occlusion: float = 0.25
    noise: float = 0.05
    imbalance: float = 10.0
    train_size: int = 6400
    val_size: int = 1280
    test_size: int = 2560

    def __post_init__(self) -> None:
        for name in ("shapes", "colors", "textures", "counts"):  # lists from YAML or argparse become tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_vocabulary("shapes", self.shapes, SHAPES)
        check_vocabulary("colors", self.colors, tuple(COLORS))
        check_vocabulary("textures", self.textures, TEXTURES)
        if not self.counts or len(set(self.counts)) != len(self.counts) or min(self.counts) < 1:
            raise ConfigError(f"counts must be distinct positive ints, got {list(self.counts)}")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be at least 8, got {self.image_size}")
        bounded = {"object_size": (0.05, 1.0), "scale_jitter": (0.0, 0.9), "position_jitter": (0.0, 1.0)}
        bounded.update({"rotation": (0.0, 180.0), "color_jitter": (0.0, 1.0), "occlusion": (0.0, 0.9)})
        bounded.update({"noise": (0.0, 1.0)})
        for name, (lo, hi) in bounded.items():
            if not lo <= getattr(self, name) <= hi:
                raise ConfigError(f"{name} must be in [{lo}, {hi}], got {getattr(self, name)}")
        if self.clutter < 0 or min(self.val_size, self.test_size) < 0:
            raise ConfigError("clutter, val_size and test_size must be >= 0")
        if not self.imbalance >= 1.0:
            raise ConfigError(f"imbalance (most / least frequent class) must be >= 1, got {self.imbalance}")
        if self.train_size < self.num_classes:
            raise ConfigError(f"train_size {self.train_size} < {self.num_classes} classes: every class needs one")

    @property
    def num_classes(self) -> int:
        return len(self.shapes) * len(self.colors) * len(self.textures) * len(self.counts)

    @property
    def attributes(self) -> list[dict[str, str | int]]:
        """Each class's factors ``{"shape", "color", "texture", "count"}``, in class-index order."""
        keys = ("shape", "color", "texture", "count")
        product = itertools.product(self.shapes, self.colors, self.textures, self.counts)
        return [dict(zip(keys, values)) for values in product]

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, e.g. ``"2 red striped triangles"``."""
        return tuple(_class_name(**a) for a in self.attributes)

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]


def _class_name(shape: str, color: str, texture: str, count: int) -> str:
    noun = shape if count == 1 else _PLURALS.get(shape, shape + "s")
    return f"{count} {color} {texture} {noun}"


def _allocate(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total`` (largest remainder), each at least ``minimum``."""
    counts = np.full(len(weights), minimum, dtype=np.int64)
    share = (total - counts.sum()) * weights / weights.sum()
    counts += np.floor(share).astype(np.int64)
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def class_frequencies(config: SyntheticConfig, seed: int, split: str) -> np.ndarray:
    """Images per class in ``split``: the train split follows the long tail, val and test are balanced."""
    n, total = config.num_classes, config.split_size(split)
    if split != "train" or config.imbalance == 1.0 or n == 1:
        return _allocate(total, np.ones(n), 0)
    rank = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(len(SPLITS),))).permutation(n)
    weights = config.imbalance ** (-rank / (n - 1))  # rank 0 is the head class
    return _allocate(total, weights, 1)


@lru_cache(maxsize=32)
def _split_targets(config: SyntheticConfig, seed: int, split: str) -> np.ndarray:
    labels = np.repeat(np.arange(config.num_classes), class_frequencies(config, seed, split))
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODES[split], _LABELS_STREAM)))
    return labels[order.permutation(len(labels))]


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one item's random draws: a function of ``(seed, split, index)`` only."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODES[split], _ITEMS_STREAM, index)))


def _slots(count: int) -> list[tuple[float, float]]:
    if count == 1:
        return [(0.5, 0.5)]
    angles = [2 * math.pi * i / count - math.pi / 2 for i in range(count)]
    return [(0.5 + 0.27 * math.cos(a), 0.5 + 0.27 * math.sin(a)) for a in angles]


def render_class_image(config: SyntheticConfig, label: int, rng: np.random.Generator) -> torch.Tensor:
    """One image of class ``label`` (float32 ``(3, S, S)`` in [0, 1]) from the draws of ``rng``."""
    attrs = config.attributes[label]
    size, count = config.image_size, int(attrs["count"])
    canvas = background(rng, size)
    draw_clutter(canvas, rng, config.clutter)
    half = config.object_size / 2 * rng.uniform(1 - config.scale_jitter, 1 + config.scale_jitter, size=count)
    centers = place(rng, half, _slots(count), config.position_jitter, min_gap=1.5 / size)
    angle = math.radians(config.rotation)
    for (cx, cy), h in zip(centers, half):
        obj = ObjectSpec(
            str(attrs["shape"]),
            str(attrs["color"]),
            str(attrs["texture"]),
            cx,
            cy,
            float(h),
            angle=float(rng.uniform(-angle, angle)),
            rgb=jitter_color(rng, str(attrs["color"]), config.color_jitter),
            phase=float(rng.uniform()),
        )
        alpha, rgb = object_layer(obj, size)
        composite(canvas, alpha, rgb)
        box = mask_box(alpha)
        if config.occlusion > 0 and box is not None:
            occlude(canvas, rng, box, config.occlusion)
    return finish(canvas, rng, config.noise)


class SyntheticDataset(Dataset):
    """One split of procedural shape images: items are ``(image, label)``, ``image`` float32 ``(3, S, S)``.

    Classes are the combinations of the config's shapes x colors x textures x counts (``classes`` names them,
    ``config.attributes`` lists their factors). Item ``i`` of a split is drawn from ``(seed, split, i)`` alone;
    the splits use disjoint random streams, so no image is shared between them. Labels (``targets``) are fixed per
    split without rendering anything. Pixels are in [0, 1]; ``normalize`` standardises each channel with the mean / std
    of the first (up to) 512 *training* images of the same config and seed.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        config: the classes, difficulty knobs and sizes (default: the calibrated :class:`SyntheticConfig`).
        seed: the data seed (label order, long-tail ranking and every image).
        normalize: standardise with training statistics.
        transform: optional callable applied to each image tensor.
        **knobs: fields of :class:`SyntheticConfig` replacing those of ``config``
            (``SyntheticDataset("train", clutter=0, image_size=64)``).
    """

    def __init__(
        self,
        split: str = "train",
        *,
        config: SyntheticConfig | None = None,
        seed: int = 0,
        normalize: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **knobs: object,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.config = with_knobs(config or SyntheticConfig(), knobs)
        self.split, self.seed, self.normalize, self.transform = split, seed, normalize, transform
        self.classes = self.config.classes
        self.num_classes = self.config.num_classes
        self.targets = torch.from_numpy(_split_targets(self.config, seed, split).copy())

    def __len__(self) -> int:
        return len(self.targets)

    def render(self, index: int) -> torch.Tensor:
        """Image ``index`` in [0, 1], before normalisation and ``transform``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for the {self.split} split of {len(self)} images")
        return render_class_image(self.config, int(self.targets[index]), item_rng(self.seed, self.split, index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self._standardise(self.render(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split: ``X`` float32 ``(N, 3, S, S)``, ``y`` int64 ``(N,)`` (no ``transform``; rendered once)."""
        return self._standardise(self._rendered.clone()), self.targets.clone()

    @cached_property
    def _rendered(self) -> torch.Tensor:
        size = self.config.image_size
        return torch.stack([self.render(i) for i in range(len(self))]) if len(self) else torch.zeros(0, 3, size, size)

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return x
        mean, std = _train_statistics(self.config, self.seed)
        shape = (3, 1, 1) if x.ndim == 3 else (1, 3, 1, 1)
        return (x - mean.view(shape)) / std.view(shape)


@lru_cache(maxsize=8)
def _train_statistics(config: SyntheticConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    train = SyntheticDataset("train", config=config, seed=seed)
    x = torch.stack([train.render(i) for i in range(min(512, len(train)))])
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-6)


def with_knobs(config: ConfigT, knobs: dict[str, object]) -> ConfigT:
    """``dataclasses.replace(config, **knobs)``; an unknown knob raises :class:`ConfigError` listing the known ones."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(knobs) - fields)
    if unknown:
        raise ConfigError(f"unknown {type(config).__name__} field(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(config, **knobs) if knobs else config


def synthetic_tensors(split: str = "train", **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Shortcut for ``SyntheticDataset(split, **kwargs).tensors()``."""
    return SyntheticDataset(split, **kwargs).tensors()


def synthetic_splits(**kwargs) -> dict[str, SyntheticDataset]:
    """All three splits with the same arguments: ``{"train": ..., "val": ..., "test": ...}``."""
    return {split: SyntheticDataset(split, **kwargs) for split in SPLITS}
