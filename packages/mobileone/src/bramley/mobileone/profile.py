"""Model size, compute and latency: parameter counts, multiply-accumulates, and the latency benchmark (fused vs
timm's fused vs unfused, interleaved rounds, per-round ratios)."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from bramley.core.bench import interleaved_rounds, summary

__all__ = ["benchmark_variant", "count_macs", "count_params", "measure_latency", "ratio_stats"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int | tuple[int, int] = 224, in_chans: int | None = None) -> int:
    """Multiply-accumulates of one forward pass on a single image.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; one MAC is
    two FLOPs). Element-wise work (BatchNorm, activations, SE gating, branch sums) is not counted, the usual
    convention of the papers' "FLOPs" columns.
    """
    from torch.utils.flop_counter import FlopCounterMode

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    chans = in_chans or getattr(model, "in_chans", 3)
    param = next(model.parameters())
    x = torch.zeros(1, chans, h, w, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@torch.inference_mode()
def measure_latency(model: nn.Module, x: torch.Tensor, warmup: int = 3, iters: int = 10) -> float:
    """Median wall-clock seconds of ``model(x)`` (eval mode, inference mode) over ``iters`` runs after ``warmup``,
    on ``x``'s device (waiting for a GPU's queued work around each run).

    Only meaningful as a ratio against another model timed in the same process under the same load.
    """
    from bramley.core.train.distributed import synchronize

    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    model.eval()
    times = interleaved_rounds({"model": partial(model, x)}, iters, warmup=warmup, sync=partial(synchronize, x.device))
    return statistics.median(times["model"])


#: The contenders of :func:`benchmark_variant`, in the order of the first round (each round starts one later).
#: ``fused_nchw`` / ``timm_fused_nchw`` (the fused models in the default NCHW layout) only run with ``channels_last``.
CONTENDERS = ("fused", "fused_nchw", "timm_fused", "timm_fused_nchw", "unfused")
NCHW_TWINS = {"fused_nchw": "fused", "timm_fused_nchw": "timm_fused"}


def ratio_stats(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles and range over rounds of the per-round ratio ``numerator[r] / denominator[r]``.

    With times as arguments, ``ratio_stats(baseline, ours)`` is our speed relative to the baseline (> 1: faster).
    :func:`bramley.core.bench.summary` of the ratios, and the ratios under ``rounds``.
    """
    if len(numerator) != len(denominator):
        raise ValueError(f"need one time per round on both sides, got {len(numerator)} and {len(denominator)}")
    ratios = [a / b for a, b in zip(numerator, denominator)]
    return {**summary(ratios), "rounds": ratios}


def benchmark_variant(
    variant: str,
    batch_sizes: Sequence[int] = (1, 16),
    image_size: int = 224,
    iters: int = 1,
    warmup: int = 1,
    include_timm: bool = True,
    threads: int | None = None,
    rounds: int = 15,
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> list[dict[str, Any]]:
    """Latency of one variant's fused model against timm's fused model and its own unfused form, on the same random
    weights, in interleaved rounds (:func:`bramley.core.bench.interleaved_rounds`, ``iters`` calls per contender and
    round, their mean kept, after ``warmup`` untimed rounds) on ``device``.

    One row per batch size: the median per-round milliseconds of each contender, and two speed ratios computed round
    by round, each as median, quartiles and range: ``speed_vs_timm`` = timm's fused time / bramley's fused time
    (>= 1: bramley's fused model is no slower than timm's) and ``fusion_speedup`` = unfused time / fused time. Also
    ``max_abs_diff_vs_timm``, the largest logit difference between the two fused models (they compute the same
    function), and the per-round milliseconds under ``rounds_ms``. ``threads`` sets torch's CPU threads for the run
    and restores them afterwards. ``channels_last`` puts every contender's weights in that memory format (the
    input stays NCHW, as a data loader delivers it; the first convolution converts it), so ``speed_vs_timm`` compares
    the models in one layout, and adds both fused models in the default NCHW layout as contenders: ``layout_speedup``
    = bramley's NCHW time / its channels_last time (what the image ``eval`` verb gains by
    :func:`bramley.core.layers.channels_last_inference`), with ``max_rel_diff_vs_nchw`` between the two layouts'
    logits (relative to the largest), and ``speed_vs_timm_nchw`` = timm's NCHW time / bramley's channels_last time
    (against timm's model run as it comes).
    """
    from bramley.core.cli import torch_threads
    from bramley.core.layers import reparameterize_model
    from bramley.core.train.distributed import synchronize

    from .convert import bramley_to_timm
    from .model import build_mobileone

    variant = variant.removeprefix("mobileone_")
    with torch_threads(threads):
        unfused = build_mobileone(variant).eval()
        models = {"fused": reparameterize_model(unfused)}
        if include_timm:
            import timm
            from timm.utils import reparameterize_model as timm_reparameterize

            theirs = timm.create_model(f"mobileone_{variant}", pretrained=False)
            theirs.load_state_dict(bramley_to_timm(unfused.state_dict()))
            models["timm_fused"] = timm_reparameterize(theirs.eval())
        models["unfused"] = unfused
        if channels_last:
            models |= {twin: copy.deepcopy(models[name]) for twin, name in NCHW_TWINS.items() if name in models}
        layout = torch.channels_last if channels_last else torch.contiguous_format
        models = {
            name: models[name].to(device, memory_format=torch.contiguous_format if name in NCHW_TWINS else layout)
            for name in CONTENDERS
            if name in models
        }
        sync = partial(synchronize, torch.device(device))
        rows = []
        for batch in batch_sizes:
            x = torch.randn(batch, 3, image_size, image_size, device=device)
            with torch.inference_mode():
                outputs = {name: m(x) for name, m in models.items()}
                contenders = {name: partial(m, x) for name, m in models.items()}
                seconds = interleaved_rounds(contenders, rounds, repeats=iters, warmup=warmup, sync=sync)
            ms = {name: [1e3 * t for t in times] for name, times in seconds.items()}
            row: dict[str, Any] = {
                "model": f"mobileone_{variant}",
                "batch": batch,
                "threads": torch.get_num_threads(),
                "layout": "channels_last" if channels_last else "NCHW",
                "image_size": image_size,
                "rounds": rounds,
                "iters": iters,
                **{f"{name}_ms": statistics.median(times) for name, times in ms.items()},
            }
            if include_timm:
                row["speed_vs_timm"] = ratio_stats(ms["timm_fused"], ms["fused"])
                row["max_abs_diff_vs_timm"] = float((outputs["fused"] - outputs["timm_fused"]).abs().max())
                if channels_last:
                    row["speed_vs_timm_nchw"] = ratio_stats(ms["timm_fused_nchw"], ms["fused"])
            if channels_last:
                row["layout_speedup"] = ratio_stats(ms["fused_nchw"], ms["fused"])
                diff = (outputs["fused"] - outputs["fused_nchw"]).abs().max() / outputs["fused_nchw"].abs().max()
                row["max_rel_diff_vs_nchw"] = float(diff)  # logits of random weights reach 1e5
            row["fusion_speedup"] = ratio_stats(ms["unfused"], ms["fused"])
            row["rounds_ms"] = ms
            rows.append(row)
        return rows


def format_ratio(stats: Mapping[str, float]) -> str:
    """``median (IQR q1-q3; range min-max)`` of :func:`ratio_stats`, for tables."""
    return (
        f"{stats['median']:.2f} (IQR {stats['q1']:.2f}-{stats['q3']:.2f}; range {stats['min']:.2f}-{stats['max']:.2f})"
    )


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The printed / markdown columns of :func:`benchmark_variant` rows (milliseconds are per-round medians)."""
    out = []
    for row in rows:
        line = {
            "model": row["model"],
            "batch": row["batch"],
            "threads": row["threads"],
            "unfused ms": f"{row['unfused_ms']:.1f}",
            "fused ms": f"{row['fused_ms']:.1f}",
        }
        if "speed_vs_timm" in row:
            line["timm fused ms"] = f"{row['timm_fused_ms']:.1f}"
            line["fused speed vs timm fused"] = format_ratio(row["speed_vs_timm"])
            line["max logit diff vs timm"] = f"{row['max_abs_diff_vs_timm']:.1e}"
        if "layout_speedup" in row:
            line["fused NCHW ms"] = f"{row['fused_nchw_ms']:.1f}"
            line["channels_last speed-up (fused NCHW / fused)"] = format_ratio(row["layout_speedup"])
            line["max logit diff vs NCHW (relative)"] = f"{row['max_rel_diff_vs_nchw']:.1e}"
        if "speed_vs_timm_nchw" in row:
            line["timm fused NCHW ms"] = f"{row['timm_fused_nchw_ms']:.1f}"
            line["fused speed vs timm fused NCHW"] = format_ratio(row["speed_vs_timm_nchw"])
        line["fusion speed-up"] = format_ratio(row["fusion_speedup"])
        out.append(line)
    return out
