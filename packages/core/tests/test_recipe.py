"""bramley.core.recipe: the six-section schema, typed keys, precedence, errors that name the key and the source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch.nn as nn

from bramley.core import registry
from bramley.core.config import load_config
from bramley.core.errors import ConfigError
from bramley.core.recipe import (
    OPTIM_FIELDS,
    Recipe,
    RecipeSchema,
    build_model,
    load_recipe,
)
from bramley.core.train import TrainConfig


@dataclass
class Crop:
    size: int = 32
    scale: tuple[float, float] = (0.08, 1.0)


@dataclass
class Data:
    root: str | None = None
    kind: Literal["folder", "digits"] = "folder"
    classes: list[str] = field(default_factory=list)
    crop: Crop = field(default_factory=Crop)
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"data.fraction must be in (0, 1], got {self.fraction}")


@dataclass
class Loss:
    smoothing: float = 0.1


@pytest.fixture
def schema(tmp_path, monkeypatch) -> RecipeSchema:
    """A method package ``demo_pkg`` with two bundled recipes."""
    recipes = tmp_path / "bramley" / "demo_pkg" / "recipes"
    recipes.mkdir(parents=True)
    (recipes.parent / "__init__.py").write_text("")
    (recipes / "paper.yaml").write_text(
        "model: {name: recipe_test_net, kwargs: {width: 8}}\n"
        "data: {root: /data, crop: {size: 64}}\n"
        "optim: {optimizer: adamw, lr: 1e-3}\n"
        "train: {epochs: 300}\n"
    )
    (recipes / "broken.yaml").write_text("optim: {lr: fast}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return RecipeSchema("demo-pkg", data=Data, loss=Loss, default_recipe="paper")


def test_sections_split_train_config():
    """optim + train + eval hold every TrainConfig field except out_dir, each once."""
    recipe = Recipe.build(RecipeSchema("x"), {})
    optim, train, eval_ = recipe.to_dict()["optim"], recipe.to_dict()["train"], recipe.to_dict()["eval"]
    assert set(optim) == set(OPTIM_FIELDS) and not set(optim) & set(train)
    fields = set(TrainConfig().to_dict()) - {"out_dir"}
    assert set(optim) | set(train) | {"eval_every", "eval_batch_size"} == fields
    assert eval_ == {"every": 1, "batch_size": None}
    assert recipe.train_config().to_dict() == TrainConfig().to_dict(), "an empty recipe is TrainConfig's defaults"


def test_precedence_defaults_recipe_overrides(schema):
    recipe = load_recipe(schema, None, ["optim.lr=0.01", "data.crop.size=16", "model.kwargs.depth=3", "optim.lr=2e-2"])
    assert recipe.source.endswith("paper.yaml"), "the default recipe"
    assert recipe.model.name == "recipe_test_net" and recipe.model.kwargs == {"width": 8, "depth": 3}
    assert recipe.optim.optimizer == "adamw" and recipe.optim.lr == 0.02, "later overrides win"
    assert recipe.train.epochs == 300 and recipe.train.batch_size == 64, "untouched keys keep their defaults"
    assert recipe.data.crop == Crop(size=16, scale=(0.08, 1.0)) and recipe.data.root == "/data"
    config = recipe.train_config("runs/x")
    assert (config.lr, config.epochs, config.out_dir, config.optimizer) == (0.02, 300, "runs/x", "adamw")


def test_values_take_their_declared_types(schema):
    recipe = load_recipe(schema, None, ["optim.lr=1", "data.crop.scale=[0.5, 1]", "train.resume=/runs/a/checkpoint.pt"])
    assert recipe.optim.lr == 1.0 and isinstance(recipe.optim.lr, float), "ints widen to floats"
    assert recipe.data.crop.scale == (0.5, 1.0), "lists become the declared tuples"
    assert recipe.train.resume == "/runs/a/checkpoint.pt", "train.resume takes a path as well as a bool"
    assert load_recipe(schema, None, ["train.epochs=1e2"]).train.epochs == 100, "an integral float is an int"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=.nan", "config key 'optim.lr' must be a finite number, got nan"),
        ("optim.lr=.inf", "config key 'optim.lr' must be a finite number, got inf"),
        ("optim.momentum=1e999", "config key 'optim.momentum' must be a finite number, got inf"),
        ("train.epochs=ten", "config key 'train.epochs' must be int, got str 'ten'"),
        ("train.epochs=1.5", "config key 'train.epochs' must be int, got float 1.5"),
        ("train.shuffle=1", "config key 'train.shuffle' must be bool, got int 1"),
        ("data.root=[1, 2]", "config key 'data.root' must be str, got list [1, 2] (quote it"),
        ("data.root={a: {b: 1}}", "config key 'data.root' must be str, got dict"),
        ("data.kind=photos", "config key 'data.kind' must be one of 'folder' | 'digits', got 'photos'"),
        ("data.crop.scale=[1]", "config key 'data.crop.scale' must hold 2 values, got 1"),
        ("data.crop=3", "config key 'data.crop' must be a section"),
        ("data.classes=[a, 1]", "config key 'data.classes[1]' must be str, got int 1"),
        ("data.fraction=2", "data.fraction must be in (0, 1], got 2.0"),
        ("data.nope=1", "unknown config key 'data.nope' (data has: root, kind, classes, crop, fraction)"),
        ("optim.epochs=3", "unknown config key 'optim.epochs' (optim has: optimizer, lr,"),
        ("training.epochs=3", "unknown recipe section 'training' (sections: model, data, loss, optim, train, eval)"),
        ("model.width=3", "unknown config key 'model.width' (model has: name, kwargs)"),
        ("train.epochs.x=3", "config key 'train.epochs' is a value"),
        ("optim.optimizer=rmsprop", "optim.optimizer='rmsprop' is not one of sgd, adamw"),
        ("optim.lr=-1", "optim.lr must be >= 0, got -1.0"),
        ("eval.every=0", "eval.every must be >= 1, got 0"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("lr", "override 'lr' is not of the form key=value"),
    ],
)
def test_override_errors_name_the_override_and_key(schema, override, message):
    with pytest.raises(ConfigError) as info:
        load_recipe(schema, None, [override])
    assert message in str(info.value)
    assert str(info.value).startswith(f"override {override!r}"), "the message says which override is at fault"


def test_recipe_file_errors_name_the_file(schema, tmp_path):
    with pytest.raises(ConfigError, match=r"recipe .*broken.yaml: config key 'optim.lr' must be float, got str 'fast'"):
        load_recipe(schema, "broken")
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'; bundled recipes: broken, paper"):
        load_recipe(schema, "nope")
    with pytest.raises(ConfigError):
        load_recipe(schema, "../recipes/paper")
    own = tmp_path / "own.yaml"
    own.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"own.yaml: unknown config key 'train.learning_rate'"):
        load_recipe(schema, str(own))
    own.write_text("- a list\n")
    with pytest.raises(ConfigError, match=r"own.yaml must hold a mapping at top level"):
        load_recipe(schema, str(own))


def test_yaml_alias_bomb_and_deep_nesting_are_refused(schema, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    bomb.write_text("\n".join(lines) + "\nmodel: {kwargs: {payload: *a7}}\n")
    with pytest.raises(ConfigError, match=r"bomb.yaml expands to more than 100000 values"):
        load_recipe(schema, str(bomb))
    deep = tmp_path / "deep.yaml"
    deep.write_text("model: {kwargs: {x: " + "[" * 2000 + "]" * 2000 + "}}\n")
    with pytest.raises(ConfigError, match=r"deep.yaml is nested too deeply"):
        load_recipe(schema, str(deep))
    with pytest.raises(ConfigError, match=r"override .* is nested too deeply"):
        load_recipe(schema, None, ["model.kwargs.x=" + "[" * 100 + "]" * 100])


def test_saved_recipe_reruns_the_same_settings(schema, tmp_path):
    recipe = load_recipe(schema, None, ["optim.lr=3e-4", "data.classes=[a, b]", "train.seed=7"])
    path = recipe.save(tmp_path / "run")
    assert path.name == "recipe.yaml" and load_config(path)["train"]["seed"] == 7
    again = load_recipe(schema, str(path))
    assert again.to_dict() == recipe.to_dict()


def test_train_config_errors_use_recipe_keys(schema):
    with pytest.raises(ConfigError, match=r"train.checkpoint_every must be >= 0"):
        load_recipe(schema, None, ["train.checkpoint_every=-1"])
    assert schema.defaults()["optim"]["lr"] == TrainConfig().lr


# ---------------------------------------------------------------------------------------------------- build_model
class Tiny(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 2):
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.fc = nn.Linear(width, num_classes)


@pytest.fixture
def tiny_registered(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_model(name="recipe_test_net", input_size=(1, 4, 4))(Tiny)


def test_build_model_turns_factory_errors_into_config_errors(tiny_registered):
    assert build_model("recipe_test_net", {"width": 3}).fc.in_features == 3
    with pytest.raises(ConfigError, match=r"model: unknown model 'recipe_test_nt'. Did you mean: recipe_test_net"):
        build_model("recipe_test_nt")
    with pytest.raises(ConfigError, match=r"model: recipe_test_net\(depth=2\) failed: .*unexpected keyword .*depth"):
        build_model("recipe_test_net", {"depth": 2})
    with pytest.raises(ConfigError, match=r"recipe_test_net\(width=0\) failed: width must be >= 1, got 0"):
        build_model("recipe_test_net", {"width": 0})
    with pytest.raises(ConfigError, match=r"model.name is not set"):
        build_model("")


def test_build_model_refuses_a_model_larger_than_memory(tiny_registered):
    with pytest.raises(ConfigError, match=r"recipe_test_net\(num_classes=100000000000\) does not fit in memory \("):
        build_model("recipe_test_net", {"num_classes": 10**11})


@dataclass
class Range:
    low: int = 0
    high: int = 1

    def __post_init__(self) -> None:
        if self.low >= self.high:
            raise ConfigError(f"data.low ({self.low}) must be below data.high ({self.high})")


def test_checks_across_keys_see_the_final_values():
    """Raising both bounds passes through low > high half-way: only the final recipe is checked."""
    schema = RecipeSchema("x", data=Range)
    assert load_recipe(schema, None, ["data.low=5", "data.high=10"]).data == Range(5, 10)
    with pytest.raises(ConfigError, match=r"^override 'data.high=3': data.low \(5\) must be below data.high \(3\)"):
        load_recipe(schema, None, ["data.low=5", "data.high=3"])
