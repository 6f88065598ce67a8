"""Every command and Python block of the package README runs (heavy arguments shrunk), and the README's
reproduction table is the committed results' table."""

import json
from pathlib import Path

import pytest

from bramley.dataset_reinforcement.reproduce import readme_table
from shared.markdown import bramley_command, run_python_blocks, shell_commands

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
RESULTS = PACKAGE / "results" / "reproduce" / "results.json"
EXTRA = {
    "reproduce": ["--quick", "--out", "reproduce"],
    "bench": ["--rounds", "1", "--steps", "1", "--threads", "1", "--images", "64"],
}


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_python_blocks(README)


def test_readme_commands_run(tmp_path, monkeypatch):
    from bramley.core.cli import main as bramley_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRAMLEY_PROGRESS", "0")
    ran = []
    for line in shell_commands(README, skip=("pip install",)):
        argv, sub = bramley_command(line)
        assert bramley_main(argv + EXTRA.get(sub, [])) == 0, line
        ran.append(sub)
    assert {"reinforce", "inspect", "train", "eval", "bench", "reproduce"} <= set(ran)
    results = json.loads((tmp_path / "reproduce" / "results.json").read_text())
    assert results["quick"] and (tmp_path / "reproduce" / "dataset_reinforcement.png").stat().st_size > 1000


def test_readme_table_is_the_committed_results():
    text = README.read_text()
    section = text.split("<!-- reproduce:start -->")[1].split("<!-- reproduce:end -->")[0]
    if not RESULTS.is_file():  # the README must then say so and show no numbers it does not have
        assert "Not measured yet" in section and "|" not in section
        return
    results = json.loads(RESULTS.read_text())
    assert not results["quick"] and len(results["config"]["seeds"]) >= 2
    assert readme_table(results) in README.read_text()


def test_readme_longer_run_table_is_its_committed_results():
    longer = json.loads((RESULTS.parent.parent / "reproduce-30-epochs" / "results.json").read_text())
    assert longer["config"]["epochs"] == 30 and longer["config"]["teacher_epochs"] == 60
    assert readme_table(longer) in README.read_text()


@pytest.mark.parametrize("name", ["CHANGELOG.md"])
def test_docs_exist(name):
    assert (PACKAGE / name).is_file()
