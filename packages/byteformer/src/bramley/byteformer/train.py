"""ByteFormer training on :class:`bramley.core.train.Trainer`: loss, evaluation, datasets from a recipe, the run.

The paper's recipe (apple/corenet ``projects/byteformer/*.yaml``): AdamW (betas 0.9 / 0.999, weight decay 0.05, no
decay on norms and biases), cosine from lr 1e-3 to 2e-5 over 300 epochs with linear warmup from 1e-6 (7500
iterations on ImageNet, 500 on Speech Commands), label smoothing 0.1, EMA (momentum 1e-4 = decay 0.9999), mixed
precision, 48 samples per GPU with 2 accumulation steps (8 GPUs for ImageNet, 4 for Speech Commands).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.config import ConfigError
from bramley.core.metrics import ClassificationMeter
from bramley.core.registry import create_model

from .batching import collate_packed, token_budget_sampler

__all__ = ["DEFAULTS", "SOURCES", "ClassificationLoss", "accuracy_eval", "build_datasets", "run_training"]

#: Where the training bytes come from (``data.source``).
SOURCES = ("byte_folder", "image_folder", "audio_folder", "digits", "audio")


def _train_fields() -> dict[str, Any]:
    from bramley.core.train import TrainConfig

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TrainConfig()).items()}


#: Every key a recipe may set (others are rejected); values are the paper's ImageNet TIFF recipe.
DEFAULTS: dict[str, Any] = {
    "model": {"name": "byteformer_tiny", "kwargs": {}},
    "data": {
        "source": "image_folder",
        "train_dir": None,
        "val_dir": None,
        "spec": "tiff",  # encoding spec (image/audio folders, bundled sets) or byte transforms (byte folders)
        "image_size": 224,
        "crop_pct": 0.875,
        "rand_augment": True,
        "batch_tokens": None,  # bytes per packed batch (static-length sources only); None: train.batch_size samples
        "clips_per_class": None,  # bundled audio only
    },
    "loss": {"label_smoothing": 0.1},
    "train": {
        **_train_fields(),
        "epochs": 300,
        "batch_size": 48,
        "grad_accum_steps": 2,
        "optimizer": "adamw",
        "lr": 1e-3,
        "betas": [0.9, 0.999],
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_steps": 7500,
        "warmup_start_factor": 1e-3,
        "min_lr_ratio": 0.02,
        "ema_decay": 0.9999,
        "amp": "auto",
        "num_workers": 10,
        "checkpoint_every": 1000,
        "progress": True,
    },
}


class ClassificationLoss:
    """Label-smoothed cross-entropy on packed batches ``(tokens, cu_seqlens, labels)``: ``loss_fn(model, batch)``."""

    def __init__(self, label_smoothing: float = 0.1):
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        tokens, cu_seqlens, labels = batch
        logits = model(tokens, cu_seqlens)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return loss, {"acc": float((logits.argmax(-1) == labels).float().mean())}


@torch.no_grad()
def accuracy_eval(model: nn.Module, loader) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over a loader of packed batches."""
    meter = ClassificationMeter()
    for tokens, cu_seqlens, labels in loader:
        meter.update(model(tokens, cu_seqlens), labels)
    return meter.compute()


def build_datasets(data: Mapping[str, Any], seed: int = 0):
    """Train / val datasets of ``(bytes, label)`` from a recipe's ``data`` section (val may be ``None``)."""
    from . import datasets as ds

    source, spec = data["source"], data["spec"]
    if source not in SOURCES:
        raise ConfigError(f"data.source must be one of {SOURCES}, got {source!r}")
    if source in ("digits", "audio"):
        if source == "digits":
            return ds.digits_bytes(spec, "train", seed=seed), ds.digits_bytes(spec, "val", seed=seed)
        kw = {"clips_per_class": data["clips_per_class"]} if data.get("clips_per_class") else {}
        return ds.audio_bytes(spec, "train", seed=seed, **kw), ds.audio_bytes(spec, "val", seed=seed, **kw)
    if not data.get("train_dir"):
        raise ConfigError(f"data.train_dir is required for data.source={source}")

    def make(root: str, train: bool):
        if source == "byte_folder":
            return ds.ByteFolder(root, transforms=spec or None, seed=seed)
        if source == "audio_folder":
            return ds.EncodedDataset(ds.AudioFolder(root), spec, seed=seed)
        return ds.image_folder_bytes(
            root,
            spec,
            train=train,
            image_size=data["image_size"],
            crop_pct=data["crop_pct"],
            rand_augment=bool(data["rand_augment"]) and train,
            seed=seed,
        )

    train = make(data["train_dir"], True)
    val = make(data["val_dir"], False) if data.get("val_dir") else None
    if val is not None and list(val.classes) != list(train.classes):
        raise ConfigError(f"train and val folders have different classes: {train.classes} vs {val.classes}")
    return train, val


def _num_classes(dataset: Any) -> int:
    classes = getattr(dataset, "classes", None)
    return len(classes) if classes is not None else int(max(dataset.targets)) + 1


def run_training(config: Mapping[str, Any], out_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the recipe's model on packed batches; returns the final metrics, writes ``<out>/model`` (+ EMA)."""
    from bramley.core.checkpoint import save_pretrained
    from bramley.core.train import TrainConfig, Trainer

    from . import model as _  # noqa: F401  (registers the variants)

    config = copy.deepcopy(dict(config))
    train_cfg = dict(config["train"])
    train_data, val_data = build_datasets(config["data"], seed=train_cfg["seed"])
    num_classes = _num_classes(train_data)
    model = create_model(config["model"]["name"], **dict(config["model"]["kwargs"] or {}, num_classes=num_classes))
    if out_dir is not None:
        train_cfg["out_dir"] = str(out_dir)
    elif train_cfg.get("checkpoint_every"):
        train_cfg["checkpoint_every"] = 0
    sampler = None
    if config["data"].get("batch_tokens"):
        if config["data"]["source"] == "image_folder":
            raise ConfigError(
                "data.batch_tokens needs static byte lengths; random crops of an image folder change them"
            )
        sampler = token_budget_sampler(train_data, int(config["data"]["batch_tokens"]), seed=train_cfg["seed"])
    trainer = Trainer(
        model,
        TrainConfig.from_dict(train_cfg),
        train_data=train_data,
        loss_fn=ClassificationLoss(config["loss"]["label_smoothing"]),
        eval_data=val_data,
        eval_fn=accuracy_eval if val_data is not None else None,
        batch_sampler=sampler,
        collate_fn=collate_packed,
    )
    metrics = trainer.fit()
    if out_dir is not None:
        save_pretrained(trainer.model, Path(out_dir) / "model")
        if trainer.ema_model is not None:
            save_pretrained(trainer.ema_model, Path(out_dir) / "model_ema", config=trainer.model.model_config)
    return {"metrics": metrics, "num_classes": num_classes, "trainer": trainer}
