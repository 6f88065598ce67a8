"""The CLI end to end on tiny data (train -> eval -> route -> bench), the bundled recipes, and user mistakes as one
line with exit status 2."""

import json
from pathlib import Path

import pytest

from bramley.core.checkpoint import save_pretrained
from bramley.core.recipe import load_recipe
from bramley.core.registry import create_model
from bramley.sharcs.cli import main
from bramley.sharcs.train import GLUE_RECIPES, RECIPES
from shared.cli_testing import CLI, QUICK_CPU_TRAIN

RECIPE_DIR = Path(__file__).resolve().parents[1] / "src" / "bramley" / "sharcs" / "recipes"
cli = CLI(main, "bramley-sharcs")
TINY = ["model.kwargs.depth=2", "model.kwargs.embed_dim=16", "model.kwargs.router_hidden=8"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_pretrained(create_model("sharcs_vit_digits", depth=2, embed_dim=16, router_hidden=8), folder)
    return folder


def test_help_lists_every_verb(capsys):
    out = cli.help(capsys)
    for verb in ("info", "train", "train-glue", "eval", "route", "bench", "reproduce"):
        assert f"    {verb}" in out


def test_every_bundled_recipe_loads():
    names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    assert names == ["glue_roberta", "imagenet_deit_small", "smoke"]
    recipes = {name: load_recipe(GLUE_RECIPES if name.startswith("glue") else RECIPES, name) for name in names}
    glue = recipes["glue_roberta"]
    assert (glue.optim.lr, glue.train.epochs, glue.train.batch_size, glue.optim.warmup_epochs) == (2e-5, 10, 32, 0.6)
    assert glue.model.kwargs["widths"] == [0.25, 0.5, 1.0] and glue.model.kwargs["router_hidden"] == 1024
    image = recipes["imagenet_deit_small"]
    assert image.model.name == "sharcs_timm_vit" and image.loss.thresholds == {0.5: [0.5, 1.0], 1.0: [0.0, 0.5]}


def test_train_eval_route_bench(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = cli.run(capsys, "train", "--recipe", "smoke", "--out", run, *QUICK_CPU_TRAIN, "train.steps=4")
    assert code == 0, err
    results = json.loads((run / "results.json").read_text())
    assert {"eval_top1", "eval_mean_width", "eval_top1_w0.25"} <= set(results["metrics"]) and results["buckets"]
    code, out, err = cli.run(capsys, "eval", "--checkpoint", run, "--thresholds", "0.5", "--out", tmp_path / "e.json")
    assert code == 0, err
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == [
        "width 0.25",
        "width 0.5",
        "width 1",
        "SHARCS (router argmax)",
        "SHARCS (confidence 0.5)",
    ]
    assert rows[2]["flops_vs_full"] == 1.0 and rows[0]["mflops"] < rows[1]["mflops"] < rows[2]["mflops"]
    code, out, err = cli.run(capsys, "route", "--checkpoint", run, "--out", tmp_path / "r.json")
    assert code == 0 and "inputs routed" in out, err
    routes = json.loads((tmp_path / "r.json").read_text())
    assert len(routes["routes"]) == sum(routes["counts"].values()) == 359
    code, out, err = cli.run(capsys, "bench", "--checkpoint", run, "--rounds", "2", "--repeats", "1")
    assert code == 0 and "samples/s" in out, err


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.kwargs.widths=[0.25, 1.5]", "widths must be in (0, 1]"),
        ("model.kwargs.widths=[0.5, 0.25, 1.0]", "sorted ascending"),
        ("model.kwargs.widths=[0.3, 1.0]", "allowed widths: 0.25, 0.5, 0.75, 1"),
        ("model.kwargs.router_layer=4", "router_layer must be an integer in [1, 1]"),
        ("loss.thresholds={0.25: [0.5, 1.0], 0.5: [0.5, 1.0], 1.0: [0.0, 0.5]}", "share the range"),
        ("loss.thresholds={0.25: [0.0, 0.5], 0.5: [0.4, 0.9], 1.0: [0.5, 1.0]}", "must take easier samples"),
        ("loss.thresholds={0.25: [0.5, 1.0], 1.0: [0.0, 0.5]}", "no range for width 0.5"),
        ("loss.window=3", "loss.warmup_epochs (1) must be >= loss.window (3)"),
        ("model.name=no_such_model", "no_such_model"),
    ],
)
def test_bad_recipes_are_one_line_errors(capsys, tmp_path, override, message):
    cli.user_error(capsys, ["train", "--recipe", "smoke", "--out", tmp_path / "x", *QUICK_CPU_TRAIN, override], message)


def test_bad_eval_inputs(capsys, tiny_checkpoint, tmp_path):
    cli.usage_error(capsys, ["eval", "--checkpoint", tiny_checkpoint, "--thresholds", "1.5"], "must be in (0, 1)")
    cli.user_error(capsys, ["route", "--checkpoint", tmp_path / "missing"], "missing")
