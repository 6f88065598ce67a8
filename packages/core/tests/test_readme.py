"""The core README's "Recipes and the command line" examples run and say what the text says."""

from __future__ import annotations

from pathlib import Path

from shared.markdown import code_blocks, run_python

README = Path(__file__).resolve().parents[1] / "README.md"


def test_recipe_example_runs_and_refuses_the_bad_overrides(capsys):
    [block] = code_blocks(README, "python", "Recipes and the command line")
    run_python(README, block)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("0.001 Data(root=None, image_size=160) 0.001")
    assert lines[1] == "override 'optim.lr=.nan': config key 'optim.lr' must be a finite number, got nan"
    assert len(lines) == 5 and all(line.startswith("override ") for line in lines[1:])


def test_recipe_yaml_example_is_a_valid_recipe(tmp_path):
    from bramley.core.classification import ImageData, LossSection
    from bramley.core.recipe import RecipeSchema, load_recipe

    [block] = code_blocks(README, "yaml", "Recipes and the command line")
    (tmp_path / "r.yaml").write_text(block)
    recipe = load_recipe(RecipeSchema("demo", data=ImageData, loss=LossSection), str(tmp_path / "r.yaml"))
    assert recipe.model.name == "mobileone_s0" and recipe.optim.weight_decay == 1e-4 and recipe.train.epochs == 300
