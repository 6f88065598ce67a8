"""Official MRL checkpoints (RAIVNLab/MRL) -> ``mrl_resnet50``.

The official models are torchvision ResNet-50s whose ``fc`` is an ``MRL_Linear_Layer``: MRL keeps one linear layer
per nesting size, ``fc.nesting_classifier_{i}`` with ``nesting[i]`` inputs; MRL-E keeps only
``fc.nesting_classifier_0`` (``nesting[-1]`` inputs), sliced per size. They were trained with FFCV's BlurPool: each
strided convolution with at least 16 input channels sits in a wrapper as ``<name>.conv`` beside a constant
``<name>.blur_filter``. The weights were saved from a DistributedDataParallel model (``module.`` prefix).

timm's ResNet-50 (the backbone of ``mrl_resnet50``) names its tensors as torchvision does, so the backbone keys move
under ``backbone.`` unchanged and the head keys are renamed; BlurPool checkpoints give ``blurpool=True``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from bramley.core.convert import Converted, strip_prefix
from bramley.core.errors import CheckpointError, ConfigError

from .nesting import check_nesting, default_nesting

__all__ = ["convert_official"]

MODEL_NAME = "mrl_resnet50"
FEATURE_DIM = 2048
_HEAD = re.compile(r"fc\.(?:nesting_classifier_(\d+)\.)?(weight|bias)")  # fc.weight: the old MRL-E notation
_BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def convert_official(
    state_dict: Mapping[str, torch.Tensor],
    model_name: str | None = None,
    nesting: Sequence[int] | None = None,
    efficient: bool = False,
) -> Converted:
    """An official MRL / MRL-E ResNet-50 state dict in ``mrl_resnet50``'s terms.

    Args:
        state_dict: the official tensors (a DDP ``module.`` prefix is removed).
        model_name: ``mrl_resnet50`` (the only official architecture) or ``None``.
        nesting: the nesting sizes. MRL checkpoints carry them (each head's input width) and a given list must
            agree; an MRL-E head cannot tell: default ``8, 16, ..., 2048``, the official one.
        efficient: read a plain ``fc`` head as MRL-E: the official repo's "old notation" (its released MRL-E
            weights), which the keys cannot tell from a fixed-feature baseline.

    Raises:
        CheckpointError: the state dict is not an official MRL ResNet-50 (once the head is recognised, the model's
            loader lists any missing and unexpected keys).
        ConfigError: another model name, or options that do not fit the checkpoint.
    """
    if model_name is not None and model_name != MODEL_NAME:
        raise ConfigError(f"official MRL checkpoints are ResNet-50s: the model is {MODEL_NAME}, not {model_name!r}")
    state = strip_prefix(state_dict, "module.")
    heads: dict[int, dict[str, torch.Tensor]] = {}
    converted: dict[str, torch.Tensor] = {}
    blurpool = False
    for key, tensor in state.items():
        head = _HEAD.fullmatch(key)
        if head is not None:
            heads.setdefault(int(head.group(1) or 0), {})[head.group(2)] = tensor
        elif key.endswith(".blur_filter"):
            _check_blur_filter(key, tensor)
            blurpool = True
        else:
            converted[f"backbone.{key}"] = tensor
    old_notation = "fc.weight" in state
    if old_notation and any(k.startswith("fc.nesting_classifier_") for k in state):
        raise CheckpointError("the checkpoint has both a plain fc head and fc.nesting_classifier_<i> heads")
    if old_notation and not efficient:
        raise CheckpointError(
            "the checkpoint has a plain fc head, not fc.nesting_classifier_<i>: a fixed-feature baseline, or MRL-E in "
            "the official repo's old notation (convert that with --efficient)"
        )
    if not heads:
        raise CheckpointError("not an official MRL checkpoint: no fc.nesting_classifier_<i> heads")
    if sorted(heads) != list(range(len(heads))) or any("weight" not in h for h in heads.values()):
        raise CheckpointError(f"official MRL heads must be fc.nesting_classifier_0..{len(heads) - 1} with weights")
    widths = [heads[i]["weight"].shape[1] for i in range(len(heads))]
    efficient = efficient or widths == [FEATURE_DIM]  # one head as wide as the features: MRL-E
    if efficient:
        if len(heads) > 1:
            raise ConfigError(f"--efficient: the checkpoint has {len(heads)} heads, an MRL (not MRL-E) layout")
        nesting = check_nesting(nesting if nesting is not None else default_nesting(FEATURE_DIM), FEATURE_DIM)
        names = ["head.shared"]
    else:
        if nesting is not None and list(nesting) != widths:
            raise ConfigError(f"nesting {list(nesting)} does not match the checkpoint's heads, sized {widths}")
        nesting = check_nesting(widths, FEATURE_DIM, name="the checkpoint's head sizes")
        names = [f"head.heads.{i}" for i in range(len(heads))]
    for i, name in enumerate(names):
        converted.update({f"{name}.{kind}": tensor for kind, tensor in heads[i].items()})
    kwargs = {
        "num_classes": heads[0]["weight"].shape[0],
        "nesting": nesting,
        "efficient": efficient,
        "blurpool": blurpool,
    }
    layout = "official MRL-E (old notation)" if old_notation else f"official {'MRL-E' if efficient else 'MRL'}"
    return Converted(MODEL_NAME, kwargs, converted, source=layout)


def _check_blur_filter(key: str, tensor: torch.Tensor) -> None:
    """BlurPool filters are constants of the architecture: anything but FFCV's binomial filter is another model."""
    if tensor.ndim != 4 or tuple(tensor.shape[1:]) != (1, 3, 3) or not torch.allclose(tensor.float(), _BLUR):
        raise CheckpointError(f"{key} is not FFCV's 3x3 binomial BlurPool filter: not an official MRL checkpoint")
