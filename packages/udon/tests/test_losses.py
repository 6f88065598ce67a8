"""UDON's loss against the official formulas restated in NumPy, and where its gradients go."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bramley.udon.losses import udon_loss
from bramley.udon.model import UdonModel


def official_loss(t_cos, s_cos, t_emb, s_emb, labels, scale=16.0, temperature=0.1):
    """nikosips/UDON's loss_function in NumPy: normface CE on scale * cosine (mean over the batch), KL with
    log(softmax) on cosine / T (sum over classes, mean over the batch), scenic's weighted_mean_squared_error of the
    similarity matrices (sum per row, mean over rows), the sum divided by the sum of the four weights."""

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def ce(cos):
        return -np.log(softmax(scale * cos)[np.arange(len(labels)), labels]).mean()

    p_t, p_s = softmax(t_cos / temperature), softmax(s_cos / temperature)
    kl = np.mean(np.sum(p_t * (np.where(p_t == 0, 0, np.log(p_t)) - np.log(p_s)), -1))
    mse = np.sum((s_emb @ s_emb.T - t_emb @ t_emb.T) ** 2) / len(labels)
    return (ce(t_cos) + ce(s_cos) + kl + mse) / 4


def test_loss_equals_the_official_formulas():
    torch.manual_seed(0)
    model = UdonModel([5, 7], backbone_kwargs={"widths": [8]}, teacher_dim=16, student_dim=8).double()
    out = model(torch.randn(6, 3, 12, 12, dtype=torch.float64), domain=1)
    labels = torch.tensor([0, 3, 6, 2, 2, 5])
    total, terms = udon_loss(out, labels)
    n = {k: v.detach().numpy() for k, v in out.items()}
    want = official_loss(
        n["teacher_logits"], n["student_logits"], n["teacher_embedding"], n["embedding"], labels.numpy()
    )
    assert total.item() == pytest.approx(want, rel=1e-10)
    assert set(terms) == {"ce_teacher", "ce_student", "kl", "mse"}


def test_no_gradient_into_the_teacher_through_distillation():
    torch.manual_seed(0)
    model = UdonModel([5, 7], backbone_kwargs={"widths": [8]}, teacher_dim=16, student_dim=8).double()
    images, labels = torch.randn(6, 3, 12, 12, dtype=torch.float64), torch.tensor([0, 3, 6, 2, 2, 5])
    out = model(images, domain=1)
    total, _ = udon_loss(out, labels)
    total.backward()
    grads = {
        n: p.grad.clone()
        for n, p in model.named_parameters()
        if n.startswith(("teachers.1.", "teacher_classifiers.1."))
    }
    model.zero_grad()
    from bramley.udon.losses import cosine_cross_entropy

    (cosine_cross_entropy(model(images, domain=1)["teacher_logits"], labels) / 4).backward()
    for name, grad in grads.items():  # the teacher heads see only their own classification loss
        assert torch.allclose(grad, dict(model.named_parameters())[name].grad, atol=1e-12), name
    assert len(grads) == 3 and model.teachers[0].weight.grad is None  # the other domain's teacher is not used


def test_log_softmax_stays_finite_where_log_softmax_of_softmax_underflows():
    from bramley.udon.losses import logit_distillation

    t = torch.tensor([[1.0, -1.0]])
    s = torch.tensor([[-1.0, 1.0]], requires_grad=True)
    value = logit_distillation(t, s, temperature=0.001)  # softmax(s / T)[0] underflows to 0: log 0 = -inf
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()
