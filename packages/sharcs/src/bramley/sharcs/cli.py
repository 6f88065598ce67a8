"""Command line of bramley-sharcs (also ``bramley sharcs``).

Shared verbs (core's argument shapes): ``info``, ``train`` (an image recipe into a run folder), ``train-glue`` (the
paper's GLUE recipe on local TSV files), ``eval`` (accuracy vs FLOPs
of every fixed width, the router and its confidence knob), ``reproduce``. SHARCS' own: ``route`` (the width the
router picks for each input) and ``bench`` (routed batched inference vs the full-width network, samples/s).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bramley.core.cli import (
    MethodCLI,
    add_threads_argument,
    check_writable,
    positive_int,
    torch_threads,
    unit_float,
    write_json,
)
from bramley.core.errors import CheckpointError

from .train import GLUE_RECIPES, RECIPES, train, train_glue

cli = MethodCLI("sharcs", "SHARCS: routing each sample to a dynamic-width sub-network.")


# ------------------------------------------------------------------------------------------------------- helpers
def _sharcs_model(model: Any, source: str) -> Any:
    from .model import SharcsModel

    if not isinstance(model, SharcsModel):
        name = getattr(model, "model_config", {}).get("name", type(model).__name__)
        raise CheckpointError(f"{source} holds a {name} model, not a SHARCS model (sharcs_vit_*, sharcs_timm_vit)")
    return model


def _image_size(model: Any, requested: int | None) -> int:
    if requested is not None:
        return requested
    if hasattr(model, "img_size"):
        return int(model.img_size)
    return int(model.vit.patch_embed.img_size[0])


def _dataset(model: Any, args: argparse.Namespace):
    from .evaluate import eval_dataset

    return eval_dataset(args.data, _image_size(model, args.image_size), args.crop_pct)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="digits", help="ImageFolder root, or 'digits' (bundled test split)")
    p.add_argument("--image-size", type=positive_int, default=None, help="input size (default: the model's)")
    p.add_argument("--crop-pct", type=unit_float, default=0.875, help="center-crop fraction (ImageFolder)")
    p.add_argument("--batch-size", type=positive_int, default=256)


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


# ------------------------------------------------------------------------------------------------- info, train
cli.add_info()
cli.add_train(RECIPES, train)
cli.add_train(
    GLUE_RECIPES,
    train_glue,
    help="train on a GLUE task's local TSV files (BERT / RoBERTa, the paper's setup; needs the hf extra)",
    name="train-glue",
)


# ---------------------------------------------------------------------------------------------------------- eval
def _evaluate(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    from bramley.core.report import format_table

    from .evaluate import accuracy_vs_flops

    model = _sharcs_model(model, args.checkpoint)
    data = _dataset(model, args)
    rows = accuracy_vs_flops(model, data, args.thresholds, args.batch_size)
    print(format_table([{k: v for k, v in r.items() if k != "share"} for r in rows], digits=3), file=sys.stderr)
    return {"data": str(args.data), "samples": len(data), "rows": rows}


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    _data_arguments(p)
    p.add_argument(
        "--thresholds", type=_threshold, nargs="*", default=[0.3, 0.5, 0.7, 0.9], help="confidence knob values"
    )


cli.add_eval(_evaluate, "accuracy vs FLOPs: every fixed width, the router, the confidence knob", _eval_arguments)


# --------------------------------------------------------------------------------------------------------- route
def _route(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from bramley.core.checkpoint import load_model

    check_writable(args.out)
    model = _sharcs_model(load_model(args.checkpoint), args.checkpoint).eval()
    data = _dataset(model, args)
    names = [str(p) for p, _ in data.samples] if hasattr(data, "samples") else [str(i) for i in range(len(data))]
    widths: list[float] = []
    with torch.no_grad():
        for batch in DataLoader(data, batch_size=args.batch_size):
            _, index = model.predict(batch[0], args.threshold)
            widths += [model.widths[i] for i in index.tolist()]
    counts = {f"{w:g}": widths.count(w) for w in model.widths}
    print(f"{len(widths)} inputs routed: " + ", ".join(f"{n} at width {w}" for w, n in counts.items()))
    payload = {"checkpoint": str(args.checkpoint), "threshold": args.threshold, "counts": counts}
    payload["routes"] = [{"input": n, "width": w} for n, w in zip(names, widths)]
    write_json(args.out, payload, echo=args.out is None)
    return 0


def _route_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder, save_pretrained folder or .safetensors")
    _data_arguments(p)
    p.add_argument("--threshold", type=_threshold, default=None, help="confidence knob (default: router argmax)")
    p.add_argument("--out", type=Path, default=None, help="write the routes to this JSON file (default: print)")


cli.add_command("route", _route, "the width the router picks for each input", _route_arguments)


# --------------------------------------------------------------------------------------------------------- bench
def _bench(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.checkpoint import load_model
    from bramley.core.report import environment

    from .bench import run_benchmark

    check_writable(args.out)
    with torch_threads(args.threads):  # the environment records the count used
        model = _sharcs_model(load_model(args.checkpoint), args.checkpoint)
        data = _dataset(model, args)
        images = torch.stack([data[i][0] for i in range(len(data))])
        labels = torch.tensor([int(data[i][1]) for i in range(len(data))])
        result = run_benchmark(model, images, labels, args.batch_size, args.rounds, args.repeats, args.threshold)
        result["environment"] = environment()
    print(
        f"{result['samples']} inputs in batches of {args.batch_size}, {args.threads} threads, {args.rounds} "
        f"interleaved rounds: full width {result['full_samples_per_s']:.0f} samples/s (top-1 {result['full_top1']:.2f}"
        f"%), SHARCS {result['routed_samples_per_s']:.0f} samples/s (top-1 {result['routed_top1']:.2f}%, mean width "
        f"{result['mean_width']:.3f}): {result['speedup_median']:.2f}x (IQR {result['speedup_iqr'][0]:.2f}-"
        f"{result['speedup_iqr'][1]:.2f})"
    )
    write_json(args.out, result, echo=False)
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a trained SHARCS model (e.g. the reproduction's)")
    _data_arguments(p)
    p.add_argument("--threshold", type=_threshold, default=None, help="confidence knob (default: router argmax)")
    p.add_argument("--rounds", type=positive_int, default=11)
    p.add_argument("--repeats", type=positive_int, default=3)
    add_threads_argument(p)
    p.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")


cli.add_command("bench", _bench, "routed batched inference vs the full-width network (samples/s)", _bench_arguments)


# ----------------------------------------------------------------------------------------------------- reproduce
cli.add_reproduce("bramley.sharcs.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bramley-sharcs`` and of ``bramley sharcs``."""
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
