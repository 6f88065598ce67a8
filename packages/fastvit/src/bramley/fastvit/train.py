"""FastViT's ImageNet recipe on :class:`bramley.core.train.Trainer`: losses, data and the run function.

The paper's recipe (Sec. 4.1 and the official ``train.py``/README of apple/ml-fastvit): AdamW, lr 1e-3 for a global
batch of 1024 (8 GPUs x 128), weight decay 0.05, 300 epochs with 5 warmup epochs (from 1e-6) and cosine decay to
1e-5, RandAugment ``rand-m9-mstd0.5-inc1``, random erasing 0.25, mixup/cutmix, label smoothing 0.1, model EMA
(decay 0.9995), 256 px, per-variant stochastic depth, and optional hard distillation (DeiT-style, RegNetY-16GF
teacher, alpha 0.5) on the classifier output itself (FastViT has no distillation token).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.checkpoint import from_pretrained, load_checkpoint
from bramley.core.config import ConfigError
from bramley.core.metrics import ClassificationMeter
from bramley.core.registry import create_model

__all__ = ["DEFAULTS", "ClassificationLoss", "accuracy_eval", "build_datasets", "build_teacher", "run_training"]


def _train_fields() -> dict[str, Any]:
    """Every :class:`TrainConfig` field with its default, so recipes may set any of them."""
    import dataclasses

    from bramley.core.train import TrainConfig

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TrainConfig()).items()}


_TRAIN_FIELDS = _train_fields()

#: Every key a recipe may set; ``bramley-fastvit train`` rejects others. Values are the paper's recipe.
DEFAULTS: dict[str, Any] = {
    "model": {"name": "fastvit_t8", "kwargs": {"drop_path_rate": 0.0}},
    "data": {
        "train_dir": None,
        "val_dir": None,
        "image_size": 256,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "random_erasing": 0.25,
    },
    "loss": {"mixup": 0.8, "cutmix": 1.0, "label_smoothing": 0.1},
    "distillation": {
        "type": "none",
        "alpha": 0.5,
        "teacher_dir": None,
        "teacher_timm": None,
        "teacher_checkpoint": None,
    },
    "train": {
        **_TRAIN_FIELDS,
        "epochs": 300,
        "batch_size": 128,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 5,
        "warmup_start_factor": 1e-3,
        "min_lr_ratio": 1e-2,
        "ema_decay": 0.9995,
        "amp": "auto",
        "num_workers": 8,
        "checkpoint_every": 1000,
        "progress": True,
    },
}


class ClassificationLoss:
    """Cross-entropy with mixup/cutmix, label smoothing and optional hard distillation.

    ``loss_fn(model, (images, labels))`` as the Trainer expects. With mixup or cutmix active (timm's ``Mixup``,
    which also smooths the mixed targets) the loss is soft-target cross-entropy; otherwise label-smoothed
    cross-entropy. Hard distillation (DeiT): ``(1 - alpha) * loss + alpha * CE(logits, teacher(images).argmax())``
    on the same (mixed) images.
    """

    def __init__(
        self,
        num_classes: int,
        mixup: float = 0.0,
        cutmix: float = 0.0,
        label_smoothing: float = 0.1,
        teacher: nn.Module | None = None,
        alpha: float = 0.5,
    ):
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}")
        self.label_smoothing = label_smoothing
        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup

            self.mixup_fn = Mixup(
                mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing, num_classes=num_classes
            )
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        self.alpha = alpha

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        if self.mixup_fn is not None and model.training:
            if images.shape[0] % 2:
                raise ValueError(f"mixup/cutmix need an even batch size, got {images.shape[0]}")
            images, targets = self.mixup_fn(images, labels)
            logits = model(images)
            loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        stats = {"base_loss": float(loss.detach())}
        if self.teacher is not None:
            self.teacher.to(images.device)
            with torch.no_grad():
                teacher_labels = self.teacher(images).argmax(dim=-1)
            distill = F.cross_entropy(logits, teacher_labels)
            loss = (1 - self.alpha) * loss + self.alpha * distill
            stats["distill_loss"] = float(distill.detach())
        return loss, stats


@torch.no_grad()
def accuracy_eval(model: nn.Module, loader) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over a loader of ``(images, labels)``."""
    meter = ClassificationMeter()
    for images, labels in loader:
        meter.update(model(images), labels)
    return meter.compute()


def build_datasets(data: Mapping[str, Any]):
    """Train / val :class:`bramley.core.data.ImageFolder` datasets from a recipe's ``data`` section."""
    from torchvision import transforms as T

    from bramley.core.data import ImageFolder, train_transform

    if not data.get("train_dir"):
        raise ConfigError("data.train_dir is required (an ImageFolder root: <dir>/<class>/<image>)")
    size, interp = data["image_size"], data["interpolation"]
    steps: list[Callable] = [train_transform(size, auto_augment=data["auto_augment"] or None, interpolation=interp)]
    if data["random_erasing"]:
        from timm.data.random_erasing import RandomErasing

        steps.append(RandomErasing(probability=data["random_erasing"], mode="pixel", device="cpu"))
    train = ImageFolder(data["train_dir"], transform=T.Compose(steps))
    val = None
    if data.get("val_dir"):
        val = ImageFolder(data["val_dir"], image_size=size, crop_pct=data["crop_pct"], interpolation=interp)
        if val.classes != train.classes:
            raise ConfigError(f"train and val folders have different classes: {train.classes} vs {val.classes}")
    return train, val


def build_teacher(distillation: Mapping[str, Any]) -> nn.Module | None:
    """The distillation teacher: a bramley ``save_pretrained`` folder, or a timm model name + local checkpoint."""
    kind = distillation["type"]
    if kind == "none":
        return None
    if kind != "hard":
        raise ConfigError(f"distillation.type must be 'none' or 'hard', got {kind!r}")
    if distillation.get("teacher_dir"):
        return from_pretrained(distillation["teacher_dir"])
    if distillation.get("teacher_timm"):
        if not distillation.get("teacher_checkpoint"):
            raise ConfigError("distillation.teacher_timm needs distillation.teacher_checkpoint (no downloads)")
        import timm

        teacher = timm.create_model(distillation["teacher_timm"], pretrained=False)
        path = Path(distillation["teacher_checkpoint"])
        if path.suffix == ".safetensors":
            load_checkpoint(path, teacher)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            teacher.load_state_dict(state.get("model", state.get("state_dict", state)))
        return teacher
    raise ConfigError("hard distillation needs distillation.teacher_dir or distillation.teacher_timm")


def run_training(config: Mapping[str, Any], out_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the recipe's model; returns the final metrics and writes ``<out>/model`` (and ``model_ema``).

    The model's ``drop_path_rate`` and other factory arguments come from ``model.kwargs``; the number of classes
    from the training folder.
    """
    from bramley.core.checkpoint import save_pretrained
    from bramley.core.train import TrainConfig, Trainer

    config = copy.deepcopy(dict(config))
    train_data, val_data = build_datasets(config["data"])
    num_classes = len(train_data.classes)
    kwargs = dict(config["model"]["kwargs"], num_classes=num_classes)
    model = create_model(config["model"]["name"], **kwargs)
    loss = config["loss"]
    loss_fn = ClassificationLoss(
        num_classes,
        mixup=loss["mixup"],
        cutmix=loss["cutmix"],
        label_smoothing=loss["label_smoothing"],
        teacher=build_teacher(config["distillation"]),
        alpha=config["distillation"]["alpha"],
    )
    train_cfg = dict(config["train"])
    if out_dir is not None:
        train_cfg["out_dir"] = str(out_dir)
    elif train_cfg.get("checkpoint_every"):
        train_cfg["checkpoint_every"] = 0
    trainer = Trainer(
        model,
        TrainConfig.from_dict(train_cfg),
        train_data=train_data,
        loss_fn=loss_fn,
        eval_data=val_data,
        eval_fn=accuracy_eval if val_data is not None else None,
    )
    metrics = trainer.fit()
    if out_dir is not None:
        save_pretrained(trainer.model, Path(out_dir) / "model")
        if trainer.ema_model is not None:
            save_pretrained(trainer.ema_model, Path(out_dir) / "model_ema", config=trainer.model.model_config)
    return {"metrics": metrics, "num_classes": num_classes, "classes": train_data.classes}
