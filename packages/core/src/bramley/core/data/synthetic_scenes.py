"""Composed scenes: several procedural objects per image, with their boxes and pairwise spatial relations.

Made for mini reproductions that need structure, not only a label: region captions and graphs (GBC: entity nodes
with boxes, composition nodes such as "two red squares", relation nodes such as "a red square left of a blue
circle"), compositional probes (swap left and right, change a count). Objects are drawn in order, later ones in
front; each keeps its full (amodal) box and the fraction of it left visible. Like :class:`SyntheticDataset`, item
``i`` of a split depends only on ``(config, seed, split, i)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from .splits import SPLITS
from .synthetic import (
    COLORS,
    SHAPES,
    TEXTURES,
    ObjectSpec,
    background,
    check_vocabulary,
    composite,
    draw_clutter,
    finish,
    item_rng,
    jitter_color,
    mask_box,
    object_layer,
    place,
    with_knobs,
)

PREDICATES = (
    "left of",
    "right of",
    "above",
    "below",
    "overlaps",
    "in front of",
    "behind",
    "larger than",
    "smaller than",
)
_INVERSE = {"left of": "right of", "above": "below", "in front of": "behind", "larger than": "smaller than"}


@dataclass(frozen=True)
class SceneConfig:
    """What :class:`SceneDataset` draws.

    Attributes:
        image_size: side of the square RGB images.
        shapes, colors, textures: the vocabulary objects draw from (names from ``SHAPES``, ``COLORS``, ``TEXTURES``).
        min_objects, max_objects: objects per scene, uniform in this range.
        object_size: range of an object's extent (its bounding disc's diameter) as a fraction of the image side.
        repeat: probability that an object copies the shape, color and texture of an earlier one (so scenes hold
            groups such as "two red squares").
        overlap: how far two objects' bounding discs may overlap, as a fraction of the sum of their radii (0: apart
            where possible; crowded scenes overlap anyway after 50 tries).
        rotation: objects turn by a uniform angle in ``[-rotation, rotation]`` degrees.
        color_jitter: uniform per-channel noise added to each object's palette color.
        clutter: distractors per image (thin segments, small specks) behind the objects; not listed as objects.
        noise: standard deviation of the Gaussian pixel noise.
        margin: relation margin: "left of" needs the subject's box center at least this far (fraction of the side)
            left of the object's, "larger than" an area ratio of at least ``1 + 4 * margin``.
        train_size, val_size, test_size: scenes per split.
    """

    image_size: int = 64
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "magenta", "cyan")
    textures: tuple[str, ...] = ("solid", "striped", "checkered")
    min_objects: int = 2
    max_objects: int = 5
    object_size: tuple[float, float] = (0.18, 0.38)
    repeat: float = 0.3
    overlap: float = 0.3
    rotation: float = 20.0
    color_jitter: float = 0.05
    clutter: int = 0
    noise: float = 0.02
    margin: float = 0.05
    train_size: int = 2000
    val_size: int = 500
    test_size: int = 500

    def __post_init__(self) -> None:
        for name in ("shapes", "colors", "textures", "object_size"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_vocabulary("shapes", self.shapes, SHAPES)
        check_vocabulary("colors", self.colors, tuple(COLORS))
        check_vocabulary("textures", self.textures, TEXTURES)
        if self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        low, high = self.object_size if len(self.object_size) == 2 else (0.0, -1.0)
        if not 0.05 <= low <= high <= 0.9:
            raise ConfigError(
                f"object_size must be (low, high) with 0.05 <= low <= high <= 0.9, got {self.object_size}"
            )
        for name, hi in (("repeat", 1.0), ("overlap", 1.0), ("rotation", 180.0), ("color_jitter", 1.0)):
            if not 0.0 <= getattr(self, name) <= hi:
                raise ConfigError(f"{name} must be in [0, {hi}], got {getattr(self, name)}")
        if not 0.0 <= self.noise <= 1.0 or not 0.0 <= self.margin < 0.5:
            raise ConfigError(f"need noise in [0, 1] and margin in [0, 0.5), got {self.noise}, {self.margin}")
        if min(self.clutter, self.train_size, self.val_size, self.test_size) < 0:
            raise ConfigError("clutter and the split sizes must be >= 0")

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]


@dataclass(frozen=True)
class SceneObject:
    """One object of a scene.

    Attributes:
        id: its index in the scene; objects are drawn in id order, so a higher id is in front.
        shape, color, texture: what it is.
        box: ``(left, top, right, bottom)`` in [0, 1] of the whole object, hidden parts included.
        visible: the fraction of its coverage not hidden by objects in front of it.
    """

    id: int
    shape: str
    color: str
    texture: str
    box: tuple[float, float, float, float]
    visible: float

    @property
    def name(self) -> str:
        """``"red striped circle"``."""
        return f"{self.color} {self.texture} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        left, top, right, bottom = self.box
        return (left + right) / 2, (top + bottom) / 2

    @property
    def area(self) -> float:
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top)


@dataclass(frozen=True)
class Relation:
    """``subject`` (an object id) stands in ``predicate`` (one of ``PREDICATES``) to ``object``."""

    subject: int
    predicate: str
    object: int


@dataclass(frozen=True)
class Scene:
    """An image ``(3, S, S)`` float32 in [0, 1] with its objects and every relation that holds between them."""

    image: torch.Tensor
    objects: tuple[SceneObject, ...]
    relations: tuple[Relation, ...]

    def groups(self) -> dict[str, list[int]]:
        """Object ids by name (``{"red striped circle": [0, 3], ...}``), in order of first appearance."""
        groups: dict[str, list[int]] = {}
        for obj in self.objects:
            groups.setdefault(obj.name, []).append(obj.id)
        return groups

    def to_dict(self) -> dict[str, Any]:
        """Objects and relations as JSON-ready dicts (the image is left out)."""
        objects = [{**vars(o), "box": list(o.box), "name": o.name} for o in self.objects]
        return {"objects": objects, "relations": [vars(r).copy() for r in self.relations]}


def scene_relations(objects: Sequence[SceneObject], masks: np.ndarray, margin: float) -> list[Relation]:
    """Every relation between ``objects`` (boxes; ``masks`` ``(K, S, S)`` of coverage >= 0.5, in drawing order).

    For each ordered pair: "left of" / "right of" and "above" / "below" compare box centers with ``margin``;
    "larger than" / "smaller than" compare box areas (ratio at least ``1 + 4 * margin``); "in front of" / "behind"
    hold when the masks share a pixel (the later object hides part of the earlier). "overlaps" (the boxes intersect)
    is symmetric and listed once per pair, subject < object.
    """
    found = []
    for a in objects:
        for b in objects:
            if a.id == b.id:
                continue
            (ax, ay), (bx, by) = a.center, b.center
            if ax + margin < bx:
                found += [Relation(a.id, "left of", b.id), Relation(b.id, "right of", a.id)]
            if ay + margin < by:
                found += [Relation(a.id, "above", b.id), Relation(b.id, "below", a.id)]
            if a.area > (1 + 4 * margin) * b.area:
                found += [Relation(a.id, "larger than", b.id), Relation(b.id, "smaller than", a.id)]
            if a.id > b.id and bool((masks[a.id] & masks[b.id]).any()):
                found += [Relation(a.id, "in front of", b.id), Relation(b.id, "behind", a.id)]
            if a.id < b.id and _intersect(a.box, b.box):
                found.append(Relation(a.id, "overlaps", b.id))
    order = {p: i for i, p in enumerate(PREDICATES)}
    return sorted(found, key=lambda r: (r.subject, order[r.predicate], r.object))


def _intersect(a: Sequence[float], b: Sequence[float]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def render_scene(config: SceneConfig, rng: np.random.Generator) -> Scene:
    """One scene from the draws of ``rng``."""
    size = config.image_size
    canvas = background(rng, size)
    draw_clutter(canvas, rng, config.clutter)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    kinds: list[tuple[str, str, str]] = []
    for i in range(count):
        if i > 0 and rng.random() < config.repeat:
            kinds.append(kinds[int(rng.integers(i))])
        else:
            kinds.append(tuple(str(rng.choice(v)) for v in (config.shapes, config.colors, config.textures)))
    half = rng.uniform(*config.object_size, size=count) / 2
    centers = place(rng, half, overlap=config.overlap, min_gap=1.5 / size)
    angle = math.radians(config.rotation)
    alphas = []
    for (shape, color, texture), (cx, cy), h in zip(kinds, centers, half):
        rgb = jitter_color(rng, color, config.color_jitter)
        spec = ObjectSpec(shape, color, texture, cx, cy, float(h), float(rng.uniform(-angle, angle)), rgb, rng.random())
        alpha, colors = object_layer(spec, size)
        composite(canvas, alpha, colors)
        alphas.append(alpha)
    stack = np.stack(alphas)
    hidden = np.zeros_like(stack)  # coverage of everything drawn after each object
    for i in range(count - 2, -1, -1):
        hidden[i] = 1 - (1 - hidden[i + 1]) * (1 - stack[i + 1])
    objects = tuple(
        SceneObject(
            i,
            *kinds[i],
            box=mask_box(stack[i]) or (cx, cy, cx, cy),
            visible=float((stack[i] * (1 - hidden[i])).sum() / max(stack[i].sum(), 1e-6)),
        )
        for i, (cx, cy) in enumerate(centers)
    )
    return Scene(
        finish(canvas, rng, config.noise), objects, tuple(scene_relations(objects, stack >= 0.5, config.margin))
    )


class SceneDataset(Dataset):
    """One split of composed scenes; items are :class:`Scene` (batch them with :func:`collate_scenes`).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        config: what scenes hold (default :class:`SceneConfig`).
        seed: the data seed; splits use disjoint random streams.
        **knobs: fields of :class:`SceneConfig` replacing those of ``config``.
    """

    def __init__(self, split: str = "train", *, config: SceneConfig | None = None, seed: int = 0, **knobs: object):
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.config = with_knobs(config or SceneConfig(), knobs)
        self.split, self.seed = split, seed

    def __len__(self) -> int:
        return self.config.split_size(self.split)

    def __getitem__(self, index: int) -> Scene:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for the {self.split} split of {len(self)} scenes")
        return render_scene(self.config, item_rng(self.seed, self.split, index))


def collate_scenes(batch: Sequence[Scene]) -> tuple[torch.Tensor, list[Scene]]:
    """DataLoader ``collate_fn``: ``(images (B, 3, S, S), scenes)``."""
    return torch.stack([scene.image for scene in batch]), list(batch)
