"""Command line of bramley-mobileone (also available as ``bramley mobileone``).

Subcommands: info, reparam, convert, train, eval, export, bench, reproduce. Models are given either as a
``save_pretrained`` folder or as a registered name (``mobileone_s0``) optionally with ``--checkpoint file.safetensors``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from bramley.core.checkpoint import CheckpointError
from bramley.core.cli import add_config_arguments, config_from_args, run_method_cli

from . import model as _model  # noqa: F401  (registers the variants)

PAPER_PARAMS_M = {"s0": 2.1, "s1": 4.8, "s2": 7.8, "s3": 10.1, "s4": 14.8}  # fused, paper Table 8 / issue 4


def load_model(spec: str, checkpoint: str | None = None) -> nn.Module:
    """A model from a ``save_pretrained`` folder, or a registered name (random weights unless ``checkpoint``)."""
    from bramley.core.checkpoint import from_pretrained, load_checkpoint, read_metadata
    from bramley.core.registry import create_model, list_models

    path = Path(spec)
    if path.is_dir():
        if checkpoint is not None:
            raise CheckpointError(f"--checkpoint cannot be combined with the model folder {spec}")
        return from_pretrained(path)
    if spec not in list_models():
        raise CheckpointError(f"{spec!r} is neither a model folder nor a registered model ({', '.join(list_models())})")
    kwargs = {}
    if checkpoint is not None:
        config = read_metadata(checkpoint).get("bramley_config")
        if config is not None:
            if config.get("name") != spec:
                raise CheckpointError(f"checkpoint {checkpoint} holds a {config.get('name')} model, not {spec}")
            kwargs = dict(config.get("kwargs", {}))
    model = create_model(spec, **kwargs)
    if checkpoint is not None:
        load_checkpoint(checkpoint, model)
    return model


# --- info -------------------------------------------------------------------------------------------------------------
def info_rows(image_size: int = 224, variants: Sequence[str] = ("s0", "s1", "s2", "s3", "s4")) -> list[dict]:
    """Parameter counts (train-time and fused) and fused GMACs of each variant, beside the paper's counts."""
    from .model import build_mobileone, reparameterize
    from .profile import count_macs, count_params

    rows = []
    for variant in variants:
        model = build_mobileone(variant).eval()
        fused = reparameterize(model)
        rows.append(
            {
                "model": f"mobileone_{variant}",
                "params_train_M": count_params(model) / 1e6,
                "params_fused_M": count_params(fused) / 1e6,
                "paper_params_M": PAPER_PARAMS_M[variant],
                "GMACs_train": count_macs(model, image_size) / 1e9,
                "GMACs_fused": count_macs(fused, image_size) / 1e9,
            }
        )
    return rows


def _info(args: argparse.Namespace) -> int:
    from bramley.core.report import format_table

    rows = info_rows(args.image_size, args.variants)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, digits=3))
    return 0


# --- reparam / convert / export ---------------------------------------------------------------------------------------
def _check_equal(a: nn.Module, b: nn.Module, in_chans: int, image_size: int = 64) -> float:
    x = torch.randn(2, in_chans, image_size, image_size)
    a.eval()
    b.eval()
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return float((ya - yb).abs().max()) / max(1.0, float(ya.abs().max()))


def _reparam(args: argparse.Namespace) -> int:
    from bramley.core.checkpoint import save_pretrained

    from .model import reparameterize

    model = load_model(args.model, args.checkpoint).eval()
    fused = reparameterize(model)
    error = _check_equal(model, fused, getattr(model, "in_chans", 3))
    save_pretrained(fused, args.out)
    print(f"fused model written to {args.out} (relative max difference to the unfused model: {error:.2e})")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from bramley.core.checkpoint import save_pretrained

    from .convert import load_official_checkpoint
    from .model import reparameterize

    model, variant, fused, num_classes = load_official_checkpoint(args.checkpoint, args.variant)
    kind = "fused" if fused else "unfused"
    if args.fuse and not fused:
        model = reparameterize(model)
        kind = "unfused, fused on conversion"
    save_pretrained(model, args.out)
    print(f"converted official MobileOne-{variant.upper()} ({kind}, {num_classes} classes) to {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import check_onnx, export_onnx
    from .model import reparameterize

    model = load_model(args.model, args.checkpoint).eval()
    if not args.no_fuse:
        model = reparameterize(model)
    path = export_onnx(model, args.output, image_size=args.image_size, opset=args.opset)
    message = f"exported {'unfused' if args.no_fuse else 'fused'} model to {path}"
    if not args.no_check:
        x = torch.randn(3, getattr(model, "in_chans", 3), args.image_size, args.image_size)
        message += f" (onnxruntime relative max difference {check_onnx(model, path, x):.2e})"
    print(message)
    return 0


# --- train / eval -----------------------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from .train import load_recipe, train

    defaults = load_recipe(args.recipe)
    if args.out is not None:
        defaults["train"]["out_dir"] = str(args.out)
    config = config_from_args(args, defaults)
    metrics = train(config)
    print(json.dumps(metrics, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .model import reparameterize
    from .train import evaluate

    model = load_model(args.model, args.checkpoint).eval()
    if args.fuse:
        model = reparameterize(model)
    metrics = evaluate(model, args.data, image_size=args.image_size, crop_pct=args.crop_pct, batch_size=args.batch_size)
    print(json.dumps(metrics, indent=2))
    return 0


# --- bench ------------------------------------------------------------------------------------------------------------
def _bench(args: argparse.Namespace) -> int:
    from bramley.core.report import format_table, write_results

    from .profile import benchmark_variant

    rows = []
    for variant in args.variants:
        rows += benchmark_variant(
            variant,
            tuple(args.batch_sizes),
            args.image_size,
            iters=args.iters,
            warmup=args.warmup,
            include_timm=not args.no_timm,
            threads=args.threads,
            rounds=args.rounds,
        )
    if args.out is not None:
        write_results(args.out, {"benchmark": "cpu latency, median ms"}, rows, title="MobileOne CPU latency")
    else:
        print(format_table(rows))
    return 0


def _reproduce(argv: list[str]) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bramley-mobileone", description="MobileOne: an improved one millisecond mobile backbone."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    variants = ["s0", "s1", "s2", "s3", "s4"]

    p = sub.add_parser("info", help="variants with parameter counts and GMACs (train-time and fused)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--variants", nargs="+", choices=variants, default=variants)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_info)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="save_pretrained folder, or a registered name such as mobileone_s0")
        p.add_argument("--checkpoint", default=None, help="safetensors weights for a model given by name")

    p = sub.add_parser("reparam", help="fuse a trained model's branches; writes a save_pretrained folder")
    model_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_reparam)

    p = sub.add_parser("convert", help="convert an official apple/ml-mobileone .pth.tar checkpoint")
    p.add_argument("checkpoint", help="official checkpoint (fused or unfused)")
    p.add_argument("out", type=Path, help="output save_pretrained folder")
    p.add_argument("--variant", choices=variants, default=None, help="expected variant (detected when omitted)")
    p.add_argument("--fuse", action="store_true", help="reparameterize an unfused checkpoint while converting")
    p.set_defaults(func=_convert)

    p = sub.add_parser("train", help="train on an ImageFolder dataset with a bundled recipe (torchrun for DDP)")
    p.add_argument("--recipe", default="imagenet", help="bundled recipe name (recipes/<name>.yaml)")
    add_config_arguments(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="top-1/top-5 on an ImageFolder")
    model_args(p)
    p.add_argument("--data", required=True, help="folder with one sub-folder per class")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--fuse", action="store_true", help="evaluate the reparameterized model")
    p.set_defaults(func=_eval)

    p = sub.add_parser("export", help="export to ONNX (fused by default) and check it with onnxruntime")
    model_args(p)
    p.add_argument("output", type=Path, help="output .onnx file")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-fuse", action="store_true", help="export the multi-branch train-time graph")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(func=_export)

    p = sub.add_parser("bench", help="CPU latency: fused vs unfused vs timm fused (ratios, same process)")
    p.add_argument("--variants", nargs="+", choices=variants, default=["s0"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best median is kept)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-timm", action="store_true", help="skip timm's model")
    p.add_argument("--out", type=Path, default=None, help="write results.json + table.md here")
    p.set_defaults(func=_bench)

    p = sub.add_parser("reproduce", help="run the mini reproduction (see `reproduce --help`)", add_help=False)
    p.set_defaults(func=lambda args: _reproduce(args.rest))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "reproduce":  # argparse's REMAINDER mishandles leading options such as --quick
        return _reproduce(argv[1:])
    parser = build_parser()
    try:
        return run_method_cli(parser, argv)
    except (CheckpointError, FileNotFoundError, NotADirectoryError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
