"""Every command and Python block of the package README runs (heavy arguments shrunk to toy scale, listed here), and
the README's verdict lines are what the reproduction computes from its committed results."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import torch

from bramley.core import create_model
from bramley.core.checkpoint import load_model
from bramley.core.cli import main as bramley_main
from bramley.fastvit.cli import main
from bramley.fastvit.convert import bramley_to_official
from bramley.fastvit.reproduce import verdict_lines, verdicts
from shared.cli_testing import QUICK_CPU_TRAIN
from shared.markdown import code_blocks, run_python_blocks, shell_commands

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
# Per-command additions that shrink the README's full-scale commands to test scale (same code paths).
EXTRA = {
    "reparam": ["--image-size", "32"],
    "eval": ["--image-size", "32", "--batch-size", "4"],
    "export": ["--image-size", "64"],
    "bench": ["--image-size", "64", "--iters", "2"],
    "reproduce": ["--quick", "--out", "repro"],
    "reproduce-synthetic": ["--quick", "--out", "repro-synthetic", "--seeds", "2"],  # 2 seeds: the mean +- std path
}
TINY_TRAIN = [
    "model.kwargs={layers: [1, 1, 1, 1], embed_dims: [8, 16, 32, 64]}",
    "data.image_size=32",
    "train.epochs=1",
    *QUICK_CPU_TRAIN,
    "optim.warmup_epochs=0",
    "train.ema_decay=0.9",
]


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the timm section writes a save_pretrained folder
    assert run_python_blocks(README) == 2
    assert capsys.readouterr().out.strip() == "[4, 8, 16, 32] [64, 128, 256, 512]"


def test_readme_commands_run(image_folder, tmp_path, monkeypatch, capsys):
    """Every README command, in order, with the ImageNet paths pointed at a tiny image folder (3 classes)."""
    for split in ("train", "val"):
        shutil.copytree(image_folder, tmp_path / "imagenet" / split)
    monkeypatch.chdir(tmp_path)
    official = create_model("fastvit_t8", num_classes=3)  # 3 classes, like the image folder
    torch.save({"state_dict": bramley_to_official(official.state_dict())}, "fastvit_t8.pth.tar")
    ran = []
    for line in shell_commands(README):
        line = line.replace("/path/to/imagenet", str(tmp_path / "imagenet"))
        prog, *args = shlex.split(line)
        sub = args[0]
        args += EXTRA.get(f"{sub}-synthetic" if "synthetic" in args else sub, [])
        if sub == "train" and "fastvit_t8" in args:
            args += TINY_TRAIN
        code = main(args) if prog == "bramley-fastvit" else bramley_main(args)
        assert code == 0, line
        ran.append(sub)
    assert ran == ["info", "convert", "reparam", "eval", "export", "bench", "train", "train", "reproduce", "reproduce"]
    out = capsys.readouterr().out
    assert "fastvit_t8" in out and "(official layout)" in out
    fused = load_model("fastvit_t8_fused")
    assert fused.is_reparameterized and fused.num_classes == 3
    assert Path("fastvit_t8.onnx").stat().st_size > 0
    for run in ("runs/smoke", "runs/fastvit_t8"):
        for name in ("model.safetensors", "ema.safetensors", "config.json", "recipe.yaml", "results.json"):
            assert (Path(run) / name).is_file(), (run, name)
    assert load_model("runs/fastvit_t8").num_classes == 3  # a run folder is a model folder
    smoke = json.loads(Path("runs/smoke/results.json").read_text())
    assert smoke["num_classes"] == 10 and "eval_top1" in smoke["metrics"]
    results = json.loads(Path("repro/results.json").read_text())
    assert [row["model"] for row in results["models"]] == ["FastViT (fused)", "plain ViT", "MobileOne CNN (fused)"]
    assert results["repmixer"]["max_abs_diff_vs_trained"]["fused"] < 1e-5
    assert not results["repmixer"]["fused_has_skip"]
    assert [c["claim"] for c in results["claims"]] == [c["claim"] for c in verdicts(results)]
    assert Path("repro/fastvit_reproduction.png").stat().st_size > 0
    printed = out.split("FastViT's claims", 1)[1]  # every claim gets a verdict; a quick run's verdicts mean nothing
    printed = printed.split("FastViT's claims", 1)[0]  # (the digits run's; the synthetic run's follow)
    assert printed.count(": HOLDS (") + printed.count(": DOES NOT HOLD (") == len(results["claims"])
    synthetic = json.loads(Path("repro-synthetic/results.json").read_text())
    assert synthetic["data"] == "synthetic" and synthetic["seeds"] == [0, 1]
    assert all(len(row["test_acc_seeds"]) == 2 and "test_acc_std" in row for row in synthetic["models"])
    assert "mean ± std over seeds 0, 1" in synthetic["claims"][1]["measured"]


def test_readme_verdicts_are_computed_from_the_committed_results():
    results = json.loads((PACKAGE / "results" / "reproduction.json").read_text())
    text = code_blocks(README, "text")[0]  # the digits run's; the synthetic run's: tests/test_reproduce.py
    assert text.strip().splitlines() == verdict_lines(verdicts(results))
