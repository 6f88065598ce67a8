"""The FCT chain on a recipe: each stage built and trained into its run folder, then the evaluation table.

:func:`train_chain` is the ``train`` command (one run folder, one sub-folder per stage, the table in
``results.json``); :func:`train_stage` is one stage, as the stage commands and the chain run it; :func:`evaluate`
embeds the evaluation split with the trained models, backfills the old gallery through the transformations (with
:func:`bramley.fct.backfill.transform_gallery`, as a deployed system would) and scores every case.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from bramley.core.errors import ConfigError
from bramley.core.recipe import Recipe, build_model
from bramley.core.retrieval import retrieval_metrics

from .backfill import load_gallery, save_gallery, transform_gallery
from .data import build_dataset, class_subset, num_old_classes
from .models import EmbeddingNet, SideInfoModel
from .recipe import CASES, STAGES, stage_model, stage_train_config, stages_for
from .train import check_images_fit, embed_dataset, train_backbone, train_side_info, train_transformation

__all__ = [
    "METRIC_KEYS",
    "check_backbone",
    "check_embedder",
    "check_stages",
    "embedding_size",
    "evaluate",
    "table_rows",
    "train_chain",
    "train_stage",
]

#: The metrics of the evaluation table (CMC top-1 / top-5, mAP, mAP@R, in percent).
METRIC_KEYS = ("top1", "top5", "mAP", "mAP@R")


# ---------------------------------------------------------------------------------------------------------- models
def _backbone_spec(recipe: Recipe, stage: str, num_classes: int) -> tuple[str, dict[str, Any], str]:
    """A backbone stage's model, its ``num_classes`` set from the data (or checked against it)."""
    name, kwargs, where = stage_model(recipe, stage)
    if kwargs.setdefault("num_classes", num_classes) != num_classes:
        raise ConfigError(
            f"{where}.kwargs.num_classes={kwargs['num_classes']} but the {stage} model's data has {num_classes} classes"
        )
    return name, kwargs, where


def _side_info_spec(recipe: Recipe) -> tuple[str, dict[str, Any], str]:
    name, kwargs, where = stage_model(recipe, "side_info")
    section = recipe.loss.side_info
    shape = None
    if section.objective == "autoencoder":
        size = recipe.data.image_size or 8  # digits are 8x8
        shape = [recipe.data.in_chans, size, size]
    args = {"backbone": name, "backbone_kwargs": kwargs, "objective": section.objective, "proj_dim": section.proj_dim}
    return "fct_side_info", {**args, "image_shape": shape}, where


def embedding_size(model: nn.Module) -> int:
    """The size of what ``model.embed`` returns (a backbone's embedding or the side information)."""
    return int(model.side_info_dim if isinstance(model, SideInfoModel) else model.embedding_dim)


def check_backbone(model: Any, what: str, classifier: bool = False) -> None:
    """Refuse a model that is not an FCT backbone (or, with ``classifier``, one without classifier)."""
    if not isinstance(model, EmbeddingNet):
        name = getattr(model, "model_config", {}).get("name", type(model).__name__)
        raise ConfigError(f"{what} must be an FCT embedding model (fct_convnet, fct_resnet18/50), got {name}")
    if classifier and model.head.classifier is None:
        raise ConfigError(f"{what} has no classifier (num_classes=0): BCT needs the old classifier")


def check_embedder(model: Any, what: str) -> None:
    """Refuse a model without images -> embedding (``embed``): neither a backbone nor a side-information model."""
    if not isinstance(model, EmbeddingNet | SideInfoModel):
        name = getattr(model, "model_config", {}).get("name", type(model).__name__)
        raise ConfigError(f"{what} must be an FCT embedding or side-information model, got {name}")


# ---------------------------------------------------------------------------------------------------------- stages
def check_stages(recipe: Recipe, stages: Sequence[str], num_classes: int, out_dir: str | os.PathLike) -> None:
    """Every setting of ``stages`` checked before anything trains: budgets (for a run writing to ``out_dir``), model
    arguments (each model is built on the meta device: no memory, no compute), the BCT sizes. A typo in the last
    stage's settings is an error now, not after hours of training."""
    old_classes = num_old_classes(recipe.data, num_classes)
    meta: dict[str, nn.Module] = {}
    with torch.device("meta"):
        for stage in stages:
            stage_train_config(recipe, stage, out_dir)
            if stage in ("old", "new", "bct"):
                classes = old_classes if stage == "old" else num_classes
                meta[stage] = build_model(*_backbone_spec(recipe, stage, classes))
            elif stage == "side_info":
                meta[stage] = build_model(*_side_info_spec(recipe))
    if "bct" in meta and "old" in meta:
        _check_bct(meta["old"], meta["bct"])


def _check_bct(old: nn.Module, new: nn.Module) -> None:
    check_backbone(old, "the old model", classifier=True)
    if old.embedding_dim != new.embedding_dim:
        raise ConfigError(
            f"BCT needs equal embedding sizes: the old model's is {old.embedding_dim}, the new model's (model.kwargs) "
            f"{new.embedding_dim}"
        )


def train_stage(
    recipe: Recipe,
    stage: str,
    out_dir: str | os.PathLike | None,
    train_data: Dataset,
    num_classes: int,
    *,
    old_model: nn.Module | None = None,
    new_model: nn.Module | None = None,
    side_model: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """Build and train one stage (see :data:`bramley.fct.recipe.STAGES`) into ``out_dir`` (its run folder).

    Args:
        recipe: the resolved recipe.
        stage: ``old``, ``new``, ``bct`` (needs ``old_model``), ``side_info``, ``transformation`` (needs the old,
            new and side-information models) or ``transformation_no_side_info`` (the old and new models).
        out_dir: the stage's run folder (``None``: nothing on disk).
        train_data: the whole training split (the stage takes the old classes where it trains on them).
        num_classes: its number of classes.
        old_model, new_model, side_model: the trained models a stage builds on (frozen).

    Returns:
        ``(trained model in eval mode, the trainer's final metrics)``.
    """
    cfg = stage_train_config(recipe, stage, out_dir)
    torch.manual_seed(cfg.seed)  # the model's initialisation follows the stage's seed
    old_classes = num_old_classes(recipe.data, num_classes)
    data = class_subset(train_data, old_classes) if stage in ("old", "side_info") else train_data
    if stage in ("old", "new", "bct"):
        model = build_model(*_backbone_spec(recipe, stage, old_classes if stage == "old" else num_classes))
        check_images_fit(model, data, "the training data")
        if stage == "bct":
            if old_model is None:
                raise ValueError("the bct stage needs the old model")
            _check_bct(old_model, model)
        bct = recipe.loss.bct
        metrics = train_backbone(
            model,
            data,
            cfg,
            label_smoothing=recipe.loss.label_smoothing,
            bct_old_model=old_model if stage == "bct" else None,
            bct_weight=bct.weight,
            bct_synthesize_new_classes=bct.synthesize_new_classes,
        )
    elif stage == "side_info":
        model = build_model(*_side_info_spec(recipe))
        check_images_fit(model, data, "the training data")
        section = recipe.loss.side_info
        metrics = train_side_info(model, data, cfg, section.augment, section.temperature)
    elif stage in ("transformation", "transformation_no_side_info"):
        with_side = stage == "transformation"
        if old_model is None or new_model is None or (with_side and side_model is None):
            raise ValueError(
                f"the {stage} stage needs the old and new models" + (" and side info" if with_side else "")
            )
        check_backbone(old_model, "the old model")
        check_backbone(new_model, "the new model")
        if with_side:
            check_embedder(side_model, "the side-information model")
        check_images_fit(old_model, data, "the training data")
        kwargs = {
            "old_dim": embedding_size(old_model),
            "new_dim": embedding_size(new_model),
            "side_info_dim": embedding_size(side_model) if with_side else 0,
            "inner_dim": recipe.loss.transformation.inner_dim,
        }
        model = build_model("fct_transformation", kwargs, where="loss.transformation")
        at = recipe.loss.transformation.switch_to_eval_at
        metrics = train_transformation(model, old_model, new_model, side_model if with_side else None, data, cfg, at)
    else:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return model.eval(), metrics


# ------------------------------------------------------------------------------------------------------ evaluation
def evaluate(
    recipe: Recipe,
    models: Mapping[str, nn.Module],
    cases: Sequence[str],
    gallery_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, float]]:
    """Score each case (see :data:`bramley.fct.recipe.CASES`) on the evaluation split (gallery = queries).

    The old gallery (old embeddings, side information, labels) is written to ``gallery_dir/old.safetensors`` and
    backfilled by each trained transformation into ``backfilled[_no_side_info].safetensors``.
    """
    test, _ = build_dataset(recipe.data, "val")
    batch_size = recipe.eval.batch_size or recipe.train.batch_size
    kw = {"batch_size": batch_size, "device": device, "num_workers": recipe.train.num_workers}
    emb: dict[str, torch.Tensor] = {}
    labels = None
    for name in ("old", "new", "bct", "side_info"):
        if name in models:
            emb[name], labels = embed_dataset(models[name], test, **kw)
    gallery_dir = Path(gallery_dir)
    if "old" in emb:
        gallery = gallery_dir / "old.safetensors"  # what the old system stored: embeddings, side information, labels
        side = {"side_info": emb["side_info"]} if "side_info" in emb else {}
        save_gallery(gallery, embeddings=emb["old"], labels=labels, **side)
        for stage, key in (("transformation_no_side_info", "h_plain"), ("transformation", "h_side")):
            if stage in models:
                out = gallery_dir / f"backfilled{stage.removeprefix('transformation')}.safetensors"
                transform_gallery(
                    models[stage], gallery, out, batch_size=batch_size, device=device, resume=False, progress=False
                )
                emb[key] = load_gallery(out)["embeddings"]
    pairs = {
        "old_old": ("old", "old"),
        "bct": ("bct", "old"),
        "fct_no_side_info": ("new", "h_plain"),
        "fct": ("new", "h_side"),
        "new_new": ("new", "new"),
        "bct_new_new": ("bct", "bct"),
    }
    metric = recipe.eval.metric
    return {case: retrieval_metrics(emb[pairs[case][0]], emb[pairs[case][1]], labels, metric=metric) for case in cases}


def table_rows(cases: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the evaluation table: case, query model, gallery and the metrics."""
    rows = []
    for case, metrics in cases.items():
        name, query, gallery, _ = CASES[case]
        rows.append({"case": name, "query": query, "gallery": gallery, **{k: metrics[k] for k in METRIC_KEYS}})
    return rows


# ----------------------------------------------------------------------------------------------------------- chain
def train_chain(recipe: Recipe, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Train the stages that ``eval.cases`` need into ``out_dir/<stage>/`` and evaluate them.

    Every stage folder is a run folder (``model.safetensors`` + ``config.json``: ``load_model(out_dir / stage)``);
    the galleries go to ``out_dir/galleries/``. Under ``torchrun`` every process trains, the first one evaluates.

    Returns:
        ``{"stages": {stage: final training metrics}, "cases": {case: metrics}, "table": rows}``.
    """
    from bramley.core.report import format_table
    from bramley.core.train.distributed import init_distributed

    out_dir = Path(out_dir)
    info, device = init_distributed(recipe.train.device)
    stages = stages_for(recipe.eval.cases)
    train, num_classes = build_dataset(recipe.data, "train")
    check_stages(recipe, stages, num_classes, out_dir)
    models: dict[str, nn.Module] = {}
    metrics: dict[str, dict[str, float]] = {}
    for stage in stages:
        models[stage], metrics[stage] = train_stage(
            recipe,
            stage,
            out_dir / stage,
            train,
            num_classes,
            old_model=models.get("old"),
            new_model=models.get("new"),
            side_model=models.get("side_info"),
        )
    if not info.is_main:
        return {"stages": metrics}
    cases = evaluate(recipe, models, recipe.eval.cases, out_dir / "galleries", device)
    rows = table_rows(cases)
    print(format_table(rows, digits=1))
    return {"stages": metrics, "cases": cases, "table": rows}
