"""Benchmarks (pytest-benchmark; disabled by default in the workspace config, run with --benchmark-enable)."""

import pytest

from bramley.mrl.bench import DEFAULT_FUNNEL, PAPER_FUNNEL, run_benchmark, synthetic_mrl_data
from bramley.mrl.retrieval import MatryoshkaIndex


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
        num_database=3000, num_queries=16, dim=256, num_classes=50, funnels=[DEFAULT_FUNNEL, PAPER_FUNNEL]
    )
    assert out["exact"]["top1"] > 50  # percent
    assert [f["rerank_dims"][-1] for f in out["funnels"]] == [256, 256]  # clamped to the data dim
    for f in out["funnels"]:
        assert f["speedup"] > 0 and 0 <= f["recall@10_vs_exact"] <= 1
        assert f["mflops_per_query"] < out["exact"]["mflops_per_query"]
