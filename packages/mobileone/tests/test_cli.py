"""Every CLI verb at tiny scale: the success path and the user errors (exit 2, one line naming the problem)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from bramley.core.checkpoint import load_model, save_checkpoint, save_pretrained
from bramley.core.registry import create_model
from bramley.mobileone.cli import main
from bramley.mobileone.convert import bramley_to_official
from shared.cli_testing import CLI, QUICK_CPU_TRAIN

cli = CLI(main, "bramley-mobileone")


@pytest.fixture
def s0_folder(tmp_path):
    model = create_model("mobileone_s0", num_classes=3)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32))  # non-trivial BN statistics
    return save_pretrained(model.eval(), tmp_path / "s0")


def test_help_lists_every_verb(capsys):
    out = cli.help(capsys)
    for command in ("info", "reparam", "convert", "train", "eval", "export", "bench", "reproduce"):
        assert command in out


# ---------------------------------------------------------------------------------------------------------- info
def test_info_paper_params_and_gmacs(capsys):
    assert main(["info", "mobileone_s0", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["model"] == "mobileone_s0" and row["input"] == "3x224x224"
    assert round(row["fused_params_M"], 2) == 2.08 and row["paper_params_M"] == 2.1 and row["params_M"] > 5
    assert row["fused_GMACs"] == pytest.approx(0.275, abs=1e-3) and row["GMACs"] == pytest.approx(1.052, abs=1e-3)
    assert main(["info"]) == 0
    table = capsys.readouterr().out
    assert all(f"mobileone_s{i}" in table for i in range(5)) and "paper_params_M" in table
    cli.user_error(capsys, ["info", "mobileone_s9"], "unknown mobileone model 'mobileone_s9'")


# --------------------------------------------------------------------------------------------- reparam and eval
def test_reparam_then_eval_on_image_folder(tmp_path, s0_folder, image_folder, capsys):
    out = tmp_path / "s0_fused"
    assert main(["reparam", "--checkpoint", str(s0_folder), "--out", str(out)]) == 0
    fused = load_model(out)
    assert fused.stem.reparam_conv is not None
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(fused(x), load_model(s0_folder)(x), rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(image_folder), "--image-size", "32"]) == 0
    fused_metrics = json.loads(capsys.readouterr().out)
    report = tmp_path / "metrics.json"
    argv = ["eval", "--checkpoint", str(s0_folder), "--data", str(image_folder), "--image-size", "32", "--fuse"]
    assert main([*argv, "--batch-size", "5", "--out", str(report)]) == 0
    assert json.loads(report.read_text())["top1"] == fused_metrics["top1"]
    assert 0 <= fused_metrics["top1"] <= 100 and fused_metrics["top5"] == 100.0  # 3 classes


def test_reparam_and_eval_errors(tmp_path, s0_folder, image_folder, capsys):
    cli.user_error(
        capsys, ["reparam", "--model", "mobileone_s9", "--out", str(tmp_path / "x")], "unknown model 'mobileone_s9'"
    )
    missing = str(tmp_path / "nowhere")
    cli.user_error(capsys, ["reparam", "--checkpoint", missing, "--out", str(tmp_path / "x")], "does not exist")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not safetensors at all")
    eval_args = ["--data", str(image_folder), "--image-size", "32"]
    cli.user_error(capsys, ["eval", "--checkpoint", str(corrupt), *eval_args], "not a readable safetensors file")
    foreign = save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "foreign.safetensors", config={"name": "mlp"})
    cli.user_error(capsys, ["eval", "--checkpoint", str(foreign), *eval_args], "mlp")
    cli.user_error(
        capsys, ["eval", "--checkpoint", str(s0_folder), "--data", str(tmp_path / "nowhere")], "does not exist"
    )
    ten_classes = save_pretrained(create_model("mobileone_s0", num_classes=10), tmp_path / "s0_10")
    cli.user_error(
        capsys, ["eval", "--checkpoint", str(ten_classes), *eval_args], "has 3 classes but the model predicts 10"
    )
    cli.usage_error(capsys, ["eval", "--checkpoint", str(s0_folder), *eval_args, "--batch-size", "0"], "must be >= 1")
    cli.usage_error(capsys, ["eval", "--checkpoint", str(s0_folder), *eval_args, "--crop-pct", "1.5"], "(0, 1]")
    if not torch.cuda.is_available():
        argv = ["eval", "--checkpoint", str(s0_folder), *eval_args, "--device", "cuda"]
        cli.user_error(capsys, argv, "CUDA is not available")


# ------------------------------------------------------------------------------------------------------ convert
def test_convert_official_checkpoint(tmp_path, capsys):
    model = create_model("mobileone_s1").eval()
    official = tmp_path / "mobileone_s1_unfused.pth.tar"
    torch.save({"state_dict": bramley_to_official(model.state_dict())}, official)
    assert main(["convert", str(official), "--out", str(tmp_path / "out"), "--fuse"]) == 0
    out = capsys.readouterr().out
    assert "mobileone_s1" in out and "'inference_mode': True" in out and "'num_classes': 1000" in out
    converted = load_model(tmp_path / "out")
    assert converted.stem.reparam_conv is not None
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(converted(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert main(["convert", str(official), "--out", str(tmp_path / "same"), "--model", "mobileone_s1"]) == 0


def test_convert_errors(tmp_path, capsys):
    official = tmp_path / "mobileone_s1_unfused.pth.tar"
    torch.save(bramley_to_official(create_model("mobileone_s1").state_dict()), official)
    out = ["--out", str(tmp_path / "x")]
    cli.user_error(
        capsys, ["convert", str(official), *out, "--model", "mobileone_s0"], "holds mobileone_s1 (unfused), not"
    )
    cli.user_error(
        capsys, ["convert", str(official), *out, "--model", "resnet50"], "unknown MobileOne model 'resnet50'"
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    cli.user_error(capsys, ["convert", str(notes), *out], "is not a readable PyTorch checkpoint")
    cli.user_error(capsys, ["convert", str(tmp_path / "missing.pth.tar"), *out], "does not exist")
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    cli.user_error(
        capsys, ["convert", str(other), *out], "unexpected key 'conv1.weight' in an official MobileOne checkpoint"
    )
    ours = save_checkpoint(create_model("mobileone_s0"), tmp_path / "s0.safetensors")
    cli.user_error(capsys, ["convert", str(ours), *out], "has bramley's / timm's names, not the official ones")


# ------------------------------------------------------------------------------------------------------- export
def test_export_onnx_checked_with_onnxruntime(tmp_path, s0_folder, capsys):
    assert main(["export", "--model", "mobileone_s0", "--out", str(tmp_path / "s0.onnx"), "--image-size", "32"]) == 0
    difference = re.search(r"onnxruntime relative max difference ([0-9.e+-]+)", capsys.readouterr().out)
    assert difference is not None and float(difference.group(1)) < 1e-4
    out = tmp_path / "trained.onnx"
    assert main(["export", "--checkpoint", str(s0_folder), "--out", str(out), "--image-size", "32", "--no-fuse"]) == 0
    assert out.stat().st_size > 0
    cli.usage_error(
        capsys, ["export", "--model", "mobileone_s0", "--out", str(out), "--image-size", "0"], "must be >= 1"
    )


# -------------------------------------------------------------------------------------------------------- bench
def test_bench_interleaved_ratios(tmp_path, capsys):
    from importlib.metadata import version

    markdown = tmp_path / "BENCHMARKS.md"
    marked = "<!-- bench_mobileone:cpu:start -->\nold\n<!-- bench_mobileone:cpu:end -->"
    markdown.write_text(f"# prose before\n\n{marked}\nafter\n")
    args = ["bench", "--model", "mobileone_s0", "--batch-sizes", "1", "--image-size", "32", "--iters", "1"]
    args += ["--warmup", "0", "--rounds", "3", "--threads", "1", "2"]
    args += ["--out", str(tmp_path), "--markdown", str(markdown)]
    assert main(args) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["peer"] == {"timm": version("timm")}
    assert results["command"].startswith("bramley-mobileone bench --model mobileone_s0 --batch-sizes 1 ")
    assert "--rounds 3 --iters 1 --warmup 0 --threads 1 2" in results["command"]
    assert [(row["batch"], row["threads"]) for row in results["table"]] == [(1, 1), (1, 2)]
    for row in results["table"]:
        ms = row["rounds_ms"]
        assert {"unfused", "fused", "timm_fused"} == set(ms) and all(len(t) == 3 for t in ms.values())
        assert row["speed_vs_timm"]["rounds"] == [t / f for t, f in zip(ms["timm_fused"], ms["fused"])]
        assert set(row["fusion_speedup"]) == {"median", "q1", "q3", "min", "max", "rounds"}
    header = results["header"]
    assert f"timm {version('timm')}" in header and f"torch {torch.__version__}" in header and "load average" in header
    assert results["command"] in header
    table = (tmp_path / "table.md").read_text()
    assert table.startswith(header) and "fused speed vs timm fused" in table
    text = markdown.read_text()
    assert text.startswith("# prose before") and text.endswith("after\n") and "old" not in text
    assert header in text and "| mobileone_s0 | 1     | 2       |" in text
    assert header in capsys.readouterr().out


def test_bench_prints_without_out(capsys):
    args = ["bench", "--batch-sizes", "2", "--image-size", "32", "--rounds", "2", "--warmup", "0", "--no-timm"]
    assert main([*args, "--channels-last"]) == 0
    out = capsys.readouterr().out
    assert "no timm" in out and "fusion speed-up" in out and "timm fused ms" not in out
    assert "channels_last weights for every contender (input NCHW) and bramley's fused model also in NCHW" in out
    assert "--channels-last" in out and "channels_last speed-up" in out and "timm fused NCHW" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-sizes", "0"], "--batch-sizes: must be >= 1, got 0"),
        (["--batch-sizes", "1", "-2"], "--batch-sizes: must be >= 1, got -2"),
        (["--iters", "0"], "--iters: must be >= 1, got 0"),
        (["--warmup", "-1"], "--warmup: must be >= 0, got -1"),
        (["--image-size", "0"], "--image-size: must be >= 1, got 0"),
        (["--model", "mobileone_s9"], "invalid choice: 'mobileone_s9'"),
        (["--rounds", "0"], "--rounds: must be >= 1, got 0"),
        (["--threads", "1", "0"], "--threads: must be >= 1, got 0"),
    ],
)
def test_bench_rejects_bad_counts(capsys, argv, message):
    cli.usage_error(capsys, ["bench", *argv], message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_device_without_cuda(capsys):
    cli.user_error(capsys, ["bench", "--device", "cuda", "--no-timm"], "CUDA is not available")


# -------------------------------------------------------------------------------------------------------- train
def test_train_smoke_recipe_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "smoke", "--out", str(out), "train.steps=2", "train.device=cpu"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["num_classes"] == 10 and "eval_top1" in results["metrics"]
    for name in ("recipe.yaml", "results.json", "config.json", "model.safetensors", "metrics.jsonl"):
        assert (out / name).is_file(), name
    trained = load_model(out)
    assert trained(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert main(["train", "--recipe", str(out / "recipe.yaml"), "--out", str(tmp_path / "again")]) == 0


def test_train_image_folder_multiscale_with_ema(tmp_path, image_folder, capsys):
    """The paper's recipe (multi-scale sampler, EMA, weight-decay annealing) on a 3-class ImageFolder."""
    out = tmp_path / "run"
    overrides = [
        f"data.train={image_folder}",
        f"data.val={image_folder}",
        "data.image_size=32",
        "data.multiscale.min_size=32",
        "data.multiscale.max_size=64",
        "data.multiscale.num_scales=2",
        "data.multiscale.curriculum_epochs=1",
        "train.epochs=1",
        *QUICK_CPU_TRAIN,
    ]
    assert main(["train", "--recipe", "imagenet", "--out", str(out), *overrides]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert "ema_eval_top1" in metrics and "eval_top1" in metrics
    assert load_model(out / "ema.safetensors")(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert "weight_decay_end: 1.0e-05" in (out / "recipe.yaml").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.weight_decay_end=1e-3"], "optim.weight_decay_end must be in [0, weight_decay=0.0001]"),
        (["optim.weight_decay_end=-1"], "optim.weight_decay_end must be in [0, weight_decay=0.0001]"),
        (["train.batch_size=0"], "train.batch_size must be >= 1, got 0"),
        (["train.epochs=-1"], "train.epochs must be >= 1, got -1"),
        (["data.image_size=0"], "data.image_size must be >= 1, got 0"),
        (["data.root=/data"], "unknown config key 'data.root'"),
        (["model.kwargs.widht=2"], "unexpected keyword argument 'widht'"),
        (["model.name=mobileone_s9"], "mobileone_s9"),
    ],
)
def test_train_errors(tmp_path, capsys, overrides, message):
    cli.user_error(capsys, ["train", "--recipe", "smoke", "--out", str(tmp_path / "run"), *overrides], message)


def test_train_needs_data_train_for_the_imagenet_recipe(tmp_path, capsys):
    cli.user_error(capsys, ["train", "--out", str(tmp_path / "run"), *QUICK_CPU_TRAIN], "data.train is not set")
    cli.user_error(
        capsys, ["train", "--recipe", "imagenet", "--out", str(tmp_path), "data.train=/nowhere"], "does not exist"
    )


def test_train_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the run folder should go")
    cli.user_error(capsys, ["train", "--recipe", "smoke", "--out", str(blocker / "run"), "train.steps=1"], str(blocker))


# ---------------------------------------------------------------------------------------------------- reproduce
def test_reproduce_rejects_bad_counts(capsys):
    cli.usage_error(capsys, ["reproduce", "--seeds", "0"], "--seeds: must be >= 1, got 0")
