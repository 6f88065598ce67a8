"""State-dict conversion between bramley MobileOne, timm's ``byobnet`` MobileOne and the official checkpoints.

Key names (fused and unfused checkpoints both):

=================================  ===============================  ===================================
official (apple/ml-mobileone)      timm (``mobileone_s*``)           bramley
=================================  ===============================  ===================================
``stage0.``                        ``stem.``                         ``stem.``
``stage{s}.{j}.`` (s = 1..4)       ``stages.{s-1}.{j}.``             ``stages.{s-1}.{j}.``
``rbr_skip``                       ``identity``                      ``identity``
``rbr_conv.{i}.conv/bn``           ``conv_kxk.{i}.conv/bn``          ``conv_kxk.{i}.conv/bn``
``rbr_scale.conv/bn``              ``conv_scale.conv/bn``            ``conv_scale.conv/bn``
``reparam_conv``                   ``reparam_conv``                  ``reparam_conv``
``se.reduce`` / ``se.expand``      ``attn.fc1`` / ``attn.fc2``       ``se.reduce`` / ``se.expand``
``linear.``                        ``head.fc.``                      ``fc.``
=================================  ===============================  ===================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from bramley.core.checkpoint import CheckpointError

from .model import VARIANTS, MobileOne, build_mobileone

__all__ = [
    "bramley_to_official",
    "bramley_to_timm",
    "detect_variant",
    "load_official_checkpoint",
    "official_to_bramley",
    "timm_to_bramley",
]

StateDict = dict[str, torch.Tensor]

_TIMM_TO_OURS = [(".attn.fc1.", ".se.reduce."), (".attn.fc2.", ".se.expand.")]
_OFFICIAL_BRANCHES = [(".rbr_skip.", ".identity."), (".rbr_conv.", ".conv_kxk."), (".rbr_scale.", ".conv_scale.")]


def _rename(state: Mapping[str, torch.Tensor], fn) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        new = fn(key)
        if new in out:
            raise CheckpointError(f"two checkpoint keys map to {new!r}")
        out[new] = value
    return out


def _swap(key: str, pairs: list[tuple[str, str]], reverse: bool = False) -> str:
    key = "." + key
    for a, b in pairs:
        key = key.replace(b, a) if reverse else key.replace(a, b)
    return key[1:]


def timm_to_bramley(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a timm ``mobileone_s*`` state dict to bramley's names."""

    def fn(key: str) -> str:
        if key.startswith("head.fc."):
            return "fc." + key[len("head.fc.") :]
        return _swap(key, _TIMM_TO_OURS)

    return _rename(state, fn)


def bramley_to_timm(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a bramley MobileOne state dict to timm's ``mobileone_s*`` names."""

    def fn(key: str) -> str:
        if key.startswith("fc."):
            return "head.fc." + key[len("fc.") :]
        return _swap(key, _TIMM_TO_OURS, reverse=True)

    return _rename(state, fn)


_OFFICIAL_STAGE = re.compile(r"^stage([1-9]\d*)\.")
_OUR_STAGE = re.compile(r"^stages\.(\d+)\.")


def official_to_bramley(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename an official apple/ml-mobileone state dict (fused or unfused) to bramley's names.

    A ``module.`` prefix (DataParallel/DDP checkpoints) is removed. Unknown top-level keys are an error.
    """

    def fn(key: str) -> str:
        key = key.removeprefix("module.")
        if key.startswith("stage0."):
            key = "stem." + key[len("stage0.") :]
        elif (m := _OFFICIAL_STAGE.match(key)) is not None:
            key = f"stages.{int(m.group(1)) - 1}." + key[m.end() :]
        elif key.startswith("linear."):
            return "fc." + key[len("linear.") :]
        else:
            raise CheckpointError(f"unexpected key {key!r} in an official MobileOne checkpoint")
        return _swap(key, _OFFICIAL_BRANCHES)

    return _rename(state, fn)


def bramley_to_official(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename a bramley MobileOne state dict to the official apple/ml-mobileone names."""

    def fn(key: str) -> str:
        if key.startswith("fc."):
            return "linear." + key[len("fc.") :]
        if key.startswith("stem."):
            key = "stage0." + key[len("stem.") :]
        elif (m := _OUR_STAGE.match(key)) is not None:
            key = f"stage{int(m.group(1)) + 1}." + key[m.end() :]
        return _swap(key, _OFFICIAL_BRANCHES, reverse=True)

    return _rename(state, fn)


def _expected_shapes(variant: str, fused: bool, num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_mobileone(variant, inference_mode=fused, num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def detect_variant(state: Mapping[str, torch.Tensor]) -> tuple[str, bool, int]:
    """Identify ``(variant, fused, num_classes)`` of a bramley-named MobileOne state dict by its keys and shapes."""
    fused = any(".reparam_conv." in k or k.startswith("reparam_conv.") for k in state)
    if "fc.weight" in state:
        num_classes = int(state["fc.weight"].shape[0])
    elif not any(k.startswith("fc.") for k in state):
        num_classes = 0
    else:
        raise CheckpointError("checkpoint has classifier keys but no fc.weight / linear.weight")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for variant in VARIANTS:
        if _expected_shapes(variant, fused, num_classes) == shapes:
            return variant, fused, num_classes
    stem = next((tuple(v.shape) for k, v in state.items() if k.startswith("stem.") and k.endswith("conv.weight")), None)
    raise CheckpointError(
        f"checkpoint ({len(state)} tensors, {'fused' if fused else 'unfused'}, stem conv {stem}) matches none of the "
        f"MobileOne variants {', '.join('s' + v[1:] for v in VARIANTS)}"
    )


def _read_torch_file(path: Path) -> Mapping:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types on foreign bytes (UnpicklingError, IndexError, ...)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load failed: {e})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors or len(tensors) != len(obj):
        bad = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))[:5]
        raise CheckpointError(f"{path} is not a MobileOne state dict (non-tensor entries: {bad or 'none, but empty'})")
    return tensors


def load_official_checkpoint(path: str | os.PathLike, variant: str | None = None) -> tuple[MobileOne, str, bool, int]:
    """Build the bramley model holding an official ``.pth.tar`` checkpoint (fused or unfused).

    Args:
        path: the official checkpoint (a state dict, optionally wrapped in ``{"state_dict": ...}``).
        variant: ``"s0"``..``"s4"``; detected from the tensor shapes when omitted, checked when given.

    Returns:
        ``(model, variant, fused, num_classes)``; the model is in eval mode.
    """
    state = official_to_bramley(_read_torch_file(Path(path)))
    detected, fused, num_classes = detect_variant(state)
    if variant is not None:
        variant = variant.removeprefix("mobileone_")
        if variant not in VARIANTS:
            raise CheckpointError(f"unknown MobileOne variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if variant != detected:
            raise CheckpointError(f"checkpoint {path} is MobileOne-{detected.upper()}, not {variant.upper()}")
    model = build_mobileone(detected, inference_mode=fused, num_classes=num_classes)
    model.load_state_dict(state, strict=True)
    model.model_config = {
        "name": f"mobileone_{detected}",
        "kwargs": {"inference_mode": fused, "num_classes": num_classes},
    }
    return model.eval(), detected, fused, num_classes
