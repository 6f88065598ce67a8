"""FCT's recipe schema: one file describes the whole chain, from the old model to the evaluation table.

The chain trains up to six models (the *stages*) and evaluates them on the evaluation split, which is both gallery
and query set::

    old                          the old model, by classification on the old classes
    new                          the new model, by classification on every class
    bct                          the BCT baseline: the new model trained with the old classifier's influence loss
    side_info                    the side-information model, without labels, on the old classes' images
    transformation               h(old embedding, side information) -> new embedding, MSE to the frozen new model
    transformation_no_side_info  h(old embedding) -> new embedding: FCT without side information

The six recipe sections (:mod:`bramley.core.recipe`) hold them as follows::

    model:  the new model (the BCT model has the same architecture); num_classes comes from the data
    data:   the images (:class:`FCTData`): bundled digits or an ImageFolder tree, and how many classes are "old"
    loss:   one sub-section per stage that differs from the new model (:class:`FCTLoss`): the network it trains
            (``model``), its objective's settings, and ``optim`` / ``train`` keys replacing the recipe's for it alone
    optim:  the backbones' optimizer and schedule (old, new, BCT)
    train:  the backbones' budget and the run's seed and device (every stage inherits them)
    eval:   distance, embedding batch size and the cases of the evaluation table (:class:`FCTEval`); the chain
            trains the stages those cases need

Stage ``s`` trains with seed ``train.seed + STAGE_SEEDS[s]``: the stages differ, and one seed reproduces a stage
whether it runs in the chain (``train``) or alone (``train-backbone``, ``train-side-info``, ``train-transformation``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from bramley.core.config import build_section, section_dict
from bramley.core.errors import ConfigError
from bramley.core.recipe import EvalSection, ModelSection, OptimSection, Recipe, RecipeSchema, TrainSection
from bramley.core.train import TrainConfig

from .augment import BatchAugment

__all__ = [
    "CASES",
    "SCHEMA",
    "STAGES",
    "STAGE_SEEDS",
    "BCTSection",
    "FCTData",
    "FCTEval",
    "FCTLoss",
    "OldStage",
    "SideInfoStage",
    "TransformationStage",
    "stage_model",
    "stage_train_config",
    "stages_for",
]

#: The stages in the order the chain trains them.
STAGES = ("old", "new", "bct", "side_info", "transformation_no_side_info", "transformation")
#: Offsets of the stages' seeds from ``train.seed``.
STAGE_SEEDS = {
    "old": 0,
    "new": 1000,
    "bct": 2000,
    "side_info": 3000,
    "transformation_no_side_info": 4000,
    "transformation": 5000,
}
#: The evaluation table's cases: ``id -> (row name, query model, gallery, stages needed)``.
CASES = {
    "old_old": ("old/old", "old", "old", ("old",)),
    "bct": ("BCT", "new (BCT)", "old", ("old", "bct")),
    "fct_no_side_info": ("FCT w/o side-info", "new", "h(old)", ("old", "new", "transformation_no_side_info")),
    "fct": ("FCT w/ side-info", "new", "h(old, side)", ("old", "new", "side_info", "transformation")),
    "new_new": ("new/new", "new", "new", ("new",)),
    "bct_new_new": ("BCT new/new", "new (BCT)", "new (BCT)", ("old", "bct")),
}
CaseName = Literal["old_old", "bct", "fct_no_side_info", "fct", "new_new", "bct_new_new"]


# ------------------------------------------------------------------------------------------------------------ data
@dataclass
class FCTData:
    """``data``: the images every stage trains on, and the evaluation split (gallery = queries, every class).

    ``source: digits`` is scikit-learn's bundled digits (``test_fraction`` of each class, split with ``split_seed``,
    is the evaluation split); ``source: folder`` reads ``<root>/<train_dir>`` and ``<root>/<val_dir>`` in ImageFolder
    layout (the official ``training`` / ``validation`` folders) with the official ``preset`` transforms at
    ``image_size``. The old model and the side-information model train on the first ``old_classes`` classes (default:
    the first half, as in the paper), every other stage on all of them.
    """

    source: Literal["digits", "folder"] = "digits"
    root: str | None = None
    train_dir: str = "training"
    val_dir: str = "validation"
    preset: Literal["imagenet", "cifar"] = "imagenet"
    image_size: int | None = None
    in_chans: int = 1
    test_fraction: float = 0.35
    split_seed: int = 0
    old_classes: int | None = None

    def __post_init__(self) -> None:
        if self.image_size is not None and self.image_size < 1:
            raise ConfigError(f"data.image_size must be >= 1, got {self.image_size}")
        if self.in_chans not in (1, 3):
            raise ConfigError(f"data.in_chans must be 1 or 3, got {self.in_chans}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.old_classes is not None and self.old_classes < 1:
            raise ConfigError(f"data.old_classes must be >= 1, got {self.old_classes}")


# ------------------------------------------------------------------------------------------------------------ loss
def _check_budget(section: Any, stage: str) -> None:
    """``loss.<stage>.optim`` / ``.train``: known keys of the recipe's ``optim`` / ``train`` with values of their types
    (ranges are checked once merged, by :func:`stage_train_config`); stored with the types made exact."""
    for name, kind in (("optim", OptimSection), ("train", TrainSection)):
        given = getattr(section, name)
        typed = section_dict(build_section(kind, given, f"loss.{stage}.{name}."))
        setattr(section, name, {key: typed[key] for key in given})


@dataclass
class OldStage:
    """``loss.old``: the old model (``model``; an empty name means the recipe's model, with these kwargs merged over
    its kwargs), trained by classification on the old classes; ``optim`` / ``train`` replace the recipe's keys."""

    model: ModelSection = field(default_factory=ModelSection)
    optim: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_budget(self, "old")


@dataclass
class BCTSection:
    """``loss.bct``: the BCT baseline's influence loss (Shen et al., CVPR 2020): its ``weight``, and whether it uses
    BCT's synthesized classifier over every class (the mean L2-normalised old embedding of each class, as the BCT
    authors' code builds it) instead of the old model's trained classifier, which covers the old classes only."""

    weight: float = 1.0
    synthesize_new_classes: bool = True

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise ConfigError(f"loss.bct.weight must be >= 0, got {self.weight}")


@dataclass
class SideInfoStage:
    """``loss.side_info``: the side-information model: an encoder (``model``, empty name: the recipe's model; built
    without classifier) trained without labels with SimCLR (projection to ``proj_dim``, NT-Xent at ``temperature`` on
    two ``augment`` views) or as a denoising autoencoder; ``optim`` / ``train`` replace the recipe's keys."""

    model: ModelSection = field(default_factory=ModelSection)
    objective: Literal["simclr", "autoencoder"] = "simclr"
    proj_dim: int = 64
    temperature: float = 0.5
    augment: BatchAugment = field(default_factory=BatchAugment)
    optim: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.proj_dim < 1:
            raise ConfigError(f"loss.side_info.proj_dim must be >= 1, got {self.proj_dim}")
        if self.temperature <= 0:
            raise ConfigError(f"loss.side_info.temperature must be > 0, got {self.temperature}")
        a = self.augment
        for name, low, high in (("scale", 0.0, 1.0), ("ratio", 0.0, float("inf"))):
            lo, hi = getattr(a, name)
            if not low < lo <= hi <= high:
                raise ConfigError(f"loss.side_info.augment.{name} must be [low, high] with {low} < low <= high")
        if not 0.0 <= a.hflip <= 1.0:
            raise ConfigError(f"loss.side_info.augment.hflip must be in [0, 1], got {a.hflip}")
        for name in ("brightness", "contrast", "noise"):
            if getattr(a, name) < 0:
                raise ConfigError(f"loss.side_info.augment.{name} must be >= 0, got {getattr(a, name)}")
        _check_budget(self, "side_info")


@dataclass
class TransformationStage:
    """``loss.transformation``: the forward transformation (both variants, with and without side information): its
    MLP's ``inner_dim``, the fraction of the steps after which its BatchNorm trains in eval mode (the official
    ``switch_mode_to_eval``; ``null``: never); ``optim`` / ``train`` replace the recipe's keys."""

    inner_dim: int = 2048
    switch_to_eval_at: float | None = 0.5
    optim: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inner_dim < 1:
            raise ConfigError(f"loss.transformation.inner_dim must be >= 1, got {self.inner_dim}")
        if self.switch_to_eval_at is not None and not 0.0 <= self.switch_to_eval_at <= 1.0:
            raise ConfigError(f"loss.transformation.switch_to_eval_at must be in [0, 1], got {self.switch_to_eval_at}")
        _check_budget(self, "transformation")


@dataclass
class FCTLoss:
    """``loss``: the backbones' label smoothing (old, new, BCT) and one sub-section per stage that is not the new
    model."""

    label_smoothing: float = 0.1
    old: OldStage = field(default_factory=OldStage)
    bct: BCTSection = field(default_factory=BCTSection)
    side_info: SideInfoStage = field(default_factory=SideInfoStage)
    transformation: TransformationStage = field(default_factory=TransformationStage)

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")


# ------------------------------------------------------------------------------------------------------------ eval
def _default_cases() -> list[str]:
    return ["old_old", "fct", "new_new"]


@dataclass
class FCTEval(EvalSection):
    """``eval``: the evaluation table. ``metric``: the distance (``l2``, the official one, or ``cosine``);
    ``batch_size``: images per embedding batch (default: train.batch_size); ``cases``: its rows (see :data:`CASES`);
    the chain trains the stages they need."""

    metric: Literal["l2", "cosine"] = "l2"
    cases: list[CaseName] = field(default_factory=_default_cases)

    def __post_init__(self) -> None:  # every and batch_size are checked by core (they set TrainConfig fields)
        if not self.cases:
            raise ConfigError(f"eval.cases is empty; choose from {', '.join(CASES)}")
        if len(set(self.cases)) != len(self.cases):
            raise ConfigError(f"eval.cases lists a case twice: {self.cases}")


SCHEMA = RecipeSchema("fct", data=FCTData, loss=FCTLoss, eval=FCTEval, default_recipe="digits")


# ---------------------------------------------------------------------------------------------------------- stages
def stages_for(cases: list[str]) -> list[str]:
    """The stages the evaluation ``cases`` need, in training order."""
    needed = {stage for case in cases for stage in CASES[case][3]}
    return [stage for stage in STAGES if stage in needed]


def _stage_section(recipe: Recipe, stage: str) -> Any:
    """The ``loss`` sub-section of a stage (``None`` for the new model and BCT, which use the recipe's sections)."""
    if stage not in STAGE_SEEDS:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    key = "transformation" if stage.startswith("transformation") else stage
    return getattr(recipe.loss, key, None) if key in ("old", "side_info", "transformation") else None


def stage_train_config(recipe: Recipe, stage: str, out_dir: Any = None) -> TrainConfig:
    """The trainer's settings of one stage: the recipe's ``optim`` / ``train`` with the stage's keys replaced and the
    stage's seed, writing to ``out_dir``.

    Raises:
        ConfigError: a merged value is out of range, named with the stage's recipe keys.
    """
    section = _stage_section(recipe, stage)
    changes = {**section.optim, **section.train} if section is not None else {}
    changes["seed"] = changes.get("seed", recipe.train.seed) + STAGE_SEEDS[stage]
    try:
        return recipe.train_config(out_dir, **changes)
    except ConfigError as e:
        if section is None:
            raise
        key = "transformation" if stage.startswith("transformation") else stage
        raise ConfigError(f"stage {stage} (loss.{key}.optim / .train over optim / train): {e}") from None


def stage_model(recipe: Recipe, stage: str) -> tuple[str, dict[str, Any], str]:
    """``(name, kwargs, recipe key)`` of the network a stage trains (for ``side_info``: its encoder)."""
    section = _stage_section(recipe, stage)
    if stage.startswith("transformation"):
        raise ValueError("the transformation is sized from the models it connects, see bramley.fct.pipeline")
    if section is None:
        return recipe.model.name, dict(recipe.model.kwargs), "model"
    where = f"loss.{stage}.model"
    if section.model.name:
        return section.model.name, dict(section.model.kwargs), where
    return recipe.model.name, {**recipe.model.kwargs, **section.model.kwargs}, where
