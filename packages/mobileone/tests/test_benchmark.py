"""CPU latency benchmark (pytest-benchmark): fused bramley vs unfused vs timm's fused model of the same variant.

``uv run pytest packages/mobileone/tests/test_benchmark.py --benchmark-enable`` times MobileOne-S0 at 224 px, batch 1
and 32, and stores the same-process ratios ``fused / unfused`` and ``fused / timm_fused`` in ``extra_info``. With
benchmarks disabled (the default in this repo) the same code runs once at a tiny size, as a smoke test.
"""

from __future__ import annotations

import pytest
import torch

from bramley.mobileone.profile import benchmark_variant


@pytest.mark.parametrize("batch", [1, 32])
def test_fused_latency_vs_unfused_and_timm(benchmark, batch):
    from bramley.mobileone import build_mobileone, reparameterize

    full = not benchmark.disabled
    size, batch = (224, batch) if full else (32, min(batch, 2))
    (row,) = benchmark_variant(
        "s0", (batch,), size, iters=10 if full else 1, warmup=2 if full else 0, rounds=3 if full else 1
    )
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "variant"})
    assert row["fused_vs_unfused"] > 0 and row["fused_vs_timm"] > 0

    fused = reparameterize(build_mobileone("s0").eval())
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        out = benchmark(fused, x)
    assert out.shape == (batch, 1000)
