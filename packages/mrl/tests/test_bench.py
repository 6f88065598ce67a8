"""Benchmarks (pytest-benchmark; disabled by default in the workspace config, run with --benchmark-enable)."""

import re
from pathlib import Path

import pytest
import torch

from bramley.mrl.bench import DEFAULT_FUNNEL, PAPER_FUNNEL, main, run_benchmark, synthetic_mrl_data
from bramley.mrl.retrieval import MatryoshkaIndex, faiss_available

TINY = ["--num-database", "3000", "--num-queries", "16", "--dim", "256", "--num-classes", "50"]


@pytest.fixture(scope="module")
def small_index():
    db, _ = synthetic_mrl_data(20_000, dim=512, num_classes=100, seed=0)
    queries, _ = synthetic_mrl_data(64, dim=512, num_classes=100, seed=0)  # same class means
    return MatryoshkaIndex(db), queries


def test_bench_exact_search(benchmark, small_index):
    index, queries = small_index
    result = benchmark(index.search, queries, 10, 512)
    assert result.indices.shape == (64, 10)


def test_bench_funnel(benchmark, small_index):
    index, queries = small_index
    result = benchmark(index.funnel, queries, 32, [64, 128, 512], [200, 50, 10])
    exact = index.search(queries, 10)
    assert result.indices.shape == (64, 10)
    assert (result.indices[:, 0] == exact.indices[:, 0]).float().mean() > 0.8


def test_run_benchmark_reports_a_ratio_in_one_run():
    out = run_benchmark(
        num_database=3000, num_queries=16, dim=256, num_classes=50, funnels=[DEFAULT_FUNNEL, PAPER_FUNNEL], repeats=2
    )
    assert out["exact"]["top1"] > 50  # percent
    assert [f["rerank_dims"][-1] for f in out["funnels"]] == [256, 256]  # clamped to the data dim
    assert all(len(times) == 2 for times in out["seconds_per_round"].values())  # every contender, every round
    for f in out["funnels"]:
        assert f["speedup"] > 0 and 0 <= f["recall@10_vs_exact"] <= 1
        assert f["speedup_rounds"]["min"] <= f["speedup_rounds"]["median"] <= f["speedup_rounds"]["max"]
        assert f["mflops_per_query"] < out["exact"]["mflops_per_query"]
        if faiss_available():  # the FAISS peer runs the same cascade and finds the same neighbours
            assert f["same_as_peer"] == 1.0 and f["vs_peer"]["median"] > 0
            assert f["peer"]["top1"] == f["top1"] and "faiss" in out["versions"]


def test_bench_command_writes_its_table(tmp_path, capsys):
    """``python -m bramley.mrl.bench`` in a tiny mode: the table it prints is the one it writes between markers."""
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# t\n<!-- bench_mrl:torch-3000-1t:start -->\nold\n<!-- bench_mrl:torch-3000-1t:end -->\ntail\n")
    faiss = pytest.importorskip("faiss") if faiss_available() else None
    threads = torch.get_num_threads(), faiss.omp_get_max_threads() if faiss else None
    main([*TINY, "--rounds", "1", "--threads", "1", "--markdown", str(md)])
    assert (torch.get_num_threads(), faiss.omp_get_max_threads() if faiss else None) == threads, "both restored"
    text = md.read_text()
    assert "old" not in text and text.endswith("tail\n") and "1 thread," in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| search | queries/s | speed-up vs exact | vs its FAISS peer")
    assert len(table) == 1 + 1 + 2 * (2 if faiss_available() else 1)  # header, exact, funnels (+ peers)
    assert table[1] in capsys.readouterr().out


def _bench_rows(key: str) -> dict[str, list[str]]:
    """The cells of each row of the BENCHMARKS.md table written under ``key``, by search name."""
    text = (Path(__file__).resolve().parents[1] / "BENCHMARKS.md").read_text()
    block = text.split(f"<!-- bench_mrl:{key}:start -->")[1].split(f"<!-- bench_mrl:{key}:end -->")[0]
    rows = [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in block.splitlines()]
    return {r[0]: r[1:] for r in rows if len(r) > 1 and not r[0].startswith(("search", "---"))}


def _one_decimal(cell: str) -> str:
    """``13.69x (11.60-14.71)`` -> ``13.7x (11.6-14.7)``, as the README shows it."""
    median, low, high = map(float, re.findall(r"[\d.]+", cell))
    return f"{median:.1f}x ({low:.1f}-{high:.1f})"


def test_readme_benchmark_numbers_are_the_benchmarks_md_tables():
    """The README's retrieval table and verdict quote the BENCHMARKS.md tables (which their commands regenerate)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    big = _bench_rows("torch-1000000-1t")
    assert f"| exact, 2048-d | {float(big['exact 2048-d'][0]):.1f} |" in readme
    for name, cells in big.items():
        if name.startswith("bramley funnel"):
            speedup, vs_peer = _one_decimal(cells[1]), _one_decimal(cells[2])
            line = next(line for line in readme.splitlines() if f"funnel {name.split()[2]} ->" in line)
            assert f"{speedup}" in line and f"{vs_peer}" in line, (line, speedup, vs_peer)
    funnel_32 = "bramley funnel 32 -> [64, 128, 256, 2048] x [200, 100, 50, 10]"
    funnel_8 = "bramley funnel 8 -> [16, 32, 64, 128, 2048] x [200, 100, 50, 25, 10]"
    for key in ("torch-1000000-2t", "torch-1000000-2t-1busy"):  # 10x over exact with 2 threads, idle and contended
        assert _one_decimal(_bench_rows(key)[funnel_32][1]) in readme, key
    contended = _bench_rows("torch-200000-2t-1busy")  # against the FAISS funnel, one core taken
    assert f"{_one_decimal(contended[funnel_32][2])} / {_one_decimal(contended[funnel_8][2])}" in readme
