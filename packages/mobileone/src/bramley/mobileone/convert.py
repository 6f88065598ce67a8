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

:func:`convert_official` is the converter of the ``convert`` command (``bramley-mobileone convert SRC --out DIR``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from bramley.core.convert import Converted
from bramley.core.errors import CheckpointError, ConfigError

from .model import VARIANTS, build_mobileone

__all__ = [
    "bramley_to_official",
    "bramley_to_timm",
    "convert_official",
    "detect_variant",
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

    Unknown top-level keys are an error. (A DDP ``module.`` prefix and a ``{"state_dict": ...}`` wrapper are removed
    when the file is read, by :func:`bramley.core.convert.load_official_file`.)
    """

    def fn(key: str) -> str:
        if key.startswith("stage0."):
            key = "stem." + key[len("stage0.") :]
        elif (m := _OFFICIAL_STAGE.match(key)) is not None:
            key = f"stages.{int(m.group(1)) - 1}." + key[m.end() :]
        elif key.startswith("linear."):
            return "fc." + key[len("linear.") :]
        elif key.startswith(("stem.", "stages.")):
            raise CheckpointError(
                f"key {key!r} has bramley's / timm's names, not the official ones: a bramley checkpoint loads as it is "
                "(--checkpoint), a timm one converts with bramley.mobileone.convert.timm_to_bramley"
            )
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


def convert_official(state_dict: Mapping[str, torch.Tensor], model_name: str | None = None) -> Converted:
    """An official apple/ml-mobileone state dict (fused or unfused, read with
    :func:`bramley.core.convert.load_official_file`) in bramley's terms.

    Args:
        state_dict: the official tensors (``stage0.``, ``stage1.``, ..., ``linear.`` keys).
        model_name: the expected model (``"mobileone_s1"``); by default the variant is detected.

    Returns:
        The :class:`~bramley.core.convert.Converted` model: variant, fused or not (``inference_mode``) and
        ``num_classes`` read from the tensor shapes.

    Raises:
        CheckpointError: a key outside the official layout, shapes of no MobileOne variant, or another variant than
            ``model_name``.
        ConfigError: ``model_name`` is not a MobileOne model.
    """
    state = official_to_bramley(state_dict)
    variant, fused, num_classes = detect_variant(state)
    name = f"mobileone_{variant}"
    if model_name is not None and model_name != name:
        names = [f"mobileone_{v}" for v in VARIANTS]
        if model_name not in names:
            raise ConfigError(f"unknown MobileOne model {model_name!r}; choose one of {', '.join(names)}")
        raise CheckpointError(f"the checkpoint holds {name} ({'fused' if fused else 'unfused'}), not {model_name}")
    return Converted(name, {"inference_mode": fused, "num_classes": num_classes}, state)
