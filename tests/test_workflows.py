"""GitHub Actions workflows: they parse, fit together, use uv, and everything they reference exists.

No GitHub runner here, so this checks what can be checked locally: YAML structure, job/step/output references,
`bash -n` on every `run:` script, the paths and scripts each workflow names, and that the tag pattern, the CI matrix
and the test command agree with tools/release.py, tools/affected.py, README.md and .ci/run.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools import affected, release

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli comes with pytest
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(p.name for p in WORKFLOWS.glob("*.yml"))
PACKAGES = sorted(p.parent.name for p in ROOT.glob("packages/*/pyproject.toml"))
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")
REPO_PATH = re.compile(r"(?<![\w/.$-])((?:tools|tests|packages|shared|\.ci|\.github)/[\w./*-]*)")
PYTHON_TOOLS = re.compile(r"^\s*(python3?|pytest|pip3?|ruff)\b", re.MULTILINE)


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    if True in workflow:  # YAML 1.1 reads the key `on` as a boolean
        workflow["on"] = workflow.pop(True)
    return workflow


def steps(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_name, step


def run_scripts(workflow: dict) -> list[str]:
    return [step["run"] for _, step in steps(workflow) if "run" in step]


def job_runs(job: dict) -> str:
    return "\n".join(step.get("run", "") for step in job.get("steps", []))


def test_expected_workflows_exist():
    assert {"ci.yml", "release.yml", "gpu.yml"} <= set(FILES), FILES


@pytest.mark.parametrize("name", FILES)
def test_workflow_structure(name):
    workflow = load(name)
    assert workflow.get("name") and workflow.get("on") and workflow.get("jobs"), f"{name}: needs name, on and jobs"
    assert workflow.get("permissions") == {"contents": "read"}, f"{name}: default token must be read-only"
    jobs = workflow["jobs"]
    for job_name, job in jobs.items():
        where = f"{name}: job {job_name}"
        assert job.get("runs-on"), f"{where} has no runs-on"
        assert job.get("steps"), f"{where} has no steps"
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        assert set(needs) <= set(jobs), f"{where} needs unknown jobs {set(needs) - set(jobs)}"
        step_ids = {step["id"] for step in job["steps"] if "id" in step}
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{where}: a step needs exactly one of uses/run: {step}"
            if "uses" in step:
                action, _, ref = step["uses"].partition("@")
                assert ref, f"{where}: action {action} is not pinned to a version"
        text = yaml.safe_dump(job)
        for expression in EXPRESSION.findall(text):
            for other, output in re.findall(r"needs\.([\w-]+)\.outputs\.([\w-]+)", expression):
                assert other in needs, f"{where} reads needs.{other} without needing it"
                assert output in jobs[other].get("outputs", {}), f"{where}: job {other} has no output {output!r}"
            for step_id in re.findall(r"steps\.([\w-]+)\.", expression):
                assert step_id in step_ids, f"{where} reads steps.{step_id}, which is not a step id of this job"
        runs = job_runs(job)
        if "uv " in runs or "uvx " in runs:
            uses = [step.get("uses", "") for step in job["steps"]]
            first_run = next(i for i, step in enumerate(job["steps"]) if "run" in step)
            setup = [i for i, u in enumerate(uses) if u.startswith("astral-sh/setup-uv@")]
            assert setup and setup[0] < first_run, f"{where} runs uv before installing it with astral-sh/setup-uv"
            assert job.get("timeout-minutes"), f"{where} has no timeout-minutes"


@pytest.mark.parametrize("name", FILES)
def test_python_runs_through_uv(name):
    """Every Python tool is started with `uv run` / `uvx` (locked environment), never a bare python/pip/pytest."""
    for script in run_scripts(load(name)):
        bare = PYTHON_TOOLS.findall(script)
        assert not bare, f"{name}: run through uv instead of bare {bare}:\n{script}"
        for line in script.splitlines():
            if re.search(r"\buv (sync|run)\b", line) and "--no-project" not in line:
                assert "--locked" in line, f"{name}: `{line.strip()}` must use --locked (uv.lock is the truth)"


@pytest.mark.parametrize("name", FILES)
def test_run_scripts_are_valid_bash(name):
    for script in run_scripts(load(name)):
        plain = EXPRESSION.sub("EXPR", script)
        result = subprocess.run(["bash", "-n", "-c", plain], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}: bash syntax error {result.stderr}\n{script}"


@pytest.mark.parametrize("name", FILES)
def test_referenced_paths_exist(name):
    """Every repository path a workflow names exists (scripts, test files, `paths:` filters)."""
    workflow = load(name)
    texts = run_scripts(workflow)
    for trigger in ("push", "pull_request"):
        event = workflow["on"].get(trigger) if isinstance(workflow["on"], dict) else None
        texts += (event or {}).get("paths", [])
    missing = []
    for text in texts:
        for path in REPO_PATH.findall(text):
            path = path.split("${{")[0].rstrip("/")
            if "*" in path:
                if not list(ROOT.glob(path)):
                    missing.append(f"{path} (matches nothing)")
            elif not (ROOT / path).exists():
                missing.append(path)
    assert not missing, f"{name} references paths that do not exist: {missing}"


def test_ci_workflow():
    ci = load("ci.yml")
    on, jobs = ci["on"], ci["jobs"]
    assert on["push"]["branches"] == ["main"] and "pull_request" in on
    lint = job_runs(jobs["lint"])
    for command in ("uv lock --check", 'uvx "$ruff_pin" check .', 'uvx "$ruff_pin" format --check .'):
        assert command in lint, f"lint job lacks `{command}`"

    detect = jobs["affected"]
    assert detect["steps"][0]["with"]["fetch-depth"] == 0, "affected.py diffs against the base: full history needed"
    assert "tools/affected.py" in job_runs(detect) and "--json" in job_runs(detect)
    assert "packages" in detect["outputs"]

    test = jobs["test"]
    assert test["needs"] == "affected" and "packages != '[]'" in test["if"], "an empty matrix is an error on GitHub"
    assert test["strategy"]["matrix"]["package"] == "${{ fromJSON(needs.affected.outputs.packages) }}"
    assert "uv run --locked pytest packages/${{ matrix.package }}" in job_runs(test)
    # what affected.py prints is exactly a list of package folder names
    assert affected.affected_packages(["uv.lock"]) == PACKAGES

    cross, packaging = job_runs(jobs["cross-package"]), job_runs(jobs["packaging"])
    assert "uv run --locked pytest tests --ignore=tests/test_packaging.py" in cross
    assert "uv run --locked pytest tests/test_packaging.py" in packaging
    gate = jobs["ci-ok"]
    assert set(gate["needs"]) == set(jobs) - {"ci-ok"} and gate["if"] == "always()"


def test_release_workflow():
    workflow = load("release.yml")
    assert workflow["on"] == {"push": {"tags": ["bramley-*-v*"]}}
    build, publish = workflow["jobs"]["build"], workflow["jobs"]["publish"]
    runs = job_runs(build)
    assert "tools/release.py --check-tag" in runs and 'uv build --package "$DIST"' in runs
    assert publish["permissions"] == {"id-token": "write"}, "trusted publishing needs id-token: write on publish"
    uses = [step.get("uses", "") for step in publish["steps"]]
    assert any(u.startswith("pypa/gh-action-pypi-publish@") for u in uses)
    assert not any(u.startswith("actions/checkout@") for u in uses), "the job holding the OIDC token runs no repo code"
    assert "password" not in yaml.safe_dump(publish), "trusted publishing: no API token"
    # every package's current version is releasable: the tag release.py makes matches the trigger and checks out
    for package in PACKAGES:
        project = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]
        tag = f"{project['name']}-v{project['version']}"
        assert fnmatch.fnmatch(tag, workflow["on"]["push"]["tags"][0]), tag
        assert release.check_tag(tag) == {"package": package, "dist": project["name"], "version": project["version"]}


def test_gpu_workflow():
    workflow = load("gpu.yml")
    assert "pull_request" not in workflow["on"], "self-hosted runners must not run code from pull requests"
    job = workflow["jobs"]["gpu"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    runs = job_runs(job)
    assert "uv run --locked pytest -m gpu" in runs
    assert "uv run --locked python tools/bench_attention.py" in runs
    assert "torch.cuda.is_available()" in runs, "without a visible GPU every gpu test would be skipped, not run"
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("gpu:") for m in markers)


def test_ci_entry_point_runs_the_readme_test_command():
    script = ROOT / ".ci" / "run"
    assert script.stat().st_mode & 0o111, ".ci/run must be executable"
    commands = [line.strip() for line in script.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert commands[-1] == "uv run pytest", f".ci/run must end by running exactly `uv run pytest`, not {commands[-1]}"
    assert "command -v uv" in script.read_text(), ".ci/run must install uv when it is missing"
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^uv run pytest(\s+#.*)?$", readme, re.MULTILINE), "README's test command is `uv run pytest`"
