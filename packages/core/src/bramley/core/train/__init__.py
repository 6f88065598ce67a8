"""The bramley trainer: ``Trainer(model, TrainConfig(...), train_data=..., loss_fn=...).fit()``.

See :class:`Trainer` for the loop and :class:`TrainConfig` for every setting.
"""

from .config import TrainConfig
from .data import ResumableBatchSampler, ShardedBatchSampler, move_to_device
from .distributed import DistInfo, init_distributed, settle
from .ema import ModelEma
from .optim import build_optimizer, param_groups
from .rng import seed_everything
from .schedule import LRSchedule, build_scheduler
from .trainer import CHECKPOINT_NAME, EMA_WEIGHTS_NAME, METRICS_NAME, Trainer, TrainingDiverged, resolve_amp

__all__ = [
    "CHECKPOINT_NAME",
    "EMA_WEIGHTS_NAME",
    "METRICS_NAME",
    "DistInfo",
    "LRSchedule",
    "ModelEma",
    "ResumableBatchSampler",
    "ShardedBatchSampler",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "build_optimizer",
    "build_scheduler",
    "init_distributed",
    "move_to_device",
    "param_groups",
    "resolve_amp",
    "seed_everything",
    "settle",
]
