"""Scaffold a new bramley method package and add it to the workspace.

    uv run python tools/new_package.py mrl --title "Matryoshka Representation Learning"

Creates packages/<name>/ (pyproject, README, CHANGELOG, src/bramley/<module>/{__init__,cli,reproduce}.py, tests/)
and adds the package to the root dev dependency group and [tool.uv.sources]. Run `uv lock` afterwards.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

PYPROJECT = """\
[project]
name = "bramley-{name}"
version = "0.1.0"
description = "{title} (bramley method package)."
readme = "README.md"
requires-python = ">=3.10"
license = "Apache-2.0"
dependencies = ["bramley-core>=0.1,<1"]

[project.scripts]
bramley-{name} = "bramley.{module}.cli:main"

[project.entry-points."bramley.cli"]
{name} = "bramley.{module}.cli:main"

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["src/bramley"]

# `deptry src` from this folder (tests/test_dependencies.py runs it for every package). `bramley` is the PEP 420
# namespace: `import bramley.core` is bramley-core (an editable install records no top-level module for deptry).
[tool.deptry.package_module_name_map]
bramley-core = "bramley"
"""

README = """\
# bramley-{name}

{title}.

## Quickstart

```bash
pip install bramley-{name}
bramley-{name} --help
bramley reproduce {name}
```
"""

CHANGELOG = """\
# Changelog — bramley-{name}

All notable changes to this package. Format: [Keep a Changelog](https://keepachangelog.com/en/1.1.0/).

## [Unreleased]

## [0.1.0]
### Added
- Package scaffold.
"""

INIT = '''\
"""{title}."""

__version__ = "0.1.0"
'''

CLI = '''\
"""Command line of bramley-{name} (also available as `bramley {name}`)."""

from __future__ import annotations

from collections.abc import Sequence

from bramley.core.cli import MethodCLI

DESCRIPTION = "{title}."

cli = MethodCLI("{name}", DESCRIPTION)
cli.add_info()
cli.add_reproduce("bramley.{module}.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bramley-{name}` and of `bramley {name}`."""
    return cli.main(argv)
'''

REPRODUCE = '''\
"""Mini reproduction of bramley-{name} (`bramley reproduce {name}`).

Paper: {title}.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce {name}")
    parser.add_argument("--out", default="runs/reproduce-{name}")
    parser.parse_args(argv)
    raise NotImplementedError("the {name} mini reproduction is not written yet")


if __name__ == "__main__":
    sys.exit(main())
'''

TEST = """\
import pytest

from bramley.{module}.cli import main


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "usage: bramley-{name}" in capsys.readouterr().out
"""


def add_to_workspace(text: str, dist: str, source: str = "pyproject.toml") -> str:
    """``text`` of the root pyproject with ``dist`` in the dev group and [tool.uv.sources] (keeps comments, order)."""
    if f'"{dist}"' in text.split("[dependency-groups]", 1)[-1].split("]", 1)[0]:
        return text
    group_line = '    "bramley-core",\n'
    source_line = "bramley-core = { workspace = true, editable = true }\n"
    for anchor, where in ((group_line, "[dependency-groups] dev"), (source_line, "[tool.uv.sources]")):
        if anchor not in text:
            raise SystemExit(f"{source}: cannot find {anchor.strip()!r} in {where}; add {dist} there by hand")
    text = text.replace(group_line, group_line + f'    "{dist}",\n', 1)
    return text.replace(source_line, source_line + f"{dist} = {{ workspace = true, editable = true }}\n", 1)


def scaffold(name: str, title: str, root: Path = ROOT) -> Path:
    """Write packages/<name>/ from the templates and add it to the root workspace; returns the package folder."""
    if not NAME_RE.match(name):
        raise SystemExit(f"package name {name!r} must be lowercase letters/digits with single dashes (e.g. 'mrl')")
    module = name.replace("-", "_")
    pkg = root / "packages" / name
    if pkg.exists():
        raise SystemExit(f"{pkg} already exists")
    root_pyproject = root / "pyproject.toml"
    root_text = add_to_workspace(root_pyproject.read_text(), f"bramley-{name}", str(root_pyproject))
    values = {"name": name, "module": module, "title": title}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        "CHANGELOG.md": CHANGELOG,
        f"src/bramley/{module}/__init__.py": INIT,
        f"src/bramley/{module}/cli.py": CLI,
        f"src/bramley/{module}/reproduce.py": REPRODUCE,
        "tests/test_cli.py": TEST,
    }
    for rel, template in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    root_pyproject.write_text(root_text)
    return pkg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", help="method name, e.g. 'mrl' (dist bramley-<name>, import bramley.<name>)")
    parser.add_argument("--title", required=True, help="paper / method title for the README and docstrings")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    pkg = scaffold(args.name, args.title, args.root)
    print(f"created {pkg.relative_to(args.root)}; now run `uv lock` and fill in the package")
    return 0


if __name__ == "__main__":
    sys.exit(main())
