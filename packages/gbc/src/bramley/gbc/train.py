"""GBC-CLIP training: images with their GBC graphs, captions sampled per node type, a multi-positive loss.

Recipes (``bramley gbc train --recipe NAME|FILE``) have core's six sections (:mod:`bramley.core.recipe`):

- ``model``: ``gbc_clip`` and its kwargs (image tower, text tower);
- ``data`` (:class:`GbcData`): ``source: scenes`` (core's synthetic scenes with generated graphs, see
  :mod:`bramley.gbc.scenes`) or graph files (``train_files`` / ``val_files``: .jsonl / .json / .parquet, images
  under ``image_root`` by each graph's ``img_path``); ``drop_vertex_types`` removes node types (the ablations);
- ``loss`` (:class:`GbcLoss`): ``mode`` ``short`` (the image's short caption: plain CLIP), ``captions`` (captions
  sampled from the graph, each a positive of its image: core's multi-positive InfoNCE) or ``sia`` (the same
  captions encoded together under structure-induced attention); ``captions`` caps how many captions of each node
  type an image contributes per step (keys: the image vertex's caption labels ``short``, ``detail``, ``original``
  and the vertex labels ``entity``, ``composition``, ``relation``; ``-1`` all, ``0`` none).

Sampling is seeded by ``(train.seed, epoch, index)``, so a seed reproduces a run bit for bit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.errors import ConfigError, DataError
from bramley.core.recipe import RecipeSchema

from .graph import GbcGraph
from .sia import collate_packed, pack_graph

__all__ = [
    "CAPTION_TYPES",
    "RECIPES",
    "GbcData",
    "GbcLoss",
    "GraphImageDataset",
    "build_datasets",
    "caption_type",
    "evaluate_retrieval",
    "sample_captions",
    "train",
]

CAPTION_TYPES = ("short", "detail", "original", "entity", "composition", "relation")
MODES = ("short", "captions", "sia")
CACHE_GRAPHS = 200_000  # packed graphs kept by a collate (one per graph and sampled caption set)


@dataclass
class GbcData:
    """``data``: where images and graphs come from."""

    source: str = "scenes"
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    image_root: str = "."
    image_size: int = 32
    drop_vertex_types: list[str] = field(default_factory=list)
    # synthetic scenes
    num_train: int = 2000
    num_val: int = 300
    data_seed: int = 0
    shapes: list[str] = field(default_factory=lambda: ["circle", "square", "triangle", "star"])
    colors: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow"])
    min_objects: int = 2
    max_objects: int = 4
    repeat: float = 0.4
    max_relations: int = 3

    def __post_init__(self) -> None:
        if self.source not in ("scenes", "files"):
            raise ConfigError(f"data.source must be 'scenes' or 'files', got {self.source!r}")
        if self.source == "files" and not self.train_files:
            raise ConfigError("data.source=files needs data.train_files (GBC .jsonl/.json/.parquet files)")
        unknown = sorted(set(self.drop_vertex_types) - {"entity", "composition", "relation"})
        if unknown:
            raise ConfigError(
                f"data.drop_vertex_types: unknown vertex type {unknown[0]!r} (entity, composition, relation)"
            )
        if self.image_size < 8 or self.num_train < 1 or self.num_val < 0:
            raise ConfigError("data.image_size must be >= 8, data.num_train >= 1 and data.num_val >= 0")


@dataclass
class GbcLoss:
    """``loss``: what text each image is contrasted with (see the module notes)."""

    mode: str = "sia"
    captions: dict[str, int] = field(
        default_factory=lambda: {
            "short": 1,
            "detail": 1,
            "original": 0,
            "entity": -1,
            "composition": -1,
            "relation": -1,
        }
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"loss.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        unknown = sorted(set(self.captions) - set(CAPTION_TYPES))
        if unknown:
            raise ConfigError(f"loss.captions: unknown caption type {unknown[0]!r} (types: {', '.join(CAPTION_TYPES)})")
        bad = {k: v for k, v in self.captions.items() if not isinstance(v, int) or v < -1}
        if bad:
            raise ConfigError(f"loss.captions values must be integers >= -1 (-1: all), got {bad}")


#: The recipe schema of ``bramley gbc train``.
RECIPES = RecipeSchema("gbc", data=GbcData, loss=GbcLoss, default_recipe="gbc10m_vitb16")


# --------------------------------------------------------------------------------------------------------- data
def caption_type(vertex_label: str, desc_label: str) -> str:
    """The sampling type of a caption: the image vertex's caption label, else the vertex label."""
    return desc_label if vertex_label == "image" else vertex_label


def sample_captions(graph: GbcGraph, caps: Mapping[str, int], rng: np.random.Generator | None) -> list[tuple[int, int]]:
    """``(vertex index, desc index)`` of the captions kept: per type at most ``caps[type]`` (-1: all; a missing type:
    none), drawn without replacement by ``rng`` (``None``: the first ones), in graph order."""
    by_type: dict[str, list[tuple[int, int]]] = {}
    for i, v in enumerate(graph.vertices):
        for j, d in enumerate(v.descs):
            by_type.setdefault(caption_type(v.label, d.label), []).append((i, j))
    chosen: list[tuple[int, int]] = []
    for kind, items in by_type.items():
        cap = caps.get(kind, 0)
        if cap == -1 or cap >= len(items):
            chosen += items
        elif cap > 0:
            picks = range(cap) if rng is None else sorted(rng.choice(len(items), cap, replace=False))
            chosen += [items[k] for k in picks]
    return sorted(chosen)


class GraphImageDataset(torch.utils.data.Dataset):
    """Images ``(N, 3, S, S)`` in [0, 1] with one graph each; an item is ``(image, index, captions kept)``.

    Args:
        images: the images, or ``None`` with ``paths`` (loaded on access).
        graphs: one graph per image.
        caps: captions per node type (:func:`sample_captions`); ``None``: no sampling (evaluation).
        seed: sampling seed (with the epoch and the index).
        paths, image_size: image files read and resized on access.
        prompts: held-out texts per image (synthetic scenes), for evaluation.
    """

    def __init__(
        self,
        images: torch.Tensor | None,
        graphs: list[GbcGraph],
        caps: Mapping[str, int] | None = None,
        seed: int = 0,
        paths: list[Path] | None = None,
        image_size: int = 32,
        prompts: list[Any] | None = None,
    ):
        self.images, self.graphs, self.caps, self.seed = images, graphs, caps, seed
        self.paths, self.image_size, self.prompts = paths, image_size, prompts
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.graphs)

    def image(self, index: int) -> torch.Tensor:
        if self.images is not None:
            return self.images[index]
        from PIL import Image

        with Image.open(self.paths[index]) as im:
            im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BICUBIC)
            return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, list[tuple[int, int]]]:
        graph = self.graphs[index]
        if self.caps is None:
            return self.image(index), index, []
        rng = np.random.default_rng((self.seed, self.epoch, index))
        chosen = sample_captions(graph, self.caps, rng)
        if not chosen:
            raise DataError(
                f"graph {index} ({graph.img_path or 'no img_path'}) has no caption of the sampled types "
                f"{ {k: v for k, v in self.caps.items() if v} }"
            )
        return self.image(index), index, chosen


def _load_graphs(files: Iterable[str], drop: list[str]) -> list[GbcGraph]:
    from .io import read_graphs
    from .views import drop_vertices_by_type

    graphs = [g for f in files for g in read_graphs(f)]
    if drop:
        graphs = [drop_vertices_by_type(g, drop) for g in graphs]
    return graphs


def _image_paths(graphs: list[GbcGraph], root: str, what: str) -> list[Path]:
    paths, missing = [], []
    for i, g in enumerate(graphs):
        if not g.img_path:
            missing.append(f"graph {i} (no img_path)")
            continue
        p = Path(root) / g.img_path
        paths.append(p)
        if not p.is_file():
            missing.append(str(p))
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise DataError(f"{len(missing)} {what} images missing under image_root {root}: {shown}")
    return paths


def scene_config(data: GbcData):
    """Core's :class:`~bramley.core.data.synthetic_scenes.SceneConfig` for the recipe's scenes."""
    from bramley.core.data.synthetic_scenes import SceneConfig

    return SceneConfig(
        image_size=data.image_size,
        shapes=tuple(data.shapes),
        colors=tuple(data.colors),
        textures=("solid",),
        min_objects=data.min_objects,
        max_objects=data.max_objects,
        repeat=data.repeat,
        train_size=data.num_train,
        val_size=data.num_val,
        test_size=data.num_val,
    )


@functools.lru_cache(maxsize=4)
def _render(config: Any, split: str, seed: int) -> tuple[Any, ...]:
    """The scenes of a split, rendered once per process (the reproduction trains several models on them)."""
    from bramley.core.data.synthetic_scenes import SceneDataset

    scenes = SceneDataset(split, config=config, seed=seed)
    return tuple(scenes[i] for i in range(len(scenes)))


def _scene_split(data: GbcData, split: str) -> tuple[torch.Tensor, list[GbcGraph], list[Any]]:
    from .scenes import scene_graph, scene_prompts
    from .views import drop_vertices_by_type

    items = _render(scene_config(data), split, data.data_seed)
    graphs = [scene_graph(s, max_relations=data.max_relations) for s in items]
    if data.drop_vertex_types:
        graphs = [drop_vertices_by_type(g, data.drop_vertex_types) for g in graphs]
    images = torch.stack([s.image for s in items]) if items else torch.zeros(0, 3, data.image_size, data.image_size)
    return images, graphs, [scene_prompts(s) for s in items]


def build_datasets(data: GbcData, loss: GbcLoss, seed: int) -> tuple[GraphImageDataset, GraphImageDataset | None]:
    """The training and evaluation datasets of a recipe."""
    caps = {"short": 1} if loss.mode == "short" else loss.captions
    if data.source == "scenes":
        images, graphs, _ = _scene_split(data, "train")
        train = GraphImageDataset(images, graphs, caps, seed)
        val = None
        if data.num_val:
            images, graphs, prompts = _scene_split(data, "val")
            val = GraphImageDataset(images, graphs, prompts=prompts)
        return train, val
    graphs = _load_graphs(data.train_files, data.drop_vertex_types)
    if not graphs:
        raise DataError(f"no graphs in data.train_files {data.train_files}")
    train = GraphImageDataset(
        None, graphs, caps, seed, _image_paths(graphs, data.image_root, "training"), data.image_size
    )
    val = None
    if data.val_files:
        graphs = _load_graphs(data.val_files, data.drop_vertex_types)
        val = GraphImageDataset(
            None, graphs, paths=_image_paths(graphs, data.image_root, "validation"), image_size=data.image_size
        )
    return train, val


class Collate:
    """Batches for the trainer: images, and the text of ``mode`` (tokens with caption->image groups, or a packed
    SIA batch as plain tensors, so the trainer moves it to the device)."""

    def __init__(self, dataset: GraphImageDataset, mode: str, tokenizer, context_length: int):
        self.dataset, self.mode, self.tokenizer, self.context_length = dataset, mode, tokenizer, context_length
        self._cache: dict[tuple[int, tuple[tuple[int, int], ...]], Any] = {}

    def _packed(self, index: int, chosen: list[tuple[int, int]]):
        """The packed graph of these captions (cached: tokenizing and finding the phrases is the slow part)."""
        key = (index, tuple(chosen))
        if key not in self._cache:
            graph = self.dataset.graphs[index]
            keep = {(id(graph.vertices[i]), id(graph.vertices[i].descs[j])) for i, j in chosen}
            if len(self._cache) >= CACHE_GRAPHS:
                self._cache.clear()
            self._cache[key] = pack_graph(
                graph, self.tokenizer, self.context_length, caption_filter=lambda v, d: (id(v), id(d)) in keep
            )
        return self._cache[key]

    def __call__(self, items: list[tuple[torch.Tensor, int, list[tuple[int, int]]]]) -> dict[str, torch.Tensor]:
        images = torch.stack([it[0] for it in items])
        batch: dict[str, torch.Tensor] = {"images": images, "index": torch.tensor([it[1] for it in items])}
        if not items[0][2]:
            return batch
        if self.mode == "sia":
            packed = [self._packed(index, chosen) for _, index, chosen in items]
            sia = collate_packed(packed)
            batch.update(
                tokens=sia.tokens,
                positions=sia.positions,
                mask=sia.mask,
                pool_row=sia.pool_row,
                pool_col=sia.pool_col,
                groups=sia.caption_graph,
            )
            return batch
        texts, groups = [], []
        for k, (_, index, chosen) in enumerate(items):
            graph = self.dataset.graphs[index]
            texts += [graph.vertices[i].descs[j].text for i, j in chosen]
            groups += [k] * len(chosen)
        batch.update(tokens=self.tokenizer(texts), groups=torch.tensor(groups))
        return batch


# --------------------------------------------------------------------------------------------------------- loss
def gbc_loss(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The trainer's ``loss_fn``: multi-positive InfoNCE between images and their captions (plain or SIA)."""
    from bramley.core.layers.clip import multi_positive_clip_loss

    from .sia import PackedBatch

    module = getattr(model, "module", model)
    images = F.normalize(module.encode_image(batch["images"]), dim=-1)
    if "mask" in batch:
        packed = PackedBatch(
            batch["tokens"], batch["positions"], batch["mask"], batch["pool_row"], batch["pool_col"], batch["groups"], 0
        )
        texts = module.encode_graphs(packed, normalize=True)
    else:
        texts = module.encode_text(batch["tokens"], normalize=True)
    scale = module.logit_scale.exp().clamp(max=100.0)
    loss = multi_positive_clip_loss(images, texts, scale, batch["groups"])
    return loss, {"captions_per_image": torch.tensor(texts.shape[0] / images.shape[0]), "logit_scale": scale.detach()}


# --------------------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def evaluate_retrieval(
    model: nn.Module, dataset: GraphImageDataset, tokenizer, batch_size: int = 256
) -> dict[str, float]:
    """Held-out metrics (percent): image<->text recall@1/5 with each image's query text (a synthetic scene's
    description, else the graph's short caption) and, for scenes, the compositional probes (how often the true
    relation / count scores above the swapped / changed one; the count probe averaged over its comparisons) and
    zero-shot top-1 of the largest object's kind ("a red circle") among the kinds present."""
    from bramley.core.clip_eval import image_text_retrieval, zero_shot_accuracy, zero_shot_classifier

    module = getattr(model, "module", model)
    device = next(module.parameters()).device
    feats = []
    for start in range(0, len(dataset), batch_size):
        images = torch.stack([dataset.image(i) for i in range(start, min(len(dataset), start + batch_size))])
        feats.append(F.normalize(module.encode_image(images.to(device)), dim=-1))
    images = torch.cat(feats)

    def encode(texts: list[str]) -> torch.Tensor:
        out = [
            module.encode_text(tokenizer(texts[s : s + batch_size]).to(device), normalize=True)
            for s in range(0, len(texts), batch_size)
        ]
        return torch.cat(out)

    if dataset.prompts is not None:
        queries = [p.description for p in dataset.prompts]
    else:
        queries = [g.image_caption("short") or g.image_caption("detail") or "" for g in dataset.graphs]
    recall = image_text_retrieval(images, encode(queries), ks=(1, 5))
    metrics = {k: v for k, v in recall.items() if k != "mean_recall"}
    if dataset.prompts is not None:
        rows = [(i, p.relation) for i, p in enumerate(dataset.prompts) if p.relation is not None]
        if rows:
            index = torch.tensor([i for i, _ in rows], device=device)
            true = (images[index] * encode([t for _, (t, _) in rows])).sum(-1)
            false = (images[index] * encode([f for _, (_, f) in rows])).sum(-1)
            metrics["relation_probe"] = 100.0 * (true > false).float().mean().item()
        rows = [(i, c) for i, p in enumerate(dataset.prompts) for c in p.count]
        if rows:
            index = torch.tensor([i for i, _ in rows], device=device)
            true = (images[index] * encode([c[0] for _, c in rows])).sum(-1)
            false = (images[index] * encode([c[1] for _, c in rows])).sum(-1)
            hits: dict[str, list[bool]] = {}
            for (_, c), hit in zip(rows, (true > false).tolist()):
                hits.setdefault(c[2], []).append(hit)
            # balanced over comparisons and directions: a constant preference for one number word scores 50
            metrics["count_probe"] = 100.0 * sum(sum(h) / len(h) for h in hits.values()) / len(hits)
        classes = sorted({p.largest for p in dataset.prompts})
        head = zero_shot_classifier(module, classes, ["a {}", "a scene with a {}"], tokenizer)
        labels = torch.tensor([classes.index(p.largest) for p in dataset.prompts])
        metrics["zero_shot_top1"] = zero_shot_accuracy(images, labels, head.to(images.device), topk=(1,))["top1"]
    return metrics


# -------------------------------------------------------------------------------------------------------- train
def train(recipe: Any, out_dir: str | os.PathLike | None) -> dict[str, Any]:
    """``bramley gbc train``: GBC-CLIP with the recipe's caption mode; returns the final held-out metrics."""
    from bramley.core.clip_eval import ClipTokenizer
    from bramley.core.recipe import build_model
    from bramley.core.train import Trainer
    from bramley.core.train.distributed import init_distributed

    init_distributed(recipe.train.device)
    train_data, val_data = build_datasets(recipe.data, recipe.loss, recipe.train.seed)  # data errors come first
    model = build_model(recipe.model.name, recipe.model.kwargs)
    if not hasattr(model, "encode_graphs"):
        raise ConfigError(f"model.name={recipe.model.name} is not a GBC-CLIP model (use gbc_clip)")
    context = model.text.context_length
    tokenizer = ClipTokenizer(context)
    collate = Collate(train_data, recipe.loss.mode, tokenizer, context)

    def eval_fn(model: nn.Module, loader: Any) -> dict[str, float]:
        return evaluate_retrieval(model, val_data, tokenizer)

    trainer = Trainer(
        model,
        recipe.train_config(out_dir),
        train_data=train_data,
        loss_fn=gbc_loss,
        eval_data=val_data,
        eval_fn=eval_fn if val_data is not None else None,
        collate_fn=collate,
    )
    return {"metrics": trainer.fit(), "mode": recipe.loss.mode, "train_graphs": len(train_data)}
