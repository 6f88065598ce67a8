"""The SHARCS loss and one short training: warm-up at full width, then buckets from the recorded history."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from bramley.core.errors import ConfigError
from bramley.core.train import TrainConfig, Trainer
from bramley.sharcs import HardnessTracker, SharcsViT
from bramley.sharcs.train import PAPER_THRESHOLDS, IndexedDataset, SharcsLossSection, SharcsTrainLoss, sharcs_eval

TINY = dict(img_size=8, patch_size=4, in_chans=3, embed_dim=16, depth=2, num_heads=4, router_hidden=8, num_classes=3)


def _batch(n=6):
    torch.manual_seed(0)
    return torch.randn(n, 3, 8, 8), torch.randint(0, 3, (n,)), torch.arange(n)


def test_loss_is_task_ce_plus_router_bce_at_the_bucket_widths():
    model = SharcsViT(**TINY)
    tracker = HardnessTracker(6, model.widths, PAPER_THRESHOLDS, warmup_epochs=1)
    tracker.labels = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]] * 2, dtype=torch.float)
    tracker.train_index = torch.tensor([0, 1, 2] * 2)
    tracker.epoch = 1
    x, y, idx = _batch()
    loss, extras = SharcsTrainLoss(tracker, SharcsLossSection(router_weight=0.5))(model, (x, y, idx))
    logits = torch.cat([model(x[i : i + 1], width=model.widths[i % 3]) for i in range(6)])
    router = model.router(model.stem(x)[0])
    want = F.cross_entropy(logits, y) + 0.5 * F.binary_cross_entropy_with_logits(router, tracker.labels)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    assert extras["mean_width"] == pytest.approx((0.25 + 0.5 + 1.0) / 3)
    probs = logits.softmax(-1).gather(1, y.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(tracker.history[1 % tracker.window], probs.detach())


def test_fixed_width_trains_every_sample_there_after_warmup():
    model = SharcsViT(**TINY)
    tracker = HardnessTracker(6, model.widths, PAPER_THRESHOLDS, warmup_epochs=1)
    loss_fn = SharcsTrainLoss(tracker, SharcsLossSection(fixed_width=0.5))
    x, y, idx = _batch()
    assert loss_fn(model, (x, y, idx))[1]["mean_width"] == 1.0  # warm-up: full width
    tracker.epoch = 1
    loss, extras = loss_fn(model, (x, y, idx))
    assert extras["mean_width"] == 0.5
    torch.testing.assert_close(loss, F.cross_entropy(model(x, width=0.5), y))  # no router term
    with pytest.raises(ConfigError, match=r"fixed_width=0\.3 is not one of"):
        SharcsTrainLoss(tracker, SharcsLossSection(fixed_width=0.3))


def test_loss_section_checks():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        SharcsLossSection(window=3, warmup_epochs=2)
    with pytest.raises(ConfigError, match="hardness"):
        SharcsLossSection(hardness="margin")


def test_training_moves_samples_out_of_full_width_after_warmup():
    torch.manual_seed(0)
    x = torch.randn(48, 3, 8, 8)
    y = (x[:, 0, :4, :4].mean((1, 2)) > 0).long() + (x[:, 1].mean((1, 2)) > 0).long()
    model = SharcsViT(**TINY)
    thresholds = {0.25: [0.4, 1.0], 0.5: [0.3, 0.6], 1.0: [0.0, 0.4]}
    tracker = HardnessTracker(48, model.widths, thresholds, window=1, warmup_epochs=1)
    cfg = TrainConfig(epochs=3, batch_size=16, optimizer="adamw", lr=3e-3, device="cpu", progress=False, log_every=1000)
    loss = SharcsTrainLoss(tracker, SharcsLossSection(thresholds=thresholds))
    Trainer(model, cfg, train_data=IndexedDataset(TensorDataset(x, y)), loss_fn=loss, callbacks=[tracker]).fit()
    assert tracker.epoch == 3
    assert tracker.bucket_sizes()["1"] < 48 and sum(tracker.bucket_sizes().values()) == 48
    metrics = sharcs_eval(model.eval(), [(x, y)])
    assert set(metrics) == {"top1", "mean_width", "top1_w0.25", "top1_w0.5", "top1_w1"}
    assert 0.25 <= metrics["mean_width"] <= 1.0
