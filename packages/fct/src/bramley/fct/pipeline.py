"""Config-driven FCT stages shared by the CLI and the mini reproduction.

A run config has one section per stage (``old``, ``new``, ``side_info``, ``transformation``) plus ``data`` and
``eval``; :data:`DEFAULTS` is the bundled-digits setup of the mini reproduction, and ``recipes/*.yaml`` override it
with the paper's CIFAR-100 / ImageNet settings. Each stage's ``train`` section is a full
:class:`bramley.core.train.TrainConfig`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bramley.core.checkpoint import from_pretrained
from bramley.core.config import load_config, resolve_config
from bramley.core.registry import create_model
from bramley.core.train import TrainConfig

from .augment import BatchAugment
from .data import build_dataset
from .models import FCTTransformation, SideInfoModel
from .train import train_backbone, train_side_info, train_transformation

__all__ = [
    "DEFAULTS",
    "RECIPES",
    "build_backbone",
    "build_side_info",
    "build_transformation",
    "recipe_path",
    "resolve_run_config",
    "run_stage",
    "train_config",
]

RECIPES = Path(__file__).parent / "recipes"


def _train(**kw: Any) -> dict[str, Any]:
    base = dict(epochs=20, batch_size=64, lr=0.05, optimizer="sgd", momentum=0.9, nesterov=False, weight_decay=5e-4)
    base.update(warmup_epochs=1, device="cpu")
    return TrainConfig(**{**base, **kw}).to_dict()


_CONVNET = {"in_chans": 1, "widths": [16, 32], "depth": 1, "embedding_dim": 32, "num_classes": 5}

DEFAULTS: dict[str, Any] = {
    "data": {
        "name": "digits",  # digits | image_folder
        "root": None,  # image_folder: folder holding train_dir/ and val_dir/
        "train_dir": "training",
        "val_dir": "validation",
        "preset": "imagenet",  # image_folder transforms: imagenet | cifar
        "image_size": None,
        "in_chans": 1,
        "test_fraction": 0.35,  # digits: share of each class in the evaluation (gallery = query) split
        "split_seed": 0,
    },
    "old": {
        "model": "fct_convnet",
        "model_kwargs": dict(_CONVNET),
        "classes": 5,  # trained on the first `classes` classes
        "label_smoothing": 0.1,
        "train": _train(),
    },
    "new": {
        "model": "fct_convnet",
        "model_kwargs": {**_CONVNET, "widths": [32, 64, 128], "depth": 2, "num_classes": 10},
        "classes": None,  # all classes
        "label_smoothing": 0.1,
        "bct_weight": 1.0,  # influence-loss weight when trained with BCT (--bct-old)
        "bct_synthesize_new_classes": True,  # BCT: new classes' old-classifier rows = mean old embeddings
        "train": _train(),
    },
    "side_info": {
        "backbone": "fct_convnet",
        "backbone_kwargs": {**_CONVNET, "widths": [32, 64], "num_classes": 0},
        "objective": "simclr",  # simclr | autoencoder
        "proj_dim": 64,
        "classes": 5,  # the old data, labels unused
        "temperature": 0.2,
        "augment": {"scale": [0.5, 1.0], "hflip": 0.0, "brightness": 0.4, "contrast": 0.4, "noise": 0.05},
        "train": _train(epochs=40, batch_size=128, lr=0.1),
    },
    "transformation": {
        "inner_dim": 256,
        "classes": None,  # trained on the new model's training data (all classes), as the paper
        "switch_to_eval_at": 0.5,  # official switch_mode_to_eval: BN in eval mode for the second half
        "train": _train(epochs=40, optimizer="adamw", lr=5e-3, weight_decay=3.0517578125e-05),
    },
    "eval": {"metric": "l2", "batch_size": 256, "num_workers": 0},
}


# Model keyword arguments are free-form: a recipe's mapping replaces the default one instead of being merged into it.
FREEFORM = (("old", "model_kwargs"), ("new", "model_kwargs"), ("side_info", "backbone_kwargs"))


def resolve_run_config(config_path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """:data:`DEFAULTS` <- a recipe file <- ``key=value`` overrides (unknown keys are errors)."""
    defaults = copy.deepcopy(DEFAULTS)
    if config_path is not None:
        raw = load_config(config_path)
        for section, key in FREEFORM:
            if isinstance(raw.get(section), dict) and isinstance(raw[section].get(key), dict):
                defaults[section][key] = copy.deepcopy(raw[section][key])
    return resolve_config(defaults, config_path, list(overrides))


def recipe_path(name: str) -> Path:
    """Path of a bundled recipe (``cifar100``, ``imagenet``, ``digits``)."""
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
        raise FileNotFoundError(f"no bundled recipe {name!r} (known: {known})")
    return path


def train_config(cfg: dict[str, Any], stage: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a stage (``old``, ``new``, ``side_info``, ``transformation``)."""
    return TrainConfig.from_dict(cfg[stage]["train"], **overrides)


def build_backbone(cfg: dict[str, Any], role: str) -> nn.Module:
    """A fresh old or new embedding model from the config."""
    if role not in ("old", "new"):
        raise ValueError(f"backbone role must be 'old' or 'new', got {role!r}")
    return create_model(cfg[role]["model"], **copy.deepcopy(cfg[role]["model_kwargs"]))


def build_side_info(cfg: dict[str, Any]) -> SideInfoModel:
    """A fresh side-information model from the config."""
    s = cfg["side_info"]
    shape = None
    if s["objective"] == "autoencoder":
        size = cfg["data"]["image_size"] or 8
        shape = [int(cfg["data"]["in_chans"]), int(size), int(size)]
    return create_model(
        "fct_side_info",
        backbone=s["backbone"],
        backbone_kwargs=copy.deepcopy(s["backbone_kwargs"]),
        objective=s["objective"],
        proj_dim=int(s["proj_dim"]),
        image_shape=shape,
    )


def build_transformation(
    cfg: dict[str, Any], old_model: nn.Module, new_model: nn.Module, side_model: SideInfoModel | None
) -> FCTTransformation:
    """A fresh transformation sized from the models (``side_model=None``: FCT without side information)."""
    return create_model(
        "fct_transformation",
        old_dim=int(old_model.embedding_dim),
        new_dim=int(new_model.embedding_dim),
        side_info_dim=int(side_model.side_info_dim) if side_model is not None else 0,
        inner_dim=int(cfg["transformation"]["inner_dim"]),
    )


def load_model(path: str | Path) -> nn.Module:
    """A model saved by a stage (a ``save_pretrained`` folder), in eval mode."""
    return from_pretrained(path).eval()


def run_stage(
    cfg: dict[str, Any],
    stage: str,
    *,
    old_model: nn.Module | None = None,
    new_model: nn.Module | None = None,
    side_model: SideInfoModel | None = None,
    bct: bool = False,
    seed: int | None = None,
    **train_overrides: Any,
) -> nn.Module:
    """Build and train one stage on the configured data; returns the trained model.

    ``stage``: ``old``, ``new`` (``bct=True`` with ``old_model`` for BCT), ``side_info``, or ``transformation``
    (needs ``old_model`` and ``new_model``; ``side_model=None`` trains FCT without side information).
    """
    if seed is not None:
        train_overrides["seed"] = seed
    tcfg = train_config(cfg, stage, **train_overrides)
    torch.manual_seed(tcfg.seed)  # model init follows the stage's seed
    data = build_dataset(cfg["data"], "train", cfg[stage]["classes"])
    if stage in ("old", "new"):
        if bct and (stage != "new" or old_model is None):
            raise ValueError("BCT trains the new model and needs the old model")
        model = build_backbone(cfg, stage)
        train_backbone(
            model,
            data,
            tcfg,
            label_smoothing=float(cfg[stage]["label_smoothing"]),
            bct_old_model=old_model if bct else None,
            bct_weight=float(cfg["new"]["bct_weight"]),
            bct_synthesize_new_classes=bool(cfg["new"]["bct_synthesize_new_classes"]),
        )
        return model.eval()
    if stage == "side_info":
        model = build_side_info(cfg)
        aug = cfg["side_info"]["augment"]
        augment = BatchAugment(**{**aug, "scale": tuple(aug["scale"])})
        train_side_info(model, data, tcfg, augment, float(cfg["side_info"]["temperature"]))
        return model.eval()
    if stage == "transformation":
        if old_model is None or new_model is None:
            raise ValueError("training the transformation needs the old and the new model")
        model = build_transformation(cfg, old_model, new_model, side_model)
        at = cfg["transformation"]["switch_to_eval_at"]
        train_transformation(model, old_model, new_model, side_model, data, tcfg, None if at is None else float(at))
        return model.eval()
    raise ValueError(f"unknown stage {stage!r}; choose old, new, side_info or transformation")
