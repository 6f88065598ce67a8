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
from typing import Any

import torch

from bramley.core.classification import train_image_classifier
from bramley.core.cli import MethodCLI, check_writable, non_negative_int, positive_int, unit_float

from .convert import convert_official
from .train import RECIPES, evaluate

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


def _evaluate(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    if args.fuse:
        from bramley.core.layers import reparameterize_model

        model = reparameterize_model(model)
    return evaluate(model, args.data, image_size=args.image_size, crop_pct=args.crop_pct, batch_size=args.batch_size)


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root: one sub-folder per class")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--crop-pct", type=unit_float, default=0.875, help="center-crop fraction")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--fuse", action="store_true", help="evaluate the reparameterized model")


def _bench(args: argparse.Namespace) -> int:
    from bramley.core.report import format_table, write_results
    from bramley.core.train.distributed import resolve_device

    from .profile import benchmark_variant

    device = resolve_device(args.device)
    if args.out is not None:
        check_writable(args.out / "results.json", "--out")
    rows = []
    for name in args.model:
        rows += benchmark_variant(
            name.removeprefix("mobileone_"),
            tuple(args.batch_sizes),
            args.image_size,
            iters=args.iters,
            warmup=args.warmup,
            include_timm=not args.no_timm,
            threads=args.threads,
            rounds=args.rounds,
            device=device,
        )
    if args.out is not None:
        title = f"MobileOne latency ({device.type})"
        write_results(args.out, {"benchmark": f"{device.type} latency, median ms"}, rows, title=title)
    else:
        print(format_table(rows))
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", nargs="+", choices=MODELS, default=["mobileone_s0"], metavar="NAME", help="models")
    p.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[1, 32])
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--iters", type=positive_int, default=10, help="timed runs per round (the median is kept)")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed runs before each round")
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved timing rounds (the best is kept)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-timm", action="store_true", help="skip timm's model")
    p.add_argument("--device", default="cpu", help="cpu (the paper's setting is a phone CPU), cuda, cuda:N, mps")
    p.add_argument("--out", type=Path, default=None, help="write results.json + table.md here")


cli = MethodCLI("mobileone", "MobileOne: an improved one millisecond mobile backbone.")
cli.add_info(columns=info_columns)
cli.add_reparam()
cli.add_convert(convert_official, "convert an official apple/ml-mobileone .pth.tar checkpoint (fused or unfused)")
cli.add_export()
cli.add_train(RECIPES, train_image_classifier)
cli.add_eval(_evaluate, "top-1 / top-5 on an ImageFolder", _eval_arguments)
cli.add_command(
    "bench", _bench, "latency: unfused vs fused vs timm's fused model on the same weights", _bench_arguments
)
cli.add_reproduce("bramley.mobileone.reproduce")


def main(argv: list[str] | None = None) -> int:
    """The ``bramley-mobileone`` console script and the ``bramley mobileone`` entry point."""
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
