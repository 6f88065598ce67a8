"""Full-scale MobileOne training and evaluation on an ImageFolder dataset (``root/train``, ``root/val``).

The recipe lives in ``recipes/imagenet.yaml``; every setting can be overridden with ``key=value``. Launch on many
GPUs with ``torchrun --nproc_per_node 8 -m bramley.mobileone.cli train data.root=/data/imagenet``; the trainer
(``bramley.core.train``) sets up DDP itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.config import ConfigError
from bramley.core.metrics import ClassificationMeter

__all__ = [
    "DEFAULTS",
    "WeightDecayCosine",
    "accuracy_eval_fn",
    "default_config",
    "evaluate",
    "load_recipe",
    "make_loss_fn",
    "train",
]

DEFAULTS: dict[str, Any] = {
    "model": {"name": "mobileone_s0", "num_classes": 1000, "in_chans": 3},
    "data": {
        "root": None,
        "train_dir": "train",
        "val_dir": "val",
        "image_size": 224,
        "crop_pct": 0.875,
        "auto_augment": None,
        "interpolation": "bilinear",
        "multiscale": {
            "enabled": True,
            "min_size": 128,
            "max_size": 320,
            "num_scales": 5,
            "curriculum_epochs": 0,
        },
    },
    "loss": {"label_smoothing": 0.1},
    "weight_decay_schedule": {"enabled": False, "end": 1e-5},
    "train": {},  # every TrainConfig field, filled in by default_config()
}


def default_config() -> dict[str, Any]:
    """:data:`DEFAULTS` with the ``train`` section holding every :class:`TrainConfig` field (so overrides work)."""
    import copy

    from bramley.core.train import TrainConfig

    config = copy.deepcopy(DEFAULTS)
    config["train"] = TrainConfig().to_dict()
    return config


def load_recipe(name: str = "imagenet") -> dict[str, Any]:
    """The bundled recipe ``recipes/<name>.yaml`` merged over :data:`DEFAULTS`."""
    import yaml

    path = resources.files("bramley.mobileone") / "recipes" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no bundled recipe {name!r} (looked for {path})")
    return _merge(default_config(), yaml.safe_load(path.read_text()) or {})


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out


def make_loss_fn(label_smoothing: float = 0.1):
    """Cross-entropy with label smoothing on ``(images, labels)`` batches; reports the batch accuracy too."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing}")

    def loss_fn(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return loss, {"acc": float((logits.argmax(1) == labels).float().mean())}

    return loss_fn


@torch.no_grad()
def accuracy_eval_fn(model: nn.Module, loader: Iterable) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over ``loader``."""
    meter = ClassificationMeter()
    for images, labels in loader:
        meter.update(model(images), labels)
    return meter.compute()


class WeightDecayCosine:
    """Trainer callback annealing weight decay from its initial value to ``end`` with a cosine over all steps.

    MobileOne anneals the weight decay coefficient with the same cosine as the learning rate (paper, Sec. 4:
    "relaxing regularization" for small models). Applied to every param group whose initial decay is non-zero.
    """

    def __init__(self, end: float):
        if end < 0:
            raise ConfigError(f"weight_decay_schedule.end must be >= 0, got {end}")
        self.end = end
        self._start: list[float] | None = None

    def __call__(self, trainer) -> None:
        groups = trainer.optimizer.param_groups
        if self._start is None:
            self._start = [g.get("weight_decay", 0.0) for g in groups]
        progress = min(1.0, trainer.step / max(1, trainer.total_steps))
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        for group, start in zip(groups, self._start):
            if start > 0:
                group["weight_decay"] = self.end + (start - self.end) * factor

    def state_dict(self) -> dict[str, list[float] | None]:
        """The initial decays: after a resume the optimizer holds already-annealed values."""
        return {"start": self._start}

    def load_state_dict(self, state: dict[str, list[float] | None]) -> None:
        self._start = state["start"]


def _keep_pil(image):
    return image


class _TrainTransformFor:
    """``(h, w) -> train transform`` for the multi-scale dataset (a class, so DataLoader workers can pickle it)."""

    def __init__(self, auto_augment: str | None, interpolation: str):
        self.auto_augment, self.interpolation = auto_augment, interpolation

    def __call__(self, h: int, w: int):
        from bramley.core.data import train_transform

        return train_transform((h, w), auto_augment=self.auto_augment, interpolation=self.interpolation)


def _datasets(config: Mapping[str, Any]):
    from bramley.core.data import ImageFolder, MultiScaleDataset, VariableBatchSampler, multiscale_collate

    data = config["data"]
    if not data.get("root"):
        raise ConfigError("data.root is not set: pass data.root=/path/to/imagenet (with train/ and val/ inside)")
    root = Path(data["root"])
    size = int(data["image_size"])
    common = {"interpolation": data["interpolation"]}
    val = ImageFolder(root / data["val_dir"], train=False, image_size=size, crop_pct=data["crop_pct"], **common)
    ms = data["multiscale"]
    train_cfg = config["train"]
    if not ms.get("enabled"):
        train = ImageFolder(
            root / data["train_dir"], train=True, image_size=size, auto_augment=data["auto_augment"], **common
        )
        if train.classes != val.classes:
            raise ConfigError(f"train and val class folders differ under {root}")
        return train, val, None, None
    raw = ImageFolder(root / data["train_dir"], transform=_keep_pil)
    if raw.classes != val.classes:
        raise ConfigError(f"train and val class folders differ under {root}")
    transform_for = _TrainTransformFor(data["auto_augment"], data["interpolation"])
    train = MultiScaleDataset(raw, transform_for, seed=int(train_cfg.get("seed", 0)))
    sampler = VariableBatchSampler(
        train,
        base_batch_size=int(train_cfg.get("batch_size", 64)),
        base_size=size,
        min_size=int(ms["min_size"]),
        max_size=int(ms["max_size"]),
        num_scales=int(ms["num_scales"]),
        curriculum_epochs=int(ms["curriculum_epochs"]),
        seed=int(train_cfg.get("seed", 0)),
    )
    return train, val, sampler, multiscale_collate


def train(config: Mapping[str, Any]) -> dict[str, float]:
    """Train the configured MobileOne on ``data.root``; returns the final metrics (see :class:`Trainer`).

    Writes checkpoints / metrics to ``train.out_dir`` and, on the main process, ``<out_dir>/model`` (a
    ``save_pretrained`` folder of the EMA weights when EMA is on, else the raw weights) for ``eval`` / ``reparam``.
    """
    from bramley.core.checkpoint import save_pretrained
    from bramley.core.registry import create_model
    from bramley.core.train import TrainConfig, Trainer
    from bramley.core.train.distributed import init_distributed

    from . import model as _  # noqa: F401  (registers the variants)

    init_distributed(config["train"].get("device", "auto"))  # before the sampler, which shards by rank
    model_cfg = dict(config["model"])
    name = model_cfg.pop("name")
    model = create_model(name, **model_cfg)
    train_data, val_data, sampler, collate = _datasets(config)
    if len(val_data.classes) != model.num_classes:
        raise ConfigError(
            f"model.num_classes={model.num_classes} but the dataset has "
            f"{len(val_data.classes)} classes; pass model.num_classes={len(val_data.classes)}"
        )
    cfg = TrainConfig.from_dict(config["train"])
    callbacks = []
    if config["weight_decay_schedule"].get("enabled"):
        callbacks.append(WeightDecayCosine(float(config["weight_decay_schedule"]["end"])))
    trainer = Trainer(
        model,
        cfg,
        train_data=train_data,
        loss_fn=make_loss_fn(float(config["loss"]["label_smoothing"])),
        eval_data=val_data,
        eval_fn=accuracy_eval_fn,
        batch_sampler=sampler,
        collate_fn=collate,
        callbacks=callbacks,
    )
    metrics = trainer.fit()
    if cfg.out_dir is not None and trainer.dist.is_main:
        final = trainer.ema_model if trainer.ema_model is not None else trainer.model
        final.model_config = model.model_config
        save_pretrained(final, Path(cfg.out_dir) / "model")
    return metrics


def evaluate(model: nn.Module, root: str | Path, image_size: int = 224, crop_pct: float = 0.875, batch_size: int = 64):
    """Top-1 / top-5 of ``model`` on the ImageFolder at ``root`` (eval transform)."""
    from torch.utils.data import DataLoader

    from bramley.core.data import ImageFolder

    data = ImageFolder(root, train=False, image_size=image_size, crop_pct=crop_pct)
    if len(data.classes) != getattr(model, "num_classes", len(data.classes)):
        raise ValueError(f"{root} has {len(data.classes)} classes but the model predicts {model.num_classes}")
    model.eval()
    return accuracy_eval_fn(model, DataLoader(data, batch_size=batch_size))
