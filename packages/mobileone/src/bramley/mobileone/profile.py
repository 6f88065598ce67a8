"""Model size, compute and latency: parameter counts, multiply-accumulates, fused-vs-unfused timing."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn

__all__ = ["count_macs", "count_params", "measure_latency"]


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
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(iters):
        synchronize(x.device)
        start = time.perf_counter()
        model(x)
        synchronize(x.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def benchmark_variant(
    variant: str,
    batch_sizes: tuple[int, ...] = (1, 32),
    image_size: int = 224,
    iters: int = 10,
    warmup: int = 3,
    include_timm: bool = True,
    threads: int | None = None,
    rounds: int = 3,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Latency of the unfused, fused and (optionally) timm-fused model of one variant, timed in one process on
    ``device``.

    Rows hold milliseconds and the ratios ``fused / unfused`` (< 1 means fusion helps) and ``fused / timm_fused``
    (<= 1 means bramley's fused model is no slower than timm's). The three models share the same random weights and
    are timed in ``rounds`` interleaved rounds; each keeps its best median.
    """
    from bramley.core.layers import reparameterize_model

    from .convert import bramley_to_timm
    from .model import build_mobileone

    if threads is not None:
        torch.set_num_threads(threads)
    unfused = build_mobileone(variant).eval()
    fused = reparameterize_model(unfused)
    models = {"unfused": unfused, "fused": fused}
    if include_timm:
        import timm
        from timm.utils import reparameterize_model as timm_reparameterize

        theirs = timm.create_model(f"mobileone_{variant.removeprefix('mobileone_')}", pretrained=False)
        theirs.load_state_dict(bramley_to_timm(unfused.state_dict()))
        models["timm_fused"] = timm_reparameterize(theirs.eval())
    models = {name: m.to(device) for name, m in models.items()}
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, 3, image_size, image_size, device=device)
        best = dict.fromkeys(models, float("inf"))
        for _ in range(rounds):  # interleaved rounds, best median of each: robust to load from other processes
            for name, m in models.items():
                best[name] = min(best[name], measure_latency(m, x, warmup=warmup, iters=iters))
        ms = {name: 1e3 * t for name, t in best.items()}
        row = {"variant": variant, "batch": batch, "image_size": image_size}
        row.update({f"{k}_ms": v for k, v in ms.items()})
        row["fused_vs_unfused"] = ms["fused"] / ms["unfused"]
        if "timm_fused" in ms:
            row["fused_vs_timm"] = ms["fused"] / ms["timm_fused"]
        rows.append(row)
    return rows
