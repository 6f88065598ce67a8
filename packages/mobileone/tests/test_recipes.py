"""Every bundled recipe resolves against the package's schema, with the paper's (and CVNets') hyperparameters."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from bramley.core.recipe import load_recipe
from bramley.mobileone.train import RECIPES

BUNDLED = sorted(p.stem for p in Path(str(files("bramley.mobileone") / "recipes")).glob("*.yaml"))


def test_bundled_recipes():
    assert BUNDLED == ["imagenet", "imagenet_cvnets", "smoke"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_recipe_resolves(name):
    recipe = load_recipe(RECIPES, name)
    assert recipe.model.name == "mobileone_s0"
    recipe.train_config("out")  # the trainer accepts it


def test_paper_recipe_hyperparameters():
    """Vasu et al. 2023, Sec. 4: SGD momentum 0.9, lr 0.1 cosine, batch 256 (8 x 32), 300 epochs, label smoothing
    0.1, weight decay 1e-4 annealed to 1e-5, EMA 0.9995; multi-scale 128..320 px (our choice)."""
    recipe = load_recipe(RECIPES, "imagenet")
    config = recipe.train_config("out")
    assert (config.optimizer, config.lr, config.momentum, config.nesterov) == ("sgd", 0.1, 0.9, False)
    assert (config.schedule, config.warmup_epochs, config.warmup_steps, config.min_lr_ratio) == ("cosine", 0, None, 0)
    assert (config.weight_decay, config.weight_decay_end, config.decay_norm_and_bias) == (1e-4, 1e-5, False)
    assert (config.epochs, config.batch_size, config.ema_decay, recipe.loss.label_smoothing) == (300, 32, 0.9995, 0.1)
    data = recipe.data
    assert (data.source, data.image_size, data.crop_pct, data.interpolation) == ("folder", 224, 0.875, "bilinear")
    ms = data.multiscale
    assert (ms.enabled, ms.min_size, ms.max_size, ms.num_scales, ms.curriculum_epochs) == (True, 128, 320, 5, 150)
    assert recipe.model.kwargs == {} and recipe.loss.mixup == recipe.loss.cutmix == 0


def test_cvnets_recipe_hyperparameters():
    """apple/ml-cvnets mobilenet_v2.yaml: SGD nesterov 0.9, lr 0.4 -> 2e-4 cosine, 7500 warmup steps from 0.05,
    weight decay 4e-5 (constant, no decay on norm/bias), 256 per GPU, 300 epochs, EMA 0.9995."""
    recipe = load_recipe(RECIPES, "imagenet_cvnets")
    config = recipe.train_config("out")
    assert (config.optimizer, config.lr, config.momentum, config.nesterov) == ("sgd", 0.4, 0.9, True)
    assert (config.warmup_steps, config.warmup_start_factor, config.min_lr_ratio) == (7500, 0.125, 0.0005)
    assert (config.weight_decay, config.weight_decay_end, config.decay_norm_and_bias) == (4e-5, None, False)
    assert (config.epochs, config.batch_size, config.ema_decay, recipe.loss.label_smoothing) == (300, 256, 0.9995, 0.1)
    assert recipe.data.multiscale.enabled and recipe.data.multiscale.curriculum_epochs == 0
