"""Dependencies: every package declares exactly what its ``src/`` imports, and core's optional ones stay optional.

- deptry runs on each package (``deptry src`` in ``packages/<name>``, with the ``[tool.deptry]`` table of its
  pyproject) and fails on an undeclared (DEP001), unused (DEP002), transitive (DEP003) or dev-only (DEP004) dependency.
- Every module of ``bramley.core`` imports with the distributions of core's extras blocked, except the modules that
  exist only for an extra, which fail with the one-line message naming it.
- Each optional feature of core, with its module missing, raises that message where it is used.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import torch.nn as nn
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli comes with pytest
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent.name for p in ROOT.glob("packages/*/pyproject.toml"))
CORE_SRC = ROOT / "packages" / "core" / "src"
# modules of bramley.core that exist only for one extra: importing them without it fails with the extra's message
EXTRA_ONLY_MODULES = {"bramley.core.data.folder": "vision"}


# ---------------------------------------------------------------------------------------------------------- deptry


@pytest.mark.parametrize("package", PACKAGES)
def test_declared_dependencies_are_exactly_the_imported_ones(package):
    folder = ROOT / "packages" / package
    if importlib.util.find_spec("deptry") is None:
        pytest.fail("deptry is not installed: it is in the root dev dependency group (`uv sync`)")
    cmd = [sys.executable, "-m", "deptry", "src", "--no-ansi"]
    result = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=120)
    report = f"{result.stdout}{result.stderr}".strip()
    assert result.returncode == 0, (
        f"deptry: packages/{package}/pyproject.toml does not match what src/ imports (DEP001 undeclared, DEP002 "
        f"unused, DEP003 transitive: declare it, DEP004 dev-only). Fix the dependencies (or a core extra), then run "
        f"`cd packages/{package} && uv run deptry src`:\n{report}"
    )
    scanned = re.search(r"Scanning (\d+) files", report)
    assert scanned and int(scanned.group(1)) > 0, f"deptry scanned no file of packages/{package}/src:\n{report}"


# ------------------------------------------------------------------------------------- core without its extras


def _core_extras() -> dict[str, list[str]]:
    """extra -> the distributions it adds, from packages/core/pyproject.toml."""
    project = tomllib.loads((ROOT / "packages" / "core" / "pyproject.toml").read_text())["project"]
    return {
        extra: [canonicalize_name(Requirement(r).name) for r in reqs]
        for extra, reqs in project.get("optional-dependencies", {}).items()
    }


def _modules_of(distributions: set[str]) -> set[str]:
    """Top-level import names the installed ``distributions`` provide (an uninstalled one: its own name)."""
    provided = {dist: set() for dist in distributions}
    for module, dists in packages_distributions().items():
        for dist in dists:
            if canonicalize_name(dist) in provided:
                provided[canonicalize_name(dist)].add(module)
    return {m for dist, modules in provided.items() for m in (modules or {dist.replace("-", "_")})}


def _core_modules() -> list[str]:
    modules = []
    for path in sorted(CORE_SRC.glob("bramley/core/**/*.py")):
        parts = path.relative_to(CORE_SRC).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


# Runs in a fresh interpreter: blocks the given top-level modules, imports each given module, reports the failures.
BLOCKED_IMPORT_PROBE = """
import importlib, importlib.abc, json, sys

blocked, modules = set(sys.argv[1].split(",")), sys.argv[2].split(",")


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
failures = {}
for module in modules:
    try:
        importlib.import_module(module)
    except ImportError as err:
        failures[module] = f"{type(err).__name__}: {err}"
leaked = sorted(m for m in sys.modules if m.split(".")[0] in blocked)
print(json.dumps({"failures": failures, "leaked": leaked}))
"""


def test_core_modules_import_without_any_extra():
    extras = _core_extras()
    blocked = _modules_of({dist for dists in extras.values() for dist in dists})
    assert {"torchvision", "timm", "sklearn", "matplotlib", "PIL"} <= blocked, f"core's extras provide {blocked}"
    modules = _core_modules()
    assert {"bramley.core", "bramley.core.cli", "bramley.core.train", "bramley.core.registry"} <= set(modules)
    cmd = [sys.executable, "-c", BLOCKED_IMPORT_PROBE, ",".join(sorted(blocked)), ",".join(modules)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"import probe crashed:\n{result.stdout}\n{result.stderr}"
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    failures = probe["failures"]
    unexpected = {m: e for m, e in failures.items() if m not in EXTRA_ONLY_MODULES}
    assert not unexpected, (
        f"these bramley.core modules need an optional dependency at import time (import it inside the function that "
        f"uses it, with bramley.core._optional.optional_import): {json.dumps(unexpected, indent=1)}"
    )
    for module, extra in EXTRA_ONLY_MODULES.items():
        assert module in failures, f"{module} imported with {sorted(blocked)} blocked: is it still extra-only?"
        assert f"pip install 'bramley-core[{extra}]'" in failures[module] and "\n" not in failures[module]
    assert not probe["leaked"], f"blocked modules got imported anyway: {probe['leaked']}"


def _uninstall(monkeypatch: pytest.MonkeyPatch, top: str) -> None:
    """Make ``top`` and its submodules unimportable, as if not installed (``None`` in ``sys.modules``), for one test."""
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")] + [top]:
        monkeypatch.setitem(sys.modules, name, None)


def _figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bramley.core.report import figure

    with figure(tmp_path / "plot.png"):
        pass


def _image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bramley.core.data as data

    monkeypatch.delitem(sys.modules, "bramley.core.data.folder", raising=False)  # imported anew, restored afterwards
    data.ImageFolder  # noqa: B018 - the lazy attribute imports data.folder


def _register_timm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bramley.core.registry import register_timm

    register_timm(names=[])


def _features_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bramley.core.features import features_only

    features_only(nn.Identity())


def _digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bramley.core.data._bundled import load_digits_arrays

    load_digits_arrays()


def _photos(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bramley.core.data._bundled import load_sample_photo

    load_sample_photo("china")


OPTIONAL_FEATURES: list[tuple[str, str, str, Callable[[Path, pytest.MonkeyPatch], None]]] = [
    # (extra, missing module, distribution named in the message, use of the feature)
    ("plot", "matplotlib", "matplotlib", _figure),
    ("vision", "torchvision", "torchvision", _image_folder),
    ("vision", "timm", "timm", _register_timm),
    ("vision", "timm", "timm", _features_only),
    ("bundled", "sklearn", "scikit-learn", _digits),
    ("bundled", "PIL", "pillow", _photos),
]


@pytest.mark.parametrize(
    "extra, module, dist, use",
    OPTIONAL_FEATURES,
    ids=[f"{m}-{u.__name__.strip('_')}" for _, m, _, u in OPTIONAL_FEATURES],
)
def test_a_missing_extra_fails_in_one_line_naming_it(extra, module, dist, use, tmp_path, monkeypatch):
    assert dist in _core_extras()[extra], f"{dist} is not in bramley-core's [{extra}] extra"
    _uninstall(monkeypatch, module)
    with pytest.raises(ImportError) as info:
        use(tmp_path, monkeypatch)
    message = str(info.value)
    assert f"needs {dist} (not installed): pip install 'bramley-core[{extra}]'" in message, message
    assert "\n" not in message
