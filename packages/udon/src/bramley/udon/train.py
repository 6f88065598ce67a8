"""Training UDON and its baselines on core's trainer: recipe sections, losses, the UnED evaluation, the run.

Recipes (``bramley udon train --recipe NAME|FILE``) have core's six sections. ``model.name`` chooses the method:
``udon`` (teachers + universal student, :func:`~bramley.udon.losses.udon_loss`) or ``udon_joint`` (one embedding,
one classifier over every domain's classes: the joint baseline, or a specialist with one domain). ``data`` is
:class:`UdonData` (UnED folders, or the mini domains made here) with the domain sampler, ``loss`` is
:class:`UdonLoss` (the loss's constants and the method's two optimizer settings: the backbone's learning-rate scale
and its frozen epochs, which core's ``optim`` section has no key for).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn

from bramley.core.errors import ConfigError, DataError
from bramley.core.recipe import RecipeSchema

from .data import MINI_DOMAINS, EvalImages, MultiDomainDataset, UnedImages, mini_domain, num_mini_classes
from .losses import LossWeights, cosine_cross_entropy, udon_loss
from .sampler import STRATEGIES, DomainBatchSampler, DynamicWeights
from .uned import evaluate_descriptors, knn_setup

__all__ = [
    "RECIPES",
    "FreezeBackbone",
    "JointLoss",
    "UdonData",
    "UdonLoss",
    "UdonTrainLoss",
    "build_data",
    "embed_parts",
    "knn_eval",
    "train",
]

METHODS = ("udon", "udon_joint")


@dataclass
class UdonData:
    """``data``: the domains, where they come from, and how batches pick them.

    ``source: uned`` reads ``root`` in the UnED layout (``info_files/<domain>/<split>.json``, ``images/``);
    ``source: mini`` makes the mini domains here (no files). ``sampler`` is one of ``dynamic`` (UDON), ``round_robin``,
    ``uniform``, ``size``; ``update_every`` is the block length and dynamic update period in batches.
    """

    source: Literal["uned", "mini"] = "uned"
    root: str | None = None
    domains: list[str] = field(default_factory=list)
    train_split: str = "train"
    eval_split: str = "val"
    image_size: int = 224
    crop_pct: float = 0.875
    sampler: str = "dynamic"
    update_every: int = 1000
    k: int = 5

    def __post_init__(self) -> None:
        if self.sampler not in STRATEGIES:
            raise ConfigError(f"data.sampler={self.sampler!r} is not one of {', '.join(STRATEGIES)}")
        if self.update_every < 1 or self.k < 1 or self.image_size < 8:
            raise ConfigError("data.update_every and data.k must be >= 1 and data.image_size >= 8")
        if self.source == "mini":
            unknown = [d for d in self.domains if d not in MINI_DOMAINS]
            if unknown:
                raise ConfigError(f"data.domains: unknown mini domain {unknown[0]!r} ({', '.join(MINI_DOMAINS)})")
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"data.domains lists a domain twice: {self.domains}")


@dataclass
class UdonLoss:
    """``loss``: normface scale / margin, distillation temperature, the four term weights (UDON), and the
    backbone's learning-rate scale and frozen epochs (heads only train while the backbone is frozen)."""

    scale: float = 16.0
    margin: float = 0.0
    temperature: float = 0.1
    teacher_weight: float = 1.0
    student_weight: float = 1.0
    logits_weight: float = 1.0
    similarities_weight: float = 1.0
    backbone_lr_scale: float = 0.01
    frozen_epochs: int = 0

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.temperature <= 0:
            raise ConfigError(f"loss.scale and loss.temperature must be > 0, got {self.scale}, {self.temperature}")
        weights = (self.teacher_weight, self.student_weight, self.logits_weight, self.similarities_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError(f"loss weights must be >= 0 and not all 0, got {weights}")
        if self.backbone_lr_scale < 0 or self.frozen_epochs < 0:
            raise ConfigError("loss.backbone_lr_scale and loss.frozen_epochs must be >= 0")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(self.teacher_weight, self.student_weight, self.logits_weight, self.similarities_weight)


#: The recipe schema of ``bramley udon train``.
RECIPES = RecipeSchema("udon", data=UdonData, loss=UdonLoss, default_recipe="uned_vit_b16")


# --------------------------------------------------------------------------------------------------------- data
def _domains(data: UdonData) -> list[str]:
    if data.domains:
        return list(data.domains)
    if data.source == "mini":
        return list(MINI_DOMAINS)
    raise ConfigError("data.domains is empty: list the UnED domains to train on (e.g. [cars, sop])")


def build_data(data: UdonData, seed: int = 0) -> tuple[MultiDomainDataset, EvalImages]:
    """``(train, eval)`` datasets of a data section (the eval set holds each domain's kNN query and index splits)."""
    domains = _domains(data)
    if data.source == "mini":
        size = data.image_size
        train_parts = [(d, mini_domain(d, data.train_split, size, seed)) for d in domains]
        train = MultiDomainDataset(train_parts, [num_mini_classes(d) for d in domains])
        parts = {(d, s): mini_domain(d, s, size, seed) for d in domains for s in set(knn_setup(d, data.eval_split))}
        return train, EvalImages(parts)
    if not data.root:
        raise ConfigError("data.root is not set: give the UnED folder (info_files/ and images/ inside)")
    from bramley.core.data import eval_transform, train_transform

    train_tf = train_transform(data.image_size)
    eval_tf = eval_transform(data.image_size, crop_pct=data.crop_pct)
    train = MultiDomainDataset([(d, UnedImages(data.root, d, data.train_split, train_tf)) for d in domains])
    parts = {
        (d, s): UnedImages(data.root, d, s, eval_tf)
        for d in domains
        for s in sorted(set(knn_setup(d, data.eval_split)))
    }
    return train, EvalImages(parts)


# ------------------------------------------------------------------------------------------------------- losses
def _batch_domain(domains: torch.Tensor) -> int:
    domain = int(domains[0])
    if not bool((domains == domain).all()):
        raise DataError("a batch mixes domains; UDON batches come from one domain (use DomainBatchSampler)")
    return domain


def _check_labels(labels: torch.Tensor, num_classes: int, domain: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(f"domain {domain}: label {int(labels.max())} outside the model's {num_classes} classes")


class FreezeBackbone:
    """Trainer callback: the backbone runs without gradients for the first ``steps`` optimizer steps (the official
    ``frozen_epochs``: only the heads train); its state (the step) is checkpointed, so a resumed run knows."""

    def __init__(self, steps: int) -> None:
        self.steps, self.step = steps, 0

    @property
    def frozen(self) -> bool:
        return self.step < self.steps

    def __call__(self, trainer: Any) -> None:
        self.step = trainer.step

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class UdonTrainLoss:
    """The trainer's ``loss_fn`` for UDON: the four-term loss of the batch's domain; records the teacher loss for the
    dynamic sampler. Reports the terms, the teacher's batch accuracy and the domain."""

    def __init__(self, loss: UdonLoss, weights: DynamicWeights | None = None, freeze: FreezeBackbone | None = None):
        self.loss, self.weights, self.freeze = loss, weights, freeze

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels, domains = batch
        domain = _batch_domain(domains)
        module = getattr(model, "module", model)
        _check_labels(labels, module.num_classes[domain], domain)
        frozen = self.freeze is not None and self.freeze.frozen
        outputs = model(images, domain=domain, frozen_backbone=frozen)  # through the DDP wrapper: gradients sync
        l = self.loss
        total, terms = udon_loss(outputs, labels, l.weights, l.scale, l.margin, l.temperature)
        if self.weights is not None:
            self.weights.record(domain, terms["ce_teacher"])
        acc = (outputs["teacher_logits"].detach().argmax(-1) == labels).float().mean()
        return total, {**terms, "teacher_acc": acc}


class JointLoss:
    """The trainer's ``loss_fn`` for the one-head joint baseline (and specialists): normface cross-entropy over the
    union of every domain's classes (domain ``d``'s label ``y`` is class ``offsets[d] + y``)."""

    def __init__(self, loss: UdonLoss, weights: DynamicWeights | None = None, freeze: FreezeBackbone | None = None):
        self.loss, self.weights, self.freeze = loss, weights, freeze

    def __call__(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels, domains = batch
        module = getattr(model, "module", model)
        for d in domains.unique().tolist():
            _check_labels(labels[domains == d], module.num_classes[d], d)
        frozen = self.freeze is not None and self.freeze.frozen
        logits = model(images, frozen_backbone=frozen)["logits"]
        targets = labels + module.offsets[domains]
        ce = cosine_cross_entropy(logits, targets, self.loss.scale, self.loss.margin)
        if self.weights is not None:
            self.weights.record(_batch_domain(domains), ce.detach())
        return ce, {"ce": ce.detach(), "acc": (logits.detach().argmax(-1) == targets).float().mean()}


# --------------------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def embed_parts(model: nn.Module, data: EvalImages, batch_size: int = 256, device: Any = None) -> dict:
    """The universal embedding of every part of ``data``: ``{domain: {split: (N, D) tensor}}`` (model in eval mode)."""
    from torch.utils.data import DataLoader

    module = getattr(model, "module", model)
    device = device if device is not None else next(module.parameters()).device
    was_training = module.training
    module.eval()
    rows = []
    for images, _ in DataLoader(data, batch_size=batch_size):
        rows.append(module.embed(images.to(device)).float().cpu())
    module.train(was_training)
    every = torch.cat(rows) if rows else torch.zeros(0, 0)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for (domain, split), (start, stop) in data.spans.items():
        out.setdefault(domain, {})[split] = every[start:stop]
    return out


def label_table(data: EvalImages) -> dict[str, dict[str, list]]:
    """``{domain: {split: labels}}`` of an :class:`EvalImages`."""
    table: dict[str, dict[str, list]] = {}
    for (domain, split), labels in data.labels.items():
        table.setdefault(domain, {})[split] = labels
    return table


def knn_eval(data: EvalImages, split: str, k: int = 5):
    """The trainer's ``eval_fn``: the UnED table of the universal embedding on ``data``, flattened to
    ``mmp@k_<domain>``, ``r@1_<domain>`` (separate index), ``merged_mmp@k_<domain>`` and the means."""

    def eval_fn(model: nn.Module, loader: Iterable) -> dict[str, float]:
        del loader  # the eval set is embedded here in its own order
        table = evaluate_descriptors(embed_parts(model, data), label_table(data), split, k)
        return flatten_table(table)

    return eval_fn


def flatten_table(table: dict[str, Any]) -> dict[str, float]:
    """One flat metrics dict of an :func:`~bramley.udon.uned.evaluate_descriptors` table."""
    key = f"mmp@{table['k']}"
    metrics = {f"mean_{name}": value for name, value in table["mean"].items()}
    for protocol, prefix in (("separate", ""), ("merged", "merged_")):
        for domain, row in table.get(protocol, {}).items():
            metrics[f"{prefix}{key}_{domain}"] = row[key]
            metrics[f"{prefix}r@1_{domain}"] = row["r@1"]
    return metrics


# ---------------------------------------------------------------------------------------------------------- run
def param_groups(model: nn.Module, lr: float, backbone_scale: float, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: the heads at ``lr``, the backbone at ``lr * backbone_scale`` (both decayed, as officially)."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    return [
        {"params": heads, "lr": lr, "weight_decay": weight_decay},
        {"params": backbone, "lr": lr * backbone_scale, "weight_decay": weight_decay},
    ]


def make_trainer(
    recipe: Any,
    out_dir: str | os.PathLike | None,
    train_data: MultiDomainDataset,
    eval_data: EvalImages | None,
    model: nn.Module | None = None,
):
    """Core's :class:`~bramley.core.train.Trainer` set up for ``recipe``: model, domain sampler, loss, callbacks,
    AdamW param groups. Returns ``(trainer, model)``."""
    from bramley.core.recipe import build_model
    from bramley.core.train import TrainConfig, Trainer, init_distributed

    name = recipe.model.name
    if name not in METHODS:
        raise ConfigError(f"model.name={name!r}: bramley-udon trains {', '.join(METHODS)}")
    kwargs = dict(recipe.model.kwargs)
    given = kwargs.setdefault("num_classes", list(train_data.num_classes))
    if list(given) != list(train_data.num_classes):
        raise ConfigError(f"model.kwargs.num_classes={list(given)} but the data has {train_data.num_classes} classes")
    model = model if model is not None else build_model(name, kwargs)
    cfg: TrainConfig = recipe.train_config(out_dir)
    if recipe.optim.optimizer != "adamw":
        raise ConfigError(f"optim.optimizer={recipe.optim.optimizer!r}: UDON's recipes train with adamw")
    dist_state, _ = init_distributed(cfg.device)
    data = recipe.data
    sampler = DomainBatchSampler(
        train_data.sizes,
        cfg.batch_size,
        data.sampler,
        data.update_every,
        seed=cfg.seed,
        rank=dist_state.rank,
        world_size=dist_state.world_size,
    )
    weights = DynamicWeights(sampler) if data.sampler == "dynamic" else None
    frozen_steps = recipe.loss.frozen_epochs * len(sampler) // cfg.grad_accum_steps
    freeze = FreezeBackbone(frozen_steps) if frozen_steps else None
    loss_cls = UdonTrainLoss if name == "udon" else JointLoss
    loss_fn = loss_cls(recipe.loss, weights, freeze)
    callbacks = [c for c in (weights, freeze) if c is not None]

    def optimizer(m: nn.Module) -> torch.optim.Optimizer:
        groups = param_groups(m, cfg.lr, recipe.loss.backbone_lr_scale, cfg.weight_decay)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)

    trainer = Trainer(
        model,
        cfg,
        train_data=train_data,
        loss_fn=loss_fn,
        eval_data=eval_data,
        eval_fn=knn_eval(eval_data, data.eval_split, data.k) if eval_data is not None else None,
        batch_sampler=sampler,
        optimizer=optimizer,
        callbacks=callbacks,
    )
    return trainer, model


def train(recipe: Any, out_dir: str | os.PathLike) -> dict[str, Any]:
    """``bramley udon train``: build the data, train with core's trainer, return the final metrics."""
    train_data, eval_data = build_data(recipe.data, recipe.train.seed)
    trainer, _ = make_trainer(recipe, out_dir, train_data, eval_data)
    metrics = trainer.fit()
    return {"metrics": metrics, "domains": train_data.names, "num_classes": train_data.num_classes}
