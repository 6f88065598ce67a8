"""The CLI: every command of the README, run at tiny scale, plus training with distillation and bad input."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch

from bramley.core import create_model, from_pretrained, save_pretrained
from bramley.core.cli import main as bramley_main
from bramley.fastvit.cli import main
from bramley.fastvit.convert import bramley_to_official

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = "{layers: [1, 1, 1, 1], embed_dims: [8, 16, 32, 64]}"
TINY_TRAIN = [
    f"model.kwargs={TINY}",
    "data.image_size=32",
    "train.epochs=1",
    "train.batch_size=4",
    "train.num_workers=0",
    "train.amp=none",
    "train.progress=false",
    "train.checkpoint_every=0",
    "train.warmup_epochs=0",
    "train.ema_decay=0.9",
    "train.device=cpu",
    "train.log_every=1",
]
# Per-command additions that shrink the README's full-scale commands to test scale (same code paths).
SHRINK = {
    "bench": ["--image-size", "64", "--iters", "2"],
    "export": ["--image-size", "64"],
    "reparam": ["--image-size", "64"],
    "eval": ["--image-size", "32", "--batch-size", "4"],
    "train": TINY_TRAIN,
    "reproduce": ["--quick", "--out", "repro"],
}


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "bramley-fastvit" in capsys.readouterr().out


def test_readme_python_quickstart():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    exec(compile(code, str(README), "exec"), {})


def test_readme_commands(image_folder, tmp_path, monkeypatch, capsys):
    """Every line of the README's bash block, in order, with ImageNet paths pointed at a tiny image folder."""
    monkeypatch.chdir(tmp_path)
    official = create_model("fastvit_t8", num_classes=3)  # 3 classes, like the image folder
    torch.save({"state_dict": bramley_to_official(official.state_dict())}, "fastvit_t8.pth.tar")
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    lines = [line for line in block.splitlines() if line.strip()]
    assert len(lines) == 8
    for line in lines:
        line = line.replace("/path/to/imagenet/train", str(image_folder)).replace(
            "/path/to/imagenet/val", str(image_folder)
        )
        prog, *args = shlex.split(line)
        sub = args[0]
        extra = SHRINK.get(sub, [])
        at = args.index("--out") if sub == "train" else len(args)  # overrides must stay next to the README's
        args[at:at] = extra
        code = main(args) if prog == "bramley-fastvit" else bramley_main(args)
        assert code == 0, line
    out = capsys.readouterr().out
    assert "fastvit_t8" in out and "converted official checkpoint" in out
    fused = from_pretrained("fastvit_t8_fused")
    assert fused.is_reparameterized and fused.num_classes == 3
    assert Path("fastvit_t8.onnx").stat().st_size > 0
    assert (Path("runs/fastvit_t8") / "model" / "model.safetensors").exists()
    assert (Path("runs/fastvit_t8") / "model_ema" / "config.json").exists()
    assert (Path("runs/fastvit_t8") / "config.yaml").exists()
    results = json.loads(Path("repro/results.json").read_text())
    assert [row["model"] for row in results["models"]] == ["FastViT (fused)", "plain ViT", "MobileOne CNN (fused)"]
    assert results["repmixer"]["max_abs_diff_vs_trained"]["fused"] < 1e-5
    assert not results["repmixer"]["fused_has_skip"]
    assert Path("repro/fastvit_reproduction.png").stat().st_size > 0


def test_train_with_hard_distillation(image_folder, tmp_path):
    teacher = create_model("fastvit_t8", num_classes=3, layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64))
    save_pretrained(teacher, tmp_path / "teacher")
    args = ["train", "--config", "fastvit_sa12.yaml", f"data.train_dir={image_folder}", *TINY_TRAIN]
    args += [
        "distillation.type=hard",
        f"distillation.teacher_dir={tmp_path / 'teacher'}",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train_distill_loss" in m for m in metrics)
    model = from_pretrained(tmp_path / "run" / "model")
    assert model.model_config["name"] == "fastvit_sa12" and model.num_classes == 3


def test_distillation_needs_teacher_weights(image_folder, capsys):
    args = ["train", "--config", "fastvit_t8.yaml", f"data.train_dir={image_folder}", *TINY_TRAIN]
    for extra, message in (
        ("distillation.type=hard", "needs distillation.teacher_dir"),
        ("train.lr_typo=1", "unknown"),
    ):
        with pytest.raises(SystemExit) as e:
            main([*args, extra])
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_cli_errors_are_clean(tmp_path, capsys):
    (tmp_path / "junk.pth").write_text("junk")
    assert main(["convert", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert main(["reparam", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err
