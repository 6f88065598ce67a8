"""Code blocks, shell commands and table rows of a Markdown file, for the tests that hold a README to what runs."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path


def code_blocks(path: Path, language: str, section: str | None = None) -> list[str]:
    """The bodies of the fenced ```language blocks of ``path`` (of its ``## section`` only, if given), in order."""
    text = Path(path).read_text(encoding="utf-8")
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def shell_commands(path: Path, skip: Sequence[str] = (), rewrite: Sequence[tuple[str, str]] = ()) -> list[str]:
    """The commands of the ```bash blocks of ``path``: one per line, ``\\`` continuations joined, comments dropped.

    Commands starting with a prefix in ``skip`` are left out; ``rewrite``'s (regex, replacement) pairs apply to each.
    """
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
    commands = [c for c in commands if not c.startswith(tuple(skip))]
    for pattern, replacement in rewrite:
        commands = [re.sub(pattern, replacement, c) for c in commands]
    return commands


def bramley_command(line: str) -> tuple[list[str], str]:
    """A README ``bramley ...`` command: the arguments after ``bramley``, and its verb (the method's, or reproduce)."""
    assert line.startswith("bramley "), f"README command not covered by this test: {line}"
    argv = shlex.split(line)[1:]
    return argv, argv[0] if argv[0] == "reproduce" else argv[1]


def run_python(path: Path, block: str) -> dict:
    """Execute one ```python block of ``path`` in a fresh namespace; that namespace (for the test to check)."""
    namespace: dict = {}
    exec(compile(block, str(path), "exec"), namespace)
    return namespace


def run_python_blocks(path: Path) -> int:
    """Execute every ```python block of ``path`` in a fresh namespace each; returns how many ran (an error if none)."""
    code = code_blocks(path, "python")
    assert code, f"{path} has no python example"
    for block in code:
        run_python(path, block)
    return len(code)


def has_table_row(text: str, cells: Sequence[str], whole_line: bool = False) -> bool:
    """Whether ``text`` holds a Markdown table row with ``cells`` in order, consecutive, whatever their padding
    (``whole_line``: and nothing else on that line)."""
    row = r"\|\s*" + r"\s*\|\s*".join(map(re.escape, cells)) + r"\s*\|"
    return re.search(f"^{row}$" if whole_line else row, text, flags=re.M) is not None
