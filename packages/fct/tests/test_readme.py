"""Every command of the package README runs here.

Adjustments, all visible below: `pip install` lines are checked as "the package is installed"; the full-scale
CIFAR-100 block runs on the `image_folder` fixture (as data.root) with every stage shrunk to two steps at 32 px.
"""

import shlex
from importlib.metadata import version
from pathlib import Path

from bramley.core.cli import main as bramley_main
from bramley.fct.cli import main as fct_main
from shared.markdown import code_blocks

README = Path(__file__).resolve().parents[1] / "README.md"
STAGES = ("old", "new", "side_info", "transformation")


def blocks(lang: str) -> list[str]:
    return code_blocks(README, lang)


def run(line: str, extra: list[str] = ()) -> int:
    argv = shlex.split(line)
    if argv[0] == "bramley-fct":
        return fct_main([*argv[1:], *extra])
    assert argv[0] == "bramley", line
    return bramley_main([*argv[1:], *extra])


def test_python_quickstart(capsys):
    (code,) = blocks("python")
    exec(compile(code, str(README), "exec"), {})
    assert "mAP@R" in capsys.readouterr().out


def test_bash_blocks(tmp_path, monkeypatch, image_folder):
    monkeypatch.chdir(tmp_path)
    root = image_folder.parent
    (root / "training").symlink_to(image_folder)
    (root / "validation").symlink_to(image_folder)
    tiny = [f"{s}.train.{k}" for s in STAGES for k in ("steps=2", "warmup_epochs=0", "batch_size=4", "epochs=1")]
    full_scale = [
        *tiny,
        "data.image_size=32",
        "old.classes=2",
        "old.model_kwargs.num_classes=2",
        "side_info.classes=2",
        "new.model_kwargs.num_classes=3",
        "transformation.inner_dim=32",
        "eval.num_workers=0",
        *[f"{s}.train.{k}" for s in STAGES for k in ("num_workers=0", "progress=false", "device=cpu")],
    ]
    commands = [line for block in blocks("bash") for line in block.strip().splitlines()]
    assert len(commands) >= 19
    for line in commands:
        if line.startswith("uv run pytest"):
            continue  # this very suite
        if "/path/to/cifar-100-python" in line:
            line = line.replace("/path/to/cifar-100-python", str(root))
            uses_config = any(tok in line for tok in ("--recipe", "--config"))
            assert run(line, full_scale if uses_config else []) == 0, line
        else:
            assert run(line) == 0, line
    assert (tmp_path / "runs" / "reproduce-fct" / "results.json").is_file()
    assert (tmp_path / "runs" / "backfilled.safetensors").is_file()
    assert (tmp_path / "runs" / "c100" / "backfilled.safetensors").is_file()


def test_installed():
    assert version("bramley-fct") == "0.1.0"
