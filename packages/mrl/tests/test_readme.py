"""Every command and Python block of the package README runs (heavy arguments shrunk to toy scale, listed here)."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from shared.markdown import bramley_command, run_python_blocks, shell_commands

README = Path(__file__).resolve().parents[1] / "README.md"

# How each kind of README command is shrunk: (pattern, replacement) applied to the command line, then extra args.
SHRINK = [
    (r"--image-size 224", "--image-size 32"),
    # the tiny test model has 96 features instead of ResNet-50's 2048; the toy database has 12 images
    (
        r"--rerank-dims 16 32 64 128 2048 --shortlists 200 100 50 25 10",
        "--rerank-dims 16 32 64 96 --shortlists 12 10 8 5",
    ),
    (r"--k 100", "--k 10"),
]
EXTRA = {
    "reproduce": ["--quick", "--out", "reproduce"],
    "eval": ["--image-size", "32"],
    "embed": ["--image-size", "32"],
    "bench": ["--num-database", "3000", "--num-queries", "8", "--dim", "256"],
}


def official_checkpoint(path: Path) -> None:
    """An official-layout MRL checkpoint (DDP prefix, ``fc.nesting_classifier_<i>``) with random weights."""
    from bramley.core.registry import create_model

    state = create_model("mrl_resnet50", num_classes=3).state_dict()
    renamed = {re.sub(r"^head\.heads\.(\d+)\.", r"fc.nesting_classifier_\1.", k): v for k, v in state.items()}
    torch.save({f"module.{k.removeprefix('backbone.')}": v for k, v in renamed.items()}, path)


def test_readme_python_blocks_run():
    run_python_blocks(README)


def test_readme_commands_run(image_folder, tmp_path, monkeypatch, tiny_paper_recipe):
    from bramley.core.cli import main as bramley_main

    for split in ("train", "val"):
        shutil.copytree(image_folder, tmp_path / "imagenet" / split)
    official_checkpoint(tmp_path / "final_weights.pt")
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in shell_commands(README, skip=("pip install",), rewrite=SHRINK):
        argv, sub = bramley_command(line)
        argv += EXTRA.get(sub, [])
        if sub == "train" and "imagenet_resnet50" in argv:
            argv += tiny_paper_recipe
        assert bramley_main(argv) == 0, line
        ran.append(sub)
    assert {"reproduce", "train", "eval", "embed", "retrieve", "bench", "convert"} <= set(ran)
    assert (tmp_path / "runs" / "mrl-r50" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "mrl-smoke" / "config.json").is_file()
    assert (tmp_path / "runs" / "mrl-r50-official" / "config.json").is_file()
    funnel = json.loads((tmp_path / "runs" / "mrl-r50" / "funnel.json").read_text())
    assert funnel["backend"] == "faiss" and funnel["search"]["mode"] == "funnel" and "mAP@5" in funnel["metrics"]
    bench = json.loads((tmp_path / "bench-1m.json").read_text())
    assert bench["environment"]["device"] == "cpu" and len(bench["funnels"]) == 2
    reproduce = json.loads((tmp_path / "reproduce" / "results.json").read_text())
    assert reproduce["quick"] and reproduce["sizes"] == [4, 64] and (tmp_path / "reproduce" / "mrl.png").is_file()
    assert set(reproduce["claims"]) >= {"mrl_matches_ff", "mrl_beats_truncation", "holds"}


@pytest.mark.parametrize("name", ["BENCHMARKS.md", "CHANGELOG.md"])
def test_docs_exist(name):
    assert (README.parent / name).is_file()
