"""The bramley-fct commands: the chain (`train`), the stage commands (equal to the chain's stages), the gallery
commands, and one-line errors (exit 2) for every bad input."""

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bramley.core.checkpoint import load_model
from bramley.core.cli import main as bramley_main
from bramley.core.recipe import load_recipe
from bramley.fct.backfill import load_gallery, save_gallery
from bramley.fct.cli import EPILOG, main
from bramley.fct.recipe import CASES, SCHEMA
from shared.cli_testing import CLI

RECIPES = Path(__file__).resolve().parents[1] / "src" / "bramley" / "fct" / "recipes"
STAGE_FOLDERS = ("old", "new", "bct", "side_info", "transformation", "transformation_no_side_info")
cli = CLI(main, "bramley-fct")


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """`train --recipe smoke`: every stage and every case, at toy size (one thread, as the tests that compare)."""
    out = tmp_path_factory.mktemp("chain") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--recipe", "smoke", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_help_names_every_command_and_only_bundled_recipes(capsys):
    out = cli.help(capsys)
    for command in ("info", "train", "train-backbone", "train-side-info", "train-transformation", "embed"):
        assert command in out
    for command in ("transform-gallery", "eval", "convert", "reproduce"):
        assert command in out
    bundled = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    named = re.search(r"Bundled recipes: (.*?); or a \.yaml file", EPILOG, re.S).group(1)
    assert sorted(re.findall(r"\b(" + "|".join(bundled) + r")\b", named)) == bundled
    examples = ["train.epochs=3", "loss.side_info.train.epochs=5", "eval.cases=[old_old,bct,fct,new_new]"]
    for example in [*examples, "data.root=/data/cifar100"]:  # the help's overrides are keys of the recipe
        assert example in EPILOG
        load_recipe(SCHEMA, "smoke", [example])


def test_train_chain_run_folder(chain):
    results = json.loads((chain / "results.json").read_text())
    assert [row["case"] for row in results["table"]] == [name for name, *_ in CASES.values()]
    assert set(results["stages"]) == set(STAGE_FOLDERS)
    for case, metrics in results["cases"].items():
        assert 0 <= metrics["top1"] <= 100 and metrics["num_queries"] == 629, case
    assert (chain / "recipe.yaml").is_file()
    for stage in STAGE_FOLDERS:  # each stage folder is a save_pretrained folder
        assert hasattr(load_model(chain / stage), "embed" if "transformation" not in stage else "mixer")
    assert load_model(chain / "transformation").side_info_dim == 8
    assert load_model(chain / "transformation_no_side_info").side_info_dim == 0
    gallery = load_gallery(chain / "galleries" / "old.safetensors")
    assert set(gallery) == {"embeddings", "side_info", "labels"}
    backfilled = load_gallery(chain / "galleries" / "backfilled.safetensors")
    assert backfilled["embeddings"].shape == (629, 8) and torch.equal(backfilled["labels"], gallery["labels"])


def test_stage_commands_equal_the_chain(chain, tmp_path, capsys):
    """Stage by stage (the README's commands) gives the chain's weights bit for bit and its evaluation numbers."""
    r, smoke = tmp_path, ["--recipe", "smoke"]
    assert main(["train-backbone", "--role", "old", *smoke, "--out", str(r / "old")]) == 0
    assert bramley_main(["fct", "train-backbone", "--role", "new", *smoke, "--out", str(r / "new")]) == 0
    assert main(["train-backbone", "--role", "bct", "--old", str(r / "old"), *smoke, "--out", str(r / "bct")]) == 0
    assert main(["train-side-info", *smoke, "--out", str(r / "side_info"), "--device", "cpu"]) == 0
    h = ["train-transformation", "--old", str(r / "old"), "--new", str(r / "new"), *smoke]
    assert main([*h, "--side", str(r / "side_info"), "--out", str(r / "transformation")]) == 0
    assert main([*h, "--out", str(r / "transformation_no_side_info")]) == 0
    for stage in STAGE_FOLDERS:
        assert _same_weights(r / stage, chain / stage), stage
        assert json.loads((r / stage / "results.json").read_text())["stage"] == stage
    assert "lr: 0.005" in (r / "transformation" / "recipe.yaml").read_text()

    side = ["--side", str(r / "side_info")]
    assert main(["embed", "--checkpoint", str(r / "old"), *side, *smoke, "--out", str(r / "g.safetensors")]) == 0
    assert main(["embed", "--checkpoint", str(r / "new"), *smoke, "--out", str(r / "q.safetensors")]) == 0
    tg = ["transform-gallery", "--checkpoint", str(r / "transformation"), "--gallery", str(r / "g.safetensors")]
    out = ["--out", str(r / "t.safetensors"), "--batch-size", "100"]
    assert main([*tg, *out, "--max-batches", "2"]) == 0
    assert "run the same command to resume" in capsys.readouterr().out
    assert main([*tg, *out, "--no-progress", "--device", "cpu"]) == 0
    backfilled = load_gallery(r / "t.safetensors")
    assert torch.equal(
        backfilled["embeddings"], load_gallery(chain / "galleries" / "backfilled.safetensors")["embeddings"]
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--query",
                str(r / "q.safetensors"),
                "--gallery",
                str(r / "t.safetensors"),
                "--out",
                str(r / "m.json"),
            ]
        )
        == 0
    )
    assert "top1" in capsys.readouterr().out
    metrics = json.loads((r / "m.json").read_text())
    expected = json.loads((chain / "results.json").read_text())["cases"]["fct"]
    assert {k: metrics[k] for k in expected} == expected


def test_info_and_convert(tmp_path, capsys):
    assert main(["info", "fct_transformation"]) == 0
    assert "fct_transformation" in capsys.readouterr().out
    h = load_model("fct_transformation", old_dim=8, new_dim=6, side_info_dim=4, inner_dim=16)
    official = {}
    for k, v in h.state_dict().items():
        k = (
            k.replace("old_proj.", "p1.")
            .replace("side_proj.", "p2.")
            .replace("linear.", "conv.")
            .replace("norm.", "normalizer.")
        )
        official["module." + k] = v[:, :, None, None] if k.endswith("conv.weight") else v
    torch.save({"state_dict": official, "epoch": 3}, tmp_path / "h.pth")
    assert main(["convert", str(tmp_path / "h.pth"), "--out", str(tmp_path / "h")]) == 0
    converted = load_model(tmp_path / "h")
    x, s = torch.randn(3, 8), torch.randn(3, 4)
    torch.testing.assert_close(converted(x, s), h(x, s))


def test_chain_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    cases = {
        ("--recipe", "cifar10"): "unknown recipe 'cifar10'; bundled recipes: cifar100, digits, imagenet, smoke",
        ("loss.old.train.nope=1",): "unknown config key 'loss.old.train.nope'",
        ("loss.side_info.train.epochs=0",): "stage side_info (loss.side_info.optim / .train over optim / train): "
        "train.epochs must be >= 1, got 0",
        ("train.batch_size=0",): "train.batch_size must be >= 1, got 0",
        ("train.epochs=-1",): "train.epochs must be >= 1, got -1",
        ("eval.cases=[fct, fcx]",): "config key 'eval.cases[1]' must be one of",
        ("eval.cases=[]",): "eval.cases is empty",
        ("data.old_classes=11",): "data.old_classes=11 but the dataset has 10 classes",
        ("data.old_classes=0",): "data.old_classes must be >= 1, got 0",
        ("data.image_size=0",): "data.image_size must be >= 1, got 0",
        ("data.source=folder",): "data.root is not set",
        ("data.source=folder", f"data.root={tmp_path}", "data.image_size=32"): "dataset folder",
        ("model.name=fct_convnex",): "unknown model 'fct_convnex'",
        ("model.kwargs.widths=oops",): "fct_convnet(",
        ("loss.old.model.kwargs.num_classes=7",): "loss.old.model.kwargs.num_classes=7 but the old model's data has 5 "
        "classes",
        ("loss.old.model.kwargs.embedding_dim=4",): "BCT needs equal embedding sizes",
        ("loss.side_info.temperature=0",): "loss.side_info.temperature must be > 0",
        ("loss.side_info.augment.scale=[0.5]",): "loss.side_info.augment.scale' must hold 2 values",
        ("train.device=cuda:7",): "device 'cuda:7' requested but",
        ("data.in_chans=3",): "takes 1-channel images",
    }
    for extra, message in cases.items():
        if "cuda:7" in extra[0] and torch.cuda.device_count() > 7:
            continue
        cli.user_error(capsys, ["train", "--recipe", "smoke", *out, *extra], message)
    assert not (tmp_path / "run" / "old").exists()  # every setting is checked before the first stage trains
    assert main(["train", "--recipe", "smoke", *out, "eval.cases=[old_old]"]) == 0
    capsys.readouterr()
    cli.user_error(capsys, ["train", "--recipe", "smoke", *out, "eval.cases=[old_old]"], "already holds a finished run")
    unwritable = tmp_path / "file"
    unwritable.write_text("")
    cli.user_error(capsys, ["train", "--recipe", "smoke", "--out", unwritable / "run"], "cannot write")


def test_stage_and_gallery_errors(chain, tmp_path, capsys):
    t, smoke = tmp_path, ["--recipe", "smoke"]
    gallery, query = chain / "galleries" / "old.safetensors", chain / "galleries" / "backfilled.safetensors"
    save_file({"embeddings": torch.randn(4, 8)}, str(t / "nolabels.safetensors"))
    save_gallery(t / "other.safetensors", embeddings=torch.randn(629, 8), labels=torch.zeros(629, dtype=torch.long))
    save_gallery(t / "dim.safetensors", embeddings=torch.randn(629, 3), labels=load_gallery(gallery)["labels"])
    (t / "junk.safetensors").write_bytes(b"not a safetensors file")
    out, gout = ["--out", str(t / "x")], ["--out", str(t / "t.safetensors")]
    transform = ["transform-gallery", "--checkpoint", chain / "transformation", "--gallery"]
    cases = [
        (["train-backbone", "--role", "bct", *smoke, *out], "--role bct trains the new model with BCT"),
        (
            ["train-backbone", "--role", "old", "--old", str(chain / "old"), *smoke, *out],
            "--old is the old model of BCT",
        ),
        (["train-backbone", "--role", "bct", "--old", str(t / "nope"), *smoke, *out], "does not exist"),
        (
            ["train-backbone", "--role", "bct", "--old", str(chain / "side_info"), *smoke, *out],
            "must be an FCT embedding",
        ),
        (["train-backbone", "--role", "new", "--device", "cuda:7", *smoke, *out], "device 'cuda:7' requested but"),
        (["train-backbone", "--role", "new", "--device", "gpu", *smoke, *out], "train.device='gpu' is not one of"),
        (
            ["train-transformation", "--old", str(chain / "old"), "--new", str(chain / "transformation"), *smoke, *out],
            "the new model must be an FCT embedding model",
        ),
        (
            [
                "train-transformation",
                "--old",
                str(chain / "old"),
                "--new",
                str(chain / "new"),
                "--side",
                str(t / "junk.safetensors"),
                *smoke,
                *out,
            ],
            "is not a readable safetensors file",
        ),
        (
            ["embed", "--checkpoint", str(chain / "transformation"), *smoke, "--out", str(t / "e.safetensors")],
            "must be an FCT embedding or side-information model, got fct_transformation",
        ),
        (
            [
                "embed",
                "--checkpoint",
                str(chain / "old"),
                "--recipe",
                "smoke",
                "data.in_chans=3",
                "--out",
                str(t / "e.safetensors"),
            ],
            "takes 1-channel images",
        ),
        (
            ["embed", "--checkpoint", str(chain / "old"), "--device", "cuda:7", "--out", str(t / "e.st")],
            "device 'cuda:7' requested but",
        ),
        (["embed", "--checkpoint", str(gallery), "--out", str(t / "e.st")], "carries no bramley model config"),
        (
            ["transform-gallery", "--checkpoint", str(chain / "old"), "--gallery", str(gallery), *gout],
            "holds fct_convnet, not an fct_transformation",
        ),
        ([*transform, t / "nope.st", *gout], "gallery file"),
        ([*transform, gallery, "--out", gallery], "would replace its input"),
        (
            [
                "transform-gallery",
                "--checkpoint",
                str(chain / "transformation_no_side_info"),
                "--gallery",
                str(gallery),
                "--side-info",
                str(gallery),
                *gout,
            ],
            "uses no side information",
        ),
        (["eval", "--query", str(t / "nope.st"), "--gallery", str(gallery)], "gallery file"),
        (["eval", "--query", str(query), "--gallery", str(t / "nolabels.safetensors")], "has no 'labels' tensor"),
        (
            ["eval", "--query", str(chain / "old" / "model.safetensors"), "--gallery", str(gallery)],
            "has no 'embeddings' tensor",
        ),
        (["eval", "--query", str(t / "junk.safetensors"), "--gallery", str(gallery)], "not a readable safetensors"),
        (["eval", "--query", str(query), "--gallery", str(t / "other.safetensors")], "have different labels"),
        (["eval", "--query", str(query), "--gallery", str(t / "dim.safetensors")], "are not in one embedding space"),
        (["eval", "--query", str(query), "--gallery", str(gallery), "--device", "cuda:7"], "requested but"),
        (["convert", str(t / "junk.safetensors"), "--out", str(t / "c")], "not a readable safetensors file"),
        (["convert", str(gallery), "--out", str(t / "c")], "key 'p1.0.conv.weight' is missing"),
        (["embed", "--checkpoint", str(chain / "old"), "--out", str(t)], "is a folder; give a file name"),
        (["embed", "--checkpoint", str(chain / "old"), "--out", str(gallery / "e.st")], "is not a writable folder"),
        ([*transform, gallery, "--out", gallery / "t.st"], "is not a writable folder"),
        (
            ["eval", "--query", str(query), "--gallery", str(gallery), "--out", str(gallery / "m.json")],
            "is not a writable folder",
        ),
    ]
    for argv, message in cases:
        if "cuda:7" in argv and torch.cuda.device_count() > 7:
            continue
        cli.user_error(capsys, argv, message)
    for option, value in (("--batch-size", "0"), ("--max-batches", "-1")):
        argv = ["transform-gallery", option, value, "--checkpoint", "x", "--gallery", "y", "--out", "z"]
        cli.usage_error(capsys, argv, f"argument {option}: must be >= 1, got {value}")
