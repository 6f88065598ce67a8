"""TrainConfig: every knob of the trainer in one dataclass, buildable from a YAML section."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError

__all__ = ["AMP_MODES", "OPTIMIZERS", "SCHEDULES", "TrainConfig"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "linear", "constant")
AMP_MODES = ("none", "auto", "bf16", "fp16")
DISTRIBUTED = ("ddp", "fsdp")
_DEVICES = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass
class TrainConfig:
    """Settings of one training run.

    Budget: ``epochs`` full passes, or ``steps`` optimizer steps when set (``steps`` wins; the last epoch may then
    be partial). ``batch_size`` is per process and per micro-step: one optimizer step sees
    ``batch_size * grad_accum_steps * world_size`` samples. Schedules are per optimizer step; ``warmup_steps``
    (when set) replaces ``warmup_epochs``. ``weight_decay_end`` anneals the weight decay of every param group that
    has one from ``weight_decay`` to this value with a cosine over all steps (MobileOne's "relaxed regularization").
    """

    # budget and data
    epochs: int = 10
    steps: int | None = None
    batch_size: int = 64
    shuffle: bool = True
    drop_last: bool = True
    num_workers: int = 0
    pin_memory: bool = False
    eval_batch_size: int | None = None
    # optimizer
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 5e-5
    weight_decay_end: float | None = None
    decay_norm_and_bias: bool = False
    clip_grad_norm: float | None = None
    # schedule
    schedule: str = "cosine"
    warmup_epochs: float = 0
    warmup_steps: int | None = None
    warmup_start_factor: float = 0.0
    min_lr_ratio: float = 0.0
    # numerics
    amp: str = "none"
    grad_accum_steps: int = 1
    ema_decay: float | None = None
    ema_warmup: bool = False
    # outputs
    checkpoint_every: int = 0
    out_dir: str | None = None
    resume: bool | str = False
    log_every: int = 50
    eval_every: int = 1
    progress: bool = True
    # runtime
    seed: int = 0
    device: str = "auto"
    distributed: str = "ddp"
    find_unused_parameters: bool = False
    fsdp_shard_modules: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        for f in dataclasses.fields(self):  # first: nan passes every range check below
            value = getattr(self, f.name)
            numbers = value if isinstance(value, tuple | list) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise ConfigError(f"TrainConfig.{f.name} must be a finite number, got {value!r}")
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": AMP_MODES, "distributed": DISTRIBUTED}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if not isinstance(self.device, str) or not _DEVICES.fullmatch(self.device):
            raise ConfigError(f"TrainConfig.device={self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
        if self.amp == "fp16" and self.device != "auto" and not self.device.startswith("cuda"):
            raise ConfigError(
                f"TrainConfig.amp='fp16' needs a CUDA device, got device={self.device!r}; use amp='bf16' or amp='none'"
            )
        positive = ["epochs", "batch_size", "grad_accum_steps", "log_every", "eval_every"]
        positive += [n for n in ("steps", "eval_batch_size") if getattr(self, n) is not None]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_workers", "checkpoint_every", "warmup_epochs", "weight_decay", "lr", "eps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError(f"TrainConfig.clip_grad_norm must be > 0 or None, got {self.clip_grad_norm}")
        for name in ("min_lr_ratio", "warmup_start_factor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"TrainConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.weight_decay_end is not None and not 0.0 <= self.weight_decay_end <= self.weight_decay:
            raise ConfigError(
                f"TrainConfig.weight_decay_end must be in [0, weight_decay={self.weight_decay}] (the decay anneals "
                f"down to it), got {self.weight_decay_end}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"TrainConfig.momentum must be in [0, 1), got {self.momentum}")
        if len(self.betas) != 2:
            raise ConfigError(f"TrainConfig.betas must hold two numbers, got {self.betas!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"TrainConfig.betas must each be in [0, 1), got {self.betas!r}")
        if (self.checkpoint_every or self.resume is True or self.resume == "auto") and self.out_dir is None:
            raise ConfigError("TrainConfig.checkpoint_every and resume=True / 'auto' need out_dir to be set")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
        """Build from a YAML/JSON mapping (plus keyword overrides); unknown keys are errors listing the valid ones.

        Values are coerced to the field types where that is unambiguous (YAML reads ``1e-3`` as a string).
        """
        merged = {**(data or {}), **overrides}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - set(fields))
        if unknown:
            raise ConfigError(f"unknown TrainConfig keys {unknown}; valid keys: {', '.join(sorted(fields))}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in merged.items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python mapping (YAML/JSON serialisable); ``TrainConfig.from_dict(cfg.to_dict()) == cfg``."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        return TrainConfig.from_dict(self.to_dict(), **changes)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert ``value`` to the field's type where YAML/CLI strings or lists leave it ambiguous."""
    args = typing.get_args(hint)
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if is_union and value is None and type(None) in args:
        return None
    targets = [a for a in args if a is not type(None)] if is_union else [hint]
    if typing.get_origin(targets[0]) is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"TrainConfig.{name} must be a list, got {value!r}")
        return tuple(_coerce(name, v, t) for v, t in zip(value, typing.get_args(targets[0])))
    if typing.get_origin(targets[0]) is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"TrainConfig.{name} must be a list, got {value!r}")
        return list(value)
    if any(isinstance(value, t) and not (t is not bool and isinstance(value, bool)) for t in targets):
        return value
    for t in targets:
        if t is float and isinstance(value, int | str) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                pass
        if t is int and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if t is int and isinstance(value, float) and value.is_integer():
            return int(value)
    names = " or ".join(getattr(t, "__name__", str(t)) for t in targets)
    raise ConfigError(f"TrainConfig.{name} must be {names}, got {value!r} ({type(value).__name__})")
