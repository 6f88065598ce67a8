"""bramley.core.config: YAML files, typed key=value overrides, unknown keys, the resolved config saved to disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from bramley.core.config import ConfigError, load_config, parse_overrides, save_config


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


def test_save_config_round_trip(tmp_path):
    config = {"model": {"name": Path("/data/x")}, "train": {"lr": 2e-4, "sizes": [8, 16]}}
    path = save_config(config, tmp_path / "run")  # non-YAML types (a Path) are written as strings
    assert path == tmp_path / "run" / "config.yaml"
    loaded = load_config(path)
    assert loaded == {"model": {"name": "/data/x"}, "train": {"lr": 2e-4, "sizes": [8, 16]}}
    assert list(loaded) == list(config), "key order is kept, so the file reads like the defaults"
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
