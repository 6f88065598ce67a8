"""Joint training: the loss is the weighted sum of every granularity's loss (one step), evaluation per granularity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bramley.core.errors import ConfigError
from bramley.core.recipe import load_recipe
from bramley.core.registry import create_model
from bramley.matformer.data import TokenWindows, split_paths
from bramley.matformer.train import RECIPES, JointLoss, granularity_eval, train

VIT = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2, mlp_hidden=32, num_classes=3)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(6, 1, 8, 8, generator=gen), torch.randint(0, 3, (6,), generator=gen)


def test_joint_loss_is_the_weighted_sum_of_the_granularities_and_so_are_its_gradients():
    torch.manual_seed(0)
    model = create_model("matvit", **VIT)
    images, labels = _batch()
    weights = [0.5, 1.0, 2.0, 3.0]
    loss, parts = JointLoss(weights)(model, (images, labels))
    loss.backward()
    joint = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    expected = 0.0
    for w, size in zip(weights, (4, 8, 16, 32)):
        part = F.cross_entropy(model(images, ffn=size), labels)
        assert torch.allclose(parts[f"loss_h{size}"], part.detach())
        (w * part).backward()
        expected += w * part.item()
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(joint[name], p.grad, atol=1e-6), name


def test_the_smallest_granularity_trains_only_its_units():
    """A weight of 1 on h/8 alone: the gradient reaches the first h/8 units of each FFN and nothing beyond."""
    model = create_model("matvit", **VIT)
    JointLoss([1.0, 0.0, 0.0, 0.0])(model, _batch())[0].backward()
    fc1 = model.blocks[0].mlp.fc1.weight.grad
    assert fc1[:4].abs().sum() > 0 and fc1[4:].abs().sum() == 0


def test_token_windows_loss_is_next_token_cross_entropy():
    torch.manual_seed(0)
    model = create_model("matlm", dim=16, depth=1, num_heads=2, mlp_hidden=16, max_seq_len=8)
    windows = TokenWindows(torch.randint(0, 257, (50,)), 8)
    batch = torch.stack([windows[0], windows[1]])
    loss, parts = JointLoss()(model, batch)
    logits = model(batch[:, :-1], ffn=2)
    assert torch.allclose(parts["loss_h2"], F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()))
    assert loss.item() == pytest.approx(sum(v.item() for v in parts.values()), rel=1e-6)
    metrics = granularity_eval(model.eval(), [batch])
    assert set(metrics) == {f"{k}_h{s}" for k in ("loss", "ppl") for s in (2, 4, 8, 16)}


def test_granularity_eval_reports_every_granularity():
    model = create_model("matvit", **VIT).eval()
    metrics = granularity_eval(model, [_batch()])
    assert set(metrics) == {f"{k}_h{s}" for k in ("top1", "top5") for s in (4, 8, 16, 32)}


def test_loss_weights_must_match_the_granularities():
    model = create_model("matvit", **VIT)
    with pytest.raises(ConfigError, match="3 weights for 4 granularities"):
        JointLoss([1, 1, 1])(model, _batch())
    with pytest.raises(ConfigError, match="non-negative"):
        load_recipe(RECIPES, "smoke", ["loss.weights=[1, -1, 1, 1]"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.name=matlm", "model.kwargs={}"], "data.source=digits is images, but matlm is not a MatViT"),
        (["data.source=stdlib"], "is text, but matvit is not a MatLM"),
        (["model.kwargs.granularities=null"], "builds a dense model"),
        (["model.kwargs.mlp_hidden=100"], "do not divide the FFN hidden size 100"),
    ],
)
def test_recipe_mistakes_are_reported_before_training(overrides, message):
    recipe = load_recipe(RECIPES, "smoke", overrides)
    with pytest.raises(ConfigError, match=message):
        train(recipe, None)


def test_split_paths_holds_out_every_nth_file(tmp_path):
    paths = [tmp_path / f"{i}.txt" for i in range(10)]
    train_paths, val_paths = split_paths(paths, 0.25)
    assert val_paths == [paths[3], paths[7]] and len(train_paths) == 8
