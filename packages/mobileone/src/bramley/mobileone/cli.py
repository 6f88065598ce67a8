"""Command line of bramley-mobileone (also available as ``bramley mobileone``).

Core's shared verbs (``info``, ``reparam``, ``convert``, ``export``, ``train``, ``eval``, ``reproduce``; see
:class:`bramley.core.cli.MethodCLI`) and the package's ``bench``. A model is a registered name (``--model
mobileone_s0``, random weights) or trained weights (``--checkpoint``: a run folder, a ``save_pretrained`` folder or a
``.safetensors`` file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from bramley.core.classification import train_image_classifier
from bramley.core.cli import MethodCLI, check_writable, non_negative_int, positive_int

from .convert import convert_official
from .train import RECIPES

#: Fused parameters (M) of each variant in the paper (Table 8).
PAPER_PARAMS_M = {"s0": 2.1, "s1": 4.8, "s2": 7.8, "s3": 10.1, "s4": 14.8}
MODELS = [f"mobileone_{variant}" for variant in PAPER_PARAMS_M]


def info_columns(name: str) -> dict[str, float]:
    """The ``info`` columns core does not know: the paper's fused parameters and the GMACs of one image at 224 px
    (train-time and fused), counted on the meta device (no memory, no compute)."""
    from bramley.core.registry import create_model

    from .profile import count_macs

    with torch.device("meta"):
        unfused, fused = create_model(name), create_model(name, inference_mode=True)
    return {
        "paper_params_M": PAPER_PARAMS_M[name.removeprefix("mobileone_")],
        "GMACs": count_macs(unfused, 224) / 1e9,
        "fused_GMACs": count_macs(fused, 224) / 1e9,
    }


def _bench(args: argparse.Namespace) -> int:
    import os

    from bramley.core.report import environment, format_table, replace_marked, write_results
    from bramley.core.train.distributed import resolve_device

    from .profile import benchmark_variant, table_rows

    device = resolve_device(args.device)
    if args.out is not None:
        check_writable(args.out / "results.json", "--out")
    check_writable(args.markdown, "--markdown")
    load_before = os.getloadavg()[0]
    rows = []
    for threads in args.threads or [None]:
        for name in args.model:
            rows += benchmark_variant(
                name,
                tuple(args.batch_sizes),
                args.image_size,
                iters=args.iters,
                warmup=args.warmup,
                include_timm=not args.no_timm,
                threads=threads,
                rounds=args.rounds,
                device=device,
                channels_last=args.channels_last,
            )
    env = environment()
    peer = {} if args.no_timm else {"timm": _version("timm")}
    results = {
        "benchmark": f"MobileOne {device.type} latency: fused vs timm's fused vs unfused, interleaved rounds",
        "command": _bench_command(args),
        "peer": peer,
        "bramley-mobileone": _version("bramley-mobileone"),
        "load_average": [load_before, os.getloadavg()[0]],
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }
    twins = "bramley's fused model" if args.no_timm else "both fused models"
    layout = f"channels_last weights for every contender (input NCHW) and {twins} also in NCHW, "
    header = (
        f"Measured {env['date']} on {env['cpu']} ({results['cpus']} cores, load average "
        f"{results['load_average'][0]:.1f} before, {results['load_average'][1]:.1f} after), device {device.type}, "
        f"torch {env['torch']}, {'timm ' + peer['timm'] if peer else 'no timm'}, {args.image_size} px, "
        f"{layout if args.channels_last else ''}"
        f"{args.rounds} interleaved rounds (order rotating every round; a round's time is the mean of "
        f"{args.iters} call{'s' if args.iters > 1 else ''}), ratios computed per round: median (IQR; range). "
        f"`{results['command']}`"
    )
    table = format_table(table_rows(rows))
    print(header + "\n")
    if args.out is not None:
        write_results(args.out, {**results, "header": header, "table": rows}, table_rows(rows))
        (args.out / "table.md").write_text(header + "\n\n" + table + "\n")
    else:
        print(table)
    if args.markdown is not None:
        tag = f"bench_mobileone:{device.type}{'-channels_last' if args.channels_last else ''}"
        replace_marked(args.markdown, tag, header + "\n\n" + table)
    return 0


def _bench_command(args: argparse.Namespace) -> str:
    """The command line that repeats this run, every setting spelled out (``--out`` / ``--markdown`` as given)."""
    words = ["bramley-mobileone bench", "--model", *args.model, "--batch-sizes", *map(str, args.batch_sizes)]
    words += ["--image-size", str(args.image_size), "--rounds", str(args.rounds), "--iters", str(args.iters)]
    words += ["--warmup", str(args.warmup)]
    words += ["--threads", *map(str, args.threads)] if args.threads else []
    words += ["--no-timm"] if args.no_timm else []
    words += ["--channels-last"] if args.channels_last else []
    words += ["--device", args.device] if args.device != "cpu" else []
    words += [f"--{name} {getattr(args, name)}" for name in ("out", "markdown") if getattr(args, name) is not None]
    return " ".join(words)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", nargs="+", choices=MODELS, default=["mobileone_s0"], metavar="NAME", help="models")
    p.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[1, 16])
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--rounds", type=positive_int, default=15, help="interleaved rounds, one ratio each")
    p.add_argument("--iters", type=positive_int, default=1, help="timed calls per contender and round (mean kept)")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed rounds before the timed ones")
    p.add_argument(
        "--threads", nargs="+", type=positive_int, default=None, help="torch CPU thread counts, each measured in turn"
    )
    p.add_argument("--no-timm", action="store_true", help="skip timm's model")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="every contender's weights in channels_last, plus the fused models in NCHW",
    )
    p.add_argument("--device", default="cpu", help="cpu (the paper's setting is a phone CPU), cuda, cuda:N, mps")
    p.add_argument("--out", type=Path, default=None, help="write results.json (every round) + table.md here")
    p.add_argument(
        "--markdown", type=Path, default=None, help="put the table between bench_mobileone markers in this file"
    )


cli = MethodCLI("mobileone", "MobileOne: an improved one millisecond mobile backbone.")
cli.add_info(columns=info_columns)
cli.add_reparam()
cli.add_convert(convert_official, "convert an official apple/ml-mobileone .pth.tar checkpoint (fused or unfused)")
cli.add_export()
cli.add_train(RECIPES, train_image_classifier)
cli.add_image_eval("top-1 / top-5 on an ImageFolder", image_size=224, crop_pct=0.875)
cli.add_command(
    "bench", _bench, "latency: unfused vs fused vs timm's fused model on the same weights", _bench_arguments
)
cli.add_reproduce("bramley.mobileone.reproduce")


def main(argv: list[str] | None = None) -> int:
    """The ``bramley-mobileone`` console script and the ``bramley mobileone`` entry point."""
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
