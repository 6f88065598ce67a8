"""The latency benchmark: interleaved rounds, per-round ratios, and the pytest-benchmark timing of the fused model.

``uv run pytest packages/mobileone/tests/test_benchmark.py --benchmark-enable`` times MobileOne-S0 at 224 px, batch 1
and 16, and stores the per-round ratios ``speed_vs_timm`` and ``fusion_speedup`` in ``extra_info``. With benchmarks
disabled (the default in this repo) the same code runs once at a tiny size, as a smoke test. No test asserts a speed.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from bramley.core.bench import interleaved_rounds
from bramley.mobileone import profile
from bramley.mobileone.profile import CONTENDERS, benchmark_variant, measure_latency, ratio_stats, table_rows


def test_benchmark_variant_times_in_core_interleaved_rounds(monkeypatch):
    """The contenders run in core's rotating rounds, each ``iters`` times back to back, after ``warmup`` rounds."""
    calls = []

    def spy(contenders, rounds, **kwargs):
        calls.append((list(contenders), rounds, kwargs["repeats"], kwargs["warmup"]))
        return interleaved_rounds(contenders, rounds, **kwargs)

    monkeypatch.setattr(profile, "interleaved_rounds", spy)
    (row,) = benchmark_variant("s0", (1,), image_size=32, rounds=2, iters=3, warmup=1, include_timm=False)
    assert calls == [(["fused", "unfused"], 2, 3, 1)]
    assert all(len(times) == 2 for times in row["rounds_ms"].values())


@pytest.mark.parametrize("rounds, iters, warmup", [(0, 1, 0), (1, 0, 0), (1, 1, -1)])
def test_benchmark_variant_refuses_bad_counts(rounds, iters, warmup):
    with pytest.raises(ValueError, match=">= 1"):
        benchmark_variant("s0", (1,), image_size=32, rounds=rounds, iters=iters, warmup=warmup, include_timm=False)


def test_measure_latency_times_the_model():
    assert measure_latency(torch.nn.Identity(), torch.zeros(1), warmup=1, iters=3) >= 0
    with pytest.raises(ValueError, match="iters must be >= 1"):
        measure_latency(torch.nn.Identity(), torch.zeros(1), iters=0)


def test_ratio_stats_are_per_round():
    slow, fast = [2.0, 4.0, 3.0, 10.0, 6.0], [1.0, 1.0, 3.0, 5.0, 2.0]
    stats = ratio_stats(slow, fast)
    assert stats["rounds"] == [2.0, 4.0, 1.0, 2.0, 3.0]  # round by round, not median(slow) / median(fast) = 2.0
    assert stats["median"] == 2.0 and (stats["min"], stats["max"]) == (1.0, 4.0)
    assert (stats["q1"], stats["q3"]) == (2.0, 3.0)
    assert ratio_stats([3.0], [2.0])["q1"] == ratio_stats([3.0], [2.0])["q3"] == 1.5
    with pytest.raises(ValueError, match="one time per round"):
        ratio_stats([1.0, 2.0], [1.0])


def test_benchmark_variant_rows_come_from_the_rounds():
    threads_before = torch.get_num_threads()
    rows = benchmark_variant("mobileone_s0", (1, 2), image_size=32, rounds=3, iters=1, warmup=0, threads=1)
    assert [(r["model"], r["batch"], r["threads"]) for r in rows] == [("mobileone_s0", 1, 1), ("mobileone_s0", 2, 1)]
    for row in rows:
        ms = row["rounds_ms"]
        assert list(ms) == ["fused", "timm_fused", "unfused"] and all(len(times) == 3 for times in ms.values())
        assert row["fused_ms"] == statistics.median(ms["fused"])
        assert row["speed_vs_timm"]["rounds"] == [t / f for t, f in zip(ms["timm_fused"], ms["fused"])]
        assert row["fusion_speedup"]["rounds"] == [u / f for u, f in zip(ms["unfused"], ms["fused"])]
        assert row["speed_vs_timm"]["min"] <= row["speed_vs_timm"]["median"] <= row["speed_vs_timm"]["max"]
        assert row["max_abs_diff_vs_timm"] < 1e-3  # the two fused models compute the same function
        assert row["layout"] == "NCHW"
    (line,) = table_rows(rows[:1])
    assert line["fused speed vs timm fused"].startswith(f"{rows[0]['speed_vs_timm']['median']:.2f} (IQR ")
    assert torch.get_num_threads() == threads_before  # the run's thread count is restored


def test_benchmark_variant_without_timm():
    (row,) = benchmark_variant("s0", (1,), image_size=32, rounds=2, iters=1, warmup=0, include_timm=False)
    assert "speed_vs_timm" not in row and list(row["rounds_ms"]) == ["fused", "unfused"]
    assert "fused speed vs timm fused" not in table_rows([row])[0]


def test_benchmark_variant_channels_last():
    (row,) = benchmark_variant("s0", (2,), image_size=32, rounds=2, iters=1, warmup=0, channels_last=True)
    assert row["layout"] == "channels_last" and row["max_abs_diff_vs_timm"] < 1e-3
    ms = row["rounds_ms"]
    assert list(ms) == list(CONTENDERS)  # both fused models also in their default layout
    assert row["speed_vs_timm_nchw"]["rounds"] == [t / f for t, f in zip(ms["timm_fused_nchw"], ms["fused"])]
    assert row["layout_speedup"]["rounds"] == [n / f for n, f in zip(ms["fused_nchw"], ms["fused"])]
    assert row["max_rel_diff_vs_nchw"] < 1e-5  # the same function, summed in another order
    line = table_rows([row])[0]
    assert line["fused speed vs timm fused NCHW"].startswith(f"{row['speed_vs_timm_nchw']['median']:.2f} (IQR ")
    assert line["channels_last speed-up (fused NCHW / fused)"].startswith(f"{row['layout_speedup']['median']:.2f}")


def test_benchmark_variant_runs_each_contender_in_its_layout(monkeypatch):
    """Each contender's convolutions run in its stated layout: channels_last, except the two NCHW twins."""
    seen = {}

    def record(contenders, *args, **kwargs):  # contenders: {name: partial(model, x)}; both models have a `stem`
        for name, call in contenders.items():
            out = call.func.stem(*call.args)
            seen[name] = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        return {name: [1.0] for name in contenders}

    monkeypatch.setattr(profile, "interleaved_rounds", record)
    benchmark_variant("s0", (2,), image_size=32, rounds=1, iters=1, warmup=0, channels_last=True)
    assert seen == {"fused": True, "fused_nchw": False, "timm_fused": True, "timm_fused_nchw": False, "unfused": True}


@pytest.mark.parametrize("batch", [1, 16])
def test_fused_latency_vs_unfused_and_timm(benchmark, batch):
    from bramley.mobileone import build_mobileone, reparameterize

    full = not benchmark.disabled
    size, batch = (224, batch) if full else (32, min(batch, 2))
    (row,) = benchmark_variant("s0", (batch,), size, iters=1, warmup=1 if full else 0, rounds=15 if full else 1)
    benchmark.extra_info.update({k: row[k] for k in ("batch", "threads", "speed_vs_timm", "fusion_speedup")})

    fused = reparameterize(build_mobileone("s0").eval())
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        out = benchmark(fused, x)
    assert out.shape == (batch, 1000)
