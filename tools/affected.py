"""List the workspace packages affected by the changes since a git ref (the CI test matrix).

    uv run python tools/affected.py --base origin/main          # one package per line
    uv run python tools/affected.py --base origin/main --json   # ["core", "mrl"]: a GitHub Actions matrix

A package is affected when a file under packages/<name>/ changed, or when it depends (directly or not, through its
pyproject's dependencies, optional dependencies or dependency groups) on an affected package: every method depends on
bramley-core, so a core change affects all of them. Changes to the workspace itself (root pyproject.toml, uv.lock,
shared/, tests/, tools/, .github/, .ci/, any other root-level file except documentation) affect every package.
Changes to root documentation (*.md) affect none. Package names are the folder names under packages/.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli comes with the dev group (pytest)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
ROOT_DOCS = re.compile(r"^[^/]+\.md$")
REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class AffectedError(RuntimeError):
    """The git ref or the workspace could not be read."""


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def workspace_packages(root: Path = ROOT) -> dict[str, dict]:
    """Folder name -> parsed pyproject for every package under packages/."""
    packages = {}
    for pyproject in sorted((root / "packages").glob("*/pyproject.toml")):
        try:
            packages[pyproject.parent.name] = tomllib.loads(pyproject.read_text())
        except tomllib.TOMLDecodeError as e:
            raise AffectedError(f"{pyproject.relative_to(root)} is not valid TOML: {e}") from e
    return packages


def _requirements(pyproject: dict) -> Iterable[str]:
    project = pyproject.get("project", {})
    yield from project.get("dependencies", [])
    for group in project.get("optional-dependencies", {}).values():
        yield from group
    for group in pyproject.get("dependency-groups", {}).values():
        yield from (item for item in group if isinstance(item, str))  # skip {include-group = ...}


def dependency_graph(packages: dict[str, dict]) -> dict[str, set[str]]:
    """package -> the workspace packages it depends on directly."""
    by_dist = {normalize(p["project"]["name"]): name for name, p in packages.items() if "project" in p}
    graph = {}
    for name, pyproject in packages.items():
        deps = set()
        for requirement in _requirements(pyproject):
            match = REQUIREMENT_NAME.match(requirement)
            if match and normalize(match.group(1)) in by_dist:
                deps.add(by_dist[normalize(match.group(1))])
        graph[name] = deps - {name}
    return graph


def affected_packages(files: Iterable[str], root: Path = ROOT) -> list[str]:
    """Sorted names of the packages affected by changes to ``files`` (paths relative to the repository root)."""
    packages = workspace_packages(root)
    changed: set[str] = set()
    for file in files:
        parts = Path(file).parts
        if not parts:
            continue
        if parts[0] == "packages" and len(parts) > 2:
            if parts[1] in packages:  # a deleted package changes the root pyproject/uv.lock too
                changed.add(parts[1])
        elif not ROOT_DOCS.match(file):
            return sorted(packages)  # the workspace itself changed
    dependents: dict[str, set[str]] = {name: set() for name in packages}
    for name, deps in dependency_graph(packages).items():
        for dep in deps:
            dependents[dep].add(name)
    affected, todo = set(changed), list(changed)
    while todo:
        for dependent in dependents[todo.pop()] - affected:
            affected.add(dependent)
            todo.append(dependent)
    return sorted(affected)


def _git(args: list[str], root: Path) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise AffectedError(f"`git {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def changed_files(base: str, head: str = "HEAD", root: Path = ROOT) -> list[str]:
    """Files changed between the merge base of ``base`` and ``head``, and ``head`` (what a pull request changes)."""
    for ref in (base, head):
        found = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=root, capture_output=True
        )
        if found.returncode != 0:
            raise AffectedError(f"git ref {ref!r} does not exist here (shallow clone? fetch it, e.g. fetch-depth: 0)")
    return _git(["diff", "--name-only", "--no-renames", f"{base}...{head}"], root).splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--base", default="origin/main", help="git ref to compare with (default: origin/main; '' or 000..0: all)"
    )
    parser.add_argument("--head", default="HEAD", help="git ref with the changes (default: HEAD)")
    parser.add_argument("--all", action="store_true", help="every package, whatever changed")
    parser.add_argument("--json", action="store_true", help="print a JSON list (GitHub Actions matrix input)")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.all or args.base.strip("0") == "":  # no base: first push of a branch (all-zero SHA) or manual run
            packages = sorted(workspace_packages(args.root))
        else:
            packages = affected_packages(changed_files(args.base, args.head, args.root), args.root)
    except AffectedError as e:
        parser.exit(2, f"affected.py: error: {e}\n")
    print(json.dumps(packages) if args.json else "\n".join(packages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
