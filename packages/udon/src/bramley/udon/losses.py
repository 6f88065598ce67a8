"""UDON's loss, term by term as in nikosips/UDON (``udon_model.py``, ``loss_utils.py``).

For a batch of one domain, with teacher / student cosines ``c_t``, ``c_s`` and embeddings ``e_t``, ``e_s``:

- ``ce_teacher = CE(scale * c_t, y)``, ``ce_student = CE(scale * c_s, y)``: normface (margin 0, scale 16);
- ``kl = mean_i KL(softmax(c_t / T) || softmax(c_s / T))`` with ``T = 0.1`` on the *cosines* (the official code
  divides the unscaled cosine logits by the temperature), the teacher side detached; computed with
  ``log_softmax`` where the official code takes ``log(softmax)`` (same value, no underflow to ``log 0``);
- ``mse = sum_ij (e_s e_s^T - sg(e_t e_t^T))_ij^2 / N``: scenic's ``weighted_mean_squared_error`` sums the
  squared errors of each row and averages over the ``N`` rows (the official ``len(devices) / 4`` factor makes
  its value that of a 4-device run's per-device batch; here it is the batch this process sees).

The total is the weighted mean ``sum_k w_k L_k / sum_k w_k`` (all ``w_k = 1`` in the paper), exactly as the
official ``loss_function`` returns it: the sum of the four terms divided by 4. With Adam this factor only rescales
``eps``; it is kept so that the learning rates of the paper's recipe mean the same here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LossWeights", "cosine_cross_entropy", "logit_distillation", "similarity_distillation", "udon_loss"]


@dataclass
class LossWeights:
    """Weights of the four terms (the official ``classif_udon_*_weight`` / ``distill_udon_*_weight``)."""

    teacher: float = 1.0
    student: float = 1.0
    logits: float = 1.0
    similarities: float = 1.0


def cosine_cross_entropy(cosines: torch.Tensor, labels: torch.Tensor, scale: float = 16.0, margin: float = 0.0):
    """Cross-entropy of cosine logits (normface with ``margin=0``; cosface subtracts ``margin`` from the target)."""
    if margin:
        cosines = cosines - margin * F.one_hot(labels, cosines.shape[-1]).to(cosines.dtype)
    return F.cross_entropy(scale * cosines, labels)


def logit_distillation(teacher_cosines: torch.Tensor, student_cosines: torch.Tensor, temperature: float = 0.1):
    """``mean_i KL(softmax(t_i / T) || softmax(s_i / T))``, no gradient into the teacher."""
    target = F.log_softmax(teacher_cosines.detach() / temperature, dim=-1)
    log_student = F.log_softmax(student_cosines / temperature, dim=-1)
    return F.kl_div(log_student, target, reduction="batchmean", log_target=True)


def similarity_distillation(teacher_embeddings: torch.Tensor, student_embeddings: torch.Tensor) -> torch.Tensor:
    """Squared error between the in-batch similarity matrices, summed per row and averaged over rows; the
    teacher's similarities are a constant."""
    teacher = teacher_embeddings.detach() @ teacher_embeddings.detach().T
    student = student_embeddings @ student_embeddings.T
    return (student - teacher).square().sum(dim=1).mean()


def udon_loss(
    outputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    weights: LossWeights | None = None,
    scale: float = 16.0,
    margin: float = 0.0,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The UDON loss of one domain's batch from :class:`~bramley.udon.model.UdonModel` outputs for that domain.

    Returns:
        ``(total, terms)`` with ``terms`` the four detached terms: ``ce_teacher``, ``ce_student``, ``kl``, ``mse``.
    """
    w = weights or LossWeights()
    terms = {
        "ce_teacher": cosine_cross_entropy(outputs["teacher_logits"], labels, scale, margin),
        "ce_student": cosine_cross_entropy(outputs["student_logits"], labels, scale, margin),
        "kl": logit_distillation(outputs["teacher_logits"], outputs["student_logits"], temperature),
        "mse": similarity_distillation(outputs["teacher_embedding"], outputs["embedding"]),
    }
    factors = (w.teacher, w.student, w.logits, w.similarities)
    total = sum(f * t for f, t in zip(factors, terms.values())) / sum(factors)
    return total, {k: v.detach() for k, v in terms.items()}
