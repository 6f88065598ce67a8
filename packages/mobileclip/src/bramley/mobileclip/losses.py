"""MobileCLIP's multi-modal reinforced training loss: CLIP loss plus distillation from stored teacher embeddings.

For a batch of ``N`` image-text pairs, the student's logits are ``s * img @ txt.T`` (``s`` its learned scale). A
teacher ensemble of ``T`` members stores, per sample, the concatenation of each member's (L2-normalized) embedding
(``dims = [d_1, ..., d_T]``). Member ``t``'s target distribution over the batch is ``softmax(tau_t * img_t @
txt_t.T)`` along each row, with its own scale ``tau_t``; the ensemble's target is the average of the members'
softmaxes (the official ``--distill-average-after-softmax``). The loss is::

    w0 * (CE(student_i2t, I) + CE(student_t2i, I)) / 2
    + w1 * (H(target_i2t, student_i2t) + H(target_t2i, student_t2i)) / 2

with ``H(p, q) = -mean_rows sum_cols p log softmax(q)``. The official scripts pass one scale (100) for both teachers;
here each teacher has its own (pass the same value twice for the official setting).
:func:`reinforced_loss` averages this over the original caption and one synthetic caption per sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from bramley.core.layers.clip import clip_loss

__all__ = ["distillation_loss", "ensemble_targets", "normalize_teacher", "reinforced_loss"]


def _split(features: torch.Tensor, dims: Sequence[int], what: str) -> list[torch.Tensor]:
    if features.dim() != 2 or features.shape[1] != sum(dims):
        raise ValueError(
            f"{what} must be (batch, {sum(dims)}) for teachers of widths {list(dims)}, got {tuple(features.shape)}"
        )
    return list(features.split(list(dims), dim=1))


def ensemble_targets(
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    dims: Sequence[int],
    scales: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ensemble's image->text and text->image target distributions ``(N, N)``: softmaxes averaged over members.

    Args:
        teacher_image: ``(N, sum(dims))`` concatenated member image embeddings.
        teacher_text: ``(N, sum(dims))`` concatenated member text embeddings.
        dims: each member's embedding width.
        scales: each member's logit scale (a multiplier, e.g. 100).
    """
    if len(scales) != len(dims) or not dims:
        raise ValueError(f"one logit scale per teacher: {len(dims)} teacher widths, {len(scales)} scales")
    images, texts = (
        _split(teacher_image, dims, "teacher image embeddings"),
        _split(teacher_text, dims, "teacher text embeddings"),
    )
    i2t = torch.zeros(
        teacher_image.shape[0], teacher_text.shape[0], dtype=teacher_image.dtype, device=teacher_image.device
    )
    t2i = torch.zeros_like(i2t.T)
    for img, txt, scale in zip(images, texts, scales, strict=True):
        logits = scale * img @ txt.T
        i2t = i2t + logits.softmax(dim=1)
        t2i = t2i + logits.T.softmax(dim=1)
    return i2t / len(dims), t2i / len(dims)


def distillation_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    dims: Sequence[int],
    scales: Sequence[float],
    weights: tuple[float, float] = (0.0, 1.0),
) -> tuple[torch.Tensor, dict[str, float]]:
    """``w0 * CLIP + w1 * KD`` for one caption per image (see the module docstring).

    Args:
        image_features: student ``(N, D)``, L2-normalized.
        text_features: student ``(N, D)``, L2-normalized.
        logit_scale: the student's multiplier (``logit_scale.exp()``).
        teacher_image: ``(N, sum(dims))`` stored teacher image embeddings (of the replayed augmentation).
        teacher_text: ``(N, sum(dims))`` stored teacher text embeddings (of the same caption).
        dims: teacher widths.
        scales: one logit scale per teacher.
        weights: ``(w0, w1)``.

    Returns:
        ``(loss, {"clip_loss": ..., "distill_loss": ...})``.
    """
    if image_features.shape[0] != teacher_image.shape[0] or text_features.shape[0] != teacher_text.shape[0]:
        raise ValueError(
            f"student batch ({image_features.shape[0]}, {text_features.shape[0]}) and teacher batch "
            f"({teacher_image.shape[0]}, {teacher_text.shape[0]}) differ"
        )
    w0, w1 = weights
    logits_i2t = logit_scale * image_features @ text_features.T
    with torch.no_grad():
        target_i2t, target_t2i = ensemble_targets(
            teacher_image.to(logits_i2t.dtype), teacher_text.to(logits_i2t.dtype), dims, scales
        )
    contrastive = clip_loss(image_features, text_features, logit_scale)
    distill = (
        -(target_i2t * logits_i2t.log_softmax(dim=1)).sum(1).mean()
        - (target_t2i * logits_i2t.T.log_softmax(dim=1)).sum(1).mean()
    ) / 2
    loss = w0 * contrastive + w1 * distill
    return loss, {"clip_loss": float(contrastive.detach()), "distill_loss": float(distill.detach())}


def reinforced_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    synthetic_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    teacher_image: torch.Tensor,
    teacher_text: torch.Tensor,
    teacher_synthetic: torch.Tensor,
    dims: Sequence[int],
    scales: Sequence[float],
    weights: tuple[float, float] = (0.0, 1.0),
) -> tuple[torch.Tensor, dict[str, float]]:
    """The mean of :func:`distillation_loss` on the original captions and on one synthetic caption per image."""
    real, real_parts = distillation_loss(
        image_features, text_features, logit_scale, teacher_image, teacher_text, dims, scales, weights
    )
    syn, syn_parts = distillation_loss(
        image_features, synthetic_features, logit_scale, teacher_image, teacher_synthetic, dims, scales, weights
    )
    parts = {k: (real_parts[k] + syn_parts[k]) / 2 for k in real_parts}
    return (real + syn) / 2, parts


def normalize_teacher(embeddings: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Each member's slice of concatenated teacher embeddings L2-normalized (what a stored record holds)."""
    return torch.cat([F.normalize(part, dim=-1) for part in _split(embeddings, dims, "teacher embeddings")], dim=1)
