"""The CLI end to end on tiny data (train -> eval -> embed -> retrieve, bench, the smoke recipe) and every user
mistake as one line and exit status 2."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bramley.core import registry
from bramley.core.checkpoint import load_model, save_checkpoint, save_pretrained
from bramley.core.recipe import load_recipe
from bramley.core.registry import create_model
from bramley.mrl import MatryoshkaModel, load_embeddings, save_embeddings
from bramley.mrl.cli import main
from bramley.mrl.train import RECIPES
from shared.cli_testing import CLI

RECIPE_DIR = Path(__file__).resolve().parents[1] / "src" / "bramley" / "mrl" / "recipes"

SIZES = [8, 16, 32, 64, 96]
cli = CLI(main, "bramley-mrl")


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    save_pretrained(create_model("mrl_backbone", backbone="test_resnet", num_classes=3), tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.fixture
def foreign_model(monkeypatch, tmp_path) -> Path:
    """A save_pretrained folder of a registered model that is not an MRL model."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_model(name="not_mrl_toy")(lambda num_classes=3: nn.Linear(4, num_classes))
    save_pretrained(create_model("not_mrl_toy"), tmp_path / "foreign")
    return tmp_path / "foreign"


def test_help_lists_every_verb(capsys):
    out = cli.help(capsys)
    assert "bramley-mrl" in out
    for verb in ("info", "convert", "train", "export", "eval", "embed", "retrieve", "bench", "reproduce"):
        assert f"    {verb}" in out


def test_every_bundled_recipe_loads():
    names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
    assert names == ["imagenet_resnet50", "smoke"]
    recipes = {name: load_recipe(RECIPES, name) for name in names}
    paper = recipes["imagenet_resnet50"]
    assert paper.model.name == "mrl_resnet50" and paper.model.kwargs == {"nesting": None, "efficient": False}
    assert (paper.optim.lr, paper.optim.schedule, paper.optim.warmup_epochs, paper.optim.nesterov) == (
        0.425,
        "linear",
        2,
        False,
    )
    assert (paper.train.epochs, paper.train.batch_size, paper.loss.label_smoothing) == (40, 512, 0.1)
    assert (paper.data.image_size, paper.data.val_image_size, paper.data.crop_pct) == (176, 256, 0.875)
    assert load_recipe(RECIPES).model.name == "mrl_resnet50", "train's default recipe is the paper's"


def test_smoke_recipe_trains_in_seconds(capsys, tmp_path):
    out = tmp_path / "smoke"
    code, _, _ = cli.run(capsys, "train", "--recipe", "smoke", "--out", out)
    assert code == 0
    metrics = json.loads((out / "results.json").read_text())["metrics"]
    assert {f"eval_top1_{m}" for m in (4, 16, 64)} <= set(metrics) and metrics["eval_top1_64"] > 50  # percent
    model = load_model(out)  # the run folder is a save_pretrained folder
    assert isinstance(model, MatryoshkaModel) and model.nesting == [4, 16, 64]
    assert "relative_importance: null" in (out / "recipe.yaml").read_text()


def test_train_recipe_then_eval_embed_retrieve(capsys, image_folder, tmp_path, tiny_paper_recipe):
    """The paper's recipe shrunk to a tiny timm model on the 3-class image folder, then every downstream command."""
    images, out = image_folder, tmp_path / "run"
    code, _, _ = cli.run(capsys, "train", "--recipe", "imagenet_resnet50", "--out", out, *tiny_paper_recipe,
                     f"data.train={images}", f"data.val={images}")  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == ["cat", "dog", "fox"]
    assert {f"eval_top{k}_{m}" for m in SIZES for k in (1, 5)} <= set(results["metrics"])
    recipe = (out / "recipe.yaml").read_text()
    assert "lr: 0.425" in recipe and "label_smoothing: 0.1" in recipe  # the paper's recipe, resolved and saved

    data = ["--data", images, "--image-size", "32"]
    assert cli.run(capsys, "eval", "--checkpoint", out, *data, "--out", tmp_path / "eval.json")[0] == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert evaluation["images"] == 12 and set(evaluation["metrics"]) == {f"top{k}_{m}" for m in SIZES for k in (1, 5)}
    assert all(0 <= v <= 100 for v in evaluation["metrics"].values())

    emb = tmp_path / "emb.safetensors"
    assert (
        cli.run(capsys, "embed", "--checkpoint", out / "model.safetensors", *data, "--out", emb, "--device", "cpu")[0]
        == 0
    )
    f = load_embeddings(emb)
    assert f.embeddings.shape == (12, 96) and f.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert f.metadata["classes"] == ["cat", "dog", "fox"] and f.metadata["nesting"] == SIZES
    assert f.metadata["model"]["name"] == "mrl_backbone"

    result, neighbors = tmp_path / "r.json", tmp_path / "nn.safetensors"
    args = ["retrieve", "--index", emb, "--queries", emb, "--out", result]
    assert cli.run(capsys, *args, "--dim", "16", "--k", "5", "--ks", "1", "5", "--neighbors", neighbors)[0] == 0
    exact = json.loads(result.read_text())
    assert exact["metrics"]["top1"] == 100.0  # every query finds itself
    assert exact["mflops_per_query"] == pytest.approx(12 * 16 / 1e6)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(neighbors))["indices"][:, 0], torch.arange(12))
    assert (
        cli.run(capsys, *args, "--retrieval-dim", "8", "--rerank-dims", "32", "96", "--shortlists", "10", "5")[0] == 0
    )
    funnel = json.loads(result.read_text())
    assert funnel["search"]["mode"] == "funnel" and "mAP@5" in funnel["metrics"]
    pytest.importorskip("faiss")
    assert cli.run(capsys, *args, "--backend", "faiss", "--dim", "96", "--k", "3", "--ks", "1")[0] == 0


def test_train_errors_are_one_line(capsys, image_folder, tmp_path, foreign_model, tiny_paper_recipe):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    tiny, toy = tiny_paper_recipe, [*tiny_paper_recipe, f"data.train={image_folder}"]
    cases = [
        ([], "data.train is not set"),
        (["--recipe", "nope"], "unknown recipe 'nope'; bundled recipes: imagenet_resnet50, smoke"),
        ([*toy, "model.kwargs.nesting=[8, 4096]"], "nesting sizes [4096] are larger than the feature dim 96"),
        ([*toy, "model.kwargs.nesting=eight"], "nesting sizes must be a list of positive integers"),
        ([*toy, "model.kwargs.backbone=no_such_net"], "unknown backbone 'no_such_net'"),
        ([*toy, "model.name=not_mrl_toy"], "model.name=not_mrl_toy is not an MRL model"),
        ([*toy, "loss.relative_importance=[1, 2]"], "loss.relative_importance has 2 weights for the nesting"),
        ([*toy, "loss.relative_importance=[-1]"], "loss.relative_importance must be non-negative weights"),
        ([*toy, "loss.label_smoothing=1.5"], "loss.label_smoothing must be in [0, 1), got 1.5"),
        ([*toy, "train.batch_size=0"], "train.batch_size"),
        ([*toy, "train.epochs=-1"], "train.epochs"),
        ([*toy, "data.image_size=0"], "data.image_size must be >= 1, got 0"),
        ([*tiny, "data.train=/no/such/folder"], "/no/such/folder does not exist"),
        # the model is checked (on the meta device) before the data is read
        ([*tiny, "data.train=/no/such/folder", "model.kwargs.nesting=[8, 4096]"], "larger than the feature dim 96"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*toy, "train.device=cuda"], "CUDA is not available"))
    for i, (extra, message) in enumerate(cases):
        cli.user_error(capsys, ["train", "--out", tmp_path / f"bad{i}", *extra], message)
    cli.user_error(capsys, ["train", "--recipe", "smoke", "--out", blocker / "run"], str(blocker))


def test_eval_and_embed_errors_are_one_line(capsys, image_folder, tiny_checkpoint, foreign_model, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tiny_checkpoint / "model.safetensors").read_bytes()[:2000])
    save_checkpoint(create_model("mrl_mlp").state_dict(), tmp_path / "no_config.safetensors")
    two_classes = tmp_path / "two"
    for name in ("cat", "dog"):
        (two_classes / name).mkdir(parents=True)
        for p in (image_folder / name).iterdir():
            (two_classes / name / p.name).write_bytes(p.read_bytes())
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    data = ["--data", image_folder, "--image-size", "32"]
    cases = [
        (["--checkpoint", tmp_path / "missing", *data], "missing does not exist"),
        (["--checkpoint", truncated, *data], "is not a readable safetensors file"),
        (["--checkpoint", tmp_path / "no_config.safetensors", *data], "carries no bramley model config"),
        (["--checkpoint", foreign_model, *data], "holds a not_mrl_toy model, not an MRL model"),
        (["--checkpoint", tiny_checkpoint, "--data", tmp_path / "no_images"], "no_images does not exist"),
        (["--checkpoint", tiny_checkpoint, "--data", two_classes], "has 2 classes but the model was trained on 3"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--checkpoint", tiny_checkpoint, *data, "--device", "cuda"], "CUDA is not available"))
    for argv, message in cases:
        cli.user_error(capsys, ["eval", *argv], message)
        cli.user_error(capsys, ["embed", *argv, "--out", tmp_path / "e.safetensors"], message)
    assert not (tmp_path / "e.safetensors").exists()
    for verb, out in (("eval", tmp_path / "m.json"), ("embed", tmp_path / "e.safetensors")):
        cli.usage_error(capsys, [verb, "--checkpoint", tiny_checkpoint, *data, "--batch-size", "0", "--out", out],
                           "argument --batch-size: must be >= 1, got 0")  # fmt: skip
        cli.usage_error(capsys, [verb, "--checkpoint", tiny_checkpoint, *data, "--crop-pct", "1.5", "--out", out],
                           "argument --crop-pct: must be in (0, 1], got 1.5")  # fmt: skip
    embed = ["embed", "--checkpoint", tiny_checkpoint, *data]
    cli.user_error(capsys, [*embed, "--out", blocker / "e.safetensors"], "is not a writable folder")
    cli.user_error(capsys, [*embed, "--out", tmp_path], "is a folder; give a file name")


def test_retrieve_errors_are_one_line(capsys, tmp_path):
    a, b, bad = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "bad.safetensors"
    save_embeddings(a, torch.randn(5, 16), torch.arange(5) % 2)
    save_embeddings(b, torch.randn(3, 8))
    bad.write_bytes(b"not a safetensors file")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    index = ["--index", a, "--queries", a]
    cases = [
        (["--index", a, "--queries", b], "has 16-dim embeddings but queries"),
        (["--index", tmp_path / "none.safetensors", "--queries", a], "none.safetensors does not exist"),
        (["--index", bad, "--queries", a], "is not a readable safetensors embeddings file"),
        ([*index, "--dim", "32"], "search dim must be an int in [1, 16] (the index dim), got 32"),
        ([*index, "--k", "6"], "k must be an int in [1, 5] (the database size), got 6"),
        ([*index, "--rerank-dims", "16"], "a funnel needs --retrieval-dim, --rerank-dims and --shortlists"),
        ([*index, "--retrieval-dim", "4"], "--retrieval-dim/--shortlists need --rerank-dims"),
        ([*index, "--dim", "8", "--retrieval-dim", "4", "--rerank-dims", "16", "--shortlists", "3"], "--dim is for"),
        ([*index, "--retrieval-dim", "8", "--rerank-dims", "4", "--shortlists", "3"], "must be sorted"),
        ([*index, "--out", blocker / "r.json"], "is not a writable folder"),
        ([*index, "--neighbors", blocker / "n.safetensors"], "--neighbors"),
    ]
    for argv, message in cases:
        cli.user_error(capsys, ["retrieve", *argv], message)
    cli.usage_error(capsys, ["retrieve", *index, "--ks", "0"], "argument --ks: must be >= 1, got 0")


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_retrieve_refuses_or_skips_non_finite_rows(capsys, tmp_path, backend):
    """A NaN row scores NaN, which sorted first: it was every query's top-1 with the torch backend (issue 23)."""
    if backend == "faiss":
        pytest.importorskip("faiss")
    db = torch.randn(6, 16)
    db[0, 3], db[4, :] = float("nan"), float("inf")
    queries = torch.cat([db[[3, 5]] + 0.01 * torch.randn(2, 16), torch.full((1, 16), float("nan"))])
    index, query = tmp_path / "db.safetensors", tmp_path / "q.safetensors"
    save_embeddings(index, db, torch.arange(6))
    save_embeddings(query, queries, torch.tensor([3, 5, 1]))
    argv = ["retrieve", "--index", index, "--queries", query, "--k", "2", "--backend", backend]
    cli.user_error(capsys, argv, "2 of 6 database embeddings hold NaN or infinite values (the first is row 0)")
    code, out, err = cli.run(capsys, *argv, "--skip-non-finite", "--ks", "1", "--neighbors", tmp_path / "n.safetensors")
    assert code == 0 and "skipping 2 index rows" in err and "skipping 1 queries rows" in err
    from safetensors.torch import load_file

    neighbors = load_file(tmp_path / "n.safetensors")["indices"]
    assert neighbors[:, 0].tolist() == [3, 5], "neighbours are rows of the index file, skipped rows counted"
    assert json.loads(out)["metrics"]["top1"] == 100.0


def test_bench_prints_percent_and_refuses_bad_settings(capsys, tmp_path):
    tiny = ["bench", "--num-database", "3000", "--num-queries", "8", "--dim", "256", "--num-classes", "50"]
    code, out, _ = cli.run(capsys, *tiny, "--out", tmp_path / "bench.json")
    assert code == 0
    exact_line = out.splitlines()[0]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert f"top-1 {result['exact']['top1']:.2f}%" in exact_line and "top-1 100.0000" not in out
    assert " pt), recall@10 vs exact" in out
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cli.user_error(capsys, [*tiny, "--retrieval-dim", "8"], "a custom funnel needs --retrieval-dim")
    cli.user_error(capsys, [*tiny[:-4], "--dim", "16"], "funnel retrieval_dim 32 must be below the data dim 16")
    cli.user_error(capsys, [*tiny, "--out", blocker / "b.json"], "is not a writable folder")
    cli.usage_error(capsys, ["bench", "--num-database", "0"], "argument --num-database: must be >= 1, got 0")


def test_info_lists_the_models(capsys):
    code, out, _ = cli.run(capsys, "info")
    assert code == 0 and "| mrl_resnet50" in out and "8..2048 (9 sizes)" in out and "| mrl_mlp" in out


def test_export_writes_one_onnx_output_per_nesting_size(capsys, tmp_path):
    """Core's export names the tuple of logits output0..N and checks each against PyTorch."""
    pytest.importorskip("onnxruntime")
    import onnx

    assert main(["export", "--model", "mrl_mlp", "--out", str(tmp_path / "mrl.onnx")]) == 0
    assert "onnxruntime relative max difference" in capsys.readouterr().out
    graph = onnx.load(str(tmp_path / "mrl.onnx")).graph
    nesting = create_model("mrl_mlp").nesting
    assert [o.name for o in graph.output] == [f"output{i}" for i in range(len(nesting))]
