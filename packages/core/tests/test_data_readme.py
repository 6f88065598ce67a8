"""Every Python block in the README's "## Data" section runs."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _data_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Data\n", 1)[1]
    section = re.split(r"\n## (?!#)", section, maxsplit=1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_data_section_has_examples():
    assert len(_data_blocks()) == 5


@pytest.mark.parametrize("index", range(5))
def test_readme_data_example_runs(index, capsys):
    exec(compile(_data_blocks()[index], f"README.md:data[{index}]", "exec"), {})
    assert capsys.readouterr().out.strip()
