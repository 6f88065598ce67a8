"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["ModelEma"]


class ModelEma:
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` for every floating-point parameter after each step.

    Buffers (e.g. batch-norm running statistics) are copied from the live model, not averaged. With ``warmup``
    the decay used at update ``t`` (1-based) is ``min(decay, (1 + t) / (10 + t))`` so early, far-from-converged
    weights are forgotten quickly.

    Args:
        model: the model to track (its current weights are the starting average).
        decay: the target decay in ``[0, 1)``.
        warmup: ramp the decay up as described above.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average."""
        decay = self.current_decay()
        self.updates += 1
        ema_params = [p for p in self.module.parameters() if p.dtype.is_floating_point]
        params = [p.detach() for p in model.parameters() if p.dtype.is_floating_point]
        if len(ema_params) != len(params):
            raise RuntimeError("EMA copy and model have different parameters; was the model changed after setup?")
        if ema_params:
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
