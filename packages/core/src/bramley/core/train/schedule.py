"""Per-step learning-rate schedules: linear warmup, then cosine / linear decay or constant."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ConfigError
from .config import SCHEDULES

__all__ = ["LRSchedule", "build_scheduler"]


@dataclass
class LRSchedule:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based), for ``torch`` ``LambdaLR``.

    Warmup rises linearly from ``warmup_start_factor`` to 1 over ``warmup_steps`` steps (the first step already
    trains: its factor is ``start + (1 - start) / warmup_steps``). After warmup, ``cosine`` and ``linear`` decay
    from 1 to ``min_ratio`` at ``total_steps``; ``constant`` stays at 1. A picklable object, so the scheduler's
    state dict carries it.
    """

    kind: str
    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0
    warmup_start_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"schedule {self.kind!r} is not one of {', '.join(SCHEDULES)}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ConfigError(
                f"schedule needs 0 <= warmup_steps ({self.warmup_steps}) <= total_steps ({self.total_steps})"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            start = self.warmup_start_factor
            return start + (1.0 - start) * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        decay_steps = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / decay_steps) if decay_steps else 1.0
        if self.kind == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step; each param group's own lr is the base it multiplies."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
