"""Every command and Python block of the README runs (at tiny sizes: the flags added below only shrink images, steps
and timings), and the verdicts it quotes are the ones computed from the committed reproduction results."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bramley.core.cli import main as bramley_main
from bramley.mobileone import build_mobileone
from bramley.mobileone.cli import main as mobileone_main
from bramley.mobileone.convert import bramley_to_official
from bramley.mobileone.reproduce import verdicts
from shared.markdown import code_blocks, run_python, shell_commands

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"

TINY_TRAIN = [
    "train.steps=1",
    "train.batch_size=2",
    "eval.batch_size=250",
    "train.num_workers=0",
    "train.amp=none",
    "train.progress=false",
    "train.checkpoint_every=0",
    "train.device=cpu",
]
SHRINK = {
    "eval": ["--image-size", "32"],
    "export": ["--image-size", "32"],
    "bench": ["--image-size", "32", "--iters", "1", "--warmup", "0", "--rounds", "1"],
    "reproduce": ["--quick", "--out", "reproduce-quick"],
    "reproduce-synthetic": ["--quick", "--out", "reproduce-quick-synthetic"],
    "train": [
        *TINY_TRAIN,
        "data.image_size=32",
        "data.multiscale.min_size=32",
        "data.multiscale.max_size=32",
        "data.multiscale.num_scales=1",
        "data.multiscale.curriculum_epochs=0",
    ],
    "train-smoke": ["train.steps=2"],
}


def test_readme_python_quickstart():
    namespace = run_python(README, code_blocks(README, "python")[0])
    x = torch.randn(1, 3, 32, 32)
    ref = namespace["model"](x)  # untrained: default BN statistics give logits of a few hundred
    torch.testing.assert_close(namespace["fast"](x), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_readme_timm_section(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it writes a save_pretrained folder
    (code,) = code_blocks(README, "python")[1:]
    namespace = run_python(README, code)
    assert capsys.readouterr().out.strip() == "[128, 256, 1024] [28, 14, 7]"
    assert namespace["local"].model_config == {"name": "mobileone_s0", "kwargs": {"num_classes": 10}}
    assert namespace["transform"].transforms[1].size == (224, 224)  # resize 256, crop 224


def test_readme_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # inputs the commands refer to: an official-format checkpoint and a 1000-class ImageFolder
    torch.save(bramley_to_official(build_mobileone("s0").state_dict()), "mobileone_s0_unfused.pth.tar")
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    for c in range(1000):
        (tmp_path / "imagenet" / "val" / f"n{c:04d}").mkdir(parents=True)
        pixels[0, 0] = (c % 256, c // 256, 0)
        Image.fromarray(pixels).save(tmp_path / "imagenet" / "val" / f"n{c:04d}" / "0.png")
    (tmp_path / "imagenet" / "train").symlink_to(tmp_path / "imagenet" / "val")

    commands = [shlex.split(line) for line in shell_commands(README)]
    assert len(commands) == 11  # the quickstart line + the nine in "Command line" + the synthetic reproduction
    subcommands = set()
    for argv in commands:
        if argv[0] == "bramley":
            assert argv[1] == "reproduce"
            rest, sub, run = argv[1:], "reproduce", bramley_main
        else:
            rest, sub, run = argv[1:], argv[1], mobileone_main
        key = "train-smoke" if "smoke" in rest else "reproduce-synthetic" if "synthetic" in rest else sub
        extra = SHRINK.get(key, [])
        assert run(rest + extra) == 0, argv
        subcommands.add(sub)
    assert subcommands == {"info", "convert", "reparam", "eval", "export", "bench", "train", "reproduce"}
    assert (tmp_path / "s0_fused" / "model.safetensors").exists() and (tmp_path / "s0_fused.onnx").exists()
    for run_folder in ("runs/smoke", "runs/s0"):
        assert (tmp_path / run_folder / "config.json").exists() and (tmp_path / run_folder / "recipe.yaml").exists()
    assert (tmp_path / "runs" / "s0" / "ema.safetensors").exists()
    results = json.loads((tmp_path / "reproduce-quick" / "results.json").read_text())
    assert [r["arm"] for r in results["table"]] == ["plain conv-BN", "MobileOne k=1", "MobileOne k=4"]
    assert results["verdicts"]["free_reparameterization"]["verdict"] == "REPRODUCED"
    assert results["verdicts"]["overparameterization"]["verdict"] == "INCONCLUSIVE"  # one seed
    assert (tmp_path / "reproduce-quick" / "reproduce.png").stat().st_size > 0
    last = capsys.readouterr().out.strip().splitlines()[-6:]  # the reproduction ends with its claims and verdicts
    assert last[0].startswith("Claim 1 (paper):") and last[2] == "  verdict: INCONCLUSIVE"
    assert last[3].startswith("Claim 2 (paper):") and last[5] == "  verdict: REPRODUCED"
    synthetic = json.loads((tmp_path / "reproduce-quick-synthetic" / "results.json").read_text())
    assert synthetic["data"] == "synthetic" and synthetic["setup"]["num_classes"] == 64
    assert synthetic["verdicts"]["free_reparameterization"]["verdict"] == "REPRODUCED"


def test_readme_verdicts_are_computed_from_the_committed_results():
    committed = verdicts(json.loads((PACKAGE / "results" / "reproduce" / "results.json").read_text()))
    quoted = re.search(r"claim 1 \*\*([A-Z ]+)\*\*, claim 2 \*\*([A-Z ]+)\*\*", README.read_text())
    assert quoted is not None, "the README quotes the verdicts of the committed run"  # the digits run comes first
    assert list(quoted.groups()) == [committed["overparameterization"]["verdict"], "REPRODUCED"]
    assert committed["free_reparameterization"]["verdict"] == "REPRODUCED"
