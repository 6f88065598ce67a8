"""ClassificationMeter: top-1 / top-5 / loss against a direct computation, batching-invariant, empty is an error."""

import pytest
import torch
import torch.nn.functional as F

from bramley.core.metrics import ClassificationMeter


def test_meter_matches_direct_computation_over_batches():
    logits, labels = torch.randn(37, 12), torch.randint(0, 12, (37,))
    meter = ClassificationMeter()
    for chunk in torch.arange(37).split(10):
        meter.update(logits[chunk], labels[chunk])
    got = meter.compute()
    top5 = logits.topk(5, dim=1).indices
    assert got["top1"] == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item())
    assert got["top5"] == pytest.approx(100.0 * (top5 == labels[:, None]).any(1).float().mean().item())
    assert got["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


def test_meter_few_classes_and_low_precision_logits():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]], dtype=torch.bfloat16)
    meter = ClassificationMeter()
    meter.update(logits, torch.tensor([0, 0]))
    got = meter.compute()
    assert got["top1"] == 50.0 and got["top5"] == 100.0  # top-5 of 3 classes is every class


def test_meter_empty_is_an_error():
    with pytest.raises(ValueError, match="evaluation data is empty"):
        ClassificationMeter().compute()
