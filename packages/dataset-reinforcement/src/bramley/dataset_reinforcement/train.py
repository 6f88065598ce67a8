"""The reinforced classification recipe: any bramley (or timm) classifier trained on a reinforced dataset.

Recipes (``bramley dataset-reinforcement train --recipe NAME|FILE``) have core's six sections
(:mod:`bramley.core.recipe`); ``data`` is :class:`ReinforcedData` (the images, the reinforced store or the teachers
that make it, ``p``, ``densify``, the augmentations) and ``loss`` is :class:`DistillLoss` (``mode``: ``reinforced``,
``plain`` or ``online_kd``, at the same augmentations and budget). Training is core's
:func:`~bramley.core.classification.train_classifier`; evaluation reports top-1, NLL and ECE.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bramley.core.data.reinforced import AugmentConfig
from bramley.core.errors import ConfigError
from bramley.core.recipe import RecipeSchema

__all__ = ["RECIPES", "DistillLoss", "ReinforceSettings", "ReinforcedData", "import_method_models", "train"]


# ------------------------------------------------------------------------------------------------------ sections
@dataclass
class ReinforceSettings:
    """``data.reinforce``: how ``reinforce`` (and ``train`` without a store) labels the data.

    ``teachers``: teacher specs (:func:`~.reinforce.load_teacher`: run folders, ``.safetensors``, ``timm:NAME``);
    ``num_augmentations``: NS per image; ``topk``: probabilities kept per augmentation; ``seed``: augmentation seed.
    """

    teachers: list[str] = field(default_factory=list)
    num_augmentations: int = 10
    topk: int = 10
    seed: int = 0
    shard_size: int = 256
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("num_augmentations", "topk", "shard_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.reinforce.{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ConfigError(f"data.reinforce.seed must be >= 0, got {self.seed}")


@dataclass
class ReinforcedData:
    """``data``: the original images, their reinforcement and how training samples it.

    ``source``: ``folder`` (``train`` / ``val`` ImageFolder roots), ``synthetic`` (core's procedural images,
    ``synthetic`` knobs) or ``digits``; ``seed``: the bundled data's seed. ``reinforced``: the store's folder (null:
    ``train`` reinforces into ``<out>/reinforced`` with ``reinforce.teachers``). ``p``: probability of a stored
    augmentation (the paper: 0.99); ``densify``: ``smooth`` | ``zeros``; ``augment``: :class:`AugmentConfig` fields
    (``size`` defaults to ``image_size``).
    """

    source: Literal["folder", "synthetic", "digits"] = "folder"
    train: str | None = None
    val: str | None = None
    image_size: int = 224
    crop_pct: float = 0.875
    seed: int = 0
    synthetic: dict[str, Any] = field(default_factory=dict)
    reinforced: str | None = None
    p: float = 0.99
    densify: Literal["smooth", "zeros"] = "smooth"
    augment: dict[str, Any] = field(default_factory=dict)
    reinforce: ReinforceSettings = field(default_factory=ReinforceSettings)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ConfigError(f"data.p (probability of a stored augmentation) must be in [0, 1], got {self.p}")
        if self.image_size < 1 or not 0.0 < self.crop_pct <= 1.0:
            raise ConfigError(f"data.image_size must be >= 1 and data.crop_pct in (0, 1]: {self.image_size}, ...")
        self.augment_config()  # its own checks, now

    def augment_config(self) -> AugmentConfig:
        """The augmentations: ``augment`` over the paper's defaults, at ``image_size``."""
        values = {"size": self.image_size, **self.augment}
        try:
            return AugmentConfig.from_dict(values)
        except ConfigError as e:
            raise ConfigError(f"data.augment: {e}") from None


@dataclass
class DistillLoss:
    """``loss``: ``mode`` ``reinforced`` (KL to the stored targets), ``plain`` (the same augmentations, one-hot
    targets) or ``online_kd`` (KL to the teachers run on every batch); ``label_smoothing`` of the one-hot targets
    (plain training, and the ``1 - p`` share of fresh samples)."""

    mode: Literal["reinforced", "plain", "online_kd"] = "reinforced"
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")


#: The recipe schema of ``bramley dataset-reinforcement train``.
RECIPES = RecipeSchema("dataset_reinforcement", data=ReinforcedData, loss=DistillLoss, default_recipe="imagenet_plus")


# ------------------------------------------------------------------------------------------------------ models
def import_method_models(name: str) -> None:
    """Import every installed bramley method package (registering their models) when ``name`` is not a registered
    model or a path, so a recipe can name any bramley model (``mobileone_s0``, ``fastvit_t8``)."""
    from bramley.core.cli import discover_methods
    from bramley.core.registry import list_models

    if name in list_models() or Path(name).exists():
        return
    for entry in discover_methods().values():
        importlib.import_module(entry.value.split(":")[0].rsplit(".", 1)[0])


def teacher_ensemble(specs: list[str], num_classes: int, device: str = "cpu"):
    """The :class:`~.reinforce.TeacherEnsemble` of ``specs``."""
    from .reinforce import TeacherEnsemble, load_teacher

    if not specs:
        raise ConfigError("data.reinforce.teachers is empty: name the teacher models (run folders, timm:NAME)")
    return TeacherEnsemble([load_teacher(s, num_classes, device) for s in specs])


# ------------------------------------------------------------------------------------------------------- data
def datasets(recipe: Any, out_dir: str | os.PathLike | None) -> tuple[Any, Any, Any]:
    """``(train, val, teacher)`` of a recipe: reinforces into ``<out>/reinforced`` first when needed."""
    from .data import EvalImages, ReinforcedDataset, raw_images

    data, mode = recipe.data, recipe.loss.mode
    common = {"image_size": data.image_size, "seed": data.seed, "synthetic": data.synthetic}
    train_images = raw_images(data.source, "train", root=data.train, **common)
    augment = data.augment_config()
    teacher, store = None, None
    if mode == "online_kd" or (mode == "reinforced" and data.reinforced is None):
        teacher = teacher_ensemble(data.reinforce.teachers, train_images.num_classes)
    if mode == "reinforced":
        store = data.reinforced
        if store is None:
            if out_dir is None:
                raise ConfigError("data.reinforced is not set and there is no run folder to reinforce into")
            store = Path(out_dir) / "reinforced"
            reinforce_images(train_images, teacher, store, augment, data.reinforce)
        train = ReinforcedDataset(
            train_images, store, data.p, data.densify, None, recipe.loss.label_smoothing, recipe.train.seed
        )
        augment = train.augment.config
    else:
        train = ReinforcedDataset(
            train_images, None, 0.0, data.densify, augment, recipe.loss.label_smoothing, recipe.train.seed
        )
    val = None
    if data.source != "folder" or data.val:
        val_images = raw_images(data.source, "val", root=data.val, **common)
        val = EvalImages(val_images, data.image_size, augment.mean, augment.std, data.crop_pct)
    return train, val, teacher


def reinforce_images(images: Any, teacher: Any, out: Path, augment: AugmentConfig, settings: ReinforceSettings):
    """:func:`~.reinforce.reinforce` with a recipe's settings, the teachers named in the manifest."""
    from .reinforce import reinforce

    return reinforce(
        images,
        teacher,
        out,
        augment,
        num_augmentations=settings.num_augmentations,
        topk=settings.topk,
        seed=settings.seed,
        shard_size=settings.shard_size,
        batch_size=settings.batch_size,
        meta={"teachers": list(settings.teachers)},
    )


# ------------------------------------------------------------------------------------------------------- train
def train(recipe: Any, out_dir: str | os.PathLike | None) -> dict[str, Any]:
    """``train``: core's classification run on the recipe's reinforced (or plain, or online-KD) data."""
    from bramley.core.classification import train_classifier

    from .losses import OnlineDistillationLoss, SoftTargetLoss
    from .metrics import calibration_eval

    import_method_models(recipe.model.name)
    train_data, val_data, teacher = datasets(recipe, out_dir)
    loss = OnlineDistillationLoss(teacher) if recipe.loss.mode == "online_kd" else SoftTargetLoss()
    results = train_classifier(recipe, out_dir, train_data, val_data, loss_fn=loss, eval_fn=calibration_eval)
    results["mode"] = recipe.loss.mode
    if recipe.loss.mode == "reinforced":
        results["reinforced"] = str(train_data.store.root)
    return results
