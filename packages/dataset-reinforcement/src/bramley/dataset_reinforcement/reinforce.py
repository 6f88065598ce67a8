"""Reinforce a dataset once: a teacher ensemble labels ``NS`` replayable augmentations of every image.

For sample ``i`` and augmentation ``j``, the parameters are drawn from ``augmentation_seed(seed, i, j)`` alone, and
each shard's images go through the teachers in the same fixed batches whether the run is whole or resumed, so a run
killed at any point and resumed writes the same files as an uninterrupted one. Per sample, the store holds the
``NS`` augmentation parameter dicts, the top-k ensemble probabilities (float16) with their class ids (int32) and the
label; :mod:`bramley.core.data.reinforced` documents the format.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bramley.core.data.reinforced import (
    AugmentConfig,
    FieldSpec,
    ReinforcedStore,
    ReinforcedWriter,
    ReplayableAugment,
    augmentation_seed,
    topk_sparsify,
)
from bramley.core.errors import CheckpointError, ConfigError

from .data import RawImages

__all__ = ["TeacherEnsemble", "load_teacher", "reinforce"]


# ------------------------------------------------------------------------------------------------------- teachers
def load_teacher(spec: str, num_classes: int | None = None, device: str = "cpu") -> nn.Module:
    """A teacher classifier by name or checkpoint, in eval mode.

    ``spec`` is a bramley model folder (a ``train --out`` run), a ``.safetensors`` file bramley wrote, a registered
    bramley model name (random weights: for smoke tests only), ``timm:NAME`` (timm's pretrained weights, from its
    cache or the hub) or ``timm:NAME=FILE`` (timm's architecture with the weights in a local ``.safetensors`` file).
    """
    if spec.startswith("timm:"):
        import timm

        name, _, file = spec[len("timm:") :].partition("=")
        try:
            if not file:  # the pretrained head as is: a class count that does not fit the data fails in reinforce
                return timm.create_model(name, pretrained=True).to(device).eval()
            if not Path(file).is_file():
                raise CheckpointError(f"teacher {spec}: {file} does not exist")
            from safetensors.torch import load_file

            # built with the file's class count and loaded strictly: timm's own pretrained loading would silently
            # re-initialise a classifier whose size differs from the default config's
            state = load_file(file)
            kwargs = {} if num_classes is None else {"num_classes": num_classes}
            model = timm.create_model(name, pretrained=False, **kwargs)
            model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError) as e:  # unknown model, unreadable file, keys or shapes that do not fit
            raise CheckpointError(f"teacher {spec}: {' '.join(str(e).split())[:300]}") from None
        return model.to(device).eval()
    from bramley.core.checkpoint import load_model
    from bramley.core.registry import list_models

    from .train import import_method_models

    import_method_models(spec)
    if spec in list_models() and num_classes is not None:  # a registered name: random weights, the data's classes
        return load_model(spec, device=device, num_classes=num_classes)
    return load_model(spec, device=device)


class TeacherEnsemble(nn.Module):
    """The mean of the teachers' softmax probabilities (the paper's ensemble): ``forward(images) -> (B, C)``."""

    def __init__(self, teachers: Sequence[nn.Module]) -> None:
        super().__init__()
        if not teachers:
            raise ConfigError("the teacher ensemble is empty: give at least one teacher")
        self.teachers = nn.ModuleList(teachers)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probs = [t(images).float().softmax(-1) for t in self.teachers]
        if len({p.shape[-1] for p in probs}) > 1:
            raise ConfigError(f"the teachers predict different numbers of classes: {[p.shape[-1] for p in probs]}")
        return torch.stack(probs).mean(0)


# ------------------------------------------------------------------------------------------------------ reinforce
def reinforce(
    images: RawImages,
    teacher: nn.Module,
    out: str | os.PathLike,
    augment: AugmentConfig | None = None,
    num_augmentations: int = 10,
    topk: int = 10,
    seed: int = 0,
    shard_size: int = 256,
    batch_size: int = 256,
    device: str = "cpu",
    meta: dict[str, Any] | None = None,
    stop_after: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the reinforced dataset of ``images`` to ``out`` (resuming it when ``out`` holds a partial run).

    Args:
        images: the original images.
        teacher: ``images -> probabilities (B, C)`` (a :class:`TeacherEnsemble`), in eval mode.
        out: the store's folder.
        augment: the augmentations (default: the paper's ImageNet+ configuration).
        num_augmentations: stored augmentations per image (``NS``).
        topk: probabilities kept per augmentation (at most the number of classes).
        seed: the augmentation seed.
        shard_size: samples per shard.
        batch_size: images per teacher forward.
        device: where the teacher runs.
        meta: more JSON-able settings for the manifest (the teachers' names, ...).
        stop_after: write at most this many shards, then return (the rest stay pending).
        progress: ``progress(done, total)`` after each shard.

    Returns:
        ``{"store", "shards_written", "images_per_s", "bytes_per_image", ...}`` (throughput of this call's shards).
    """
    augment = augment or AugmentConfig()
    if num_augmentations < 1 or shard_size < 1 or batch_size < 1:
        raise ConfigError(f"num_augmentations, shard_size and batch_size must be >= 1: {num_augmentations}, ...")
    if not 1 <= topk <= images.num_classes:
        raise ConfigError(
            f"topk={topk} must be in [1, {images.num_classes}] (the dataset has {images.num_classes} classes)"
        )
    fields = {
        "probs": FieldSpec("float16", (num_augmentations, topk)),
        "ids": FieldSpec("int32", (num_augmentations, topk)),
        "label": FieldSpec("int64", ()),
    }
    manifest_meta = {
        "augment": augment.to_dict(),
        "num_classes": images.num_classes,
        "classes": list(images.classes),
        "topk": topk,
        "seed": seed,
        "data": images.description,
        **(meta or {}),
    }
    writer = ReinforcedWriter(out, len(images), fields, num_augmentations, shard_size, manifest_meta)
    sampler = ReplayableAugment(augment)
    pending = writer.pending()
    todo = pending if stop_after is None else pending[:stop_after]
    teacher = teacher.to(device).eval()
    start, augmented = time.perf_counter(), 0
    for done, shard in enumerate(todo):
        rows = writer.shard_range(shard)
        views, params = [], []
        for index in rows:
            image = images.image(index)
            sample_params = []
            for j in range(num_augmentations):
                view, p = sampler.sample(image, augmentation_seed(seed, index, j))
                views.append(view)
                sample_params.append(p)
            params.append(sample_params)
        probs = _predict(teacher, torch.stack(views), batch_size, device, images.num_classes)
        values, ids = topk_sparsify(probs, topk)
        shape = (len(rows), num_augmentations, topk)
        labels = images.targets[rows.start : rows.stop].to(torch.int64)
        writer.write_shard(shard, {"probs": values.view(shape), "ids": ids.view(shape), "label": labels}, params)
        augmented += len(views)
        if progress is not None:
            progress(len(pending) - len(todo) + done + 1, len(pending))
    seconds = time.perf_counter() - start
    store = ReinforcedStore(out)
    written = sum(store.shard_path(s).stat().st_size for s in range(store.num_shards) if s not in store.missing())
    return {
        "store": str(out),
        "shards_written": len(todo),
        "shards_pending": len(pending) - len(todo),
        "augmented_images": augmented,
        "seconds": seconds,
        "images_per_s": augmented / seconds if seconds > 0 and augmented else None,
        "bytes_per_image": written / len(images),
    }


@torch.no_grad()
def _predict(teacher: nn.Module, views: torch.Tensor, batch_size: int, device: str, num_classes: int) -> torch.Tensor:
    out = []
    for chunk in views.split(batch_size):
        probs = teacher(chunk.to(device)).float().cpu()
        if probs.ndim != 2 or probs.shape[-1] != num_classes:
            raise ConfigError(
                f"the teachers predict {tuple(probs.shape[1:])} outputs but the dataset has {num_classes} classes"
            )
        out.append(probs)
    return torch.cat(out)
