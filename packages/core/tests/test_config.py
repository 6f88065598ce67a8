"""bramley.core.config: YAML files, typed key=value overrides, unknown keys, the resolved config saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from bramley.core.config import (
    ConfigError,
    apply_overrides,
    load_config,
    parse_overrides,
    resolve_config,
    save_config,
)

DEFAULTS = {
    "model": {"name": "mobileone_s0", "width": 1.0, "kwargs": {"drop": 0.0}},
    "train": {"epochs": 10, "lr": 0.1, "amp": False, "sizes": [8, 16], "schedule": "cosine", "ema": None},
    "seed": 0,
}


def test_load_yaml_and_json(tmp_path):
    (tmp_path / "a.yaml").write_text("# comment\ntrain:\n  lr: 1e-3\n  sizes: [4, 8]\nseed: 3\n")
    assert load_config(tmp_path / "a.yaml") == {"train": {"lr": 0.001, "sizes": [4, 8]}, "seed": 3}
    (tmp_path / "b.json").write_text('{"train": {"epochs": 2}}')
    assert load_config(tmp_path / "b.json") == {"train": {"epochs": 2}}
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    assert load_config(tmp_path / "empty.yaml") == {}


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*missing.yaml does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list.yaml must hold a mapping at top level, got list"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("lr=1e-3", 0.001),  # PyYAML alone reads this as the string "1e-3"
        ("lr=5E4", 50000.0),
        ("lr=-2.5e+2", -250.0),
        ("lr=.5", 0.5),
        ("lr=0.1", 0.1),
        ("lr=3", 3),
        ("lr=1_000", 1000),
        ("lr=true", True),
        ("lr=null", None),
        ("lr=[8, 16]", [8, 16]),
        ("lr={a: 1}", {"a": 1}),
        ("lr=cosine", "cosine"),
        ("lr='3'", "3"),
        ("lr=1e3x", "1e3x"),
        ("lr=1.2.3", "1.2.3"),
        ("lr=", ""),
        ("lr=a=b", "a=b"),
    ],
)
def test_override_values_are_typed(text, value):
    [(key, parsed)] = parse_overrides([text])
    assert key == ["lr"] and parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("text", ["lr", "=1", "a..b=1", ".a=1", "a.=1", "lr=[1, 2"])
def test_malformed_overrides(text):
    with pytest.raises(ConfigError, match=r"override '.*'"):
        parse_overrides([text])


def test_nested_overrides_and_types():
    out = apply_overrides(DEFAULTS, ["train.lr=1e-2", "train.epochs=3", "model.kwargs.drop=0.1", "train.ema=0.999"])
    assert out["train"]["lr"] == 0.01 and out["train"]["epochs"] == 3 and out["model"]["kwargs"]["drop"] == 0.1
    assert out["train"]["ema"] == 0.999, "a None default accepts any type"
    assert DEFAULTS["train"]["lr"] == 0.1, "the defaults must not be modified"
    # numbers mix; an int given for a float becomes a float
    assert apply_overrides(DEFAULTS, ["model.width=2"])["model"]["width"] == 2.0
    assert isinstance(apply_overrides(DEFAULTS, ["model.width=2"])["model"]["width"], float)
    # already parsed (path, value) pairs are accepted too
    assert apply_overrides(DEFAULTS, [(["seed"], 7)])["seed"] == 7


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=ten", "config key 'train.epochs' expects int like its default 10, got str 'ten'"),
        ("train.amp=1", "config key 'train.amp' expects bool"),
        ("train.lr=yes", "expects float like its default 0.1, got bool True"),
        ("train.schedule=3", "expects str like its default 'cosine', got int 3 (quote it"),
        ("train.sizes=8", "expects list like its default [8, 16], got int 8"),
        ("model=resnet", "config key 'model' expects dict"),
        ("train.lrr=0.1", "unknown config key 'train.lrr': 'lrr' is not in train (known: amp, ema, epochs, lr, "),
        ("optim.lr=0.1", "unknown config key 'optim.lr': 'optim' is not in top level (known: model, seed, train)"),
        ("seed.x=1", "config key 'seed' is a value, not a section"),
    ],
)
def test_override_errors(override, message):
    with pytest.raises(ConfigError) as info:
        apply_overrides(DEFAULTS, [override])
    assert message in str(info.value)


def test_non_strict_overrides_add_keys():
    out = apply_overrides({"a": {"b": 1}}, ["a.c=2", "d.e.f=x"], strict=False)
    assert out == {"a": {"b": 1, "c": 2}, "d": {"e": {"f": "x"}}}


def test_resolve_precedence_defaults_file_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.05\n  epochs: 20\nmodel:\n  kwargs:\n    drop: 0.2\n")
    out = resolve_config(DEFAULTS, path, ["train.epochs=5"])
    assert out["train"] == {**DEFAULTS["train"], "lr": 0.05, "epochs": 5}
    assert out["model"] == {"name": "mobileone_s0", "width": 1.0, "kwargs": {"drop": 0.2}}
    assert resolve_config(DEFAULTS) == DEFAULTS and resolve_config(DEFAULTS) is not DEFAULTS


def test_resolve_file_errors_name_file_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  learning_rate: 0.05\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown config key 'train.learning_rate' \(known: amp, ema"):
        resolve_config(DEFAULTS, path)
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"run.yaml: config key 'train.epochs' expects int"):
        resolve_config(DEFAULTS, path)
    path.write_text("train: 3\n")
    with pytest.raises(ConfigError, match=r"run.yaml: config key 'train' expects dict"):
        resolve_config(DEFAULTS, path)


def test_save_config_round_trip(tmp_path):
    config = resolve_config(DEFAULTS, None, ["train.lr=2e-4"])
    config["model"]["name"] = Path("/data/x")  # non-YAML types are written as strings
    path = save_config(config, tmp_path / "run")
    assert path == tmp_path / "run" / "config.yaml"
    loaded = load_config(path)
    assert loaded["train"]["lr"] == 2e-4 and loaded["model"]["name"] == "/data/x"
    assert list(loaded) == list(config), "key order is kept, so the file reads like the defaults"
    assert resolve_config(DEFAULTS, path) == loaded, "the saved config re-runs the same settings"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]
    assert save_config({"a": 1}, tmp_path / "run", name="other.yaml").read_text() == "a: 1\n"


def test_recipe_path_finds_bundled_recipes_and_names_the_known_ones(tmp_path, monkeypatch):
    from bramley.core.config import recipe_path

    recipes = tmp_path / "bramley" / "demo_net" / "recipes"  # a method package (namespace) with bundled recipes
    recipes.mkdir(parents=True)
    (recipes.parent / "__init__.py").write_text("")
    (recipes / "imagenet.yaml").write_text("train: {epochs: 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = recipe_path("demo-net", "imagenet")
    assert path == recipes / "imagenet.yaml"
    own = tmp_path / "my" / "own.yaml"
    own.parent.mkdir()
    own.write_text("train: {epochs: 2}\n")
    assert recipe_path("demo-net", str(own)) == own  # a YAML path is taken as given
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'; bundled recipes: imagenet \(or give a .yaml"):
        recipe_path("demo-net", "nope")
    # a name resolves only inside the package's recipes; anything path-like is a file that must exist
    for escape in ("../recipes/imagenet", "..", "recipes/imagenet", "imagenet/"):
        with pytest.raises(ConfigError):
            recipe_path("demo-net", escape)
    with pytest.raises(ConfigError, match=r"recipe file .*missing.yaml does not exist"):
        recipe_path("demo-net", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"must end in .yaml, .yml or .json"):
        recipe_path("demo-net", str(tmp_path / "my"))


def test_open_sections_accept_any_key_from_file_and_overrides(tmp_path):
    defaults = {"model": {"name": "m", "kwargs": {}}, "train": {"epochs": 1}}
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text("model:\n  kwargs: {depth: 4, window_sizes: [8]}\n")
    got = resolve_config(
        defaults, cfg, ["model.kwargs.depth=2", "model.kwargs.drop=0.1"], open_sections=["model.kwargs"]
    )
    assert got["model"]["kwargs"] == {"depth": 2, "window_sizes": [8], "drop": 0.1}
    # outside the open section the usual rules hold
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.depth'"):
        resolve_config(defaults, None, ["model.depth=2"], open_sections=["model.kwargs"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.kwargs'"):
        resolve_config({"model": {"name": "m"}}, cfg, open_sections=["train"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.kwargs\.depth'"):
        resolve_config(defaults, None, ["model.kwargs.depth=2"])
