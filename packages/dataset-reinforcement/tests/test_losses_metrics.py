import math

import pytest
import torch
import torch.nn.functional as F

from bramley.dataset_reinforcement.losses import OnlineDistillationLoss, SoftTargetLoss, kl_to_targets
from bramley.dataset_reinforcement.metrics import CalibrationMeter, corrupt, evaluate

from .conftest import make_teacher


def test_kl_equals_torch_kl_div_and_has_soft_cross_entropy_gradients():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 7, generator=g, requires_grad=True)
    targets = torch.softmax(torch.randn(6, 7, generator=g), -1)
    targets[0] = F.one_hot(torch.tensor(2), 7).float()  # zeros in the target: 0 log 0 = 0
    loss = kl_to_targets(logits, targets)
    torch.testing.assert_close(loss, F.kl_div(F.log_softmax(logits, -1), targets, reduction="batchmean"))
    (grad,) = torch.autograd.grad(loss, logits)
    ce = torch.sum(-targets * F.log_softmax(logits, -1), -1).mean()
    (ce_grad,) = torch.autograd.grad(ce, logits)
    torch.testing.assert_close(grad, ce_grad)
    assert kl_to_targets(torch.log(targets[1:]), targets[1:]).abs() < 1e-6


def test_soft_target_and_online_kd_losses():
    teacher = make_teacher()
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 5))
    images = torch.randn(4, 3, 12, 12)
    onehot = F.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    loss, logs = SoftTargetLoss()(student, (images, onehot))
    torch.testing.assert_close(loss, F.cross_entropy(student(images), torch.tensor([0, 1, 2, 3])))
    kd, _ = OnlineDistillationLoss(teacher)(student, (images, onehot))
    torch.testing.assert_close(kd, kl_to_targets(student(images), teacher(images)))
    eval_loss, _ = SoftTargetLoss()(student, (images, torch.tensor([0, 1, 2, 3])))
    torch.testing.assert_close(eval_loss, loss)
    assert 0 <= float(logs["acc"]) <= 1


def _reference_ece(confidence, correct, bins=15):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if lo < c <= hi or (b == 0 and c == 0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            conf = sum(confidence[i] for i in members) / len(members)
            total += len(members) / len(confidence) * abs(acc - conf)
    return 100 * total


def test_ece_matches_a_direct_computation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 4, generator=g) * 2
    labels = torch.randint(0, 4, (300,), generator=g)
    meter = CalibrationMeter()
    meter.update(logits[:100], labels[:100])
    meter.update(logits[100:], labels[100:])
    out = meter.compute()
    confidence, predicted = logits.softmax(-1).max(-1)
    expected = _reference_ece(confidence.tolist(), (predicted == labels).float().tolist())
    assert math.isclose(out["ece"], expected, rel_tol=1e-4)
    assert math.isclose(out["nll"], float(F.cross_entropy(logits, labels)), rel_tol=1e-5)
    assert math.isclose(out["top1"], 100 * float((predicted == labels).float().mean()), rel_tol=1e-6)
    confident = CalibrationMeter()  # always right with confidence ~1: ECE ~0
    confident.update(F.one_hot(labels, 4).float() * 50, labels)
    assert confident.compute()["ece"] < 1e-3
    with pytest.raises(ValueError, match="empty"):
        CalibrationMeter().compute()


def test_corruptions_and_evaluate():
    images = torch.rand(2, 3, 8, 8)
    normalized = (images - 0.5) / 0.25
    for name in ("noise", "blur", "contrast"):
        out = corrupt(normalized, name, [0.5] * 3, [0.25] * 3, seed=0)
        assert out.shape == normalized.shape and not torch.equal(out, normalized)
        raw = out * 0.25 + 0.5
        assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    data = torch.utils.data.TensorDataset(normalized.repeat(4, 1, 1, 1), torch.tensor([0, 1] * 4))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    results = evaluate(model, data, [0.5] * 3, [0.25] * 3, batch_size=3)
    assert set(results["corruptions"]) == {"noise", "blur", "contrast"} and 0 <= results["robust_top1"] <= 100
