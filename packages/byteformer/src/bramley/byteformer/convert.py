"""corenet ByteFormer checkpoints -> bramley ByteFormer (``bramley byteformer convert``).

apple/corenet's ByteFormer (``corenet/modeling/models/classification/byteformer.py``; the audio model
``AudioByteFormer`` subclasses it and has the same parameters) names its tensors::

    embeddings.weight                          (257, dim)         -> embeddings.weight
    token_reduction_net.weight                 (dim, dim, k)      -> token_reduction.weight
    pos_embed.pos_embed.pos_embed              (1, 1, N, dim)     -> pos_embed (N, dim)
    transformer.{i}.pre_norm_mha.0.*           LayerNorm          -> blocks.{i}.norm1.*
    transformer.{i}.pre_norm_mha.1.qkv_proj.*  (3 dim, dim)       -> blocks.{i}.attn.qkv.*   (rows q, k, v; heads)
    transformer.{i}.pre_norm_mha.1.out_proj.*                     -> blocks.{i}.attn.proj.*
    transformer.{i}.pre_norm_ffn.0.*           LayerNorm          -> blocks.{i}.norm2.*
    transformer.{i}.pre_norm_ffn.1.*           (4 dim, dim)       -> blocks.{i}.mlp.fc1.*
    transformer.{i}.pre_norm_ffn.4.*           (dim, 4 dim)       -> blocks.{i}.mlp.fc2.*
    downsamplers.downsample_{i}.reduction.weight (dim, 2 dim)     -> downsamplers.{i}.reduction.weight (columns
                                                                     permuted: corenet pairs tokens channel-major)
    downsamplers.downsample_{i}.norm.*                            -> downsamplers.{i}.norm.*
    post_transformer_norm.*                                       -> norm.*
    classifier.*                               (classes, dim)     -> head.*

The variant, depth, conv kernel, position-table size, MLP width, token-merging blocks and classes are read from the
tensors. Attention heads follow from the width (corenet's modes: tiny 192 / 3, small 384 / 6, base 768 / 12).
Window sizes and shifts are not stored: every corenet ByteFormer config uses the default shifts (0, 64, 0, 64, ...)
and windows of 128 tokens except the Speech Commands MP3 / JPEG q60 ``window_sizes=[32]`` ones (``window_size=32``).
A shift of 64 on windows of 32 gives the same windows as no shift, so shifts are taken modulo the window.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from bramley.core.convert import Converted
from bramley.core.errors import CheckpointError, ConfigError

__all__ = ["CORENET_MODES", "bramley_to_official", "convert_official", "official_to_bramley"]

#: corenet's ByteFormer modes by width: (bramley variant, attention heads); ``huge`` (1280) has no bramley variant.
CORENET_MODES = {192: ("byteformer_tiny", 3), 384: ("byteformer_small", 6), 768: ("byteformer_base", 12)}
#: corenet's default ``window_shifts`` pattern (0, 64, 0, 64, ...), one entry per block.
CORENET_SHIFTS = (0, 64)

_TOP = {
    "embeddings.weight": "embeddings.weight",
    "token_reduction_net.weight": "token_reduction.weight",
    "pos_embed.pos_embed.pos_embed": "pos_embed",
    "post_transformer_norm.weight": "norm.weight",
    "post_transformer_norm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
_REQUIRED = ("embeddings.weight", "token_reduction_net.weight", "pos_embed.pos_embed.pos_embed", "classifier.weight")
_BLOCK = {
    "pre_norm_mha.0": "norm1",
    "pre_norm_mha.1.qkv_proj": "attn.qkv",
    "pre_norm_mha.1.out_proj": "attn.proj",
    "pre_norm_ffn.0": "norm2",
    "pre_norm_ffn.1": "mlp.fc1",
    "pre_norm_ffn.4": "mlp.fc2",
}
_DOWNSAMPLE = {"reduction": "reduction", "norm": "norm"}
_OFFICIAL_BLOCK = re.compile(r"transformer\.(\d+)\.(.+)\.(weight|bias)")
_OFFICIAL_DOWNSAMPLE = re.compile(r"downsamplers\.downsample_(\d+)\.(.+)\.(weight|bias)")
_BRAMLEY_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")
_BRAMLEY_DOWNSAMPLE = re.compile(r"downsamplers\.(\d+)\.(.+)\.(weight|bias)")


def _pairs_to_bramley(weight: torch.Tensor) -> torch.Tensor:
    """Token merging's ``Linear(2 dim, dim)``: corenet's input column ``2 c + j`` is bramley's ``j dim + c``."""
    out, twice = weight.shape
    return weight.reshape(out, twice // 2, 2).transpose(1, 2).reshape(out, twice)


def _pairs_to_corenet(weight: torch.Tensor) -> torch.Tensor:
    out, twice = weight.shape
    return weight.reshape(out, 2, twice // 2).transpose(1, 2).reshape(out, twice)


def official_to_bramley(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and reshape where the layouts differ) a corenet ByteFormer state dict to bramley's names.

    Raises:
        CheckpointError: a key that is not part of corenet's ByteFormer, naming it.
    """
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key in _TOP:
            new = _TOP[key]
            value = value.reshape(value.shape[-2], value.shape[-1]) if new == "pos_embed" else value
        elif (m := _OFFICIAL_BLOCK.fullmatch(key)) and m.group(2) in _BLOCK:
            new = f"blocks.{m.group(1)}.{_BLOCK[m.group(2)]}.{m.group(3)}"
        elif (m := _OFFICIAL_DOWNSAMPLE.fullmatch(key)) and m.group(2) in _DOWNSAMPLE:
            new = f"downsamplers.{m.group(1)}.{_DOWNSAMPLE[m.group(2)]}.{m.group(3)}"
            value = _pairs_to_bramley(value) if m.group(2) == "reduction" else value
        else:
            unknown.append(key)
            continue
        out[new] = value
    if unknown:
        more = " ..." if len(unknown) > 5 else ""
        raise CheckpointError(f"keys that corenet's ByteFormer does not have: {', '.join(unknown[:5])}{more}")
    return out


def bramley_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`official_to_bramley`: bramley ByteFormer tensors under corenet's names and layouts."""
    top = {v: k for k, v in _TOP.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out = {}
    for key, value in state_dict.items():
        if key in top:
            new = top[key]
            value = value.reshape(1, 1, *value.shape) if key == "pos_embed" else value
        elif (m := _BRAMLEY_BLOCK.fullmatch(key)) and m.group(2) in block:
            new = f"transformer.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}"
        elif (m := _BRAMLEY_DOWNSAMPLE.fullmatch(key)) and m.group(2) in _DOWNSAMPLE:
            new = f"downsamplers.downsample_{m.group(1)}.{m.group(2)}.{m.group(3)}"
            value = _pairs_to_corenet(value) if m.group(2) == "reduction" else value
        else:
            raise CheckpointError(f"{key!r} is not a parameter of bramley's ByteFormer")
        out[new] = value
    return out


def convert_official(
    state_dict: Mapping[str, torch.Tensor], model_name: str | None = None, window_size: int = 128
) -> Converted:
    """A corenet ByteFormer state dict (image or audio classifier) as a bramley ByteFormer.

    Args:
        state_dict: corenet's tensors (unwrapped, ``module.`` removed: :func:`bramley.core.convert.load_official_file`).
        model_name: the expected bramley variant (default: from the width).
        window_size: the attention window of the corenet config (its ``window_sizes``; not stored in the weights).

    Raises:
        CheckpointError: not a corenet ByteFormer, a width with no bramley variant, or not ``model_name``.
        ConfigError: ``window_size`` < 1.
    """
    for key in _REQUIRED:
        if key not in state_dict:
            raise CheckpointError(f"not a corenet ByteFormer checkpoint: no {key!r}")
    vocab, dim = state_dict["embeddings.weight"].shape
    if vocab != 257:
        raise CheckpointError(f"corenet vocab_size {vocab}: bramley's ByteFormer embeds 256 bytes + 1 mask token (257)")
    if dim not in CORENET_MODES:
        widths = ", ".join(f"{w} ({n})" for w, (n, _) in CORENET_MODES.items())
        raise CheckpointError(f"corenet ByteFormer of width {dim} has no bramley variant (widths: {widths})")
    name, heads = CORENET_MODES[dim]
    if model_name is not None and model_name != name:
        raise CheckpointError(f"the checkpoint is a {name} (width {dim}), not {model_name}")
    if window_size < 1:
        raise ConfigError(f"window_size must be >= 1, got {window_size}")
    blocks = sorted({int(m.group(1)) for k in state_dict if (m := _OFFICIAL_BLOCK.fullmatch(k))})
    if blocks != list(range(len(blocks))) or not blocks:
        raise CheckpointError(f"corenet transformer blocks must be numbered 0..n-1, found {blocks[:20]}")
    depth = len(blocks)
    merged = {int(m.group(1)) for k in state_dict if (m := _OFFICIAL_DOWNSAMPLE.fullmatch(k))}
    kwargs = {
        "num_classes": int(state_dict["classifier.weight"].shape[0]),
        "depth": depth,
        "num_heads": heads,
        "conv_kernel_size": int(state_dict["token_reduction_net.weight"].shape[-1]),
        "window_sizes": [window_size],
        "window_shifts": [CORENET_SHIFTS[i % 2] % window_size for i in range(depth)],
        "downsample": [i in merged for i in range(depth)],
        "max_num_tokens": int(state_dict["pos_embed.pos_embed.pos_embed"].shape[-2]),
    }
    fc1 = state_dict.get("transformer.0.pre_norm_ffn.1.weight")
    if fc1 is not None and fc1.shape[0] != 4 * dim:
        kwargs["mlp_ratio"] = fc1.shape[0] / dim
    return Converted(name, kwargs, official_to_bramley(state_dict), source="corenet")
