"""tools/bench_attention.py runs end to end on CPU (--cpu-smoke) and writes JSON + the BENCHMARKS.md sections."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


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


def _readme_blocks():
    readme = (ROOT / "packages" / "core" / "README.md").read_text()
    section = readme.split("## Ops and packing", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(python|bash)\n(.*?)```", section, flags=re.S)


def test_readme_ops_python_block_runs():
    blocks = _readme_blocks()
    assert [kind for kind, _ in blocks] == ["python", "bash"]
    exec(compile(blocks[0][1], "README-ops", "exec"), {})


def test_readme_bench_command_cpu_smoke_writes_json_and_markdown(tmp_path):
    """The README's benchmark command, run in-process (markdown redirected to tmp_path), plus a JSON file."""
    bench = _load_bench()
    command = shlex.split(_readme_blocks()[1][1].strip())
    assert command[:4] == ["uv", "run", "python", "tools/bench_attention.py"] and "--cpu-smoke" in command
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# t\n<!-- bench_attention:packing:start -->\nold\n<!-- bench_attention:packing:end -->\ntail\n")
    args = [str(md) if a == "/tmp/bench_attention.md" else a for a in command[4:]]
    out = tmp_path / "r.json"
    bench.main([*args, "--json", str(out)])
    results = json.loads(out.read_text())
    ours = [r for r in results["attention"] if r["method"].startswith("bramley")]
    assert len(ours) == 2 and all(isinstance(r["fwd+bwd TFLOP/s"], float) for r in ours)
    assert any(r["method"].startswith("SDPA dense") for r in results["attention"])
    assert 0.9 < results["packing"]["bfd_fill_ratio"] <= 1.0
    text = md.read_text()
    assert "old" not in text and "tail" in text and "bfd_docs_per_s" in text and "bramley (reference)" in text
