"""Training on core's trainer: exact resume with the dynamic sampler, the frozen backbone, baselines, bad data."""

from __future__ import annotations

import pytest
import torch

from bramley.core.errors import ConfigError, DataError
from bramley.core.recipe import load_recipe
from bramley.udon.data import MultiDomainDataset, TensorImages, mini_domain
from bramley.udon.train import RECIPES, make_trainer

TINY = [
    "model.kwargs={backbone: convnet, backbone_kwargs: {widths: [4]}, teacher_dim: 8, student_dim: 4}",
    "data.source=mini",
    "data.domains=[digits, rotated_digits]",
    "data.image_size=8",
    "data.update_every=3",
    "train.batch_size=64",
    "train.progress=false",
]


def tiny_data(n: int = 128) -> MultiDomainDataset:
    parts = [(d, mini_domain(d, "train", 8, 0)) for d in ("digits", "rotated_digits")]
    cut = [(d, TensorImages(ds.images[:n], ds.targets[:n])) for d, ds in parts]
    return MultiDomainDataset(cut, [10, 40])


def weights_after(recipe, out, stop_at: int | None = None):
    trainer, model = make_trainer(recipe, out, tiny_data(), None)

    def stop(t):
        if stop_at is not None and t.step == stop_at:
            t.should_stop = True

    trainer.callbacks.append(stop)
    trainer.fit()
    return {k: v.clone() for k, v in model.state_dict().items()}, trainer


@pytest.mark.parametrize("method", ["udon", "udon_joint"])
def test_resume_is_exact_with_the_dynamic_sampler(tmp_path, method):
    overrides = [*TINY, f"model.name={method}", "train.epochs=2", "train.checkpoint_every=1"]
    if method == "udon_joint":
        overrides.append("model.kwargs={backbone: convnet, backbone_kwargs: {widths: [4]}, embed_dim: 4}")
    recipe = load_recipe(RECIPES, "smoke", overrides)
    straight, trainer = weights_after(recipe, tmp_path / "a")
    weights = trainer.callbacks[0]
    assert len(weights.updates) >= 2, "the dynamic sampler updated during the run"
    weights_after(recipe, tmp_path / "b", stop_at=5)  # stops mid-epoch 2, between two updates
    resumed, _ = weights_after(load_recipe(RECIPES, "smoke", [*overrides, "train.resume=true"]), tmp_path / "b")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_frozen_backbone_trains_heads_only():
    recipe = load_recipe(RECIPES, "smoke", [*TINY, "train.epochs=1", "loss.frozen_epochs=1"])
    trainer, model = make_trainer(recipe, None, tiny_data(), None)
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainer.fit()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == name.startswith("backbone."), name


def test_recipe_and_data_errors():
    with pytest.raises(ConfigError, match="num_classes=\\[3, 3\\] but the data has \\[10, 40\\]"):
        make_trainer(load_recipe(RECIPES, "smoke", [*TINY, "model.kwargs.num_classes=[3, 3]"]), None, tiny_data(), None)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        make_trainer(load_recipe(RECIPES, "smoke", [*TINY, "train.batch_size=256"]), None, tiny_data(), None)
    images = torch.zeros(4, 3, 8, 8)
    with pytest.raises(DataError, match="domain 'b' has no training samples"):
        MultiDomainDataset(
            [
                ("a", TensorImages(images, torch.tensor([0, 1, 0, 1]))),
                ("b", TensorImages(images[:0], torch.tensor([], dtype=torch.long))),
            ]
        )
    with pytest.raises(DataError, match="single class"):
        MultiDomainDataset([("a", TensorImages(images, torch.tensor([2, 2, 2, 2])))])
    with pytest.raises(DataError, match="label 5 outside \\[0, 3\\)"):
        MultiDomainDataset([("a", TensorImages(images, torch.tensor([0, 1, 2, 5])))], [3])
    with pytest.raises(ConfigError, match="unknown mini domain"):
        load_recipe(RECIPES, "smoke", ["data.domains=[digits, glyphs]"])
