"""State-dict maps between bramley FastViT, timm, the official apple/ml-fastvit code and MobileCLIP checkpoints.

Key layouts:

- **bramley** (this package): timm's names (``stem``, ``stages.{s}.downsample/pos_emb/blocks``, ``conv_kxk``,
  ``conv_scale``, ``identity``, ``large_conv``, ``mlp``, ``layer_scale.gamma``, ``final_conv``, ``head.fc``) except
  squeeze-excite convs, named ``se.reduce``/``se.expand`` (official MobileOne names; timm says ``se.fc1``/``se.fc2``).
- **timm**: as above with ``se.fc1``/``se.fc2`` (:func:`timm_to_bramley` / :func:`bramley_to_timm`); timm's
  classifier always has a bias, so the bias-free MCi head gets a zero one on the way to timm, which
  :func:`convert_official` drops again.
- **official FastViT** (``apple/ml-fastvit``, ``*.pth.tar`` with a ``state_dict`` wrapper): ``patch_embed``, a flat
  ``network.{N}`` list (stage blocks ``network.N.{i}``, downsampling ``network.N.proj``, RepCPE ``network.N.pe``),
  ``rbr_conv``/``rbr_scale``/``rbr_skip``, ``lkb_origin``/``lkb_reparam``, ``convffn``, bare ``layer_scale*``
  parameters, ``conv_exp``, ``head``. Fused (``*_reparam.pth.tar``) checkpoints hold ``reparam_conv``/``lkb_reparam``.
- **MobileCLIP** (``mobileclip_s{0,1,2}.pt``): the same FastViT names under ``image_encoder.model.`` (or under
  ``model.`` alone: the state dict of the official ``MCi`` module itself), squeeze-excite of the downsampling convs
  as timm's ``se.fc1``/``se.fc2``, and a bias-free projection ``head.proj`` of shape ``(in, out)`` applied after
  global pooling; it becomes the bias-free ``head.fc`` of the MCi variants with the transposed weight. The
  text-encoder entries of a full checkpoint are not part of the image tower and are reported as ignored.
- **open_clip**: timm names under ``visual.trunk.``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from bramley.core.convert import Converted, strip_prefix
from bramley.core.errors import CheckpointError

from .model import FASTVIT_CONFIGS

__all__ = [
    "bramley_to_official",
    "bramley_to_timm",
    "convert_official",
    "detect_variant",
    "official_to_bramley",
    "timm_to_bramley",
]

MOBILECLIP_PREFIX = "image_encoder.model."
MCI_PREFIX = "model."
OPEN_CLIP_PREFIX = "visual.trunk."

_TIMM_SE = (("se.fc1.", "se.reduce."), ("se.fc2.", "se.expand."))


def timm_to_bramley(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ``fastvit_*`` state dict -> bramley (only the squeeze-excite names differ)."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _TIMM_SE:
            key = key.replace(old, new)
        out[key] = value
    return out


def bramley_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bramley FastViT state dict -> timm ``fastvit_*`` (a bias-free head, MCi's, gets timm's zero bias)."""
    out = {}
    for key, value in state_dict.items():
        for new, old in _TIMM_SE:
            key = key.replace(old, new)
        out[key] = value
    weight = out.get("head.fc.weight")
    if weight is not None and "head.fc.bias" not in out:
        out["head.fc.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return out


# ---------------------------------------------------------------------------------------------- official -> bramley

_RENAMES = (
    ("rbr_conv.", "conv_kxk."),
    ("rbr_scale.", "conv_scale."),
    ("rbr_skip.", "identity."),
    ("lkb_origin.", "large_conv."),
    ("lkb_reparam.", "reparam_conv."),
    ("convffn.", "mlp."),
    ("se.fc1.", "se.reduce."),
    ("se.fc2.", "se.expand."),
)
_NETWORK = re.compile(r"^network\.(\d+)\.(.+)$")


def _network_role(rest: str) -> str:
    """What an official ``network.N`` entry is, from the key remainder after ``network.N.``."""
    if rest[0].isdigit():
        return "blocks"
    if rest.startswith("proj."):
        return "downsample"
    if rest.startswith(("pe.", "reparam_conv.")):
        return "pos_emb"
    raise CheckpointError(f"unrecognised official FastViT key 'network.*.{rest}'")


def _image_tower(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """``(tower, ignored, source)``: the image tower's tensors without their wrapper prefix, the keys outside the
    tower, and the layout (``mobileclip``, ``open_clip``, ``official`` or ``timm``)."""
    state_dict = strip_prefix(state_dict, "module.")
    for prefix, source in ((MOBILECLIP_PREFIX, "mobileclip"), (OPEN_CLIP_PREFIX, "open_clip")):
        if any(k.startswith(prefix) for k in state_dict):
            tower = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            return tower, [k for k in state_dict if not k.startswith(prefix)], source
    if state_dict and all(k.startswith(MCI_PREFIX) for k in state_dict):  # the official MCi module's own state dict
        return strip_prefix(state_dict, MCI_PREFIX), [], "mobileclip"
    return dict(state_dict), [], "official" if _official_names(state_dict) else "timm"


def _official_names(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("patch_embed.", "network.")) for k in state_dict)


def official_to_bramley(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an official FastViT or MobileCLIP image-tower state dict to bramley names.

    Args:
        state_dict: the official tensors (already unwrapped from ``{'state_dict': ...}``): an official FastViT
            classifier, a full MobileCLIP checkpoint (``image_encoder.model.*``) or an MCi module's (``model.*``).

    Returns:
        ``(converted, ignored)``: the bramley state dict and the keys that are not part of the image tower
        (MobileCLIP text encoder, ``logit_scale``). Anything else that cannot be placed raises.
    """
    items, ignored, _ = _image_tower(state_dict)

    # official network.N entries -> stages: a downsampling layer opens the next stage
    roles = {}
    for key in items:
        m = _NETWORK.match(key)
        if m:
            roles.setdefault(int(m.group(1)), _network_role(m.group(2)))
    stage_of, stage = {}, 0
    for index in sorted(roles):
        if roles[index] == "downsample" and index != min(roles):
            stage += 1
        stage_of[index] = stage

    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in items.items():
        m = _NETWORK.match(key)
        if m:
            index, rest = int(m.group(1)), m.group(2)
            role = roles[index]
            if role == "blocks":
                key = f"stages.{stage_of[index]}.blocks.{rest}"
            elif role == "downsample":
                key = f"stages.{stage_of[index]}.downsample.{rest}"
            else:
                rest = rest.replace("pe.", "pos_enc.", 1) if rest.startswith("pe.") else rest
                key = f"stages.{stage_of[index]}.pos_emb.{rest}"
        elif key.startswith("patch_embed."):
            key = "stem." + key[len("patch_embed.") :]
        elif key.startswith("conv_exp."):
            key = "final_conv." + key[len("conv_exp.") :]
        elif key == "head.proj":  # MobileCLIP: pooled features @ proj, proj is (in, out), no bias
            out["head.fc.weight"] = value.t().contiguous()
            continue
        elif key in ("head.weight", "head.bias"):
            key = "head.fc." + key.split(".")[1]
        else:
            unknown.append(key)
            continue
        for old, new in _RENAMES:
            key = key.replace(old, new)
        key = re.sub(r"(layer_scale(?:_[12])?)$", r"\1.gamma", key)
        out[key] = value
    if unknown:
        more = " ..." if len(unknown) > 10 else ""
        raise CheckpointError(
            f"{len(unknown)} keys are not part of an official FastViT classifier: {', '.join(unknown[:10])}{more}"
            " (detection/segmentation 'fork_feat' checkpoints with norm layers are not supported)"
        )
    return out, ignored


def bramley_to_official(state_dict: Mapping[str, torch.Tensor], mobileclip: bool = False) -> dict[str, torch.Tensor]:
    """bramley FastViT state dict -> the official layout (inverse of :func:`official_to_bramley`).

    With ``mobileclip`` the keys get the ``image_encoder.model.`` prefix, downsampling squeeze-excite uses timm names
    and the classifier becomes the bias-free ``head.proj`` (a head with a bias must hold zeros there).
    """
    stage_keys: dict[int, dict[str, list[str]]] = {}
    for key in state_dict:
        m = re.match(r"^stages\.(\d+)\.(downsample|pos_emb|blocks)\.", key)
        if m:
            stage_keys.setdefault(int(m.group(1)), {}).setdefault(m.group(2), []).append(key)
    index_of: dict[tuple[int, str], int] = {}
    n = 0
    for s in sorted(stage_keys):
        for role in ("downsample", "pos_emb", "blocks"):
            if role in stage_keys[s]:
                index_of[(s, role)] = n
                n += 1
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"^stages\.(\d+)\.(downsample|pos_emb|blocks)\.(.+)$", key)
        new = key
        if m:
            s, role, rest = int(m.group(1)), m.group(2), m.group(3)
            if role == "pos_emb":
                rest = rest.replace("pos_enc.", "pe.", 1)
            new = f"network.{index_of[(s, role)]}.{rest}"
        elif key.startswith("stem."):
            new = "patch_embed." + key[len("stem.") :]
        elif key.startswith("final_conv."):
            new = "conv_exp." + key[len("final_conv.") :]
        elif key.startswith("head.fc."):
            if mobileclip:
                if key.endswith("bias"):
                    if value.abs().max() > 0:
                        raise CheckpointError("MobileCLIP's projection has no bias; head.fc.bias must be zero")
                    continue
                new, value = "head.proj", value.t().contiguous()
            else:
                new = "head." + key[len("head.fc.") :]
        new = re.sub(r"(layer_scale(?:_[12])?)\.gamma$", r"\1", new)
        for old, repl in _RENAMES:
            if old.startswith("se.") or old == "lkb_reparam.":
                continue
            new = new.replace(repl, old)
        if ".proj.0." in new and "reparam_conv" in new:  # fused large-kernel conv of a downsampling layer
            new = new.replace(".proj.0.reparam_conv.", ".proj.0.lkb_reparam.")
        if mobileclip and ".proj.0.se." in new:
            new = new.replace("se.reduce.", "se.fc1.").replace("se.expand.", "se.fc2.")
        out[(MOBILECLIP_PREFIX if mobileclip else "") + new] = value
    return out


# -------------------------------------------------------------------------------------------- variant and loading


def _architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Layers, widths, MLP ratios, mixers and SE flags read off a bramley-named state dict."""
    stages = sorted({int(m.group(1)) for k in state_dict if (m := re.match(r"^stages\.(\d+)\.", k))})
    if not stages:
        raise CheckpointError("the state dict has no 'stages.*' entries: not a FastViT checkpoint")
    arch: dict[str, list] = {k: [] for k in ("layers", "embed_dims", "mlp_ratios", "token_mixers", "se_downsamples")}
    for s in stages:
        blocks = {int(m.group(1)) for k in state_dict if (m := re.match(rf"^stages\.{s}\.blocks\.(\d+)\.", k))}
        if not blocks:
            raise CheckpointError(f"stage {s} of the checkpoint has no blocks")
        fc1 = state_dict[f"stages.{s}.blocks.0.mlp.fc1.weight"]
        arch["layers"].append(len(blocks))
        arch["embed_dims"].append(fc1.shape[1])
        ratio = fc1.shape[0] / fc1.shape[1]
        arch["mlp_ratios"].append(int(ratio) if ratio.is_integer() else ratio)
        attention = f"stages.{s}.blocks.0.token_mixer.qkv.weight" in state_dict
        arch["token_mixers"].append("attention" if attention else "repmixer")
        arch["se_downsamples"].append(f"stages.{s}.downsample.proj.0.se.reduce.weight" in state_dict)
    return {k: tuple(v) for k, v in arch.items()}


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """The registered variant whose architecture matches a bramley-named state dict, and the factory kwargs it needs.

    Returns ``(name, kwargs)`` with ``num_classes``, ``inference_mode`` (fused checkpoints) and ``head_bias`` (when it
    differs from the variant's) set from the weights.
    """
    arch = _architecture(state_dict)
    for name, cfg in FASTVIT_CONFIGS.items():  # noqa: B007  (name is the result, used after the loop)
        ref = {
            "layers": tuple(cfg["layers"]),
            "embed_dims": tuple(cfg["embed_dims"]),
            "mlp_ratios": tuple(cfg["mlp_ratios"]),
            "token_mixers": tuple(cfg.get("token_mixers", ("repmixer",) * 4)),
            "se_downsamples": tuple(cfg.get("se_downsamples", (False,) * 4)),
        }
        if ref == arch:
            break
    else:
        raise CheckpointError(f"no registered FastViT variant has this architecture: {arch}")
    kwargs: dict[str, Any] = {}
    if "head.fc.weight" in state_dict:
        kwargs["num_classes"] = int(state_dict["head.fc.weight"].shape[0])
    else:
        kwargs["num_classes"] = 0
    if any("reparam_conv" in k for k in state_dict):
        kwargs["inference_mode"] = True
    bias = "head.fc.bias" in state_dict
    if kwargs["num_classes"] and bias != FASTVIT_CONFIGS[name].get("head_bias", True):
        kwargs["head_bias"] = bias
    return name, kwargs


def convert_official(
    state_dict: Mapping[str, torch.Tensor], model_name: str | None = None, **model_kwargs: Any
) -> Converted:
    """Convert an official FastViT / MobileCLIP (or timm / open_clip) image-tower state dict into a bramley one.

    Args:
        state_dict: the checkpoint's tensors (:func:`bramley.core.convert.load_official_file` reads a file).
        model_name: the bramley variant; detected from the weights when omitted.
        model_kwargs: extra factory kwargs (e.g. ``lkc_use_act``); ``num_classes``, ``inference_mode`` and
            ``head_bias`` are read from the weights.

    Returns:
        The converted tensors with the variant and kwargs that build a model accepting them strictly.
    """
    tower, ignored, source = _image_tower(state_dict)
    converted = official_to_bramley(tower)[0] if _official_names(tower) else timm_to_bramley(tower)
    if not any(k.startswith("stem.") for k in converted):
        raise CheckpointError("unrecognised checkpoint layout: no FastViT stem ('patch_embed.*' or 'stem.*') found")
    detected, kwargs = detect_variant(converted)
    if kwargs.get("head_bias") and not bool(converted["head.fc.bias"].any()):
        # timm's zero bias on MobileCLIP's bias-free projection: the variant's own (bias-free) head holds the rest
        del converted["head.fc.bias"], kwargs["head_bias"]
    if model_name is not None and model_name != detected:
        if FASTVIT_CONFIGS.get(model_name) is None:
            raise CheckpointError(f"unknown FastViT variant {model_name!r} (known: {', '.join(FASTVIT_CONFIGS)})")
        raise CheckpointError(f"the checkpoint holds a {detected} architecture, not {model_name}")
    kwargs.update(model_kwargs)
    return Converted(detected, kwargs, converted, ignored, source)
