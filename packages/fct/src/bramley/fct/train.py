"""The FCT training stages on :class:`bramley.core.train.Trainer`: backbones (independent or BCT), the
side-information model (SimCLR or autoencoder), and the forward transformation (MSE to the frozen new model).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bramley.core.classification import ClassificationLoss, LossSection
from bramley.core.errors import DataError
from bramley.core.train import TrainConfig, Trainer

from .augment import BatchAugment
from .models import FCTTransformation, SideInfoModel, nt_xent

__all__ = [
    "BCTLoss",
    "TransformationTask",
    "check_images_fit",
    "embed_dataset",
    "synthesized_class_weights",
    "train_backbone",
    "train_side_info",
    "train_transformation",
]

Batch = tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------------------------------------- losses
class BCTLoss:
    """Backward compatible training (Shen et al., CVPR 2020): the new model's own classification loss plus the
    "influence" loss, i.e. the new embeddings classified by a frozen classifier in the old embedding space.

    That classifier is either the old model's trained classifier (then samples of classes it does not know get no
    influence loss) or BCT's synthesized classifier over every class (:func:`synthesized_class_weights`).

    Args:
        old_classifier: ``(classes, dim)`` rows for labels ``0, 1, ...``; the new embedding must have the same ``dim``
            (BCT's constraint). Samples with a label past the last row get no influence loss.
        weight: weight of the influence loss (BCT uses 1).
        label_smoothing: applied to both terms.
    """

    def __init__(self, old_classifier: torch.Tensor, weight: float = 1.0, label_smoothing: float = 0.1) -> None:
        self.label_smoothing = label_smoothing
        self.old_classifier = old_classifier.detach().clone()
        self.num_old_classes = self.old_classifier.shape[0]
        self.weight = weight

    def __call__(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch
        emb = model.embed(x)
        if emb.shape[1] != self.old_classifier.shape[1]:
            raise ValueError(
                f"BCT needs equal embedding dims: new model {emb.shape[1]} "
                f"vs old classifier {self.old_classifier.shape[1]}"
            )
        logits = model.classify(emb)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        old = y < self.num_old_classes
        influence = torch.zeros((), device=emb.device)
        if old.any():
            w = self.old_classifier.to(device=emb.device, dtype=emb.dtype)
            influence = F.cross_entropy(F.linear(emb[old], w), y[old], label_smoothing=self.label_smoothing)
        acc = (logits.argmax(1) == y).float().mean().item()
        return loss + self.weight * influence, {"acc": acc, "influence": influence.item()}


class SimCLRLoss:
    """NT-Xent between two augmented views of each image (SimCLR), on the side-information model's projections."""

    def __init__(self, augment: BatchAugment | None = None, temperature: float = 0.5) -> None:
        self.augment = augment or BatchAugment()
        self.temperature = temperature

    def __call__(self, model: SideInfoModel, batch: Batch) -> torch.Tensor:
        x = batch[0]
        views = torch.cat([self.augment(x), self.augment(x)])
        z = model.project(model(views))
        return nt_xent(*z.chunk(2), temperature=self.temperature)


class AutoencoderLoss:
    """Denoising autoencoder: reconstruct the clean image from an augmented one (MSE)."""

    def __init__(self, augment: BatchAugment | None = None) -> None:
        self.augment = augment or BatchAugment(scale=(0.8, 1.0), brightness=0.1, contrast=0.1, noise=0.1)

    def __call__(self, model: SideInfoModel, batch: Batch) -> torch.Tensor:
        x = batch[0]
        return F.mse_loss(model.project(model(self.augment(x))), x)


class TransformationTask(nn.Module):
    """The transformation as the trainer's module, with the frozen old, new and side-information models beside it.

    The task's parameters, buffers and ``model_config`` are the transformation's own (its children are registered
    under their own names), so the trainer saves exactly the transformation: its run folder is a ``save_pretrained``
    folder of it. The frozen models stay outside the module tree: never trained or saved, always in eval mode (their
    BatchNorm statistics never move), moved to the batch's device when used.
    """

    bn_frozen: bool = False  # set by the switch-to-eval callback: BatchNorm then uses (and keeps) running stats

    def __init__(
        self,
        transformation: FCTTransformation,
        old_model: nn.Module,
        new_model: nn.Module,
        side_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if transformation.uses_side_info and side_model is None:
            raise ValueError("the transformation uses side information but no side-information model was given")
        if not transformation.uses_side_info and side_model is not None:
            raise ValueError("a side-information model was given but the transformation has side_info_dim=0")
        for name, child in transformation.named_children():
            self.add_module(name, child)
        self.model_config = getattr(transformation, "model_config", None)
        self._models = (transformation, old_model, new_model, side_model)  # a tuple: not registered as submodules
        for frozen in (old_model, new_model, side_model):
            if frozen is not None:
                frozen.requires_grad_(False).eval()

    @property
    def transformation(self) -> FCTTransformation:
        return self._models[0]

    def train(self, mode: bool = True) -> TransformationTask:
        self.training = mode
        self.transformation.train(mode and not self.bn_frozen)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h(old(x), side(x)), new(x))``: the transformed old embedding and its target."""
        transformation, old_model, new_model, side_model = self._models
        with torch.no_grad():
            old = old_model.to(x.device).embed(x)
            new = new_model.to(x.device).embed(x)
            side = side_model.to(x.device).embed(x) if side_model is not None else None
        return transformation(old, side), new


class _FreezeBatchNormAt:
    """Trainer callback: BatchNorm of the transformation switches to eval after ``fraction`` of the steps.

    Stateful (``state_dict``), so a run resumed past the switch point starts with BatchNorm already frozen.
    """

    def __init__(self, task: TransformationTask, fraction: float):
        self.task, self.fraction = task, fraction

    def __call__(self, trainer: Trainer) -> None:
        if not self.task.bn_frozen and trainer.step >= self.fraction * trainer.total_steps:
            self._freeze()

    def _freeze(self) -> None:
        self.task.bn_frozen = True
        self.task.train(self.task.training)

    def state_dict(self) -> dict[str, bool]:
        return {"bn_frozen": self.task.bn_frozen}

    def load_state_dict(self, state: dict[str, bool]) -> None:
        if state["bn_frozen"]:
            self._freeze()


def transformation_loss(task: TransformationTask, batch: Batch) -> torch.Tensor:
    """MSE between the transformed old embedding and the new model's embedding (the paper's objective)."""
    pred, target = task(batch[0])
    return F.mse_loss(pred, target)


# ------------------------------------------------------------------------------------------------------------ eval
def check_images_fit(model: nn.Module, data: Dataset, what: str = "the data") -> None:
    """Refuse a dataset whose images have another channel count than the model takes (a one-line DataError)."""
    in_chans = getattr(model, "in_chans", None)
    if in_chans is None or len(data) == 0:
        return
    image = data[0][0]
    if image.ndim != 3 or image.shape[0] != in_chans:
        raise DataError(
            f"{what} holds images of shape {tuple(image.shape)} but {type(model).__name__} takes {in_chans}-channel "
            "images (check data.source / data.in_chans against the model's in_chans)"
        )


@torch.no_grad()
def embed_dataset(
    model: nn.Module,
    data: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings, labels)`` of a whole dataset with ``model.embed`` in eval mode (order preserved, on CPU)."""
    if len(data) == 0:
        raise DataError("cannot embed an empty dataset")
    check_images_fit(model, data)
    was_training = model.training
    model.eval().to(device)
    embs, labels = [], []
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        embs.append(model.embed(x.to(device)).float().cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(embs), torch.cat(labels).long()


@torch.no_grad()
def synthesized_class_weights(old_model: nn.Module, data: Dataset) -> torch.Tensor:
    """BCT's synthesized classifier, built as the BCT authors' code builds it (openBCT's pseudo classifier): for every
    class of ``data`` (labels ``0 ... max``), the mean of the old model's L2-normalised embeddings of its samples.

    It replaces the old model's trained classifier in the influence loss (old classes included), so all rows live on
    one scale. Appending raw mean embeddings of the new classes to the trained classifier instead (the paper's text,
    and this package before 2026-12-03) puts rows of a different scale and sign pattern side by side: on the digits
    reproduction that classifier sent ~98 % of the old model's own embeddings of old classes to new classes, and
    BCT's new-to-old retrieval fell below old-to-old. Every label in range must occur in ``data``.
    """
    emb, labels = embed_dataset(old_model, data, device="cuda" if torch.cuda.is_available() else "cpu")
    emb = F.normalize(emb, dim=1)
    rows = []
    for c in range(int(labels.max()) + 1):
        mask = labels == c
        if not mask.any():
            raise DataError(f"class {c} has no training sample to synthesize its BCT classifier weight from")
        rows.append(emb[mask].mean(0))
    return torch.stack(rows)


def _fit(model: nn.Module, cfg: TrainConfig, data: Dataset, loss_fn: Callable, **kw: Any) -> dict[str, Any]:
    trainer = Trainer(model, cfg, train_data=data, loss_fn=loss_fn, **kw)
    return trainer.fit()


# ---------------------------------------------------------------------------------------------------------- stages
def train_backbone(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    label_smoothing: float = 0.1,
    bct_old_model: nn.Module | None = None,
    bct_weight: float = 1.0,
    bct_synthesize_new_classes: bool = True,
) -> dict[str, Any]:
    """Train an old or new embedding model by classification; with ``bct_old_model``, train it with BCT.

    ``bct_synthesize_new_classes``: the influence loss uses BCT's synthesized classifier over every class
    (:func:`synthesized_class_weights`), so it covers every sample; otherwise the old model's trained classifier and
    only old-class samples.
    """
    if bct_old_model is None:
        loss_fn: Callable = ClassificationLoss(model.num_classes, LossSection(label_smoothing=label_smoothing))
    else:
        if bct_synthesize_new_classes:
            classifier = synthesized_class_weights(bct_old_model, data)
        else:
            classifier = bct_old_model.head.classifier.weight
        loss_fn = BCTLoss(classifier, bct_weight, label_smoothing)
    return _fit(model, cfg, data, loss_fn)


def train_side_info(
    model: SideInfoModel,
    data: Dataset,
    cfg: TrainConfig,
    augment: BatchAugment | None = None,
    temperature: float = 0.5,
) -> dict[str, Any]:
    """Train the side-information model without labels (SimCLR or autoencoder, per ``model.objective``)."""
    loss_fn = SimCLRLoss(augment, temperature) if model.objective == "simclr" else AutoencoderLoss(augment)
    return _fit(model, cfg, data, loss_fn)


def train_transformation(
    transformation: FCTTransformation,
    old_model: nn.Module,
    new_model: nn.Module,
    side_model: nn.Module | None,
    data: Dataset,
    cfg: TrainConfig,
    switch_to_eval_at: float | None = 0.5,
) -> dict[str, Any]:
    """Train ``h`` with MSE to the new model's embeddings; old, new and side models are frozen.

    ``switch_to_eval_at``: after this fraction of the steps the transformation trains in eval mode (BatchNorm on its
    running statistics), the official ``switch_mode_to_eval`` (from half of the epochs); ``None`` disables it.
    """
    task = TransformationTask(transformation, old_model, new_model, side_model)
    callbacks = []
    if switch_to_eval_at is not None:
        callbacks.append(_FreezeBatchNormAt(task, switch_to_eval_at))
    return _fit(task, cfg, data, transformation_loss, callbacks=callbacks)
