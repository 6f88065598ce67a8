"""Backfilling: transform a stored gallery of old embeddings (+ side information) into the new embedding space.

Galleries are safetensors files holding an ``(N, D)`` embeddings tensor (default key ``embeddings``), optionally
the ``(N, S)`` side information (``side_info``, in the same file or a second one) and any per-item tensors such as
``labels`` or ids, which are carried over to the output unchanged (the side information too: the next model update
can use it again).

The work is split into fixed batches; each finished batch is written atomically to ``<out>.parts/`` next to a
manifest that fingerprints the inputs, the transformation weights and the batch size. An interrupted run (crash,
Ctrl-C, ``max_batches``) resumes where it stopped and produces a file byte-identical to an uninterrupted run;
a resume against different inputs, weights or batch size is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from bramley.core.checkpoint import atomic_write
from bramley.core.errors import DataError
from bramley.core.retrieval import retrieval_metrics

from .models import FCTTransformation

__all__ = ["BackfillError", "BackfillResult", "gallery_metrics", "load_gallery", "save_gallery", "transform_gallery"]

EMBEDDINGS_KEY = "embeddings"
SIDE_INFO_KEY = "side_info"
_META_KEY = "bramley_fct"


class BackfillError(DataError):
    """A gallery file is missing, unreadable, or does not fit the transformation or the other inputs."""


@dataclass(frozen=True)
class BackfillResult:
    """Outcome of :func:`transform_gallery`."""

    out_path: Path
    num_items: int
    batches_done: int
    batches_total: int

    @property
    def complete(self) -> bool:
        return self.batches_done == self.batches_total


def save_gallery(path: str | os.PathLike, **tensors: torch.Tensor) -> Path:
    """Write a gallery file atomically, e.g. ``save_gallery(p, embeddings=e, side_info=s, labels=y)``."""
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    counts = {k: v.shape[0] for k, v in data.items() if v.ndim > 0}
    if len(set(counts.values())) > 1:
        raise BackfillError(f"gallery tensors disagree on the number of items: {counts}")
    return atomic_write(path, lambda tmp: save_file(data, tmp))


def load_gallery(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read every tensor of a gallery file (clear error when it is missing or corrupt)."""
    path = Path(path)
    if not path.is_file():
        raise BackfillError(f"gallery file {path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise BackfillError(f"gallery file {path} is not a readable safetensors file: {e}") from e


class _Source:
    """Lazy row access to one tensor of a safetensors file (never loads the whole tensor)."""

    def __init__(self, path: Path, key: str, what: str) -> None:
        if not path.is_file():
            raise BackfillError(f"{what} file {path} does not exist")
        try:
            self._file = safe_open(str(path), framework="pt")
            keys = list(self._file.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise BackfillError(f"{what} file {path} is not a readable safetensors file: {e}") from e
        if key not in keys:
            raise BackfillError(f"{what} file {path} has no tensor {key!r} (it holds: {', '.join(keys) or 'nothing'})")
        self._slice = self._file.get_slice(key)
        shape = list(self._slice.get_shape())
        if len(shape) != 2:
            raise BackfillError(f"{what} {path}[{key!r}] must be 2-D (items, dim), got shape {tuple(shape)}")
        dtype = self._slice.get_dtype()
        if dtype not in ("F64", "F32", "F16", "BF16"):
            raise BackfillError(f"{what} {path}[{key!r}] must be floating point, got {dtype}")
        self.path, self.key, self.keys = path, key, keys
        self.count, self.dim = shape

    def rows(self, start: int, stop: int) -> torch.Tensor:
        return self._slice[start:stop]

    def fingerprint(self) -> dict:
        st = self.path.stat()
        return {"path": str(self.path.resolve()), "key": self.key, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _part_path(parts: Path, index: int) -> Path:
    return parts / f"part-{index:08d}.safetensors"


def _part_ok(path: Path, rows: int, dim: int) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.get_slice(EMBEDDINGS_KEY).get_shape()) == [rows, dim]
    except Exception:  # a damaged part is recomputed, never trusted
        return False


@torch.no_grad()
def transform_gallery(
    transformation: FCTTransformation,
    gallery_path: str | os.PathLike,
    out_path: str | os.PathLike,
    side_info_path: str | os.PathLike | None = None,
    embeddings_key: str = EMBEDDINGS_KEY,
    side_info_key: str = SIDE_INFO_KEY,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    resume: bool = True,
    max_batches: int | None = None,
    progress: bool = True,
    keep_parts: bool = False,
) -> BackfillResult:
    """Backfill: write ``h(old, side)`` for every gallery item to ``out_path`` (key ``embeddings``).

    Args:
        transformation: the trained forward transformation (run in eval mode).
        gallery_path: safetensors file with the old embeddings (and per-item tensors to carry over).
        out_path: the transformed gallery to write.
        side_info_path: file with the side information; default: look for ``side_info_key`` in ``gallery_path``.
        embeddings_key: key of the old embeddings.
        side_info_key: key of the side information.
        batch_size: items per batch (also the resume granularity; a resume must use the same value).
        device: where the transformation runs.
        resume: continue from finished batches in ``<out>.parts``; ``False`` discards them and starts over.
        max_batches: stop after this many new batches (a time-sliced backfill); call again to continue.
        progress: show a tqdm progress bar.
        keep_parts: keep the per-batch files after the final file is written.
    """
    if batch_size < 1:
        raise BackfillError(f"batch_size must be positive, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise BackfillError(f"max_batches must be positive, got {max_batches}")
    gallery_path, out_path = Path(gallery_path), Path(out_path)
    if out_path.resolve() in {gallery_path.resolve(), Path(side_info_path or gallery_path).resolve()}:
        raise BackfillError(f"the backfilled gallery {out_path} would replace its input: write it to another file")
    old = _Source(gallery_path, embeddings_key, "gallery")
    if old.dim != transformation.old_dim:
        raise BackfillError(
            f"gallery {gallery_path}[{embeddings_key!r}] has dim {old.dim} but the transformation expects old "
            f"embeddings of dim {transformation.old_dim}"
        )
    side = None
    if transformation.uses_side_info:
        if side_info_path is None and side_info_key not in old.keys:
            raise BackfillError(
                f"the transformation needs side information (dim {transformation.side_info_dim}) but {gallery_path} "
                f"has no {side_info_key!r} tensor and no side-information file was given"
            )
        side = _Source(Path(side_info_path or gallery_path), side_info_key, "side-information")
        if side.count != old.count:
            raise BackfillError(
                f"side information {side.path}[{side_info_key!r}] has {side.count} items "
                f"but the gallery has {old.count}"
            )
        if side.dim != transformation.side_info_dim:
            raise BackfillError(
                f"side information {side.path}[{side_info_key!r}] has dim {side.dim} but the transformation expects "
                f"{transformation.side_info_dim}"
            )
    elif side_info_path is not None:
        raise BackfillError("a side-information file was given but the transformation uses no side information")

    n = old.count
    carried = [k for k in old.keys if k != embeddings_key]  # side information too: it serves the next update
    with safe_open(str(gallery_path), framework="pt") as f:
        for key in carried:
            shape = list(f.get_slice(key).get_shape())
            if not shape or shape[0] != n:
                raise BackfillError(
                    f"gallery {gallery_path}[{key!r}] has shape {tuple(shape)}; per-item tensors must have {n} rows "
                    "to be carried into the transformed gallery"
                )
    total = (n + batch_size - 1) // batch_size
    parts = out_path.with_name(out_path.name + ".parts")
    manifest = {
        "version": 1,
        "gallery": old.fingerprint(),
        "side_info": side.fingerprint() if side is not None else None,
        "transformation": _weights_digest(transformation),
        "batch_size": batch_size,
        "num_items": n,
        "new_dim": transformation.new_dim,
    }
    manifest_path = parts / "manifest.json"
    if parts.exists() and not resume:
        shutil.rmtree(parts)
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            previous = {"damaged": True}
        if previous != manifest:
            changed = sorted(k for k in manifest if previous.get(k) != manifest[k])
            raise BackfillError(
                f"{parts} holds an unfinished backfill of different inputs (changed: {', '.join(changed)}); "
                "resume with the same inputs, weights and batch size, or start over (resume=False / --restart)"
            )
    else:
        parts.mkdir(parents=True, exist_ok=True)
        text = json.dumps(manifest, indent=2, sort_keys=True)
        atomic_write(manifest_path, lambda tmp: Path(tmp).write_text(text))

    todo = [
        i
        for i in range(total)
        if not _part_ok(_part_path(parts, i), min(batch_size, n - i * batch_size), transformation.new_dim)
    ]
    was_training = transformation.training
    transformation.eval().to(device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(todo), desc="backfill", unit="batch")
    done_now = 0
    try:
        for i in todo:
            if max_batches is not None and done_now >= max_batches:
                break
            start, stop = i * batch_size, min((i + 1) * batch_size, n)
            x = old.rows(start, stop).to(device=device, dtype=torch.float32)
            s = side.rows(start, stop).to(device=device, dtype=torch.float32) if side is not None else None
            y = transformation(x, s).float().cpu().contiguous()
            atomic_write(_part_path(parts, i), lambda tmp, y=y: save_file({EMBEDDINGS_KEY: y}, tmp))
            done_now += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        transformation.train(was_training)
    batches_done = total - len(todo) + done_now
    if batches_done < total:
        return BackfillResult(out_path, n, batches_done, total)

    pieces = [load_file(str(_part_path(parts, i)))[EMBEDDINGS_KEY] for i in range(total)]
    out = {EMBEDDINGS_KEY: torch.cat(pieces) if pieces else torch.zeros(0, transformation.new_dim)}
    if carried:
        with safe_open(str(gallery_path), framework="pt") as f:
            out.update({key: f.get_tensor(key) for key in carried})
    meta = {_META_KEY: json.dumps({"source": gallery_path.name, "batch_size": batch_size, "num_items": n})}
    atomic_write(out_path, lambda tmp: save_file(out, tmp, metadata=meta))
    if not keep_parts:
        shutil.rmtree(parts)
    return BackfillResult(out_path, n, total, total)


def _gallery_for_eval(path: str | os.PathLike, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings, labels)`` of a gallery file, each checked (a one-line BackfillError naming the file)."""
    tensors = load_gallery(path)
    missing = [key for key in (EMBEDDINGS_KEY, "labels") if key not in tensors]
    if missing:
        held = ", ".join(sorted(tensors)) or "nothing"
        raise BackfillError(
            f"{what} {path} has no {missing[0]!r} tensor (it holds: {held}); eval needs a gallery written by "
            "`bramley-fct embed` or `transform-gallery` (embeddings and each item's label)"
        )
    emb, labels = tensors[EMBEDDINGS_KEY], tensors["labels"]
    if emb.ndim != 2 or not emb.is_floating_point():
        raise BackfillError(
            f"{what} {path}['embeddings'] must be a 2-D float tensor, got {emb.dtype} {tuple(emb.shape)}"
        )
    if labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise BackfillError(f"{what} {path}['labels'] must be 1-D integers, got {labels.dtype} {tuple(labels.shape)}")
    if labels.shape[0] != emb.shape[0]:
        raise BackfillError(f"{what} {path} has {emb.shape[0]} embeddings but {labels.shape[0]} labels")
    if not bool(torch.isfinite(emb).all()):
        raise BackfillError(f"{what} {path}['embeddings'] holds NaN or infinite values")
    return emb, labels


def gallery_metrics(
    query_path: str | os.PathLike,
    gallery_path: str | os.PathLike,
    metric: str = "l2",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """FCT's retrieval metrics (percent) of the query file's embeddings against the gallery file's.

    Both files embed the same evaluation images in the same order (their labels must be equal): the gallery is the
    query set, each query left out of its own ranking, as in the paper. Query and gallery may come from different
    models in one embedding space (new-model queries against a backfilled old gallery).
    """
    query, query_labels = _gallery_for_eval(query_path, "query")
    gallery, gallery_labels = _gallery_for_eval(gallery_path, "gallery")
    if query_labels.shape != gallery_labels.shape or not torch.equal(query_labels, gallery_labels):
        raise BackfillError(
            f"query {query_path} and gallery {gallery_path} have different labels ({query_labels.numel()} vs "
            f"{gallery_labels.numel()} items): they must embed the same images in the same order"
        )
    if query.shape[1] != gallery.shape[1]:
        raise BackfillError(
            f"query {query_path} embeddings have dim {query.shape[1]}, gallery {gallery_path} dim {gallery.shape[1]}: "
            "they are not in one embedding space (backfill the old gallery with transform-gallery first)"
        )
    if len(query_labels) < 2:
        raise BackfillError(f"query {query_path} holds {len(query_labels)} item: leave-one-out needs at least two")
    try:
        return retrieval_metrics(query.to(device), gallery.to(device), query_labels.to(device), metric=metric)
    except ValueError as e:  # no query shares a label with any other item
        raise BackfillError(f"{query_path} vs {gallery_path}: {e}") from None
