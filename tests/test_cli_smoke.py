"""The root README's two commands, as a user types them.

`uv run bramley reproduce mrl` runs here in its `--quick` form (same code path, one seed and two epochs);
`uv run pytest` is the command running this very test, so it is checked for what it covers, not run again.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli comes with pytest
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = "uv run bramley reproduce mrl"
TEST_COMMAND = "uv run pytest"


def readme_commands() -> list[str]:
    """The commands in the README's ```bash blocks, comments stripped."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    lines = (line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line]


def test_readme_has_exactly_the_tested_commands():
    assert readme_commands() == [MAIN_JOB, TEST_COMMAND], "a new README command needs a test here"


def test_test_command_covers_every_package():
    pytest_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    testpaths = pytest_config["testpaths"]
    for tests in [ROOT / "tests", *ROOT.glob("packages/*/tests")]:
        assert any(tests.is_relative_to(ROOT / p) for p in testpaths), f"`{TEST_COMMAND}` does not collect {tests}"


def test_main_job_quick(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH; the README's commands need it (`pip install uv`)")
    out = tmp_path / "reproduce-mrl"
    command = [uv, *MAIN_JOB.split()[1:], "--quick", "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"`{MAIN_JOB} --quick` failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "| method" in result.stdout, "the result table is printed"
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["environment"]["torch"]
    assert results["table"], "results.json carries the table rows"
    assert (out / "table.md").is_file()
    plots = list(out.glob("*.png"))
    assert plots and all(p.stat().st_size > 1000 for p in plots), "a PNG plot is written"
