"""Every command of the package README runs here.

Adjustments, all visible below and in conftest.py: the full-scale CIFAR-100 command runs on the `image_folder` fixture
(as data.root) with every stage shrunk to two steps at 32 px (its ResNet-50s kept); the test suite's own command is not
run again.
"""

import shlex
from importlib.metadata import version
from pathlib import Path

from bramley.core.cli import main as bramley_main
from bramley.fct.cli import main as fct_main
from shared.markdown import run_python_blocks, shell_commands

README = Path(__file__).resolve().parents[1] / "README.md"


def run(line: str, extra: list[str] = ()) -> int:
    argv = shlex.split(line)
    if argv[0] == "bramley-fct":
        return fct_main([*argv[1:], *extra])
    assert argv[0] == "bramley", line
    return bramley_main([*argv[1:], *extra])


def test_python_quickstart(capsys):
    assert run_python_blocks(README) == 1
    assert "mAP@R" in capsys.readouterr().out


def test_bash_blocks(tmp_path, monkeypatch, image_folder, tiny_chain):
    monkeypatch.chdir(tmp_path)
    root = image_folder.parent
    (root / "training").symlink_to(image_folder)
    (root / "validation").symlink_to(image_folder)
    commands = shell_commands(README)
    assert len(commands) >= 13
    for line in commands:
        if line.startswith("uv run pytest"):
            continue  # this very suite
        if "/path/to/cifar-100-python" in line:
            assert run(line.replace("/path/to/cifar-100-python", str(root)), tiny_chain) == 0, line
        else:
            assert run(line) == 0, line
    assert (tmp_path / "runs" / "reproduce-fct" / "results.json").is_file()
    assert (tmp_path / "runs" / "smoke" / "results.json").is_file()
    assert (tmp_path / "runs" / "backfilled.safetensors").is_file()
    assert (tmp_path / "runs" / "c100" / "transformation" / "model.safetensors").is_file()


def test_installed():
    assert version("bramley-fct") == "0.1.0"


def test_readme_reproduction_numbers_are_the_committed_runs():
    """The README's table is results/reproduce's table.md; the autoencoder paragraph and timings are its results."""
    import json

    results = README.parent / "results"
    text = README.read_text(encoding="utf-8")
    table = (results / "reproduce" / "table.md").read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 7 and all(row in text.splitlines() for row in rows)  # header + 6 cases, verbatim
    simclr = json.loads((results / "reproduce" / "results.json").read_text())
    assert simclr["side_objective"] == "simclr" and simclr["seeds"] == [0, 1, 2] and not simclr["quick"]
    assert f"{simclr['seconds']:.0f} s for three seeds" in text and simclr["verdict"].startswith("HOLDS")
    autoencoder = json.loads((results / "reproduce-autoencoder" / "results.json").read_text())
    assert autoencoder["side_objective"] == "autoencoder" and autoencoder["seeds"] == [0, 1, 2]
    side = autoencoder["summary"]["FCT w/ side-info"]
    shown = ", ".join(f"{side[k]['mean']:.1f} ± {side[k]['std']:.1f} {k if k != 'top1' else 'top-1'}" for k in side)
    assert shown.replace("top5", "top-5") in " ".join(text.split()), shown
