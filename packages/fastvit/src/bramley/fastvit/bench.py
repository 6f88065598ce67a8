"""CPU latency of a FastViT variant: unfused (train-time) vs fused (reparameterized) vs timm's fused model.

Every number is a median over repeated timed calls measured in one process, the models timed in interleaved rounds
(the order rotating every round), and the report gives ratios against the fused bramley model so that machine load
cancels out as far as possible.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from bramley.core.bench import interleaved_rounds
from bramley.core.registry import create_model

from .convert import bramley_to_timm
from .model import reparameterize

__all__ = ["bench_variant", "median_latency_ms"]


@torch.inference_mode()
def median_latency_ms(fn: Callable[[], Any], iters: int = 20, warmup: int = 3) -> float:
    """Median wall-clock milliseconds of ``fn()`` over ``iters`` calls after ``warmup`` untimed ones."""
    return 1e3 * statistics.median(interleaved_rounds({"fn": fn}, iters, warmup=warmup)["fn"])


def _interleaved(models: dict[str, nn.Module], x: torch.Tensor, iters: int, warmup: int) -> dict[str, float]:
    """Median latency (ms) per model, timed in interleaved rounds so that load drifts hit all of them alike."""
    with torch.inference_mode():
        seconds = interleaved_rounds({k: partial(m, x) for k, m in models.items()}, iters, warmup=warmup)
    return {k: 1e3 * statistics.median(times) for k, times in seconds.items()}


def bench_variant(
    name: str,
    image_size: int = 256,
    batch_size: int = 1,
    iters: int = 20,
    warmup: int = 3,
    with_timm: bool = True,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Latency (ms, median) of ``name`` unfused, fused, and timm's fused ``name`` loaded with the same weights.

    Returns a dict with the three latencies, ``speedup_fused_vs_unfused`` and ``timm_fused_over_bramley_fused``
    (> 1: timm is slower), and the max |difference| of the fused logits vs unfused / vs timm as a sanity check.
    """
    model = create_model(name, **model_kwargs).eval()
    fused = reparameterize(model)
    x = torch.randn(batch_size, model.in_chans, image_size, image_size)
    models = {"unfused": model, "fused": fused}
    if with_timm:
        import timm
        from timm.utils.model import reparameterize_model as timm_reparameterize

        ref = timm.create_model(name, **model_kwargs).eval()
        ref.load_state_dict(bramley_to_timm(model.state_dict()))
        models["timm_fused"] = timm_reparameterize(ref)
    lat = _interleaved(models, x, iters, warmup)
    with torch.inference_mode():
        out_fused = fused(x)
        result: dict[str, Any] = {
            "model": name,
            "image_size": image_size,
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            "unfused_ms": lat["unfused"],
            "fused_ms": lat["fused"],
            "speedup_fused_vs_unfused": lat["unfused"] / lat["fused"],
            "max_abs_diff_fused_vs_unfused": float((out_fused - model(x)).abs().max()),
        }
        if with_timm:
            result["timm_fused_ms"] = lat["timm_fused"]
            result["timm_fused_over_bramley_fused"] = lat["timm_fused"] / lat["fused"]
            result["max_abs_diff_vs_timm"] = float((out_fused - models["timm_fused"](x)).abs().max())
    return result
