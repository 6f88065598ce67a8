"""The reinforced-training loss against a float64 loop reimplementation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bramley.mobileclip.losses import distillation_loss, ensemble_targets, normalize_teacher, reinforced_loss


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _loop_loss(img, txt, scale, t_img, t_txt, dims, scales, weights) -> float:
    """Written out per row in float64: CLIP CE both ways, KD cross-entropy against averaged member softmaxes."""
    n = len(img)
    student = [[scale * float(img[i] @ txt[j]) for j in range(n)] for i in range(n)]
    student_t = [[student[j][i] for j in range(n)] for i in range(n)]
    offsets = [0]
    for d in dims:
        offsets.append(offsets[-1] + d)
    targets_i2t = [[0.0] * n for _ in range(n)]
    targets_t2i = [[0.0] * n for _ in range(n)]
    for m, tau in enumerate(scales):
        lo, hi = offsets[m], offsets[m + 1]
        logits = [[tau * float(t_img[i, lo:hi] @ t_txt[j, lo:hi]) for j in range(n)] for i in range(n)]
        for i in range(n):
            p = _softmax(logits[i])
            q = _softmax([logits[j][i] for j in range(n)])
            for j in range(n):
                targets_i2t[i][j] += p[j] / len(dims)
                targets_t2i[i][j] += q[j] / len(dims)

    def log_softmax(row):
        top = max(row)
        norm = top + math.log(sum(math.exp(v - top) for v in row))
        return [v - norm for v in row]

    clip = sum(-log_softmax(student[i])[i] - log_softmax(student_t[i])[i] for i in range(n)) / (2 * n)
    kd = 0.0
    for i in range(n):
        kd -= sum(t * s for t, s in zip(targets_i2t[i], log_softmax(student[i]))) / n
        kd -= sum(t * s for t, s in zip(targets_t2i[i], log_softmax(student_t[i]))) / n
    return weights[0] * clip + weights[1] * kd / 2


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


@pytest.mark.parametrize(
    ("dims", "scales", "weights"), [([6], [100.0], (0.0, 1.0)), ([4, 6], [100.0, 20.0], (0.25, 0.75))]
)
def test_distillation_loss_equals_float64_loop(dims, scales, weights):
    n = 5
    img, txt = _unit(n, 8, 0), _unit(n, 8, 1)
    t_img = normalize_teacher(
        torch.randn(n, sum(dims), generator=torch.Generator().manual_seed(2), dtype=torch.float64), dims
    )
    t_txt = normalize_teacher(
        torch.randn(n, sum(dims), generator=torch.Generator().manual_seed(3), dtype=torch.float64), dims
    )
    loss, parts = distillation_loss(img, txt, 14.0, t_img, t_txt, dims, scales, weights)
    expected = _loop_loss(img, txt, 14.0, t_img, t_txt, dims, scales, weights)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert weights[0] * parts["clip_loss"] + weights[1] * parts["distill_loss"] == pytest.approx(expected, rel=1e-12)


def test_a_perfect_teacher_copy_minimizes_the_distillation_term():
    """KD alone (w0 = 0) is minimized, at the target's entropy, by a student whose logits equal the teacher's."""
    n, dims = 4, [8]
    img, txt = _unit(n, 8, 4), _unit(n, 8, 5)
    at_teacher, _ = distillation_loss(img, txt, 30.0, img, txt, dims, [30.0], (0.0, 1.0))
    elsewhere, _ = distillation_loss(img, txt, 5.0, img, txt, dims, [30.0], (0.0, 1.0))
    i2t, t2i = ensemble_targets(img, txt, dims, [30.0])
    entropy = -((i2t * i2t.log()).sum(1).mean() + (t2i * t2i.log()).sum(1).mean()) / 2
    assert at_teacher.item() == pytest.approx(entropy.item(), rel=1e-12)
    assert elsewhere.item() > at_teacher.item()


def test_reinforced_loss_averages_real_and_synthetic_captions():
    n, dims = 3, [4, 4]
    img, txt, syn = _unit(n, 6, 6), _unit(n, 6, 7), _unit(n, 6, 8)
    t = [
        normalize_teacher(torch.randn(n, 8, generator=torch.Generator().manual_seed(s), dtype=torch.float64), dims)
        for s in (9, 10, 11)
    ]
    loss, _ = reinforced_loss(img, txt, syn, 10.0, t[0], t[1], t[2], dims, [50.0, 50.0], (0.5, 0.5))
    a, _ = distillation_loss(img, txt, 10.0, t[0], t[1], dims, [50.0, 50.0], (0.5, 0.5))
    b, _ = distillation_loss(img, syn, 10.0, t[0], t[2], dims, [50.0, 50.0], (0.5, 0.5))
    assert loss.item() == pytest.approx((a.item() + b.item()) / 2, rel=1e-12)


def test_teacher_width_and_scale_count_are_checked():
    img, txt = _unit(3, 6, 0), _unit(3, 6, 1)
    with pytest.raises(ValueError, match=r"\(batch, 10\) for teachers of widths \[4, 6\]"):
        distillation_loss(img, txt, 1.0, _unit(3, 8, 2), _unit(3, 8, 3), [4, 6], [1.0, 1.0])
    with pytest.raises(ValueError, match="one logit scale per teacher"):
        distillation_loss(img, txt, 1.0, _unit(3, 10, 2), _unit(3, 10, 3), [4, 6], [1.0])
