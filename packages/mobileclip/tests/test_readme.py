"""Every command and Python block of the package README runs (at toy scale), and its reproduction table is the one
the committed results give."""

import json
import re
from pathlib import Path

import pytest

from shared.markdown import bramley_command, run_python_blocks, shell_commands

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
RESULTS = PACKAGE / "results" / "reproduce" / "results.json"
EXTRA = {
    "reproduce": ["--quick", "--out", "reproduce"],
    "bench": ["--rounds", "1", "--repeats", "1"],
}
SHRINK = [(r"--size 256", "--size 16")]


def test_readme_python_blocks_run():
    run_python_blocks(README)


def test_readme_commands_run(tmp_path, monkeypatch):
    from bramley.core.cli import main as bramley_main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRAMLEY_PROGRESS", "0")
    ran = []
    for line in shell_commands(README, skip=("pip install",), rewrite=SHRINK):
        argv, sub = bramley_command(line)
        assert bramley_main(argv + EXTRA.get(sub, [])) == 0, line
        ran.append(sub)
    assert {"info", "train", "eval", "reinforce", "bench", "reproduce"} <= set(ran)
    assert len(list((tmp_path / "runs" / "mobileclip-reinforced").glob("*.tar"))) == 1


def test_readme_table_is_the_committed_results():
    from bramley.mobileclip.reproduce import readme_table

    if not RESULTS.is_file():
        pytest.skip(
            f"{RESULTS} is not committed yet: the full reproduction did not finish in the session (see CHANGELOG)"
        )
    results = json.loads(RESULTS.read_text())
    assert not results["quick"] and results["seeds"] == [0, 1]
    text = README.read_text()
    block = re.search(r"<!-- reproduction:start -->\n(.*?)\n<!-- reproduction:end -->", text, re.S).group(1)
    assert block.strip() == readme_table(results).strip()
