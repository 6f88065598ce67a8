"""ByteFormer training throughput, packed vs padded batches, measured in one process (``bramley byteformer bench``).

The samples are real compressed files: random crops (``--min-size``..``--max-size`` pixels) of scikit-learn's two
sample photos, encoded as PNG (zlib level 6) or JPEG (quality 60..100), so byte lengths spread as compressed
files do. The same batches (same samples, same order) are trained once packed (:meth:`ByteFormer.forward`) and once
padded to the longest sample with masks (:meth:`ByteFormer.forward_padded`, the same function), alternating rounds;
throughput is the median over rounds of samples per second of full training steps (forward, backward, AdamW step).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bramley.core.cli import positive_int
from bramley.core.errors import ConfigError

__all__ = ["add_bench_arguments", "bench", "main", "photo_crop_bytes"]


def add_bench_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``bench``."""
    parser.add_argument("--model", default="byteformer_tiny", help="registered variant")
    parser.add_argument("--kernel-size", type=positive_int, default=32, help="token-reduction conv kernel")
    parser.add_argument("--depth", type=positive_int, default=None, help="override the number of blocks (CPU: smaller)")
    parser.add_argument("--embed-dim", type=positive_int, default=None, help="override the width (with --num-heads)")
    parser.add_argument("--num-heads", type=positive_int, default=None)
    parser.add_argument("--samples", type=positive_int, default=96, help="number of encoded photo crops")
    parser.add_argument("--min-size", type=positive_int, default=64, help="smallest crop side (pixels)")
    parser.add_argument("--max-size", type=positive_int, default=224, help="largest crop side (pixels)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="samples per training step")
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternating packed/padded rounds (median)")
    parser.add_argument("--warmup", type=positive_int, default=1, help="untimed steps per mode before the rounds")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast dtype on CUDA")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: leave as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    return parser


def photo_crop_bytes(count: int, min_size: int, max_size: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` PNG / JPEG files of random square crops of the bundled sample photos, as int64 byte tensors."""
    from bramley.core.data._bundled import load_sample_photo
    from bramley.core.data.photos import PHOTO_NAMES

    from .encodings import encode, to_tokens

    photos = [load_sample_photo(name) for name in PHOTO_NAMES]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = int(rng.integers(min_size, max_size + 1))
        side = min(side, photo.shape[0], photo.shape[1])
        top = int(rng.integers(0, photo.shape[0] - side + 1))
        left = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = np.ascontiguousarray(photo[top : top + side, left : left + side])
        spec = "png:level=6" if i % 2 else f"jpeg:quality={int(rng.integers(60, 101))}"
        out.append(to_tokens(encode(crop, spec)))
    return out


def _step(model, optimizer, batch, padded: bool, amp: torch.dtype | None, device: torch.device) -> None:
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits = model.forward_padded(batch[0], batch[1]) if padded else model(batch[0], batch[1])
        loss = F.cross_entropy(logits.float(), batch[2])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def bench(
    model_name: str = "byteformer_tiny",
    *,
    kernel_size: int = 32,
    model_kwargs: dict[str, Any] | None = None,
    samples: int = 96,
    min_size: int = 64,
    max_size: int = 224,
    batch_size: int = 16,
    rounds: int = 3,
    warmup: int = 1,
    device: str = "auto",
    amp: str = "none",
    seed: int = 0,
) -> dict[str, Any]:
    """Run the benchmark; returns throughputs, their ratio, padding statistics and the environment."""
    from bramley.core.recipe import build_model
    from bramley.core.registry import list_models
    from bramley.core.report import environment
    from bramley.core.train.distributed import resolve_device, synchronize

    from . import model as _model  # noqa: F401  (registers the variants)
    from .batching import collate_packed, collate_padded
    from .model import conv_output_lengths

    variants = list_models(package="byteformer")
    if model_name not in variants:
        raise ConfigError(f"--model {model_name!r} is not a ByteFormer variant ({', '.join(variants)})")
    if min_size > max_size:
        raise ConfigError(f"--min-size {min_size} is larger than --max-size {max_size}")
    if samples < batch_size:
        raise ConfigError(f"--samples {samples} < --batch-size {batch_size}: not one whole batch")
    dev = resolve_device(device)
    amp_dtype = torch.bfloat16 if amp == "bf16" and dev.type == "cuda" else None
    data = photo_crop_bytes(samples, min_size, max_size, seed=seed)
    lengths = torch.tensor([d.numel() for d in data])
    max_tokens = int(conv_output_lengths(lengths, kernel_size).max())
    torch.manual_seed(seed)
    kwargs = dict(model_kwargs or {}, conv_kernel_size=kernel_size, num_classes=10, max_num_tokens=max_tokens)
    model = build_model(model_name, kwargs, where="--model").to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.randint(0, 10, (samples,)).tolist()
    order = torch.randperm(samples, generator=torch.Generator().manual_seed(seed)).tolist()
    groups = [order[i : i + batch_size] for i in range(0, samples - batch_size + 1, batch_size)]
    moved = {
        mode: [tuple(t.to(dev) for t in collate([(data[i], labels[i]) for i in g])) for g in groups]
        for mode, collate in (("packed", collate_packed), ("padded", collate_padded))
    }
    real = sum(int(lengths[g].sum()) for g in groups)
    grid = sum(len(g) * int(lengths[g].max()) for g in groups)

    # the two paths compute the same function: check it on the first batch before timing
    model.eval()
    with torch.no_grad():
        diff = float((model(*moved["packed"][0][:2]) - model.forward_padded(*moved["padded"][0][:2])).abs().max())
    model.train()
    for mode in ("packed", "padded"):
        for b in range(warmup):
            _step(model, optimizer, moved[mode][b % len(groups)], mode == "padded", amp_dtype, dev)
    times: dict[str, list[float]] = {"packed": [], "padded": []}
    for _ in range(rounds):
        for mode in ("packed", "padded"):
            synchronize(dev)
            start = time.perf_counter()
            for batch in moved[mode]:
                _step(model, optimizer, batch, mode == "padded", amp_dtype, dev)
            synchronize(dev)
            times[mode].append(time.perf_counter() - start)
    n = len(groups) * batch_size
    packed = n / statistics.median(times["packed"])
    padded = n / statistics.median(times["padded"])
    return {
        "model": model_name,
        "model_kwargs": {k: v for k, v in kwargs.items() if k != "num_classes"},
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "device": str(dev),
        "amp": amp if amp_dtype is not None else "none",
        "batch_size": batch_size,
        "batches": len(groups),
        "rounds": rounds,
        "bytes_mean": float(lengths.float().mean()),
        "bytes_min": int(lengths.min()),
        "bytes_max": int(lengths.max()),
        "padding_fraction": 1.0 - real / grid,
        "max_abs_logit_diff_packed_vs_padded": diff,
        "packed_samples_per_s": packed,
        "padded_samples_per_s": padded,
        "packed_over_padded": packed / padded,
        "environment": environment(),
    }


def main(args: argparse.Namespace) -> int:
    """``bench`` entry point: run, print the result as JSON and write it to ``--out``."""
    from bramley.core.cli import check_writable, write_json

    check_writable(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"depth": args.depth, "embed_dim": args.embed_dim, "num_heads": args.num_heads}
    model_kwargs = {k: v for k, v in overrides.items() if v is not None}
    if "depth" in model_kwargs:  # per-block lists follow the depth: corenet's pattern, cut or repeated
        depth = model_kwargs["depth"]
        model_kwargs["window_shifts"] = [(0, 64)[i % 2] for i in range(depth)]
        model_kwargs["downsample"] = [i in (0, 1, 3, 5, 7, 9) for i in range(depth)]
    result = bench(
        args.model,
        kernel_size=args.kernel_size,
        model_kwargs=model_kwargs,
        samples=args.samples,
        min_size=args.min_size,
        max_size=args.max_size,
        batch_size=args.batch_size,
        rounds=args.rounds,
        warmup=args.warmup,
        device=args.device,
        amp=args.amp,
        seed=args.seed,
    )
    write_json(args.out, result)
    return 0
