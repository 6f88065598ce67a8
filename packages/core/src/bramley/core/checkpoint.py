"""Safetensors checkpoints that know how to rebuild their model.

Files are plain safetensors; the model's build recipe (``model.model_config``, set by ``create_model``) travels in
the header metadata under ``bramley_config`` and, for ``save_pretrained`` folders, also in ``config.json``.
Every failure names the file and the problem: missing/unexpected keys, shape mismatches, corrupt headers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import CheckpointError

__all__ = [
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "atomic_write",
    "check_state_dict",
    "from_pretrained",
    "load_checkpoint",
    "load_model",
    "read_metadata",
    "save_checkpoint",
    "save_model_config",
    "save_pretrained",
    "sha256_file",
    "temp_files",
    "verify_checksum",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The checksums of what bramley writes into a folder, in ``sha256sum`` format (``sha256sum -c SHA256SUMS`` checks it).
MANIFEST_NAME = "SHA256SUMS"
_CONFIG_KEY = "bramley_config"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; written files get the permissions open() would give them (0644 under umask 022)
_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: str | os.PathLike, write_fn, checksum: bool = False) -> Path:
    """Call ``write_fn(tmp_path)`` then atomically rename onto ``path``: readers never see a partial file.

    The temporary file (``.<name>.<random>.tmp`` beside ``path``) is flushed to disk before the rename and the folder
    after it, so a power cut leaves either the old file or the whole new one. A full or read-only disk is a
    one-line :class:`CheckpointError` naming the folder. With ``checksum``, the file's SHA-256 is recorded in the
    folder's ``SHA256SUMS`` (see :func:`verify_checksum`).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # see temp_files()
    except OSError as e:
        raise CheckpointError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, _FILE_MODE)
        _fsync_file(tmp)
        if checksum:  # the new sum is listed beside the old one until the rename: a kill between leaves both valid
            digest = sha256_file(tmp)
            _record_checksum(path, digest, keep_others=True)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
        if checksum:
            _record_checksum(path, digest, keep_others=False)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> list[tuple[str, str]]:
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return []
    entries = []
    for line in manifest.read_text(errors="replace").splitlines():
        digest, sep, name = line.partition("  ")
        if sep and len(digest) == 64:
            entries.append((digest, name))
    return entries


def _record_checksum(path: Path, digest: str, keep_others: bool) -> None:
    entries = [(d, n) for d, n in _read_manifest(path.parent) if n != path.name or (keep_others and d != digest)]
    entries.append((digest, path.name))
    text = "".join(f"{d}  {n}\n" for d, n in sorted(entries, key=lambda e: e[1]))
    atomic_write(path.parent / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text))


def verify_checksum(path: str | os.PathLike) -> None:
    """Refuse a file whose folder's ``SHA256SUMS`` lists it with another checksum (a flipped byte, a truncated copy,
    an edit); a file the manifest does not list (a downloaded one, say) passes unchecked."""
    path = Path(path)
    listed = {d for d, n in _read_manifest(path.parent) if n == path.name}
    if listed and sha256_file(path) not in listed:
        raise CheckpointError(
            f"{path} does not match its checksum in {path.parent / MANIFEST_NAME}: the file is corrupt or was "
            "changed after bramley wrote it"
        )


def temp_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files :func:`atomic_write` leaves beside ``path`` when it is killed mid-write."""
    path = Path(path)
    return [p for p in path.parent.glob(f".{path.name}.*.tmp") if p.is_file()]


def _fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's data to disk; a failure (EIO, a full disk) means the data may be lost, so it raises."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(path: str | os.PathLike) -> None:
    """Flush a folder's entries (the rename) to disk where the platform and file system allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # EINVAL / EBADF: some file systems cannot sync a folder
        pass
    finally:
        os.close(fd)


def _to_saveable(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors that share storage (tied weights) are cloned apart."""
    out, seen = {}, set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().cpu()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        if ptr is not None and ptr in seen:
            t = t.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = t.contiguous()
    return out


def save_checkpoint(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write weights to a safetensors file atomically, with the model's build config in the metadata.

    Args:
        model_or_state: a module (its ``state_dict()`` is saved and its ``model_config`` used by default) or a
            state dict.
        path: destination ``.safetensors`` file.
        config: JSON-serialisable build recipe; defaults to ``model.model_config`` when present.
        metadata: extra string metadata.
    """
    if isinstance(model_or_state, nn.Module):
        state = model_or_state.state_dict()
        config = config if config is not None else getattr(model_or_state, "model_config", None)
    else:
        state = model_or_state
    meta = dict(metadata or {})
    if config is not None:
        try:
            meta[_CONFIG_KEY] = json.dumps(config, sort_keys=True)
        except TypeError as e:
            msg = f"model config is not JSON-serialisable ({e}); pass plain values to the factory"
            raise CheckpointError(msg) from e
    tensors = _to_saveable(state)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta), checksum=True)


def _open_error(path: Path, e: Exception) -> CheckpointError:
    if not path.exists():
        return CheckpointError(f"checkpoint {path} does not exist")
    return CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}")


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a safetensors file, with ``bramley_config`` decoded from JSON."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise _open_error(path, e) from e
    if _CONFIG_KEY in meta:
        try:
            meta[_CONFIG_KEY] = json.loads(meta[_CONFIG_KEY])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"checkpoint {path}: metadata {_CONFIG_KEY!r} is not valid JSON: {e}") from e
    return meta


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint", strict: bool = True
) -> None:
    """Raise a one-line :class:`CheckpointError` listing missing keys, unexpected keys and shape mismatches (the first
    20 of each).

    With ``strict=False`` missing and unexpected keys are allowed; shape mismatches never are.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict)) if strict else []
    unexpected = sorted(set(state_dict) - set(expected)) if strict else []
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(expected[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = " ..." if len(items) > 20 else ""
                parts.append(f"{title} ({len(items)}): " + ", ".join(items[:20]) + more)
        raise CheckpointError(f"{source} does not match {type(model).__name__}: " + "; ".join(parts))


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module | None = None, strict: bool = True, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Read a safetensors checkpoint; if ``model`` is given, load it (strictly by default) and return the state.

    A file listed in its folder's ``SHA256SUMS`` (bramley writes one) must match its checksum there.
    """
    path = Path(path)
    if path.is_file():
        verify_checksum(path)
    try:
        state = load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _open_error(path, e) from e
    if model is not None:
        check_state_dict(model, state, source=f"checkpoint {path}", strict=strict)
        model.load_state_dict(state, strict=strict)
    return state


def save_pretrained(model: nn.Module, directory: str | os.PathLike, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (Hugging Face hub folder layout)."""
    directory = Path(directory)
    config = config if config is not None else getattr(model, "model_config", None)
    if config is None:
        raise CheckpointError(
            "model has no model_config: build it with bramley.core.create_model "
            "or pass config={'name': ..., 'kwargs': {...}}"
        )
    save_checkpoint(model, directory / WEIGHTS_NAME, config=config)
    save_model_config(config, directory)
    return directory


def save_model_config(config: Mapping[str, Any], directory: str | os.PathLike) -> Path:
    """Write ``config.json``, the model's build config, which makes a folder holding ``model.safetensors`` a
    ``save_pretrained`` folder."""
    text = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
    return atomic_write(Path(directory) / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text), checksum=True)


def from_pretrained(directory: str | os.PathLike, device: str = "cpu", **overrides: Any) -> nn.Module:
    """Rebuild a model from a ``save_pretrained`` folder, in eval mode; ``overrides`` replace factory arguments."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_NAME}; is it a save_pretrained folder (or a finished run)?")
    verify_checksum(config_path)
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_path} is not valid JSON: {e}") from None
    name, kwargs = _model_config(config, str(config_path))
    model = _build(name, {**kwargs, **overrides}, str(config_path))
    load_checkpoint(directory / WEIGHTS_NAME, model, device=device)
    return model.to(device).eval()


def load_model(spec: str | os.PathLike, device: str = "cpu", **kwargs: Any) -> nn.Module:
    """The model a user names, in eval mode: the one place every CLI verb and recipe loads models from.

    Args:
        spec: a ``save_pretrained`` folder (a finished ``train --out`` folder is one), a ``.safetensors`` file that
            carries its model config (what bramley writes: ``model.safetensors``, ``ema.safetensors``), or a
            registered model name (random weights).
        device: where the weights go.
        kwargs: factory arguments replacing the saved ones (or given to a registered model).

    Raises:
        CheckpointError: the file or folder is missing, unreadable, carries no model config or does not fit it; or
            the name is neither a path nor a registered model (close names are suggested).
    """
    from .registry import list_models

    text = str(spec)
    path = Path(text)
    if path.is_dir():
        return from_pretrained(path, device, **kwargs)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path} is not a .safetensors file: bramley loads safetensors only (an official checkpoint is "
                "converted first with the method's `convert` command)"
            )
        name, saved = _model_config(read_metadata(path).get(_CONFIG_KEY), f"checkpoint {path}")
        model = _build(name, {**saved, **kwargs}, f"checkpoint {path}")
        load_checkpoint(path, model, device=device)
        return model.to(device).eval()
    if text in list_models():
        return _build(text, kwargs, "model").to(device).eval()
    if "/" in text or os.sep in text or path.suffix:
        raise CheckpointError(f"{text} does not exist")
    import difflib

    close = difflib.get_close_matches(text, list_models(), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise CheckpointError(f"{text!r} is neither a model folder, a .safetensors file nor a registered model{hint}")


def _model_config(config: Any, source: str) -> tuple[str, dict[str, Any]]:
    """``(name, kwargs)`` of a stored model config, or a CheckpointError saying what is wrong with it."""
    if config is None:
        raise CheckpointError(f"{source} carries no bramley model config (was it written by bramley?)")
    if not (
        isinstance(config, dict) and isinstance(config.get("name"), str) and isinstance(config.get("kwargs", {}), dict)
    ):
        raise CheckpointError(
            f"{source}: the model config must be {{'name': str, 'kwargs': {{...}}}}, got {config!r}"[:300]
        )
    return config["name"], dict(config.get("kwargs", {}))


def _build(name: str, kwargs: dict[str, Any], source: str) -> nn.Module:
    from .errors import ConfigError
    from .recipe import build_model

    try:
        return build_model(name, kwargs, where=source)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
