#!/usr/bin/env bash
# timm's own tests/test_models.py on bramley's timm-registered models (issue 24), timm's assertions unchanged.
# Fetches the tests of the installed timm version from its PyPI source distribution into a temporary folder
# (nothing of timm's is kept in this repository), then runs them with this folder's bramley_conftest.py as conftest.py, which registers
# bramley's models and restricts timm's model lists to them.
# Usage, from the repository root after `uv sync`: bash tools/timm_suite/run.sh [pytest args, e.g. -k forward]
# About 20 minutes on 2 CPU cores (165 tests: 11 functions x 15 models).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="$(cd "$here/../.." && pwd)/.venv/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" - "$work" <<'PY'
import io, re, sys, tarfile, urllib.request
import timm
index = urllib.request.urlopen("https://pypi.org/simple/timm/").read().decode()
name = re.escape(f"timm-{timm.__version__}.tar.gz")
[url] = {m.split("#")[0] for m in re.findall(rf'href="([^"]*/{name}[^"]*)"', index)}
data = urllib.request.urlopen(url).read()
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    members = [m for m in tar.getmembers() if "/tests/" in m.name and m.isfile()]
    tar.extractall(sys.argv[1], members=members, filter="data")
PY
root="$(ls -d "$work"/timm-*)"
cp "$here/bramley_conftest.py" "$root/conftest.py"
cp "$here/pytest.ini" "$root/"
cd "$root"
"$python" -m pytest -p no:cacheprovider -c pytest.ini tests/test_models.py -q -rfEs "$@"
