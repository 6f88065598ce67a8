"""UDON's model: one backbone, per-domain teacher heads, one universal student head, cosine classifiers.

The backbone's pooled feature is L2-normalised; each domain ``d`` has a teacher projection (one linear layer to
256-d, L2-normalised) and every domain shares the universal student projection (one linear layer to 64-d,
L2-normalised). Teacher and student each have one cosine (normface) classifier per domain: the logits are cosine
similarities between the embedding and the class prototypes (scaled by ``scale`` in the loss, not here), as in
nikosips/UDON (``udon_vit_with_embedding.py``: bias-free ``Dense`` divided by the prototype norms).

The baselines share the same pieces: :class:`JointEmbeddingModel` is one backbone with one 64-d projection and
either one classifier over the union of every domain's classes (the one-head joint baseline) or a single domain
(a specialist).

Order: backbones, heads, models, factories.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.registry import register_model

__all__ = ["ConvNet", "CosineClassifier", "JointEmbeddingModel", "UdonModel", "build_backbone"]


# ------------------------------------------------------------------------------------------------------ backbones
class ConvNet(nn.Module):
    """A small conv-BN-ReLU backbone (for the mini reproduction and the tests): stages of two 3x3 convs, a stride-2
    conv between stages, global average pooling. ``num_features`` is the pooled width."""

    def __init__(self, in_chans: int = 3, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(prev, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            prev = width
        self.features = nn.Sequential(*layers)
        self.num_features = prev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """A feature extractor ``(N, C, H, W) -> (N, F)`` with ``num_features`` set, by name.

    ``convnet`` is this package's :class:`ConvNet`; ``timm:<name>`` or a plain timm name builds timm's model with
    ``num_classes=0`` (pooled features, no pretrained weights are downloaded); a name registered in bramley's
    registry builds that model with ``num_classes=0``.

    Raises:
        ValueError: the name is unknown to all three.
    """
    if name == "convnet":
        return ConvNet(**kwargs)
    import timm

    from bramley.core.registry import create_model, list_models

    timm_name = name.removeprefix("timm:")
    if not name.startswith("timm:") and name in list_models():
        if name.startswith("udon"):
            raise ValueError(f"backbone {name!r} is a UDON model itself; give an image backbone")
        model = create_model(name, num_classes=0, **kwargs)
    elif timm.is_model(timm_name):
        model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
    else:
        raise ValueError(f"unknown backbone {name!r}: not 'convnet', a timm model or a bramley model")
    if not isinstance(getattr(model, "num_features", None), int):
        raise ValueError(f"backbone {name!r} does not say its feature width (no integer num_features)")
    return model


# ---------------------------------------------------------------------------------------------------------- heads
class CosineClassifier(nn.Module):
    """Normface classifier: cosine similarity between an (L2-normalised) embedding and each class prototype.

    ``weight`` is ``(num_classes, dim)``; the output is ``x @ (w / |w|).T`` (no bias, no scale: the loss scales).
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        bound = (3.0 / dim) ** 0.5  # lecun_uniform, as the official Dense kernel_init
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ F.normalize(self.weight, dim=1).T


def _check_classes(num_classes: Sequence[int] | int) -> list[int]:
    counts = [num_classes] if isinstance(num_classes, int) else list(num_classes)
    if not counts:
        raise ValueError("num_classes must list one class count per domain, got none")
    bad = [(d, n) for d, n in enumerate(counts) if not isinstance(n, int) or isinstance(n, bool) or n < 2]
    if bad:
        d, n = bad[0]
        raise ValueError(f"domain {d} has {n} classes; every domain needs at least 2 for a classifier")
    return counts


# --------------------------------------------------------------------------------------------------------- models
class UdonModel(nn.Module):
    """UDON: a shared backbone, per-domain teachers and one universal student.

    ``model(images, domain=d)`` (training) returns a dict of tensors for domain ``d``: ``embedding`` (the student's,
    ``(N, student_dim)``), ``teacher_embedding`` ``(N, teacher_dim)``, ``student_logits`` and ``teacher_logits``
    (cosines, ``(N, num_classes[d])``). ``model(images)`` returns the universal ``embedding`` and, for every
    domain ``d``, ``teacher_embedding_<d>``, ``teacher_logits_<d>`` and ``student_logits_<d>`` (one flat dict of
    tensors, so it traces): no head is left out, so every parameter takes part. :meth:`embed` is the universal
    embedding alone.

    Args:
        num_classes: classes of each domain, in domain order.
        backbone: backbone name (see :func:`build_backbone`).
        teacher_dim: width of each teacher embedding (256 in the paper).
        student_dim: width of the universal embedding (64 in the paper).
        backbone_kwargs: passed to the backbone's constructor.
    """

    def __init__(
        self,
        num_classes: Sequence[int] = (10, 10),
        backbone: str = "convnet",
        teacher_dim: int = 256,
        student_dim: int = 64,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = _check_classes(num_classes)
        self.teacher_dim, self.student_dim = teacher_dim, student_dim
        self.backbone = build_backbone(backbone, **(backbone_kwargs or {}))
        width = self.backbone.num_features
        self.student = nn.Linear(width, student_dim)
        self.teachers = nn.ModuleList(nn.Linear(width, teacher_dim) for _ in self.num_classes)
        self.student_classifiers = nn.ModuleList(CosineClassifier(student_dim, n) for n in self.num_classes)
        self.teacher_classifiers = nn.ModuleList(CosineClassifier(teacher_dim, n) for n in self.num_classes)

    @property
    def num_domains(self) -> int:
        return len(self.num_classes)

    def features(self, images: torch.Tensor, frozen_backbone: bool = False) -> torch.Tensor:
        """The L2-normalised backbone feature (computed without gradients when ``frozen_backbone``)."""
        if frozen_backbone:
            with torch.no_grad():
                return F.normalize(self.backbone(images), dim=-1)
        return F.normalize(self.backbone(images), dim=-1)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The universal (student) embedding, L2-normalised."""
        return F.normalize(self.student(self.features(images)), dim=-1)

    def heads(self, features: torch.Tensor, domain: int) -> dict[str, torch.Tensor]:
        """Domain ``domain``'s outputs from backbone features (:meth:`features`)."""
        if not 0 <= domain < self.num_domains:
            raise ValueError(f"domain {domain} out of range: the model has {self.num_domains} domains")
        student = F.normalize(self.student(features), dim=-1)
        teacher = F.normalize(self.teachers[domain](features), dim=-1)
        return {
            "embedding": student,
            "teacher_embedding": teacher,
            "student_logits": self.student_classifiers[domain](student),
            "teacher_logits": self.teacher_classifiers[domain](teacher),
        }

    def forward(
        self, images: torch.Tensor, domain: int | None = None, frozen_backbone: bool = False
    ) -> dict[str, torch.Tensor]:
        features = self.features(images, frozen_backbone)
        if domain is not None:
            return self.heads(features, domain)
        student = F.normalize(self.student(features), dim=-1)
        out = {"embedding": student}
        for d, (teacher, teacher_head, student_head) in enumerate(
            zip(self.teachers, self.teacher_classifiers, self.student_classifiers)
        ):
            embedding = F.normalize(teacher(features), dim=-1)
            out[f"teacher_embedding_{d}"] = embedding
            out[f"teacher_logits_{d}"] = teacher_head(embedding)
            out[f"student_logits_{d}"] = student_head(student)
        return out


class JointEmbeddingModel(nn.Module):
    """One backbone, one L2-normalised projection, one cosine classifier over the union of every domain's classes.

    With several domains this is the one-head joint baseline: domain ``d``'s label ``y`` is class
    ``offsets[d] + y`` of the one classifier. With one domain it is a specialist.

    ``model(images)`` returns ``{"embedding", "logits"}`` (cosines over all classes).
    """

    def __init__(
        self,
        num_classes: Sequence[int] = (10, 10),
        backbone: str = "convnet",
        embed_dim: int = 64,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = _check_classes(num_classes)
        self.embed_dim = embed_dim
        self.backbone = build_backbone(backbone, **(backbone_kwargs or {}))
        self.projection = nn.Linear(self.backbone.num_features, embed_dim)
        self.classifier = CosineClassifier(embed_dim, sum(self.num_classes))
        self.register_buffer("offsets", torch.tensor([0, *self.num_classes[:-1]]).cumsum(0), persistent=False)

    @property
    def num_domains(self) -> int:
        return len(self.num_classes)

    def embed(self, images: torch.Tensor, frozen_backbone: bool = False) -> torch.Tensor:
        """The L2-normalised embedding (the backbone without gradients when ``frozen_backbone``)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_backbone):
            features = F.normalize(self.backbone(images), dim=-1)
        return F.normalize(self.projection(features), dim=-1)

    def forward(self, images: torch.Tensor, frozen_backbone: bool = False) -> dict[str, torch.Tensor]:
        embedding = self.embed(images, frozen_backbone)
        return {"embedding": embedding, "logits": self.classifier(embedding)}


# ------------------------------------------------------------------------------------------------------ factories
def _images() -> tuple[tuple, dict]:
    return (torch.randn(2, 3, 32, 32),), {}


@register_model(example_inputs=_images, tags=("embedding", "udon"))
def udon(**kwargs: Any) -> UdonModel:
    """UDON: shared backbone (``backbone=`` convnet, a timm or bramley name), per-domain teachers, universal student."""
    return UdonModel(**kwargs)


@register_model(example_inputs=_images, tags=("embedding", "udon", "baseline"))
def udon_joint(**kwargs: Any) -> JointEmbeddingModel:
    """One-head joint baseline (or, with one domain, a specialist): one embedding, one classifier over all classes."""
    return JointEmbeddingModel(**kwargs)
