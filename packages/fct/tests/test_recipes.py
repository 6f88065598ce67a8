"""The bundled recipes: each loads, carries the paper's hyperparameters, and trains (shrunk) end to end."""

import re
from pathlib import Path

import pytest

from bramley.core.checkpoint import load_model
from bramley.core.errors import ConfigError
from bramley.core.recipe import load_recipe
from bramley.fct.cli import main
from bramley.fct.recipe import SCHEMA, STAGE_SEEDS, stage_train_config, stages_for

RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "src/bramley/fct/recipes").glob("*.yaml"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_bundled_recipe_resolves_every_stage(name):
    recipe = load_recipe(SCHEMA, name)
    for stage, offset in STAGE_SEEDS.items():
        assert stage_train_config(recipe, stage, "out").seed == recipe.train.seed + offset
    assert stages_for(recipe.eval.cases)


@pytest.mark.parametrize("name,old_classes", [("cifar100", 50), ("imagenet", 500)])
def test_paper_recipes_carry_the_official_settings(name, old_classes):
    """apple/ml-fct configs/<dataset>_backbone_*.yaml and <dataset>_transformation.yaml, and our side-info schedule."""
    recipe = load_recipe(SCHEMA, name)
    assert (recipe.model.name, recipe.model.kwargs) == ("fct_resnet50", {"embedding_dim": 128})
    assert recipe.data.old_classes == old_classes and recipe.data.image_size == 224 and recipe.eval.metric == "l2"
    stage = {s: stage_train_config(recipe, s, "out") for s in ("old", "new", "bct", "side_info", "transformation")}
    for s in ("old", "new", "bct"):
        c = stage[s]
        assert (c.optimizer, c.lr, c.momentum, c.nesterov, c.weight_decay) == ("sgd", 1.024, 0.875, False, 2**-15)
        assert (c.epochs, c.batch_size, c.schedule, c.warmup_epochs, c.decay_norm_and_bias) == (
            100,
            1024,
            "cosine",
            5,
            True,
        )
    c = stage["transformation"]
    assert (c.optimizer, c.lr, c.weight_decay, c.epochs, c.batch_size, c.warmup_epochs, c.decay_norm_and_bias) == (
        "adamw",
        5e-4,
        2**-15,
        80,
        1024,
        5,
        True,
    )
    assert (recipe.loss.transformation.inner_dim, recipe.loss.transformation.switch_to_eval_at) == (2048, 0.5)
    c = stage["side_info"]
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.epochs, c.batch_size, c.warmup_epochs) == (
        "sgd",
        0.6,
        0.9,
        1e-6,
        200,
        512,
        10,
    )
    assert not c.decay_norm_and_bias and recipe.loss.label_smoothing == 0.1 and recipe.loss.bct.weight == 1.0


def test_stage_overrides_are_checked_by_key():
    with pytest.raises(ConfigError, match=re.escape("unknown config key 'loss.transformation.optim.learning_rate'")):
        load_recipe(SCHEMA, "smoke", ["loss.transformation.optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match=re.escape("config key 'loss.old.train.epochs' must be int")):
        load_recipe(SCHEMA, "smoke", ["loss.old.train.epochs=ten"])
    recipe = load_recipe(SCHEMA, "smoke", ["loss.old.train.epochs=2", "loss.old.optim.lr=1"])
    assert recipe.loss.old.optim == {"lr": 1.0} and stage_train_config(recipe, "old").epochs == 2
    assert stage_train_config(recipe, "new").epochs == recipe.train.epochs


def test_imagenet_recipe_trains_on_an_image_folder(image_folder, tmp_path, tiny_chain):
    """The ImageNet recipe's chain, shrunk (2 steps, 32 px, 2 old classes) on the 3-class image_folder fixture, with
    ResNet-18s swapped in to keep the suite fast (the README test runs the CIFAR-100 recipe with its ResNet-50s)."""
    root = image_folder.parent
    (root / "training").symlink_to(image_folder)
    (root / "validation").symlink_to(image_folder)
    resnet18 = ["model.name=fct_resnet18", "loss.old.model.name=fct_resnet18", "loss.side_info.model.name=fct_resnet18"]
    out = tmp_path / "run"
    assert main(["train", "--recipe", "imagenet", "--out", str(out), *resnet18, f"data.root={root}", *tiny_chain]) == 0
    saved = (out / "recipe.yaml").read_text()
    assert "lr: 0.0005" in saved and "inner_dim: 32" in saved
    assert load_model(out / "old").num_classes == 2 and load_model(out / "new").num_classes == 3
    assert load_model(out / "transformation").inner_dim == 32
