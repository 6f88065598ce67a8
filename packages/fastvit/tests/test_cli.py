"""The command line: every verb's success path at tiny scale, and every user mistake as one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bramley.core import create_model, save_pretrained
from bramley.core.checkpoint import load_model
from bramley.fastvit.cli import main
from shared.cli_testing import CLI

TINY = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 64))  # RepMixer stages + an attention stage
cli = CLI(main, "bramley-fastvit")


@pytest.fixture
def tiny(tmp_path, randomize) -> Path:
    """A save_pretrained folder of a tiny 3-class FastViT-SA12 (the ``image_folder`` fixture has 3 classes)."""
    model = randomize(create_model("fastvit_sa12", num_classes=3, **TINY).eval())
    return save_pretrained(model, tmp_path / "tiny")


def test_help_lists_the_verbs(capsys):
    out = cli.help(capsys)
    for verb in ("info", "reparam", "convert", "export", "train", "eval", "bench", "reproduce"):
        assert verb in out


def test_info_json(capsys):
    assert main(["info", "fastvit_mci0", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["model"] == "fastvit_mci0" and row["mixers"] == "RRRA" and row["input"] == "3x256x256"
    assert row["params_M"] > row["fused_params_M"]


def test_reparam_checkpoint_and_model(tiny, tmp_path, capsys):
    assert main(["reparam", "--checkpoint", str(tiny), "--out", str(tmp_path / "fused")]) == 0
    assert "relative max difference" in capsys.readouterr().out
    fused = load_model(tmp_path / "fused")
    assert fused.is_reparameterized and fused.model_config["kwargs"]["inference_mode"] is True
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), load_model(tiny)(x), rtol=0, atol=1e-5)
    assert main(["reparam", "--model", "fastvit_t8", "--out", str(tmp_path / "t8"), "--image-size", "32"]) == 0


def test_export_checks_onnxruntime(tiny, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--checkpoint", str(tiny), "--out", str(out), "--image-size", "64"]) == 0
    assert out.stat().st_size > 0 and "onnxruntime relative max difference" in capsys.readouterr().out


def test_eval_on_an_image_folder(tiny, image_folder, tmp_path, capsys):
    args = ["eval", "--checkpoint", str(tiny), "--data", str(image_folder), "--image-size", "32", "--fuse"]
    assert main([*args, "--out", str(tmp_path / "metrics.json")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["checkpoint"] == str(tiny) and 0 <= metrics["top1"] <= metrics["top5"] <= 100


def test_bench_positive_counts(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--model", "fastvit_t8", "--image-size", "32", "--iters", "1", "--threads", "1", "--no-timm"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "fastvit_t8" and result["max_abs_diff_fused_vs_unfused"] < 1e-4


def test_convert_official_file(tmp_path, capsys):
    from bramley.fastvit.convert import bramley_to_official

    model = create_model("fastvit_t8", num_classes=3)
    torch.save({"epoch": 3, "state_dict": bramley_to_official(model.state_dict())}, tmp_path / "t8.pth.tar")
    assert main(["convert", str(tmp_path / "t8.pth.tar"), "--out", str(tmp_path / "t8"), "--model", "fastvit_t8"]) == 0
    assert "fastvit_t8" in capsys.readouterr().out
    assert load_model(tmp_path / "t8").num_classes == 3


def test_checkpoint_errors(tmp_path, capsys):
    (tmp_path / "junk.pth").write_text("junk")
    (tmp_path / "junk.safetensors").write_text("junk")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, foreign)  # no bramley config inside
    out = ["--out", str(tmp_path / "o")]
    cli.user_error(capsys, ["convert", str(tmp_path / "junk.pth"), *out], "not a readable PyTorch checkpoint")
    cli.user_error(capsys, ["convert", str(tmp_path / "missing.pth"), *out], "does not exist")
    official = {"fc.weight": torch.ones(2, 2)}
    torch.save(official, tmp_path / "other.pth")
    cli.user_error(capsys, ["convert", str(tmp_path / "other.pth"), *out], "no FastViT stem")
    cli.user_error(capsys, ["reparam", "--checkpoint", "missing", *out], "neither a model folder")
    junk = ["reparam", "--checkpoint", tmp_path / "junk.safetensors", *out]
    cli.user_error(capsys, junk, "not a readable safetensors")
    cli.user_error(capsys, ["export", "--checkpoint", str(foreign), *out], "no bramley model config")
    cli.user_error(capsys, ["reparam", "--model", "fastvit_t99", *out], "unknown model 'fastvit_t99'")
    cli.user_error(capsys, ["info", "fastvit_t99"], "unknown fastvit model")


def test_convert_to_the_wrong_variant(tmp_path, capsys):
    from bramley.fastvit.convert import bramley_to_official

    torch.save(bramley_to_official(create_model("fastvit_t8").state_dict()), tmp_path / "t8.pth")
    argv = ["convert", tmp_path / "t8.pth", "--out", tmp_path / "o", "--model", "fastvit_t12"]
    cli.user_error(capsys, argv, "fastvit_t8 architecture, not fastvit_t12")


def test_eval_errors(tiny, image_folder, tmp_path, capsys):
    base = ["eval", "--checkpoint", str(tiny), "--image-size", "32"]
    cli.user_error(capsys, [*base, "--data", str(tmp_path / "nowhere")], "does not exist")
    five = save_pretrained(create_model("fastvit_sa12", num_classes=5, **TINY), tmp_path / "five")
    argv = ["eval", "--checkpoint", five, "--data", image_folder, "--image-size", "32"]
    cli.user_error(capsys, argv, "has 3 classes but the model predicts 5")
    cli.usage_error(capsys, [*base, "--data", str(image_folder), "--batch-size", "0"], "must be >= 1")
    cli.usage_error(capsys, [*base, "--data", str(image_folder), "--crop-pct", "0"], "must be in (0, 1]")
    cli.usage_error(capsys, [*base, "--data", str(image_folder), "--image-size", "0"], "must be >= 1")
    if not torch.cuda.is_available():
        cli.user_error(capsys, [*base, "--data", str(image_folder), "--device", "cuda"], "CUDA is not available")


def test_bench_and_export_errors(capsys, tmp_path):
    cli.user_error(capsys, ["bench", "--model", "nope"], "unknown FastViT model 'nope'")
    cli.usage_error(capsys, ["bench", "--iters", "0"], "must be >= 1")
    cli.usage_error(capsys, ["bench", "--batch-size", "0"], "must be >= 1")
    cli.usage_error(capsys, ["bench", "--threads", "-1"], "must be >= 1")
    cli.usage_error(capsys, ["export", "--model", "fastvit_t8", "--out", "x.onnx", "--image-size", "0"], "must be >= 1")
    cli.usage_error(capsys, ["reproduce", "--threads", "0"], "must be >= 1")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.batch_size=0"], "train.batch_size must be >= 1"),
        (["train.epochs=-1"], "train.epochs must be >= 1"),
        (["data.image_size=0"], "data.image_size must be >= 1"),
        (["optim.lr_typo=1"], "unknown config key 'optim.lr_typo'"),
        (["model.kwargs.layers=3"], "fastvit_sa12(layers=3"),
        (["model.kwargs.nonsense=3"], "unexpected keyword argument 'nonsense'"),
        (["model.name=fastvit_t99"], "unknown model 'fastvit_t99'"),
        (["loss.mixup=-1"], "loss.mixup and loss.cutmix must be >= 0"),
        (["loss.distillation.type=hard"], "needs loss.distillation.teacher"),
    ],
)
def test_train_errors(overrides, message, tmp_path, capsys):
    cli.user_error(capsys, ["train", "--recipe", "smoke", "--out", str(tmp_path / "run"), *overrides], message)


def test_train_path_errors(tmp_path, capsys):
    cli.user_error(capsys, ["train", "--recipe", "nope", "--out", str(tmp_path / "r")], "unknown recipe 'nope'")
    cli.user_error(capsys, ["train", "--out", str(tmp_path / "r")], "data.train is not set")  # fastvit_t8 default
    missing = ["train", "--out", str(tmp_path / "r"), f"data.train={tmp_path / 'nowhere'}"]
    cli.user_error(capsys, missing, "does not exist")
    blocker = tmp_path / "file"
    blocker.write_text("")
    cli.user_error(capsys, ["train", "--recipe", "smoke", "--out", str(blocker / "run")], "cannot write")
    if not torch.cuda.is_available():
        argv = ["train", "--recipe", "smoke", "--out", tmp_path / "c", "train.device=cuda"]
        cli.user_error(capsys, argv, "CUDA is not available")
