"""State-dict maps between bramley MobileCLIP, open_clip's ``MobileCLIP-*`` and the official apple/ml-mobileclip code.

Key layouts:

- **bramley**: ``visual.*`` (bramley-fastvit MCi names, or timm's ViT names for B), ``text.*`` (core's
  :class:`~bramley.core.layers.clip.TextTransformer`: ``token_embedding``, ``positional_embedding``, ``blocks.{i}``,
  ``ln_final``, ``text_projection``; S0's RepMixer blocks ``blocks.{0,5}.token_mixer/mlp/layer_scale``),
  ``logit_scale``.
- **open_clip** (``CustomTextCLIP``): ``visual.trunk.*`` (timm names; the MCi head carries timm's zero bias),
  ``text.*`` (open_clip's ``TextTransformer``, see :func:`bramley.core.layers.clip.text_from_open_clip`),
  ``logit_scale``.
- **official** (``mobileclip_s{0,1,2}.pt``, ``mobileclip_b.pt``): ``image_encoder.model.*`` (FastViT names, handled by
  :func:`bramley.fastvit.convert.convert_official`), ``text_encoder.*``: ``embedding_layer``,
  ``positional_embedding.pos_embed.pos_embed`` ``(1, 1, 77, 512)``, ``transformer.{i}.pre_norm_mha.{0: norm, 1:
  qkv_proj/out_proj}``, ``transformer.{i}.pre_norm_ffn.{0: norm, 1: fc1, 4: fc2}``, ``final_layer_norm``,
  ``projection_layer``; the RepMixer blocks hold ``token_mixer.{norm,mixer}.rbr_skip``,
  ``token_mixer.mixer.rbr_conv.0`` (no ``rbr_scale``: the official block adds none for a ``(1, k)`` kernel),
  ``convffn.conv.conv/bn``, ``convffn.fc1/fc2`` and ``(dim, 1, 1)`` layer scales, as ``Conv2d`` kernels
  ``(dim, 1, 1, k)`` that are our ``Conv1d`` kernels with an extra unit axis. Fused official checkpoints hold
  ``token_mixer.reparam_conv``. MobileCLIP-B's official ViT names are not mapped: convert its open_clip checkpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from bramley.core.convert import Converted, strip_prefix
from bramley.core.errors import CheckpointError
from bramley.core.layers.clip import text_from_open_clip, text_to_open_clip

__all__ = ["bramley_to_open_clip", "convert_official", "official_text_to_bramley", "open_clip_to_bramley"]

_MCI_TO_MODEL = {"fastvit_mci0": "mobileclip_s0", "fastvit_mci1": "mobileclip_s1", "fastvit_mci2": "mobileclip_s2"}

_OFFICIAL_TEXT = (
    (r"^embedding_layer\.", "token_embedding."),
    (r"^transformer\.(\d+)\.pre_norm_mha\.0\.", r"blocks.\1.ln_1."),
    (r"^transformer\.(\d+)\.pre_norm_mha\.1\.qkv_proj\.", r"blocks.\1.attn.qkv."),
    (r"^transformer\.(\d+)\.pre_norm_mha\.1\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^transformer\.(\d+)\.pre_norm_ffn\.0\.", r"blocks.\1.ln_2."),
    (r"^transformer\.(\d+)\.pre_norm_ffn\.1\.", r"blocks.\1.mlp.fc1."),
    (r"^transformer\.(\d+)\.pre_norm_ffn\.4\.", r"blocks.\1.mlp.fc2."),
    (r"^transformer\.(\d+)\.token_mixer\.norm\.rbr_skip\.", r"blocks.\1.token_mixer.norm."),
    (r"^transformer\.(\d+)\.token_mixer\.mixer\.rbr_skip\.", r"blocks.\1.token_mixer.identity."),
    (r"^transformer\.(\d+)\.token_mixer\.mixer\.rbr_conv\.0\.", r"blocks.\1.token_mixer.conv_kxk."),
    (
        r"^transformer\.(\d+)\.token_mixer\.(layer_scale|reparam_conv\.weight|reparam_conv\.bias)$",
        r"blocks.\1.token_mixer.\2",
    ),
    (r"^transformer\.(\d+)\.convffn\.", r"blocks.\1.mlp."),
    (r"^transformer\.(\d+)\.layer_scale$", r"blocks.\1.layer_scale"),
    (r"^final_layer_norm\.", "ln_final."),
    (r"^projection_layer$", "text_projection"),
)


def official_text_to_bramley(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official ``text_encoder.*`` tensors (prefix removed) under core ``TextTransformer`` names.

    Raises:
        CheckpointError: a key that is not part of the official text encoder (e.g. a second RepMixer conv branch).
    """
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key == "positional_embedding.pos_embed.pos_embed":
            out["positional_embedding"] = value.reshape(value.shape[-2], value.shape[-1])
            continue
        for pattern, repl in _OFFICIAL_TEXT:
            new = re.sub(pattern, repl, key)
            if new != key:
                break
        else:
            unknown.append(key)
            continue
        if value.dim() == 4:  # RepMixer-block Conv2d (out, in, 1, k) on (B, C, 1, L) -> Conv1d (out, in, k)
            value = value.squeeze(2)
        elif new.endswith("layer_scale"):  # (dim, 1, 1) -> (dim, 1)
            value = value.reshape(-1, 1)
        out[new] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} keys are not part of an official MobileCLIP text encoder: {unknown[:5]}")
    return out


def _has_mct(text: Mapping[str, torch.Tensor]) -> bool:
    return any(".token_mixer." in k for k in text)


def _image_part(tower: dict[str, torch.Tensor], layout: str) -> tuple[str, dict[str, torch.Tensor], bool]:
    """``(model_name, tensors, fused)`` of the image tower (``visual.trunk``/``image_encoder.model`` removed)."""
    if any(k.startswith("patch_embed.backbone") or k.startswith("blocks.") for k in tower):
        if layout == "official":
            raise CheckpointError(
                "official MobileCLIP-B ViT names are not mapped; convert the open_clip release of MobileCLIP-B"
            )
        return "mobileclip_b", tower, False
    from bramley.fastvit.convert import convert_official as convert_fastvit

    prefix = "image_encoder.model." if layout == "official" else "visual.trunk."
    converted = convert_fastvit({prefix + k: v for k, v in tower.items()})
    if converted.model_name not in _MCI_TO_MODEL:
        raise CheckpointError(f"the image tower is a {converted.model_name}, not an MCi0/1/2 MobileCLIP tower")
    extra = set(converted.model_kwargs) - {"num_classes", "inference_mode"}
    if extra or converted.model_kwargs.get("num_classes", 512) != 512:
        raise CheckpointError(f"the image tower differs from MobileCLIP's ({converted.model_kwargs})")
    return _MCI_TO_MODEL[converted.model_name], converted.state_dict, bool(converted.model_kwargs.get("inference_mode"))


def open_clip_to_bramley(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``MobileCLIP-*`` state dict -> bramley (the MCi head's zero bias dropped, a non-zero one refused)."""
    return _convert(state_dict, "open_clip")[0]


def _convert(
    state_dict: Mapping[str, torch.Tensor], layout: str
) -> tuple[dict[str, torch.Tensor], str, bool, list[str]]:
    image_prefix, text_prefix = (
        ("image_encoder.model.", "text_encoder.") if layout == "official" else ("visual.trunk.", "text.")
    )
    tower = {k[len(image_prefix) :]: v for k, v in state_dict.items() if k.startswith(image_prefix)}
    text = {k[len(text_prefix) :]: v for k, v in state_dict.items() if k.startswith(text_prefix)}
    if not tower or not text or "logit_scale" not in state_dict:
        raise CheckpointError(
            f"a {layout} MobileCLIP checkpoint needs '{image_prefix}*', '{text_prefix}*' and 'logit_scale' entries"
        )
    ignored = [k for k in state_dict if not k.startswith((image_prefix, text_prefix)) and k != "logit_scale"]
    name, image, fused = _image_part(tower, layout)
    text = official_text_to_bramley(text) if layout == "official" else text_from_open_clip(text)
    if _has_mct(text) != (name == "mobileclip_s0"):
        raise CheckpointError(
            f"the image tower says {name} but the text tower is {'MCt' if _has_mct(text) else 'a transformer'}"
        )
    text_fused = any(k.endswith("token_mixer.reparam_conv.weight") for k in text)
    if name == "mobileclip_s0" and text_fused != fused:
        raise CheckpointError("the image tower and the text RepMixers must be both fused or both unfused")
    out = {"visual." + k: v for k, v in image.items()} | {"text." + k: v for k, v in text.items()}
    out["logit_scale"] = state_dict["logit_scale"].reshape(())
    return out, name, fused, ignored


def bramley_to_open_clip(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """bramley MobileCLIP-S1/S2/B state dict -> open_clip's ``CustomTextCLIP`` names (an MCi head gets timm's zero
    bias)."""
    image = {k[len("visual.") :]: v for k, v in state_dict.items() if k.startswith("visual.")}
    text = {k[len("text.") :]: v for k, v in state_dict.items() if k.startswith("text.")}
    if "stem.0.conv_kxk.0.conv.weight" in image or any(k.startswith("stages.") for k in image):
        from bramley.fastvit.convert import bramley_to_timm

        image = bramley_to_timm(image)
    out = {"visual.trunk." + k: v for k, v in image.items()} | text_to_open_clip(text, prefix="text.")
    out["logit_scale"] = state_dict["logit_scale"]
    return out


def convert_official(
    state_dict: Mapping[str, torch.Tensor], model_name: str | None = None, **model_kwargs: Any
) -> Converted:
    """An official (``image_encoder.*`` / ``text_encoder.*``) or open_clip (``visual.trunk.*`` / ``text.*``)
    MobileCLIP checkpoint as a bramley one; the variant (S0/S1/S2/B) and fusion are read from the weights.

    S1/S2 and B are told apart by their image tower; causal masking is not in the weights: B is causal, S* are not.
    """
    state_dict = strip_prefix(state_dict, "module.")
    if any(k.startswith("text_encoder.") for k in state_dict):
        layout = "official"
    elif any(k.startswith("text.") for k in state_dict):
        layout = "open_clip"
    else:
        raise CheckpointError(
            "not a MobileCLIP checkpoint: no 'text_encoder.*' (official) or 'text.*' (open_clip) keys"
        )
    converted, name, fused, ignored = _convert(state_dict, layout)
    if model_name is not None and model_name != name:
        raise CheckpointError(f"the checkpoint holds a {name} architecture, not {model_name}")
    kwargs = {"inference_mode": True} if fused else {}
    return Converted(name, {**kwargs, **model_kwargs}, converted, ignored, layout)
