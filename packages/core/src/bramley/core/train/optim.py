"""Optimizers from a TrainConfig, with weight decay kept off norm and bias parameters unless asked for."""

from __future__ import annotations

import torch
import torch.nn as nn

from .config import TrainConfig

__all__ = ["build_optimizer", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Split trainable parameters into a decayed group and a no-decay group.

    No decay for: 0-d/1-d parameters (biases, norm scales and shifts, layer-scale vectors) and any name listed by
    ``model.no_weight_decay()`` (timm's convention, e.g. position embeddings), unless ``decay_norm_and_bias``.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay_norm_and_bias or weight_decay == 0:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in params:
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``sgd`` (momentum, nesterov) or ``adamw`` (betas, eps) over :func:`param_groups`."""
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    if not groups:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    if cfg.optimizer == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
