"""Every command and Python block of the package README runs (shrunk to toy scale), and its tables are the committed
results."""

import json
from pathlib import Path

import pytest

from bramley.sharcs.reproduce import SETTINGS, markdown_table
from shared.markdown import bramley_command, run_python_blocks, shell_commands

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
RESULTS = PACKAGE / "results" / "reproduce-digits"
EXTRA = {
    "reproduce": ["--quick", "--seeds", "0", "--threads", "1"],
    "bench": ["--rounds", "2", "--repeats", "1"],
}


def _marked(tag: str) -> str:
    text = README.read_text()
    return text.split(f"<!-- {tag}:start -->\n", 1)[1].split(f"<!-- {tag}:end -->", 1)[0].strip()


def test_readme_python_blocks_run():
    run_python_blocks(README)


def test_readme_commands_run(tmp_path, monkeypatch):
    from bramley.core.cli import main as bramley_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRAMLEY_PROGRESS", "0")
    ran = []
    for line in shell_commands(README, skip=("pip install", "torchrun")):
        argv, sub = bramley_command(line)
        argv += EXTRA.get(sub, [])
        if sub == "train":
            argv += ["train.steps=4", "train.progress=false"]
        assert bramley_main(argv) == 0, line
        ran.append(sub)
    assert ran == ["train", "eval", "route", "reproduce", "bench"]
    assert json.loads((tmp_path / "runs" / "routes.json").read_text())["counts"]


def test_readme_table_is_the_committed_run():
    if not (RESULTS / "results.json").is_file():
        assert _marked("reproduction") == "", "a table in the README needs its committed run"
        pytest.skip("no committed reproduction run yet (the README says so)")
    results = json.loads((RESULTS / "results.json").read_text())
    assert results["seeds"] == [0, 1] and results["setting"] == SETTINGS["full"]
    assert _marked("reproduction").startswith(markdown_table(results["summary"]))
    assert (RESULTS / "sharcs.png").is_file()


@pytest.mark.parametrize("name", ["CHANGELOG.md"])
def test_docs_exist(name):
    assert (PACKAGE / name).is_file()
