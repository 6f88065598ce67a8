"""Shared building blocks of bramley models: reparameterizable conv blocks and transformer layers."""

from .checks import check_image_batch, is_traced
from .drop import DropPath
from .layer_scale import LayerScale, LayerScale2d
from .layout import channels_last_inference
from .reparam import (
    ConvNorm,
    MobileOneBlock,
    SqueezeExcite,
    fuse_conv_bn,
    identity_kernel,
    pad_kernel,
    reparameterize_model,
)
from .sliceable import (
    SliceableAttention,
    SliceableLinear,
    SliceableMlp,
    SliceableSwiGLU,
    WidthLayerNorm,
    check_widths,
    slice_linear,
    width_channels,
)
from .transformer import Attention, Mlp, RMSNorm, RotaryEmbedding, SwiGLU, apply_rotary, rotate_half

__all__ = [
    "Attention",
    "ConvNorm",
    "DropPath",
    "LayerScale",
    "LayerScale2d",
    "Mlp",
    "MobileOneBlock",
    "RMSNorm",
    "RotaryEmbedding",
    "SliceableAttention",
    "SliceableLinear",
    "SliceableMlp",
    "SliceableSwiGLU",
    "SqueezeExcite",
    "SwiGLU",
    "WidthLayerNorm",
    "apply_rotary",
    "channels_last_inference",
    "check_image_batch",
    "check_widths",
    "fuse_conv_bn",
    "identity_kernel",
    "is_traced",
    "pad_kernel",
    "reparameterize_model",
    "rotate_half",
    "slice_linear",
    "width_channels",
]
