"""Matryoshka embeddings at any size, and their safetensors files."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bramley.core.errors import ConfigError, DataError

__all__ = ["EmbeddingFile", "embed_dataset", "load_embeddings", "save_embeddings", "truncate_normalize"]

_META_KEY = "bramley_mrl_embeddings"


def truncate_normalize(x: torch.Tensor, dim: int | None = None, normalize: bool = True) -> torch.Tensor:
    """The first ``dim`` features of each row of ``x``, L2-normalised (the Matryoshka representation at ``dim``).

    Normalisation happens *after* truncation: a prefix of a unit vector is not a unit vector.
    """
    if x.ndim < 1:
        raise DataError("embeddings must have at least one dimension")
    full = x.shape[-1]
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigError(f"dim must be a positive int, got {dim!r}")
        if dim > full:
            raise ConfigError(f"cannot truncate {full}-dim embeddings to {dim} dims")
        x = x[..., :dim]
    return F.normalize(x, dim=-1) if normalize else x


@dataclass
class EmbeddingFile:
    """Contents of an embeddings file: ``(N, D)`` vectors, optional ``(N,)`` int labels, free-form metadata."""

    embeddings: torch.Tensor
    labels: torch.Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def save_embeddings(
    path: str | os.PathLike,
    embeddings: torch.Tensor,
    labels: torch.Tensor | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write embeddings (and labels) to a safetensors file; ``metadata`` (JSON-serialisable) goes in the header.

    The file holds tensors ``embeddings`` and optionally ``labels``; the metadata records the shape, dtype and
    anything passed (model, nesting sizes, which split the rows came from).
    """
    from safetensors.torch import save_file

    from bramley.core.checkpoint import atomic_write

    if embeddings.ndim != 2:
        raise DataError(f"embeddings must be 2-D (N, D), got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise DataError(f"embeddings must be floating point, got {embeddings.dtype}")
    tensors = {"embeddings": embeddings.detach().cpu().contiguous()}
    if labels is not None:
        if labels.shape != (embeddings.shape[0],):
            raise DataError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point():
            raise DataError(f"labels must be integers, got {labels.dtype}")
        tensors["labels"] = labels.detach().cpu().to(torch.int64).contiguous()
    meta = {"num": embeddings.shape[0], "dim": embeddings.shape[1], **dict(metadata or {})}
    try:
        header = {_META_KEY: json.dumps(meta, sort_keys=True)}
    except TypeError as e:
        raise DataError(f"embedding metadata is not JSON-serialisable: {e}") from e
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_embeddings(path: str | os.PathLike, device: str = "cpu") -> EmbeddingFile:
    """Read a file written by :func:`save_embeddings`.

    Raises:
        FileNotFoundError: the file does not exist.
        DataError: it is corrupt, not a safetensors file, or holds no 2-D ``embeddings`` tensor.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            keys = set(f.keys())
            header = dict(f.metadata() or {})
            if "embeddings" not in keys:
                raise DataError(f"{path} has no 'embeddings' tensor (found {sorted(keys)})")
            embeddings = f.get_tensor("embeddings")
            labels = f.get_tensor("labels") if "labels" in keys else None
    except (SafetensorError, OSError) as e:
        raise DataError(f"{path} is not a readable safetensors embeddings file: {e}") from e
    if embeddings.ndim != 2:
        raise DataError(f"{path}: embeddings must be 2-D, got shape {tuple(embeddings.shape)}")
    metadata = json.loads(header[_META_KEY]) if _META_KEY in header else {}
    return EmbeddingFile(embeddings, labels, metadata)


@torch.no_grad()
def embed_dataset(
    model: torch.nn.Module, data: torch.utils.data.Dataset, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-size representations (float32, CPU) and labels of every ``(image, label)`` item, in dataset order.

    The model runs where its parameters are (``load_model(..., device=...)``), in eval mode; progress is reported
    with :func:`bramley.core.progress.track`.
    """
    from bramley.core.progress import track
    from bramley.core.train.data import move_to_device

    if len(data) == 0:
        raise DataError("the dataset to embed is empty")
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    feats, labels = [], []
    for images, y in track(loader, desc="embed", unit="batch"):
        feats.append(model.forward_features(move_to_device(images, device)).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels).long()
