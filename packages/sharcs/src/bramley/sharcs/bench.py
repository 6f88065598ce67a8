"""Benchmark: routed batched inference against the full-width network on the same inputs, in one process.

Both peers are the same trained model: the full-width network (``forward_width(x, 1.0)``, no router) and SHARCS
(``predict(x)``: stem, router, one batch per predicted width). Rounds are interleaved, the order alternating each
round; the figure is the median over rounds of the per-round throughput ratio, with its interquartile range.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from bramley.core.bench import interleaved_rounds, summary

from .model import SharcsModel

__all__ = ["run_benchmark"]


@torch.inference_mode()
def run_benchmark(
    model: SharcsModel,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 256,
    rounds: int = 11,
    repeats: int = 3,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Samples/s of routed batched inference vs the full-width network on ``images`` (in batches of
    ``batch_size``), and both accuracies when ``labels`` are given.

    Returns the per-peer median samples/s, the median / IQR / range of the per-round speedup, the routed width
    shares and mean width, and top-1 of both peers.
    """
    model = model.eval()
    batches = list(images.split(batch_size))
    routed = lambda: [model.predict(b, threshold) for b in batches]  # noqa: E731
    full = lambda: [model.forward_width(b, 1.0) for b in batches]  # noqa: E731
    for fn in (routed, full):  # warm-up: allocator, kernels, caches
        fn()
    times = interleaved_rounds({"routed": routed, "full": full}, rounds, repeats=repeats)
    n = images.shape[0]
    speedup = summary([f / s for f, s in zip(times["full"], times["routed"])])
    outputs = [model.predict(b, threshold) for b in batches]
    index = torch.cat([i for _, i in outputs])
    result: dict[str, Any] = {
        "samples": n,
        "batch_size": batch_size,
        "rounds": rounds,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "full_samples_per_s": n / statistics.median(times["full"]),
        "routed_samples_per_s": n / statistics.median(times["routed"]),
        "speedup_median": speedup["median"],
        "speedup_iqr": [speedup["q1"], speedup["q3"]],
        "speedup_range": [speedup["min"], speedup["max"]],
        "mean_width": float(torch.tensor(model.widths)[index].mean()),
        "share": {f"{w:g}": float((index == i).float().mean()) for i, w in enumerate(model.widths)},
    }
    if labels is not None:
        routed_logits = torch.cat([logits for logits, _ in outputs])
        full_logits = torch.cat(full())
        result["routed_top1"] = 100.0 * float((routed_logits.argmax(-1) == labels).float().mean())
        result["full_top1"] = 100.0 * float((full_logits.argmax(-1) == labels).float().mean())
    return result
