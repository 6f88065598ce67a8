"""Sub-models of a MatFormer model: extract a standalone one, count its size, pick one for a budget.

A sub-model is a *spec*: per-layer FFN hidden sizes (:meth:`MatFormerModel.resolve_ffn` accepts ``None``, one size or
one per layer). The trained granularities are the uniform specs (:func:`granularity_specs`); Mix'n'Match specs mix
them across layers (:func:`mix_n_match_specs`) and were never trained explicitly.

Sizes are exact counts of the sub-model's parameters (what :func:`extract` builds) and of its forward FLOPs per sample
(two per multiply-accumulate of every linear layer, the patch embedding and the two attention products over the full
``tokens x tokens`` matrix; norms, activations and softmax are left out).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import torch.nn as nn

from bramley.core.errors import ConfigError

from .model import FFNSpec, MatFormerModel, MatLM, MatViT, count_parameters

__all__ = [
    "METRICS",
    "extract",
    "flops",
    "granularity_specs",
    "matformer_model",
    "mix_n_match_specs",
    "num_parameters",
    "select_for_budget",
]

METRICS = ("params", "flops")
Metric = Literal["params", "flops"]


def _name(model: nn.Module) -> str:
    config = getattr(model, "model_config", None)
    return config["name"] if isinstance(config, dict) and "name" in config else type(model).__name__


def matformer_model(model: nn.Module, source: str | None = None) -> MatFormerModel:
    """``model`` (unwrapped from DDP) if it is a MatViT / MatLM, else a ConfigError naming what it is."""
    model = getattr(model, "module", model)
    if not isinstance(model, MatFormerModel):
        where = f"{source} holds " if source else ""
        raise ConfigError(f"{where}a {_name(model)} model, not a MatFormer model (matvit*, matlm*)")
    return model


def granularity_specs(model: MatFormerModel) -> list[tuple[int, ...]]:
    """The trained sub-models, smallest first: per-layer sizes ``h/8, h/4, h/2, h`` for the default factors."""
    return matformer_model(model).granularity_sizes()


def mix_n_match_specs(model: MatFormerModel) -> list[tuple[int, ...]]:
    """The "staircase" Mix'n'Match specs between each pair of adjacent granularities: the last ``m`` layers at the
    larger one, the others at the smaller one, for ``m = 1 .. depth - 1`` (what :func:`select_for_budget` returns for
    budgets between two granularities). Never trained explicitly."""
    grans = granularity_specs(model)
    depth = matformer_model(model).depth
    specs = []
    for small, large in itertools.pairwise(grans):
        for m in range(1, depth):
            specs.append(tuple(small[: depth - m]) + tuple(large[depth - m :]))
    return specs


# --------------------------------------------------------------------------------------------------------- extract
def extract(model: nn.Module, spec: FFNSpec) -> MatFormerModel:
    """A standalone dense model equal to ``model(x, ffn=spec)``: FFNs are core ``Mlp`` / ``SwiGLU`` holding copies of
    the first units, everything else is copied as is; built with ``granularities=None`` and ``mlp_hidden`` = the
    spec, so ``save_pretrained`` / ``load_model`` rebuild it.

    Raises:
        ConfigError: ``model`` is not a MatFormer model, is not nested (e.g. already extracted), or the spec is bad.
    """
    model = matformer_model(model)
    name = _name(model)
    if not model.nested:
        raise ConfigError(
            f"{name} is not nested (granularities=None: a dense or already extracted model); extract sub-models from "
            "the nested MatFormer model it came from"
        )
    sizes = model.resolve_ffn(spec)
    kwargs = {"mlp_hidden": list(sizes), "granularities": None}
    dense = type(model)(**{**model.config, **kwargs})
    state = {}
    for key, value in model.state_dict().items():
        if not any(key.startswith(f"blocks.{i}.mlp.") for i in range(model.depth)):
            state[key] = value
    for i, (block, size) in enumerate(zip(model.blocks, sizes)):
        for key, value in block.mlp.extract(size).state_dict().items():
            state[f"blocks.{i}.mlp.{key}"] = value
    first = next(model.parameters())
    dense.to(device=first.device, dtype=first.dtype)
    dense.load_state_dict(state, strict=True)
    dense.train(model.training)
    config = getattr(model, "model_config", None)
    if isinstance(config, dict):
        dense.model_config = {"name": config["name"], "kwargs": {**config.get("kwargs", {}), **kwargs}}
    return dense


# ----------------------------------------------------------------------------------------------------------- sizes
def _ffn_params(model: MatFormerModel, layer: int, hidden: int) -> int:
    mlp = model.blocks[layer].mlp
    linears = [m for m in mlp.children() if isinstance(m, nn.Linear)]
    dim = linears[0].in_features
    ups = len(linears) - 1  # fc1 (GELU) or w1 and w3 (SwiGLU)
    bias = linears[0].bias is not None
    return ups * (dim * hidden + (hidden if bias else 0)) + hidden * dim + (dim if bias else 0)


def _ffn_flops(model: MatFormerModel, layer: int, hidden: int, tokens: int) -> int:
    mlp = model.blocks[layer].mlp
    linears = [m for m in mlp.children() if isinstance(m, nn.Linear)]
    return 2 * tokens * len(linears) * linears[0].in_features * hidden


def _tokens(model: MatFormerModel, tokens: int | None) -> int:
    return model.tokens_per_sample(tokens) if isinstance(model, MatViT) else (tokens or model.max_seq_len)


def num_parameters(model: nn.Module, spec: FFNSpec = None) -> int:
    """Parameters of the sub-model ``spec`` (what :func:`extract` would hold; a tied embedding counts once)."""
    model = matformer_model(model)
    sizes = model.resolve_ffn(spec)
    full = count_parameters(model)
    pairs = enumerate(zip(model.mlp_hidden, sizes))
    return full - sum(_ffn_params(model, i, h) - _ffn_params(model, i, k) for i, (h, k) in pairs)


def flops(model: nn.Module, spec: FFNSpec = None, tokens: int | None = None) -> int:
    """Forward FLOPs of one sample of the sub-model ``spec``.

    Args:
        model: a MatViT or MatLM.
        spec: the sub-model (``None``: full).
        tokens: MatViT: the image size (default native); MatLM: the sequence length (default ``max_seq_len``).
    """
    model = matformer_model(model)
    sizes = model.resolve_ffn(spec)
    n = _tokens(model, tokens)
    total = 0
    for i, block in enumerate(model.blocks):
        attn = block.attn
        total += 2 * n * (attn.qkv.in_features * attn.qkv.out_features + attn.proj.in_features * attn.proj.out_features)
        total += 2 * 2 * n * n * attn.num_heads * attn.head_dim  # q k^T and attn v
        total += _ffn_flops(model, i, sizes[i], n)
    if isinstance(model, MatViT):
        conv = model.patch_embed.proj
        total += 2 * (n - 1) * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        if isinstance(model.head, nn.Linear):
            total += 2 * model.head.in_features * model.head.out_features
    elif isinstance(model, MatLM):
        total += 2 * n * model.head.in_features * model.head.out_features
    return total


def _cost(model: MatFormerModel, sizes: Sequence[int], metric: Metric, tokens: int | None) -> int:
    return num_parameters(model, list(sizes)) if metric == "params" else flops(model, list(sizes), tokens)


# ---------------------------------------------------------------------------------------------------------- budget
def select_for_budget(
    model: nn.Module, budget: float, metric: Metric = "params", tokens: int | None = None
) -> tuple[int, ...]:
    """The Mix'n'Match sub-model that uses most of ``budget`` (parameters or FLOPs per sample) without exceeding it.

    Heuristic (ours; the paper picks Mix'n'Match models by hand): start from the largest trained granularity that fits,
    then move layers one granularity up, the last layer first, while the budget allows. Layers therefore differ by at
    most one granularity and grow with depth, the "staircase" of :func:`mix_n_match_specs`.

    Raises:
        ConfigError: an unknown metric, or a budget below the smallest granularity (the message gives its cost).
    """
    model = matformer_model(model)
    if metric not in METRICS:
        raise ConfigError(f"unknown budget metric {metric!r}; choose one of {', '.join(METRICS)}")
    grans = granularity_specs(model)
    costs = [_cost(model, g, metric, tokens) for g in grans]
    if budget < costs[0]:
        raise ConfigError(
            f"a budget of {budget:,.0f} {metric} is below the smallest sub-model of {_name(model)} "
            f"({costs[0]:,} {metric}, FFN sizes {list(grans[0])})"
        )
    level = max(j for j, c in enumerate(costs) if c <= budget)
    sizes = list(grans[level])
    if level + 1 < len(grans):
        for layer in reversed(range(model.depth)):
            trial = sizes.copy()
            trial[layer] = grans[level + 1][layer]
            if _cost(model, trial, metric, tokens) > budget:
                break
            sizes = trial
    return tuple(sizes)
