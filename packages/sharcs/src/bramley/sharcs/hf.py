"""SHARCS on Hugging Face transformers BERT / RoBERTa sequence classifiers built from a config (no download).

The paper's own setting (RoBERTa-base / BERT-base on GLUE). Every layer runs the Hugging Face modules' own weights
(``query``, ``key``, ``value``, ``attention.output.dense``, ``intermediate.dense``, ``output.dense``, the pooler or
classification head) through :func:`~bramley.core.layers.sliceable.slice_linear`; the LayerNorms of the layers after
the router become one norm per width. BERT is post-norm, so after the router cuts the residual stream to its first
``w * hidden`` channels a per-width LayerNorm renormalises it (the official ``LayerNorm_<w>`` after the dimension
reduction); at full width nothing is cut and no norm is added, so width 1 computes exactly the Hugging Face model.
The router averages the non-padding tokens (``attention_mask``) in training and in evaluation alike.

Needs the ``hf`` extra: ``pip install bramley-sharcs[hf]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.errors import ConfigError
from bramley.core.layers.sliceable import WidthLayerNorm, slice_linear, width_channels
from bramley.core.registry import register_model

from .model import Router, SharcsModel, check_router_layer, check_sharcs_widths

__all__ = ["SharcsHF", "sharcs_hf"]

MODEL_TYPES = ("bert", "roberta")


def _build_hf(model_type: str, config: Mapping[str, Any], num_classes: int) -> nn.Module:
    try:
        import transformers
    except ImportError:  # pragma: no cover - the hf extra is installed in the dev group
        raise ConfigError("SHARCS on BERT/RoBERTa needs transformers: pip install bramley-sharcs[hf]") from None
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    config_cls = transformers.BertConfig if model_type == "bert" else transformers.RobertaConfig
    model_cls = (
        transformers.BertForSequenceClassification
        if model_type == "bert"
        else transformers.RobertaForSequenceClassification
    )
    try:
        hf_config = config_cls(**dict(config), num_labels=num_classes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad {model_type} config: {e}") from None
    return model_cls(hf_config)


class SharcsHF(SharcsModel):
    """SHARCS on a Hugging Face BERT / RoBERTa sequence classifier with random weights, from a config.

    Inputs are a mapping ``{"input_ids": (B, N), "attention_mask": (B, N), "token_type_ids": (B, N) optional}``.

    Args:
        model_type: ``"bert"`` or ``"roberta"``.
        config: the Hugging Face config fields (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
            ``intermediate_size``, ``vocab_size``, ...); defaults are the base models'.
        num_classes: labels.
        widths: ascending, ending with 1.0, each a whole number of heads.
        router_layer: the router sits after this layer (1-based).
        router_hidden: the router's hidden units (the paper: 1024).
    """

    def __init__(
        self,
        model_type: str = "roberta",
        config: Mapping[str, Any] | None = None,
        num_classes: int = 2,
        widths: Sequence[float] = (0.25, 0.5, 1.0),
        router_layer: int = 3,
        router_hidden: int = 1024,
    ):
        super().__init__()
        hf = _build_hf(model_type, config or {}, num_classes)
        cfg = hf.config
        self.model_type = model_type
        self.hf = hf
        self.num_classes = num_classes
        self.hidden = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.widths = check_sharcs_widths(widths, self.num_heads, self.hidden)
        layers = self.encoder.layer
        self.router_layer = check_router_layer(router_layer, len(layers))
        for w in self.widths:
            width_channels(cfg.intermediate_size, w)
        eps = cfg.layer_norm_eps
        for i in range(self.router_layer, len(layers)):
            layers[i].attention.output.LayerNorm = _width_norm(layers[i].attention.output.LayerNorm, self.widths)
            layers[i].output.LayerNorm = _width_norm(layers[i].output.LayerNorm, self.widths)
        narrow = self.widths[:-1]
        self.reduce_norm = WidthLayerNorm(self.hidden, narrow, eps=eps) if narrow else None
        self.router = Router(self.hidden, len(self.widths), router_hidden)
        self.channels = {w: width_channels(self.hidden, w) for w in self.widths}

    def forward(
        self,
        x: Any,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        width: float | None = None,
        threshold: float | None = None,
        index: torch.Tensor | None = None,
    ) -> Any:
        """``x``: the input mapping, or the ``input_ids`` tensor with ``attention_mask`` / ``token_type_ids`` beside
        it (the tensors-only form tracing needs); the rest as :meth:`SharcsModel.forward`."""
        if isinstance(x, torch.Tensor):
            x = {"input_ids": x, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return super().forward(x, width=width, threshold=threshold, index=index)

    @property
    def encoder(self) -> nn.Module:
        return getattr(self.hf, self.model_type).encoder

    def stem(self, x: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, Mapping) or "input_ids" not in x:
            raise ValueError("SharcsHF takes {'input_ids': (B, N), 'attention_mask': (B, N), ...}")
        ids = x["input_ids"]
        mask = x.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        backbone = getattr(self.hf, self.model_type)
        h = backbone.embeddings(input_ids=ids, token_type_ids=x.get("token_type_ids"))
        for layer in self.encoder.layer[: self.router_layer]:
            h = self._layer(layer, h, mask, 1.0)
        return h, mask

    def tail(self, tokens: torch.Tensor, width: float, mask: torch.Tensor | None = None) -> torch.Tensor:
        d = self.channels[width]
        h = tokens[..., :d]
        if d < self.hidden:
            h = self.reduce_norm(h, width)
        for layer in self.encoder.layer[self.router_layer :]:
            h = self._layer(layer, h, mask, width)
        first = h[:, 0]
        if self.model_type == "bert":
            pooler = self.hf.bert.pooler
            pooled = torch.tanh(slice_linear(pooler.dense, first, d))
            return slice_linear(self.hf.classifier, self.hf.dropout(pooled))
        head = self.hf.classifier
        pooled = torch.tanh(slice_linear(head.dense, head.dropout(first), d))
        return slice_linear(head.out_proj, head.dropout(pooled))

    def _layer(self, layer: nn.Module, h: torch.Tensor, mask: torch.Tensor | None, width: float) -> torch.Tensor:
        """One post-norm BERT layer on the first ``h.shape[-1]`` channels and the first heads / FFN units."""
        d = h.shape[-1]
        heads = d // self.head_dim
        attn = layer.attention.self
        q, k, v = (slice_linear(lin, h, d).unflatten(-1, (heads, self.head_dim)).transpose(1, 2) for lin in (
            attn.query, attn.key, attn.value))  # fmt: skip
        bias = None
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=h.dtype, device=h.device).masked_fill(~mask, torch.finfo(h.dtype).min)
            bias = bias[:, None, None, :]
        drop = attn.dropout.p if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop).transpose(1, 2).flatten(2)
        out = layer.attention.output
        h = out.LayerNorm(out.dropout(slice_linear(out.dense, ctx, d)) + h)
        inner = width_channels(layer.intermediate.dense.out_features, width)
        hidden = layer.intermediate.intermediate_act_fn(slice_linear(layer.intermediate.dense, h, inner))
        return layer.output.LayerNorm(layer.output.dropout(slice_linear(layer.output.dense, hidden, d)) + h)


def _width_norm(norm: nn.LayerNorm, widths: Sequence[float]) -> WidthLayerNorm:
    """A Hugging Face LayerNorm as one norm per width, each from the first channels of the original."""
    width_norm = WidthLayerNorm(norm.normalized_shape[0], widths, eps=norm.eps)
    with torch.no_grad():
        for sub in width_norm.norms:
            c = sub.normalized_shape[0]
            sub.weight.copy_(norm.weight[:c])
            sub.bias.copy_(norm.bias[:c])
    return width_norm


def _text_inputs() -> tuple[tuple, dict]:
    ids = torch.randint(5, 100, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return (ids,), {"attention_mask": mask}


@register_model(example_inputs=_text_inputs, tags=("sharcs", "text", "transformers"))
def sharcs_hf(**kwargs: Any) -> SharcsHF:
    """SHARCS on a Hugging Face BERT / RoBERTa classifier from a config (default: a 4-layer, 128-wide RoBERTa)."""
    small = dict(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=64,
    )
    kwargs.setdefault("config", small)
    kwargs.setdefault("router_layer", 1)
    kwargs.setdefault("router_hidden", 64)
    return SharcsHF(**kwargs)
