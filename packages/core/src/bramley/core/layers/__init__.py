"""Shared building blocks of bramley models."""

from .reparam import (
    ConvNorm,
    MobileOneBlock,
    SqueezeExcite,
    fuse_conv_bn,
    identity_kernel,
    pad_kernel,
    reparameterize_model,
)

__all__ = [
    "ConvNorm",
    "MobileOneBlock",
    "SqueezeExcite",
    "fuse_conv_bn",
    "identity_kernel",
    "pad_kernel",
    "reparameterize_model",
]
