"""The one interface every package's official-checkpoint converter follows.

A package writes ``convert_official(state_dict, model_name=None) -> Converted``: an in-memory map from the official
tensors (already read with :func:`load_official_file`) to a bramley state dict plus the registered model that holds
it. Core reads the file safely (tensors only, never code), builds and loads the model (:func:`build_converted`), and
the ``convert`` verb of :class:`bramley.core.cli.MethodCLI` saves it. Every failure is a :class:`CheckpointError`
naming the file or the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .errors import CheckpointError

__all__ = ["WRAPPER_KEYS", "Converted", "build_converted", "load_official_file", "strip_prefix"]

#: Keys that official training scripts wrap their state dict in (the first one present is unwrapped).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema")


@dataclass
class Converted:
    """An official checkpoint in bramley's terms.

    Attributes:
        model_name: the registered model that holds ``state_dict``.
        model_kwargs: its factory arguments (e.g. ``num_classes``, ``inference_mode`` read from the weights).
        state_dict: the tensors under bramley's names.
        ignored: official keys that are not part of the model (e.g. a text tower beside an image tower).
        source: which official layout was recognised (``"official"``, ``"timm"``, ``"mobileclip"``, ...).
    """

    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    ignored: list[str] = field(default_factory=list)
    source: str = "official"

    def note(self) -> str:
        """One line for the user: the layout recognised and what was left out."""
        left = f"; ignored {len(self.ignored)} keys outside the model (e.g. {self.ignored[0]})" if self.ignored else ""
        return f"({self.source} layout{left})"


def load_official_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an official ``.pth`` / ``.pth.tar`` / ``.pt`` / ``.safetensors`` file.

    PyTorch files are read with ``weights_only=True`` (nothing in the file can run code); a ``state_dict`` /
    ``model`` / ... wrapper is unwrapped and a DDP ``module.`` prefix removed. Non-tensor entries beside the state
    dict (epoch, optimizer, args) are ignored only as wrapper siblings; inside the state dict they are an error.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from .checkpoint import load_checkpoint

        return strip_prefix(load_checkpoint(path), "module.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign bytes (pickle, zip, unicode errors)
        reason = " ".join(str(e).split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."  # the unpickler explains at length
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {reason})") from None
    if isinstance(obj, Mapping):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        obj = obj[wrapper] if wrapper is not None else obj
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: the state dict holds non-tensor entries ({', '.join(bad[:5])})")
    return strip_prefix(dict(obj), "module.")


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state_dict`` with ``prefix`` removed from the keys, when every key has it (otherwise unchanged)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def build_converted(converted: Converted, source: str = "converted checkpoint") -> nn.Module:
    """The registered model of ``converted`` with its tensors loaded (strictly), in eval mode."""
    from .checkpoint import check_state_dict
    from .recipe import build_model

    model = build_model(converted.model_name, converted.model_kwargs, where=source)
    check_state_dict(model, converted.state_dict, source=source)
    model.load_state_dict(converted.state_dict)
    return model.eval()
