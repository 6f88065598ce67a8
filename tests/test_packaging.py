"""Packaging: every package builds to a wheel, and every method wheel works installed alone with bramley-core.

The wheels are built with ``uv build --package <dist>`` exactly as release.yml builds them. One fresh virtualenv
(``uv venv``) gets bramley-core (its third-party dependencies pinned from uv.lock, installed from the uv cache) and
then each method wheel in turn, installed, checked and uninstalled again, so every method is checked with no other
method package present. Everything runs outside the checkout so nothing can be imported from ``src/`` by accident.
"""

from __future__ import annotations

import configparser
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from email.parser import Parser
from pathlib import Path

import pytest

from bramley.core.registry import list_models

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli comes with pytest
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent.name for p in ROOT.glob("packages/*/pyproject.toml"))
METHODS = [p for p in PACKAGES if p != "core"]
ENTRY_POINT_GROUP = "bramley.cli"
# distributions a method must not pull in (through core's extras or otherwise): the language-model package has no use
# for a vision stack or scikit-learn
NOT_INSTALLED_WITH = {"dataset-decomposition": {"torchvision", "timm", "scikit-learn", "scipy"}}
# DESIGN.md's one exception to "no method depends on another": a method built on another method's model
METHOD_DEPENDENCIES = {"mobileclip": ("fastvit",)}  # the MobileCLIP image towers MCi0-2 are FastViT


def _pyproject(package: str) -> dict:
    return tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())


def _dist(package: str) -> str:
    return _pyproject(package)["project"]["name"]


def _module(package: str) -> str:
    return package.replace("-", "_")


def _method_dependencies(package: str) -> list[str]:
    """The other method packages ``package`` depends on (DESIGN.md's one exception: a method built on another
    method's model, e.g. bramley-mobileclip on bramley-fastvit), as package folder names."""
    names = (re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0] for req in _pyproject(package)["project"]["dependencies"])
    return sorted(n.removeprefix("bramley-") for n in names if n.startswith("bramley-") and n != "bramley-core")


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("uv is not on PATH; the packaging tests need it (`pip install uv`, see README)")
    return uv


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    """The caller's environment minus anything that points at the workspace (the outer `uv run` sets some)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT")}
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"`{' '.join(map(str, cmd))}` exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


# --------------------------------------------------------------------------------------------------------- wheels


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """package -> its wheel, built with `uv build --package` (in parallel: each build mostly waits on its env)."""
    uv = _uv()
    out = tmp_path_factory.mktemp("wheels")

    def build(package: str) -> subprocess.CompletedProcess:
        cmd = [uv, "build", "--package", _dist(package), "--wheel", "--out-dir", str(out / package)]
        return subprocess.run(cmd, cwd=ROOT, env=_clean_env(), capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=len(PACKAGES)) as pool:
        results = dict(zip(PACKAGES, pool.map(build, PACKAGES)))
    failed = {p: r for p, r in results.items() if r.returncode != 0}
    assert not failed, "\n".join(f"uv build --package {_dist(p)} failed:\n{r.stderr}" for p, r in failed.items())
    built = {}
    for package in PACKAGES:
        found = list((out / package).glob("*.whl"))
        assert len(found) == 1, f"uv build --package {_dist(package)} produced {found}, expected one wheel"
        built[package] = found[0]
    return built


def test_every_package_is_found():
    assert "core" in PACKAGES and METHODS, f"packages/ holds {PACKAGES}: expected core and at least one method"


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_contents(package, wheels):
    project = _pyproject(package)["project"]
    dist, version, module = project["name"], project["version"], _module(package)
    assert dist == f"bramley-{package}", f"packages/{package} must be distributed as bramley-{package}, not {dist}"
    wheel = wheels[package]
    assert wheel.name.startswith(f"{dist.replace('-', '_')}-{version}-"), f"{wheel.name}: wrong name or version"
    info = f"{dist.replace('-', '_')}-{version}.dist-info/"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = Parser().parsestr(zf.read(info + "METADATA").decode())
        entry_text = zf.read(info + "entry_points.txt").decode() if info + "entry_points.txt" in names else ""

    assert "bramley/__init__.py" not in names, "bramley is a PEP 420 namespace: no bramley/__init__.py in any wheel"
    stray = sorted(n for n in names if not (n.startswith(f"bramley/{module}/") or n.startswith(info)))
    assert not stray, f"{wheel.name} holds files outside bramley/{module}/: {stray}"
    src = ROOT / "packages" / package / "src" / "bramley" / module
    expected = {
        f"bramley/{module}/{p.relative_to(src).as_posix()}"
        for p in src.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert f"bramley/{module}/__init__.py" in names
    assert not expected - names, f"{wheel.name} misses source files: {sorted(expected - names)}"

    assert metadata["Name"] == dist and metadata["Version"] == version
    requires = metadata.get_all("Requires-Dist") or []
    if package != "core":
        assert any(r.replace(" ", "").startswith("bramley-core") for r in requires), f"{dist} must require core"
        names = (re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0] for r in requires)
        methods = sorted(n for n in names if n.startswith("bramley-") and n != "bramley-core")
        allowed = sorted(_dist(p) for p in METHOD_DEPENDENCIES.get(package, ()))
        assert methods == allowed, (
            f"{dist} depends on method packages {methods}, allowed {allowed}: shared code belongs in bramley-core "
            f"(DESIGN.md's one exception, a method built on another method's model, is listed in METHOD_DEPENDENCIES)"
        )

    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.optionxform = str  # keep names as written
    entry_points.read_string(entry_text)
    scripts = dict(entry_points["console_scripts"]) if entry_points.has_section("console_scripts") else {}
    plugins = dict(entry_points[ENTRY_POINT_GROUP]) if entry_points.has_section(ENTRY_POINT_GROUP) else {}
    if package == "core":
        assert scripts.get("bramley") == "bramley.core.cli:main", f"core wheel lacks the `bramley` script: {scripts}"
        assert not plugins, "core must not register itself as a method"
    else:
        assert scripts.get(f"bramley-{package}") == f"bramley.{module}.cli:main", f"console scripts: {scripts}"
        assert plugins == {package: f"bramley.{module}.cli:main"}, f"[{ENTRY_POINT_GROUP}] entry points: {plugins}"


# ------------------------------------------------------------------------------------------- fresh virtualenv

# Runs inside the fresh virtualenv: one interpreter (one torch import) checks where bramley is imported from, which
# bramley distributions are installed, and the output of `bramley list` and `bramley <method> --help` via cli.main.
PROBE = """
import contextlib, importlib, importlib.metadata as md, io, json, sys
from bramley.core.cli import main

def call(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}

module, method = sys.argv[1], sys.argv[2]
report = {
    "file": importlib.import_module("bramley." + module).__file__,
    "dists": sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].startswith("bramley")),
    "list": call(["list"]),
    "help": call([] if module == "core" else [method, "--help"]),
}
from bramley.core.registry import list_models
report["models"] = list_models(package=module)
print(json.dumps(report))
"""


class FreshEnv:
    """A virtualenv outside the checkout, driven with `uv pip`."""

    def __init__(self, path: Path, workdir: Path):
        self.path, self.workdir, self.uv = path, workdir, _uv()
        self.env = _clean_env(path)

    def uv_pip(self, *args: str) -> subprocess.CompletedProcess:
        return _run([self.uv, "pip", *args, "--python", str(self.path / "bin" / "python")], self.workdir, _clean_env())

    def install_locked_dependencies(self, package: str) -> None:
        """Third-party dependencies of ``package`` at the versions pinned in uv.lock (offline-capable via the cache)."""
        lock = self.workdir / f"pylock.{package}.toml"
        export = [self.uv, "export", "--project", str(ROOT), "--package", _dist(package), "--frozen", "--no-dev"]
        _run([*export, "--no-emit-workspace", "--format", "pylock.toml", "-o", str(lock)], ROOT, _clean_env())
        self.uv_pip("install", "--quiet", "-r", str(lock))

    def freeze(self) -> set[str]:
        return set(self.uv_pip("freeze").stdout.splitlines())

    def popen(self, *cmd: str) -> subprocess.Popen:
        exe = str(self.path / "bin" / cmd[0])
        return subprocess.Popen(
            [exe, *cmd[1:]], cwd=self.workdir, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def probe_and_run(self, package: str, *script: str) -> tuple[dict, subprocess.CompletedProcess]:
        """Run PROBE for ``package`` and the console script ``script`` side by side (two cores, two torch imports)."""
        procs = [self.popen("python", "-c", PROBE, _module(package), package), self.popen(*script)]
        (probe_out, probe_err), (out, err) = (p.communicate() for p in procs)
        assert procs[0].returncode == 0, f"probe of bramley.{_module(package)} failed:\n{probe_out}\n{probe_err}"
        return json.loads(probe_out.strip().splitlines()[-1]), subprocess.CompletedProcess(
            script, procs[1].returncode, out, err
        )


@pytest.fixture(scope="session")
def core_env(tmp_path_factory, wheels) -> FreshEnv:
    """A fresh virtualenv with bramley-core's wheel and nothing else of bramley."""
    root = tmp_path_factory.mktemp("fresh")
    work = root / "work"
    work.mkdir()
    _run([_uv(), "venv", "--quiet", "--python", sys.executable, str(root / "venv")], work, _clean_env())
    env = FreshEnv(root / "venv", work)
    env.install_locked_dependencies("core")
    env.uv_pip("install", "--quiet", "--no-deps", str(wheels["core"]))
    env.uv_pip("check")
    return env


def test_core_alone_in_fresh_env(core_env):
    report, script = core_env.probe_and_run("core", "bramley", "reproduce", METHODS[0])
    assert report["dists"] == ["bramley-core"]
    assert Path(report["file"]).is_relative_to(core_env.path), f"bramley.core imported from {report['file']}"
    listed = report["list"]
    assert listed["code"] == 0 and "(none" in listed["out"] and not listed["err"], listed
    assert report["help"]["code"] == 0 and "usage: bramley" in report["help"]["out"], report["help"]
    # the real console script, with a method that is not installed: a clear message, not a traceback
    assert script.returncode != 0, script
    assert f"unknown method {METHODS[0]!r}" in script.stderr and f"pip install bramley-{METHODS[0]}" in script.stderr
    assert "Traceback" not in script.stderr, script.stderr


# Runs in the core-only virtualenv: none of core's optional distributions is there, every module of bramley.core
# but the extra-only ones imports, and an optional feature fails with the one-line message naming its extra.
CORE_ONLY_PROBE = """
import importlib, importlib.util, json, sys
from pathlib import Path
import bramley.core

optional = sys.argv[1].split(",")
root = Path(bramley.core.__file__).parent
modules = sorted(
    ".".join(("bramley", "core", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
    for p in root.rglob("*.py")
    if p.name != "__main__.py"
)
failures = {}
for module in modules:
    try:
        importlib.import_module(module)
    except ImportError as err:
        failures[module] = str(err)
try:
    from bramley.core.report import figure

    with figure("plot.png"):
        pass
    figure_error = None
except ImportError as err:
    figure_error = str(err)
print(json.dumps({
    "installed": [m for m in optional if importlib.util.find_spec(m) is not None],
    "modules": modules,
    "failures": failures,
    "figure_error": figure_error,
}))
"""


def test_core_alone_needs_no_extra(core_env):
    """core's required dependencies alone: every runtime module imports; optional features name their extra."""
    optional = ["torchvision", "timm", "sklearn", "matplotlib", "PIL", "onnx", "onnxruntime"]
    extra_only = {"bramley.core.data.folder": "vision"}
    proc = core_env.popen("python", "-c", CORE_ONLY_PROBE, ",".join(optional))
    out, err = proc.communicate()
    assert proc.returncode == 0, f"core-only probe failed:\n{out}\n{err}"
    report = json.loads(out.strip().splitlines()[-1])
    assert not report["installed"], f"core's required dependencies pull in optional ones: {report['installed']}"
    runtime = ["bramley.core", *(f"bramley.core.{m}" for m in ("registry", "checkpoint", "config", "cli", "train"))]
    runtime += [f"bramley.core.{m}" for m in ("ops", "packing", "layers", "data", "report", "features")]
    assert set(runtime) <= set(report["modules"]), f"modules of the core wheel: {report['modules']}"
    assert set(report["failures"]) == set(extra_only), f"imports that fail with core alone: {report['failures']}"
    for module, extra in extra_only.items():
        assert f"pip install 'bramley-core[{extra}]'" in report["failures"][module], report["failures"][module]
    assert report["figure_error"] == (
        "bramley.core.report.figure needs matplotlib (not installed): pip install 'bramley-core[plot]'"
    )


@pytest.mark.parametrize("package", METHODS)
def test_method_alone_with_core(package, core_env, wheels):
    dist, module = _dist(package), _module(package)
    baseline = core_env.freeze()
    try:
        core_env.install_locked_dependencies(package)
        needed = _method_dependencies(package)
        core_env.uv_pip("install", "--quiet", "--no-deps", str(wheels[package]), *(str(wheels[p]) for p in needed))
        core_env.uv_pip("check")  # every Requires-Dist of core and of the method is satisfied
        installed = {line.split("==")[0].split(" @ ")[0].lower() for line in core_env.freeze()}
        unwanted = sorted(NOT_INSTALLED_WITH.get(package, set()) & installed)
        assert not unwanted, f"{dist} installs {unwanted}: a dependency (or a core extra) it does not need"

        report, own_help = core_env.probe_and_run(package, f"bramley-{package}", "--help")
        expected = ["bramley-core", dist, *(_dist(p) for p in needed)]
        assert report["dists"] == sorted(expected), f"installed: {report['dists']}"
        assert Path(report["file"]).is_relative_to(core_env.path), f"bramley.{module} imported from {report['file']}"
        assert own_help.returncode == 0 and f"usage: bramley-{package}" in own_help.stdout, own_help
        umbrella = report["help"]
        assert umbrella["code"] == 0 and "usage:" in umbrella["out"], umbrella
        listed = report["list"]
        assert listed["code"] == 0 and "failed to load" not in listed["err"], listed
        methods_part = listed["out"].split("Models")[0]
        assert f"  {package} " in methods_part and dist in methods_part, listed["out"]
        importlib.import_module(f"bramley.{module}.cli")  # in the workspace: the same import registers the same models
        assert report["models"] == list_models(package=module), "the wheel registers other models than the source"
    finally:
        extra = sorted(core_env.freeze() - baseline)
        if extra:
            core_env.uv_pip("uninstall", "--quiet", *(line.split("==")[0].split(" @ ")[0] for line in extra))
    assert core_env.freeze() == baseline, "uninstalling the method did not restore the core-only environment"


# ------------------------------------------------------------------------------------------------ without uv
def _readme_pip_commands() -> list[str]:
    """The commands of the root README's "One method, without uv" block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## One method, without uv", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_readme_installs_one_method_with_plain_pip(tmp_path):
    """pip (no uv) builds core's and the method's wheels from the clone and resolves all their dependencies.

    A dry run: installing torch for real would download the CUDA build (GBs); the uv-based tests above install every
    method wheel for real. The CPU-index line cannot run here (download.pytorch.org is not reachable from CI); its
    form is checked.
    """
    commands = _readme_pip_commands()
    assert commands[0] == "python -m venv .venv && . .venv/bin/activate"
    assert commands[1] == "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert commands[3] == "bramley-mrl --help"
    install = commands[2].split()
    assert install == ["pip", "install", "./packages/core", "./packages/mrl"]
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, _clean_env())
    report = tmp_path / "report.json"
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
    _run([*pip, *install[1:], "--dry-run", "--report", str(report)], ROOT, _clean_env(venv))
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"bramley-core", "bramley-mrl", "torch", "safetensors", "timm"} <= names, sorted(names)
    assert not {n for n in names if n.startswith("bramley-")} - {"bramley-core", "bramley-mrl"}, "one method only"
