"""Every command in the README runs (at tiny sizes: the flags added below only shrink images, steps and timings)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bramley.core.cli import main as bramley_main
from bramley.mobileone import build_mobileone
from bramley.mobileone.cli import main as mobileone_main
from bramley.mobileone.convert import bramley_to_official
from shared.markdown import code_blocks

README = Path(__file__).resolve().parents[1] / "README.md"

SHRINK = {
    "info": ["--image-size", "32"],
    "eval": ["--image-size", "32"],
    "export": ["--image-size", "32"],
    "bench": ["--image-size", "32", "--iters", "1", "--warmup", "0", "--rounds", "1"],
    "reproduce": ["--quick", "--out", "reproduce-quick"],
    "train": [
        "train.steps=1",
        "train.batch_size=2",
        "train.eval_batch_size=250",
        "train.num_workers=0",
        "train.amp=none",
        "train.progress=false",
        "train.checkpoint_every=0",
        "train.device=cpu",
        "data.image_size=32",
        "data.multiscale.min_size=32",
        "data.multiscale.max_size=32",
        "data.multiscale.num_scales=1",
        "data.multiscale.curriculum_epochs=0",
    ],
}


def _blocks(language: str) -> list[str]:
    return code_blocks(README, language)


def test_readme_python_quickstart():
    (code,) = _blocks("python")
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    x = torch.randn(1, 3, 32, 32)
    ref = namespace["model"](x)  # untrained: default BN statistics give logits of a few hundred
    torch.testing.assert_close(namespace["fast"](x), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_readme_commands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # inputs the commands refer to: an official-format checkpoint and a 1000-class ImageFolder
    torch.save(bramley_to_official(build_mobileone("s0").state_dict()), "mobileone_s0_unfused.pth.tar")
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    for c in range(1000):
        (tmp_path / "imagenet" / "val" / f"n{c:04d}").mkdir(parents=True)
        pixels[0, 0] = (c % 256, c // 256, 0)
        Image.fromarray(pixels).save(tmp_path / "imagenet" / "val" / f"n{c:04d}" / "0.png")
    (tmp_path / "imagenet" / "train").symlink_to(tmp_path / "imagenet" / "val")

    lines = [line.strip() for block in _blocks("bash") for line in block.splitlines() if line.strip()]
    commands = [shlex.split(line) for line in lines if line.startswith("bramley")]
    assert len(commands) == 9  # the quickstart line + the eight in "Command line"
    subcommands = set()
    for argv in commands:
        if argv[0] == "bramley":
            assert argv[1] == "reproduce"
            rest, sub, run = argv[1:], "reproduce", bramley_main
        else:
            rest, sub, run = argv[1:], argv[1], mobileone_main
        extra = SHRINK.get(sub, [])
        assert run(rest + extra) == 0, argv
        subcommands.add(sub)
    assert subcommands == {"info", "convert", "reparam", "eval", "export", "bench", "train", "reproduce"}
    assert (tmp_path / "s0_fused" / "model.safetensors").exists() and (tmp_path / "s0_fused.onnx").exists()
    assert (tmp_path / "runs" / "s0" / "model" / "config.json").exists()
    results = json.loads((tmp_path / "reproduce-quick" / "results.json").read_text())
    assert [r["arm"] for r in results["table"]] == ["plain conv-BN", "MobileOne k=1", "MobileOne k=4"]
    assert results["summary"]["claim2_all_fused_accuracies_equal"] is True
    assert (tmp_path / "reproduce-quick" / "reproduce.png").stat().st_size > 0
