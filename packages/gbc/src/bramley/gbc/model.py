"""GBC-CLIP: a CLIP model (core's :class:`~bramley.core.layers.clip.CLIP`) whose text tower also reads whole graphs
with structure-induced attention.

The image tower is any registered bramley model or any timm model, built with ``num_classes=embed_dim`` (its head
is the image projection); the text tower is core's :class:`~bramley.core.layers.clip.TextTransformer` (open_clip's
CLIP text transformer). :meth:`GbcClip.encode_graphs` runs the same text weights over packed graphs under the SIA
mask (:mod:`bramley.gbc.sia`); a caption alone goes through ``encode_text`` as in any CLIP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.layers.clip import CLIP, TextTransformer
from bramley.core.registry import ExampleInputs, register_model

from .sia import PackedBatch, sia_encode

__all__ = ["GbcClip", "build_image_tower", "gbc_clip"]


def build_image_tower(name: str, embed_dim: int, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A registered bramley model if ``name`` is one, else ``timm.create_model(name)``; ``num_classes=embed_dim``."""
    from bramley.core.registry import create_model, list_models

    kwargs = dict(kwargs or {})
    if name in list_models():
        return create_model(name, num_classes=embed_dim, **kwargs)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=embed_dim, **kwargs)


class GbcClip(CLIP):
    """CLIP with :meth:`encode_graphs` (SIA over packed graphs); ``forward`` is CLIP's."""

    def encode_graphs(self, batch: PackedBatch, normalize: bool = False) -> torch.Tensor:
        """Embeddings ``(captions, embed_dim)`` of every caption of the batch's graphs under their SIA masks."""
        features = sia_encode(self.text, batch)
        return F.normalize(features, dim=-1) if normalize else features


def _example_inputs() -> ExampleInputs:
    tokens = torch.randint(1, 1000, (2, 8))
    tokens[:, -1] = 49407  # end of text, the pooled token
    return (torch.randn(2, 3, 32, 32), tokens), {}


@register_model(example_inputs=_example_inputs, description="GBC-CLIP: any image tower + CLIP text tower with SIA")
def gbc_clip(
    embed_dim: int = 64,
    image_model: str = "vit_tiny_patch16_224",
    image_kwargs: Mapping[str, Any] | None = None,
    context_length: int = 77,
    vocab_size: int = 49408,
    text_width: int = 64,
    text_heads: int = 2,
    text_layers: int = 2,
    causal: bool = True,
) -> GbcClip:
    """GBC-CLIP; the defaults are a tiny model for CPU runs (a 32 px, 3-block ViT and a 2-block text tower).

    Args:
        embed_dim: the shared embedding width.
        image_model: a bramley or timm model name; ``image_kwargs`` are its factory arguments.
        context_length, vocab_size, text_width, text_heads, text_layers, causal: the text tower
            (:class:`~bramley.core.layers.clip.TextTransformer`; CLIP's BPE has 49408 ids).
    """
    if image_kwargs is None and image_model == "vit_tiny_patch16_224":
        image_kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 2}
    visual = build_image_tower(image_model, embed_dim, image_kwargs)
    text = TextTransformer(
        context_length=context_length,
        vocab_size=vocab_size,
        width=text_width,
        heads=text_heads,
        layers=text_layers,
        output_dim=embed_dim,
        causal=causal,
    )
    return GbcClip(visual, text)
