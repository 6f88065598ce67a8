"""Code blocks and shell commands of a Markdown file, for the tests that run every README command."""

from __future__ import annotations

import re
from pathlib import Path


def code_blocks(path: Path, language: str) -> list[str]:
    """The bodies of the fenced ```language blocks of ``path``, in order."""
    return re.findall(rf"```{language}\n(.*?)```", Path(path).read_text(), flags=re.S)


def shell_commands(path: Path) -> list[str]:
    """The commands of the ```bash blocks of ``path``: one per line, ``\\`` continuations joined, comments dropped."""
    commands, current = [], ""
    for block in code_blocks(path, "bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].rstrip()
            if not line.strip() or line.strip().startswith("#"):
                continue
            current += line.rstrip("\\").strip() + " "
            if not line.endswith("\\"):
                commands.append(current.strip())
                current = ""
    return commands


def run_python_blocks(path: Path) -> int:
    """Execute every ```python block of ``path`` in a fresh namespace each; returns how many ran (an error if none)."""
    code = code_blocks(path, "python")
    assert code, f"{path} has no python example"
    for block in code:
        exec(compile(block, str(path), "exec"), {})
    return len(code)
