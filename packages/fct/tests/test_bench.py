"""Benchmarks (pytest-benchmark; run with `--benchmark-enable` for timings, otherwise each runs once as a test).

What FCT exists for: backfilling a gallery with the transformation instead of re-embedding every image with the new
model. Compare `test_bench_backfill_transformation` (paper-size h: 128-d old/new/side, inner 2048) with
`test_bench_reembed_images` (a ResNet-18 new model on 64 px images; the paper's ResNet-50 at 224 px costs far more)
per item, measured in the same run.
"""

import torch

import bramley.fct  # noqa: F401  (registers the fct models)
from bramley.core.registry import create_model

BATCH = 32


def test_bench_backfill_transformation(benchmark):
    h = create_model("fct_transformation", old_dim=128, new_dim=128, side_info_dim=128, inner_dim=2048).eval()
    old, side = torch.randn(BATCH, 128), torch.randn(BATCH, 128)
    with torch.no_grad():
        out = benchmark(h, old, side)
    assert out.shape == (BATCH, 128)


def test_bench_reembed_images(benchmark):
    new = create_model("fct_resnet18", embedding_dim=128, num_classes=1000).eval()
    images = torch.randn(BATCH, 3, 64, 64)
    with torch.no_grad():
        out = benchmark(new.embed, images)
    assert out.shape == (BATCH, 128)
