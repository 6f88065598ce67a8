"""tools/bench_attention.py and tools/gpu_check.sh run end to end on CPU (tiny / dry modes); no timed assertions."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
GPU_CHECK = ROOT / "tools" / "gpu_check.sh"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "tools" / "bench_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_useful_flops_and_lengths():
    bench = _load_bench()
    assert bench.useful_flops([10, 20], heads=2, head_dim=8, causal=False, backward=False) == 4 * 500 * 16
    assert bench.useful_flops([10], 1, 1, causal=True, backward=True) == 4 * 100 / 2 * 3.5
    lengths = bench.doc_lengths(65_536, 128, 8192, seed=0)
    assert sum(lengths) == 65_536 and max(lengths) <= 8192 and min(lengths[:-1]) >= 128


def test_auto_table_picks_the_fastest_backend_per_case():
    bench = _load_bench()
    rows = [
        {"method": "bramley (triton)", "head_dim": 64, "causal": True, "fwd+bwd ms": 2.0},
        {"method": "bramley (flash)", "head_dim": 64, "causal": True, "fwd+bwd ms": 1.5},
        {"method": "bramley (flex)", "head_dim": 64, "causal": True, "fwd+bwd TFLOP/s": "failed: x"},
        {"method": "varlen_attn", "head_dim": 64, "causal": False, "fwd+bwd ms": 0.1},
        {"method": "bramley (triton)", "head_dim": 128, "causal": False, "fwd+bwd ms": 3.0},
    ]
    assert bench.auto_table(rows, "sm90") == {"sm90 bfloat16 d128 full": "triton", "sm90 bfloat16 d64 causal": "flash"}


def _readme_blocks():
    readme = (ROOT / "packages" / "core" / "README.md").read_text()
    section = readme.split("## Ops and packing", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.S)


def test_readme_ops_python_block_runs():
    blocks = _readme_blocks()
    assert [kind for kind, _ in blocks] == ["python", "bash"]
    exec(compile(blocks[0][1], "README-ops", "exec"), {})


def test_readme_bench_command_cpu_smoke_writes_json_and_markdown(tmp_path):
    """The README's benchmark command (tiny mode), run in-process with its markdown redirected to tmp_path."""
    bench = _load_bench()
    command = shlex.split(_readme_blocks()[1][1].strip().splitlines()[-1])
    assert command[:4] == ["uv", "run", "python", "tools/bench_attention.py"] and "--cpu-smoke" in command
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# t\n<!-- bench_attention:packing:start -->\nold\n<!-- bench_attention:packing:end -->\ntail\n")
    args = [str(md) if a == "/tmp/bench_attention.md" else a for a in command[4:]]
    out = tmp_path / "r.json"
    bench.main([*args, "--json", str(out)])
    results = json.loads(out.read_text())
    rows = results["cpu_attention"]
    assert {r["spread"] for r in rows} == {"none (8 x 32)", "wide [4, 128]"} and {r["causal"] for r in rows} == {
        True, False,
    }  # fmt: skip
    for row in rows:
        for key in ("fwd SDPA loop / bramley", "fwd+bwd SDPA padded / bramley"):
            assert re.fullmatch(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", row[key])
    assert 0.9 < results["packing"]["bfd_fill_ratio"] <= 1.0
    assert results["environment"]["torch"] == torch.__version__ and "load_average" in results["environment"]
    text = md.read_text()
    assert "old" not in text and "tail" in text and "bfd_docs_per_s" in text
    threads = results["environment"]["cpu_threads"]
    assert f"<!-- bench_attention:cpu-attention-{threads}-thread" in text and "SDPA loop / bramley" in text
    bench.main([*args, "--attention-only", "--busy-cores", "1"])  # beside a spinning process: a table of its own
    marker = f"<!-- bench_attention:cpu-attention-{threads}-thread{'s' if threads > 1 else ''}-1-busy:start -->"
    busy = md.read_text().split(marker)[1]
    assert "1 spinning process(es) alongside" in busy.split(":end -->")[0]


def _gpu_check(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, cwd=ROOT, **kwargs)


def test_gpu_check_arguments_and_refusal_without_cuda(tmp_path):
    assert "--dry-run" in _gpu_check("--help").stdout
    bad = _gpu_check("--bogus")
    assert bad.returncode == 2 and "unknown argument '--bogus'" in bad.stderr
    assert _gpu_check("--out").returncode == 2
    missing = _gpu_check("--python", str(tmp_path / "no-python"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be observed")
    refused = _gpu_check("--python", sys.executable, "--out", str(tmp_path / "out"))
    assert refused.returncode == 3 and "no CUDA device" in refused.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_dry_run_runs_its_python_parts(tmp_path):
    """--dry-run: the independent varlen check and the benchmark run on CPU at tiny sizes, into <= 8 files."""
    out = tmp_path / "out"
    done = _gpu_check("--dry-run", "--python", sys.executable, "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"env.txt", "check.json", "bench.json", "BENCHMARKS.md"} <= set(files)
    check = json.loads((out / "check.json").read_text())
    assert check["failed"] == 0 and {r["backend"] for r in check["varlen_check"]} == {"sdpa", "reference"}
    assert "cpu_attention" in json.loads((out / "bench.json").read_text())
