"""Release one package: check its CHANGELOG, bump its version, lock, commit and tag `bramley-<name>-v<version>`.

    uv run python tools/release.py mrl 0.2.0 --dry-run   # check everything, print the plan, change nothing
    uv run python tools/release.py mrl 0.2.0             # bump, `uv lock`, commit, tag
    git push origin HEAD bramley-mrl-v0.2.0              # then release.yml builds and publishes bramley-mrl only
    uv run python tools/release.py --check-tag bramley-mrl-v0.2.0   # what release.yml runs first

Checks, each with a clear error: the package exists under packages/; the version is a PEP 440 version in normalized
form and greater than the current static one; CHANGELOG.md has a non-empty `## [<version>]` section (or, with
`--from-unreleased`, the `## [Unreleased]` section has content, which then becomes `## [<version>] - <date>` under a
fresh empty `[Unreleased]`); every workspace package that depends on it still accepts the new version; the files to be
changed have no uncommitted edits and the tag does not exist yet.

The edits: `version` in packages/<name>/pyproject.toml, `__version__` in src/bramley/<module>/__init__.py where it is
set, CHANGELOG.md when moving [Unreleased], and uv.lock (`uv lock`). Only those files are committed; nothing is pushed.
If a step fails, the edited files are restored.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli comes with the dev group (pytest)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
UNRELEASED = "Unreleased"
PROJECT_VERSION = re.compile(r'^(version\s*=\s*)"([^"]*)"', re.MULTILINE)
DUNDER_VERSION = re.compile(r'^(__version__\s*=\s*)["\']([^"\']*)["\']', re.MULTILINE)
SECTION = re.compile(r"^## \[(?P<title>[^\]]+)\].*$", re.MULTILINE)
TAG = re.compile(r"^bramley-(?P<package>[a-z0-9]+(?:-[a-z0-9]+)*?)-v(?P<version>[0-9][^/]*)$")


class ReleaseError(RuntimeError):
    """A release precondition does not hold."""


@dataclass
class Plan:
    """What a release changes: new file contents, then the commit and the tag."""

    package: str
    dist: str
    old_version: str
    new_version: str
    tag: str
    edits: dict[Path, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _package_dir(package: str, root: Path) -> tuple[str, Path]:
    name = package.removeprefix("bramley-")
    directory = root / "packages" / name
    if not (directory / "pyproject.toml").is_file():
        known = sorted(p.parent.name for p in (root / "packages").glob("*/pyproject.toml"))
        raise ReleaseError(f"no package {package!r}: packages/{name}/pyproject.toml does not exist (known: {known})")
    return name, directory


def _parse_version(text: str) -> Version:
    try:
        version = Version(text)
    except InvalidVersion:
        raise ReleaseError(f"{text!r} is not a valid PEP 440 version (e.g. 0.2.0, 1.0.0rc1)") from None
    if str(version) != text:
        raise ReleaseError(f"version {text!r} is not in normalized form; use {str(version)!r}")
    return version


def _sections(changelog: str) -> list[tuple[str, int, int]]:
    """(title, start of heading, end of body) for every `## [title]` section."""
    heads = list(SECTION.finditer(changelog))
    ends = [h.start() for h in heads[1:]] + [len(changelog)]
    return [(h["title"].strip(), h.start(), end) for h, end in zip(heads, ends)]


def _body(changelog: str, start: int, end: int) -> str:
    return changelog[start:end].split("\n", 1)[1].strip() if "\n" in changelog[start:end] else ""


def update_changelog(
    changelog: str, version: str, from_unreleased: bool, today: datetime.date, label: str = "CHANGELOG.md"
) -> str | None:
    """The new CHANGELOG text, or None when it already has a proper ``## [version]`` section."""
    sections = {title: (start, end) for title, start, end in _sections(changelog)}
    if version in sections:
        if not _body(changelog, *sections[version]):
            raise ReleaseError(f"{label}: the ## [{version}] section is empty; say what changed")
        return None
    if not from_unreleased:
        raise ReleaseError(
            f"{label} has no '## [{version}]' section: add one, or pass --from-unreleased to turn the "
            "[Unreleased] section into it"
        )
    if UNRELEASED not in sections:
        raise ReleaseError(f"{label} has no '## [Unreleased]' section to release from")
    start, end = sections[UNRELEASED]
    body = _body(changelog, start, end)
    if not body:
        raise ReleaseError(f"{label}: [Unreleased] is empty; nothing to release as {version}")
    released = f"## [{UNRELEASED}]\n\n## [{version}] - {today.isoformat()}\n{body}\n\n"
    return changelog[:start] + released + changelog[end:].lstrip("\n")


def _dependents_rejecting(dist: str, version: Version, root: Path) -> list[str]:
    rejecting = []
    for pyproject in sorted((root / "packages").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        requirements = list(project.get("dependencies", []))
        requirements += [r for group in project.get("optional-dependencies", {}).values() for r in group]
        for text in requirements:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                continue
            released = canonicalize_name(requirement.name) == canonicalize_name(dist)
            if released and not requirement.specifier.contains(version, prereleases=True):
                rejecting.append(f"{project.get('name', pyproject.parent.name)} ({text})")
    return rejecting


def plan_release(
    package: str, version: str, root: Path = ROOT, from_unreleased: bool = False, today: datetime.date | None = None
) -> Plan:
    """Check every precondition that does not need git and compute the edits."""
    name, directory = _package_dir(package, root)
    pyproject_path = directory / "pyproject.toml"
    pyproject_text = pyproject_path.read_text()
    project = tomllib.loads(pyproject_text).get("project", {})
    dist = project.get("name", f"bramley-{name}")
    if "version" in project.get("dynamic", []) or "version" not in project:
        raise ReleaseError(f"{pyproject_path.relative_to(root)}: the version must be static ([project] version = ...)")
    old, new = _parse_version(project["version"]), _parse_version(version)
    if new <= old:
        raise ReleaseError(f"{dist}: new version {new} must be greater than the current {old}")

    plan = Plan(name, dist, str(old), str(new), f"{dist}-v{new}")
    project_start = re.search(r"^\[project\]\s*$", pyproject_text, re.MULTILINE)
    match = PROJECT_VERSION.search(pyproject_text, project_start.end()) if project_start else None
    if match is None or match.group(2) != project["version"]:
        raise ReleaseError(f'{pyproject_path.relative_to(root)}: cannot find `version = "{old}"` under [project]')
    plan.edits[pyproject_path] = pyproject_text[: match.start(2)] + str(new) + pyproject_text[match.end(2) :]

    init = directory / "src" / "bramley" / name.replace("-", "_") / "__init__.py"
    if init.is_file() and (dunder := DUNDER_VERSION.search(init.read_text())):
        if dunder.group(2) != str(old):
            plan.notes.append(f"{init.relative_to(root)} had __version__ {dunder.group(2)!r}, not {str(old)!r}")
        text = init.read_text()
        plan.edits[init] = text[: dunder.start(2)] + str(new) + text[dunder.end(2) :]

    changelog_path = directory / "CHANGELOG.md"
    if not changelog_path.is_file():
        raise ReleaseError(f"{changelog_path.relative_to(root)} does not exist")
    label = str(changelog_path.relative_to(root))
    changelog = update_changelog(
        changelog_path.read_text(), str(new), from_unreleased, today or datetime.date.today(), label
    )
    if changelog is not None:
        plan.edits[changelog_path] = changelog
        plan.notes.append(f"CHANGELOG.md: [Unreleased] becomes [{new}]")

    rejecting = _dependents_rejecting(dist, new, root)
    if rejecting:
        raise ReleaseError(f"{dist} {new} is outside what these packages accept: {', '.join(rejecting)}; widen first")
    return plan


def check_tag(tag: str, root: Path = ROOT) -> dict[str, str]:
    """What release.yml publishes for ``tag``: the package it names, at the version its pyproject and CHANGELOG hold."""
    match = TAG.match(tag)
    if match is None:
        raise ReleaseError(f"tag {tag!r} is not of the form bramley-<package>-v<version>")
    name, directory = _package_dir(match["package"], root)
    version = str(_parse_version(match["version"]))
    project = tomllib.loads((directory / "pyproject.toml").read_text())["project"]
    if project.get("version") != version:
        raise ReleaseError(
            f"tag {tag} says {version} but packages/{name}/pyproject.toml has version {project.get('version')!r}"
        )
    changelog = directory / "CHANGELOG.md"
    if not changelog.is_file():
        raise ReleaseError(f"{changelog.relative_to(root)} does not exist")
    update_changelog(changelog.read_text(), version, False, datetime.date.today(), str(changelog.relative_to(root)))
    return {"package": name, "dist": project["name"], "version": version}


def _git(args: list[str], root: Path) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise ReleaseError(f"`git {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def check_git(plan: Plan, root: Path) -> None:
    """The tag is new and the files to be edited (and uv.lock) have no uncommitted changes."""
    if _git(["tag", "--list", plan.tag], root).strip():
        raise ReleaseError(f"tag {plan.tag} already exists")
    paths = [str(p.relative_to(root)) for p in plan.edits] + ["uv.lock"]
    dirty = _git(["status", "--porcelain", "--", *paths], root).strip()
    if dirty:
        raise ReleaseError(f"uncommitted changes in files the release edits; commit or stash them first:\n{dirty}")


def apply(plan: Plan, root: Path, lock: bool = True) -> None:
    """Write the edits, `uv lock`, commit those files and create the annotated tag; restore the files on failure."""
    lock_path = root / "uv.lock"
    originals = {path: path.read_text() for path in [*plan.edits, lock_path] if path.exists()}
    try:
        for path, text in plan.edits.items():
            path.write_text(text)
        if lock:
            uv = shutil.which("uv")
            if uv is None:
                raise ReleaseError("uv is not on PATH (pip install uv); it is needed to update uv.lock")
            result = subprocess.run([uv, "lock"], cwd=root, capture_output=True, text=True)
            if result.returncode != 0:
                raise ReleaseError(f"`uv lock` failed:\n{result.stderr.strip()}")
        paths = [str(p.relative_to(root)) for p in plan.edits]
        if lock_path.exists():
            paths.append("uv.lock")
        _git(["add", "--", *paths], root)
        _git(["commit", "--quiet", "-m", f"release: {plan.dist} {plan.new_version}", "--", *paths], root)
    except BaseException:
        for path, text in originals.items():
            path.write_text(text)
        raise
    _git(["tag", "--annotate", plan.tag, "-m", f"{plan.dist} {plan.new_version}"], root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", nargs="?", help="package folder name under packages/ (e.g. mrl) or its dist name")
    parser.add_argument("version", nargs="?", help="new PEP 440 version, e.g. 0.2.0")
    parser.add_argument("--dry-run", action="store_true", help="run every check and print the plan; change nothing")
    parser.add_argument(
        "--from-unreleased", action="store_true", help="turn CHANGELOG's [Unreleased] into the release section"
    )
    parser.add_argument(
        "--check-tag",
        metavar="TAG",
        help="(release.yml) verify a pushed tag against the tree; print package=, dist=, version= lines",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.check_tag is not None:
        if args.package or args.version:
            parser.error("--check-tag takes no package or version")
        try:
            print("\n".join(f"{k}={v}" for k, v in check_tag(args.check_tag, root).items()))
        except ReleaseError as e:
            parser.exit(1, f"release.py: error: {e}\n")
        return 0
    if not (args.package and args.version):
        parser.error("give a package and a version (or --check-tag TAG)")
    try:
        plan = plan_release(args.package, args.version, root, args.from_unreleased)
        check_git(plan, root)
        prefix = "would " if args.dry_run else ""
        print(f"{prefix}release {plan.dist} {plan.old_version} -> {plan.new_version}")
        for path in plan.edits:
            print(f"  {prefix}edit {path.relative_to(root)}")
        for note in plan.notes:
            print(f"  note: {note}")
        print(f"  {prefix}run `uv lock`, commit these files and uv.lock, tag {plan.tag}")
        if args.dry_run:
            return 0
        apply(plan, root)
    except ReleaseError as e:
        parser.exit(1, f"release.py: error: {e}\n")
    print(f"tagged {plan.tag}; publish with: git push origin HEAD {plan.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
