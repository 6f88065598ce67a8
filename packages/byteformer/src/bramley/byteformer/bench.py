"""ByteFormer training throughput, packed vs padded batches, measured in one process (``bramley byteformer bench``).

The samples are real compressed files: random crops (``--min-size``..``--max-size`` pixels) of scikit-learn's two
sample photos, encoded as PNG (zlib level 6) or JPEG (quality 60..100), so byte lengths spread as compressed
files do. The same batches (same samples, same order, same weights) are trained packed (:meth:`ByteFormer.forward`)
and padded to the longest sample (:meth:`ByteFormer.forward_padded`: the same function on the ``B x L`` grid, with
the token-reduction conv as the same GEMM over byte windows and torch's ``F.scaled_dot_product_attention`` with a
key-padding mask per window); the logits of every batch are checked equal before timing. The contenders are
interleaved round by round (the order alternates), each round timing full training steps (forward, backward, AdamW)
over all batches; the result is the median over rounds of the per-round ratio, with its interquartile range and
range.

What to expect: the work of every token-linear part (embedding, conv, MLPs, projections, merging) grows with the
number of positions, so removing the padding can make those at most ``grid / real = 1 / (1 - padding)`` times
faster; windowed attention is linear in tokens too (fixed windows), so that is the bound for the whole model, less
what packing costs (per-sample index arithmetic, more and smaller attention calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bramley.core.bench import interleaved_rounds, summary
from bramley.core.cli import add_threads_argument, positive_int, torch_threads
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
    parser.add_argument("--rounds", type=positive_int, default=5, help="interleaved packed/padded rounds (median)")
    parser.add_argument("--warmup", type=positive_int, default=1, help="untimed steps per mode before the rounds")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast dtype on CUDA")
    add_threads_argument(parser, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="write the result table into this file")
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
    n_tokens = conv_output_lengths(lengths, kernel_size)
    real_tokens = sum(int(n_tokens[g].sum()) for g in groups)
    grid_tokens = sum(len(g) * int(n_tokens[g].max()) for g in groups)

    # the two paths compute the same function: check every batch before timing
    model.eval()
    with torch.no_grad():
        diff = max(
            float((model(*packed[:2]) - model.forward_padded(*padded[:2])).abs().max())
            for packed, padded in zip(moved["packed"], moved["padded"], strict=True)
        )
    if diff > 1e-3:
        raise RuntimeError(f"packed and padded logits differ by {diff:.2e}: the baseline is not the same function")
    model.train()
    for mode in ("packed", "padded"):
        for b in range(warmup):
            _step(model, optimizer, moved[mode][b % len(groups)], mode == "padded", amp_dtype, dev)

    def all_batches(mode: str) -> None:
        for batch in moved[mode]:
            _step(model, optimizer, batch, mode == "padded", amp_dtype, dev)

    contenders = {mode: partial(all_batches, mode) for mode in ("packed", "padded")}
    times = interleaved_rounds(contenders, rounds, sync=partial(synchronize, dev))
    n = len(groups) * batch_size
    ratios = [pad / pack for pack, pad in zip(times["packed"], times["padded"], strict=True)]
    spread = summary(ratios)
    return {
        "model": model_name,
        "model_kwargs": {k: v for k, v in kwargs.items() if k != "num_classes"},
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "merges_after": sorted(int(i) for i in model.downsamplers),
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
        "token_padding_fraction": 1.0 - real_tokens / grid_tokens,
        "padding_bound": grid / real,
        "max_abs_logit_diff_packed_vs_padded": diff,
        "packed_samples_per_s": n / statistics.median(times["packed"]),
        "padded_samples_per_s": n / statistics.median(times["padded"]),
        "packed_over_padded": spread["median"],
        "ratio_iqr": [spread["q1"], spread["q3"]],
        "ratio_range": [spread["min"], spread["max"]],
        "round_ratios": ratios,
        "round_seconds": times,
        "peer": f"padded batch, torch {torch.__version__} F.scaled_dot_product_attention with a key-padding mask",
        "environment": environment(),
    }


def markdown_table(result: dict[str, Any], command: str, load: tuple[float, float]) -> str:
    """The BENCHMARKS.md block of one run: how it was measured, then one table row."""
    env, kw = result["environment"], result["model_kwargs"]
    merges = ", ".join(str(i) for i in result["merges_after"])
    header = (
        f"Measured {env['date']} on {env['cpu']} ({os.cpu_count()} cores, load average {load[0]:.1f} before and "
        f"{load[1]:.1f} after), {torch.get_num_threads()} torch thread(s), Python {env['python']}, torch "
        f"{env['torch']}, bramley-core {env.get('bramley-core', '?')}; {result['rounds']} interleaved rounds of "
        f"{result['batches']} batches x {result['batch_size']} samples (order alternating), ratio = median over "
        f"rounds [interquartile range; range]: `{command}`"
    )
    lo, hi = result["ratio_iqr"]
    mn, mx = result["ratio_range"]
    rows = [
        "| model | device | packed samples/s | padded samples/s | packed / padded | bound 1 / (1 - padding) "
        "| padding (bytes / tokens) | max logit diff |",
        "|---|---|---|---|---|---|---|---|",
        f"| {result['model']}, width {result['embed_dim']}, {result['depth']} blocks"
        f"{f' (merging after {merges})' if merges else ''}, k={kw['conv_kernel_size']} ({result['params_M']:.1f} M "
        f"params) | {result['device']} | {result['packed_samples_per_s']:.2f} | {result['padded_samples_per_s']:.2f} "
        f"| **{result['packed_over_padded']:.2f}x** [{lo:.2f}-{hi:.2f}; {mn:.2f}-{mx:.2f}] "
        f"| {result['padding_bound']:.2f}x | {100 * result['padding_fraction']:.1f}% / "
        f"{100 * result['token_padding_fraction']:.1f}% | {result['max_abs_logit_diff_packed_vs_padded']:.0e} |",
    ]
    return header + "\n\n" + "\n".join(rows)


def _non_default_options(args: argparse.Namespace) -> list[str]:
    """The options of ``args`` that differ from their defaults, as command-line words (the command a table shows)."""
    defaults = vars(add_bench_arguments(argparse.ArgumentParser()).parse_args([]))
    words = []
    for name, default in defaults.items():
        value = getattr(args, name, default)
        if value != default:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return words


def main(args: argparse.Namespace) -> int:
    """``bench`` entry point: run, print the result as JSON and write it to ``--out``."""
    from bramley.core.cli import check_writable, write_json

    check_writable(args.out)
    load_before = os.getloadavg()[0]
    with torch_threads(args.threads):  # the environment and the table record the count used
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
        result["load_average"] = [load_before, os.getloadavg()[0]]
        write_json(args.out, result)
        if args.markdown is not None:
            from bramley.core.report import replace_marked

            command = " ".join(["bramley byteformer bench", *_non_default_options(args)])
            body = markdown_table(result, command, (result["load_average"][0], result["load_average"][1]))
            replace_marked(args.markdown, f"bench_byteformer:{result['device']}", body)
            print(body)
    return 0
