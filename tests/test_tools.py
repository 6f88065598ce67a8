"""Repository tooling: tools/affected.py, tools/release.py and tools/new_package.py.

Release and affected-package logic runs against small throwaway git workspaces written by the tests; affected.py is
also checked against this repository's real packages. `uv lock` on a throwaway workspace is hermetic: no network, an
empty cache of its own, and its one third-party dependency is a wheel the test writes into a local flat index.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools import affected, new_package, release

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli comes with pytest
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
REAL_PACKAGES = sorted(p.parent.name for p in ROOT.glob("packages/*/pyproject.toml"))


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    result = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return result.stdout


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pyproject(dist: str, version: str = "0.1.0", deps: str = "", extra: str = "") -> str:
    return (
        f'[project]\nname = "{dist}"\nversion = "{version}"\nrequires-python = ">=3.10"\ndependencies = [{deps}]\n'
        f'{extra}\n[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
    )


CHANGELOG = "# Changelog\n\n## [Unreleased]\n### Added\n- Faster kernels.\n\n## [0.1.0]\n### Added\n- First.\n"


def local_wheel(directory: Path, name: str, version: str) -> Path:
    """Write a minimal pure-Python wheel ``name==version`` into ``directory`` (a flat index uv reads offline)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f'__version__ = "{version}"\n',
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}\n")
    files[f"{dist_info}/RECORD"] = "".join(record) + f"{dist_info}/RECORD,,\n"
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Path:
    """A git repo shaped like bramley: core, alpha and beta (both on core), gamma (on alpha, through an extra).

    beta also depends on a third-party distribution named ``gamma`` (like the folder of bramley-gamma, so only
    dist names may link workspace packages), served from a local flat index: every `uv lock` here (this fixture's
    and release.py's) runs offline, with no index and an empty cache, on any machine.
    """
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))
    wheels = local_wheel(tmp_path / "wheels", "gamma", "1.0").parent
    repo = tmp_path / "repo"
    write(
        repo / "pyproject.toml",
        '[tool.uv.workspace]\nmembers = ["packages/*"]\n\n'
        f"[tool.uv]\nno-index = true\nfind-links = [{json.dumps(str(wheels))}]\n\n[tool.uv.sources]\n",
    )
    members = {
        "core": pyproject("bramley-core"),
        "alpha": pyproject("bramley-alpha", deps='"bramley-core>=0.1,<1"'),
        "beta": pyproject("bramley-beta", deps='"bramley-core>=0.1,<1", "gamma>=1"'),
        "gamma": pyproject("bramley-gamma", extra='[project.optional-dependencies]\nfull = ["bramley_Alpha<1"]\n'),
    }
    sources = ""
    for name, text in members.items():
        write(repo / "packages" / name / "pyproject.toml", text)
        write(repo / "packages" / name / "CHANGELOG.md", CHANGELOG)
        write(
            repo / "packages" / name / "src" / "bramley" / name / "__init__.py", '"""Doc."""\n\n__version__ = "0.1.0"\n'
        )
        sources += f"bramley-{name} = {{ workspace = true }}\n"
    (repo / "pyproject.toml").write_text((repo / "pyproject.toml").read_text() + sources)
    write(repo / "README.md", "# ws\n")
    git(repo, "init", "--quiet", "--initial-branch=main")
    subprocess.run([shutil.which("uv") or "uv", "lock", "--quiet"], cwd=repo, check=True)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "base")
    return repo


# ------------------------------------------------------------------------------------------------- affected.py


def test_affected_real_repository():
    assert affected.affected_packages(["packages/mrl/src/bramley/mrl/cli.py"]) == ["mrl"]
    assert affected.affected_packages(["packages/mrl/README.md", "packages/fct/tests/test_cli.py"]) == ["fct", "mrl"]
    assert affected.affected_packages(["packages/core/src/bramley/core/registry.py"]) == REAL_PACKAGES
    assert affected.affected_packages(["README.md"]) == []
    assert affected.affected_packages([]) == []
    for root_file in ["pyproject.toml", "uv.lock", "shared/pytest_plugin.py", "tests/test_x.py", "tools/release.py",
                      ".github/workflows/ci.yml", ".ci/run"]:  # fmt: skip
        assert affected.affected_packages([root_file]) == REAL_PACKAGES, root_file


def test_affected_follows_dependencies_transitively(workspace):
    assert affected.affected_packages(["packages/core/x.py"], workspace) == ["alpha", "beta", "core", "gamma"]
    assert affected.affected_packages(["packages/alpha/src/bramley/alpha/m.py"], workspace) == ["alpha", "gamma"]
    assert affected.affected_packages(["packages/beta/README.md"], workspace) == ["beta"]
    assert affected.affected_packages(["packages/gamma/pyproject.toml"], workspace) == ["gamma"]
    assert affected.affected_packages(["packages/removed/x.py"], workspace) == []
    assert affected.dependency_graph(affected.workspace_packages(workspace)) == {
        "core": set(),
        "alpha": {"core"},
        "beta": {"core"},
        "gamma": {"alpha"},
    }


def test_affected_cli_against_git(workspace, capsys):
    base = git(workspace, "rev-parse", "HEAD").strip()
    write(workspace / "packages" / "alpha" / "src" / "bramley" / "alpha" / "new.py", "x = 1\n")
    git(workspace, "add", "-A")
    git(workspace, "commit", "--quiet", "-m", "alpha change")
    assert affected.main(["--base", base, "--json", "--root", str(workspace)]) == 0
    assert json.loads(capsys.readouterr().out) == ["alpha", "gamma"]
    assert affected.main(["--base", "HEAD", "--root", str(workspace)]) == 0
    assert capsys.readouterr().out.strip() == ""
    assert affected.main(["--base", "0" * 40, "--json", "--root", str(workspace)]) == 0
    assert json.loads(capsys.readouterr().out) == ["alpha", "beta", "core", "gamma"]
    with pytest.raises(SystemExit) as exit_info:
        affected.main(["--base", "no-such-ref", "--root", str(workspace)])
    assert exit_info.value.code == 2
    assert "git ref 'no-such-ref' does not exist" in capsys.readouterr().err


def test_affected_script_runs_as_documented():
    """The exact CI invocation, as a subprocess (tools/ is not a package: it must work as a plain script)."""
    result = subprocess.run(
        [sys.executable, "tools/affected.py", "--base", "HEAD", "--json"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)


# -------------------------------------------------------------------------------------------------- release.py


def test_release_dry_run_changes_nothing(workspace, capsys):
    assert release.main(["alpha", "0.2.0", "--dry-run", "--from-unreleased", "--root", str(workspace)]) == 0
    out = capsys.readouterr().out
    assert "would release bramley-alpha 0.1.0 -> 0.2.0" in out and "bramley-alpha-v0.2.0" in out
    assert "packages/alpha/pyproject.toml" in out and "packages/alpha/CHANGELOG.md" in out
    assert git(workspace, "status", "--porcelain") == ""
    assert git(workspace, "tag", "--list") == ""


def test_release_bumps_locks_commits_and_tags(workspace, capsys):
    changelog = workspace / "packages" / "alpha" / "CHANGELOG.md"
    changelog.write_text(CHANGELOG.replace("## [0.1.0]", "## [0.2.0rc1] - 2026-01-02\n### Fixed\n- Bug.\n\n## [0.1.0]"))
    git(workspace, "commit", "--quiet", "-am", "changelog")
    assert release.main(["bramley-alpha", "0.2.0rc1", "--root", str(workspace)]) == 0
    assert "tagged bramley-alpha-v0.2.0rc1" in capsys.readouterr().out

    project = tomllib.loads((workspace / "packages" / "alpha" / "pyproject.toml").read_text())["project"]
    assert project["version"] == "0.2.0rc1"
    assert '__version__ = "0.2.0rc1"' in (workspace / "packages/alpha/src/bramley/alpha/__init__.py").read_text()
    lock = tomllib.loads((workspace / "uv.lock").read_text())
    versions = {p["name"]: p["version"] for p in lock["package"]}
    assert versions["bramley-alpha"] == "0.2.0rc1" and versions["bramley-core"] == "0.1.0"
    assert versions["gamma"] == "1.0", "the third-party dependency is locked from the local flat index"
    assert git(workspace, "status", "--porcelain") == ""  # everything it changed is committed
    assert git(workspace, "log", "-1", "--format=%s") == "release: bramley-alpha 0.2.0rc1\n"
    changed = git(workspace, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(changed) == sorted(
        ["packages/alpha/pyproject.toml", "packages/alpha/src/bramley/alpha/__init__.py", "uv.lock"]
    )
    assert git(workspace, "cat-file", "-t", "bramley-alpha-v0.2.0rc1").strip() == "tag"  # annotated
    assert git(workspace, "rev-parse", "bramley-alpha-v0.2.0rc1^{commit}") == git(workspace, "rev-parse", "HEAD")
    # releasing the same version again: the tag exists and the version is no longer greater
    with pytest.raises(SystemExit):
        release.main(["alpha", "0.2.0rc1", "--root", str(workspace)])
    assert "must be greater than the current 0.2.0rc1" in capsys.readouterr().err


def test_release_from_unreleased_moves_the_section(workspace):
    plan = release.plan_release("alpha", "0.2.0", workspace, from_unreleased=True, today=datetime.date(2026, 3, 4))
    text = plan.edits[workspace / "packages" / "alpha" / "CHANGELOG.md"]
    assert text == (
        "# Changelog\n\n## [Unreleased]\n\n## [0.2.0] - 2026-03-04\n### Added\n- Faster kernels.\n\n"
        "## [0.1.0]\n### Added\n- First.\n"
    )


@pytest.mark.parametrize(
    ("package", "version", "message"),
    [
        ("delta", "0.2.0", "no package 'delta': packages/delta/pyproject.toml does not exist"),
        ("alpha", "two", "'two' is not a valid PEP 440 version"),
        ("alpha", "v0.2.0", "not in normalized form; use '0.2.0'"),
        ("alpha", "0.1.0", "new version 0.1.0 must be greater than the current 0.1.0"),
        ("alpha", "0.1.0a1", "must be greater"),
        ("alpha", "0.2.0", "packages/alpha/CHANGELOG.md has no '## [0.2.0]' section"),
        ("core", "1.0.0", "outside what these packages accept: bramley-alpha (bramley-core>=0.1,<1), bramley-beta"),
        ("alpha", "1.0.0", "outside what these packages accept: bramley-gamma (bramley_Alpha<1)"),
    ],
)
def test_release_errors(workspace, package, version, message, capsys):
    if version == "1.0.0":
        changelog = workspace / "packages" / package / "CHANGELOG.md"
        changelog.write_text(changelog.read_text().replace("## [0.1.0]", "## [1.0.0]\n- Stable.\n\n## [0.1.0]"))
    with pytest.raises(SystemExit) as exit_info:
        release.main([package, version, "--root", str(workspace)])
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err


def test_release_changelog_problems(workspace):
    today = datetime.date(2026, 1, 1)
    with pytest.raises(release.ReleaseError, match=r"the ## \[0.2.0\] section is empty"):
        release.update_changelog("## [Unreleased]\n\n## [0.2.0]\n\n## [0.1.0]\n- x\n", "0.2.0", False, today)
    with pytest.raises(release.ReleaseError, match=r"\[Unreleased\] is empty"):
        release.update_changelog("## [Unreleased]\n\n## [0.1.0]\n- x\n", "0.2.0", True, today)
    with pytest.raises(release.ReleaseError, match=r"no '## \[Unreleased\]' section"):
        release.update_changelog("## [0.1.0]\n- x\n", "0.2.0", True, today)
    assert release.update_changelog("## [0.2.0] - 2026-01-01\n- y\n", "0.2.0", False, today) is None


def test_release_refuses_dirty_files_existing_tags_and_dynamic_versions(workspace):
    plan = release.plan_release("beta", "0.1.1", workspace, from_unreleased=True)
    (workspace / "packages" / "beta" / "CHANGELOG.md").write_text(CHANGELOG + "\nlocal edit\n")
    with pytest.raises(release.ReleaseError, match="uncommitted changes in files the release edits"):
        release.check_git(plan, workspace)
    git(workspace, "checkout", "--", ".")
    git(workspace, "tag", "bramley-beta-v0.1.1")
    with pytest.raises(release.ReleaseError, match=r"tag bramley-beta-v0\.1\.1 already exists"):
        release.check_git(plan, workspace)
    project = workspace / "packages" / "beta" / "pyproject.toml"
    project.write_text(project.read_text().replace('version = "0.1.0"', 'dynamic = ["version"]'))
    with pytest.raises(release.ReleaseError, match="the version must be static"):
        release.plan_release("beta", "0.1.1", workspace, from_unreleased=True)


def test_release_restores_files_when_a_step_fails(workspace, monkeypatch):
    plan = release.plan_release("alpha", "0.2.0", workspace, from_unreleased=True)
    monkeypatch.setattr(release.shutil, "which", lambda name: None)  # no uv: `uv lock` cannot run
    with pytest.raises(release.ReleaseError, match="uv is not on PATH"):
        release.apply(plan, workspace)
    assert git(workspace, "status", "--porcelain") == ""
    assert git(workspace, "tag", "--list") == ""


# ---------------------------------------------------------------------------------------------- new_package.py


def test_new_package_scaffold_is_complete_and_clean(tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    # a long paper title must still give ruff-clean files
    pkg = new_package.scaffold(
        "demo-net", "Dataset Decomposition: Faster LLM Training with Variable Sequence Length Curriculum", tmp_path
    )
    module = pkg / "src" / "bramley" / "demo_net"
    for rel in ["pyproject.toml", "README.md", "CHANGELOG.md", "tests/test_cli.py"]:
        assert (pkg / rel).is_file(), rel
    for rel in ["__init__.py", "cli.py", "reproduce.py"]:
        assert (module / rel).is_file(), rel
    assert not (pkg / "src" / "bramley" / "__init__.py").exists()

    project = tomllib.loads((pkg / "pyproject.toml").read_text())["project"]
    assert project["name"] == "bramley-demo-net" and project["version"] == "0.1.0"
    assert project["scripts"] == {"bramley-demo-net": "bramley.demo_net.cli:main"}
    assert project["entry-points"]["bramley.cli"] == {"demo-net": "bramley.demo_net.cli:main"}
    root = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    assert "bramley-demo-net" in root["dependency-groups"]["dev"]
    assert root["tool"]["uv"]["sources"]["bramley-demo-net"] == {"workspace": True, "editable": True}
    # a release can start from the scaffold's CHANGELOG, and tools/affected.py sees the package
    assert release.update_changelog((pkg / "CHANGELOG.md").read_text(), "0.1.0", False, datetime.date.today()) is None
    assert affected.affected_packages(["packages/demo-net/README.md"], tmp_path) == ["demo-net"]

    ruff = [sys.executable, "-m", "ruff"]
    for cmd in (["check", "--quiet", str(pkg)], ["format", "--check", "--quiet", str(pkg)]):
        result = subprocess.run([*ruff, *cmd], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, f"scaffold is not ruff clean ({cmd[0]}):\n{result.stdout}{result.stderr}"

    # the scaffold's CLI is a core MethodCLI: it runs, and its reproduce verb reaches the package's module
    def forget_demo_net() -> None:  # other tests (test_config) import a package of this name from their own folder
        for name in [m for m in sys.modules if m == "bramley.demo_net" or m.startswith("bramley.demo_net.")]:
            del sys.modules[name]

    monkeypatch.syspath_prepend(str(pkg / "src"))
    forget_demo_net()  # an earlier test's bramley.demo_net has no cli module: import this one
    try:
        cli = importlib.import_module("bramley.demo_net.cli")
        assert cli.main(["info"]) == 0 and "(no rows)" in capsys.readouterr().out
        with pytest.raises(NotImplementedError, match="the demo-net mini reproduction is not written yet"):
            cli.main(["reproduce"])
    finally:
        forget_demo_net()

    with pytest.raises(SystemExit, match="already exists"):
        new_package.scaffold("demo-net", "Again", tmp_path)
    with pytest.raises(SystemExit, match="must be lowercase"):
        new_package.scaffold("Demo_Net", "Bad", tmp_path)


def test_new_package_refuses_an_unexpected_root_pyproject(tmp_path):
    write(tmp_path / "pyproject.toml", '[dependency-groups]\ndev = ["pytest"]\n')
    with pytest.raises(SystemExit, match="cannot find"):
        new_package.scaffold("demo", "Demo", tmp_path)
    assert not (tmp_path / "packages").exists(), "nothing is written when the workspace cannot be updated"


def test_check_tag_is_what_release_yml_publishes(workspace, capsys):
    assert release.check_tag("bramley-alpha-v0.1.0", workspace) == {
        "package": "alpha",
        "dist": "bramley-alpha",
        "version": "0.1.0",
    }
    multi = workspace / "packages" / "dataset-decomposition"
    write(multi / "pyproject.toml", pyproject("bramley-dataset-decomposition", "1.0.0rc2"))
    write(multi / "CHANGELOG.md", "## [1.0.0rc2]\n- x\n")
    assert release.check_tag("bramley-dataset-decomposition-v1.0.0rc2", workspace)["package"] == "dataset-decomposition"
    for tag, message in [
        ("bramley-alpha-v0.2.0", "says 0.2.0 but packages/alpha/pyproject.toml has version '0.1.0'"),
        ("bramley-delta-v0.1.0", "no package 'delta'"),
        ("alpha-v0.1.0", "is not of the form bramley-<package>-v<version>"),
        ("bramley-alpha-0.1.0", "is not of the form"),
    ]:
        with pytest.raises(release.ReleaseError, match=re.escape(message)):
            release.check_tag(tag, workspace)
    (workspace / "packages" / "alpha" / "CHANGELOG.md").write_text("## [Unreleased]\n- x\n")
    with pytest.raises(SystemExit):
        release.main(["--check-tag", "bramley-alpha-v0.1.0", "--root", str(workspace)])
    assert "has no '## [0.1.0]' section" in capsys.readouterr().err
    assert release.main(["--check-tag", "bramley-beta-v0.1.0", "--root", str(workspace)]) == 0
    assert capsys.readouterr().out.splitlines() == ["package=beta", "dist=bramley-beta", "version=0.1.0"]
