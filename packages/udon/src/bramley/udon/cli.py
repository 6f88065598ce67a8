"""Command line of bramley-udon (also ``bramley udon``).

``info``, ``train`` (a recipe into a run folder, core's trainer), ``embed`` (universal descriptors of UnED splits to
the official JSON format), ``eval`` (the UnED table per domain, separate and merged index, from a checkpoint or a
descriptor file), ``bench`` (UDON step time over one-head joint training) and ``reproduce``.
"""

from __future__ import annotations

import argparse
import sys
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
from bramley.core.errors import CheckpointError, ConfigError

from .train import RECIPES, train

cli = MethodCLI("udon", "UDON: universal image embeddings by dynamic online distillation, and the UnED protocol.")
cli.add_info()
cli.add_train(RECIPES, train)


# ------------------------------------------------------------------------------------------------------ helpers
def _embedding_model(spec: str, device: str) -> Any:
    from bramley.core.checkpoint import load_model

    from .model import JointEmbeddingModel, UdonModel

    model = load_model(spec, device=device)
    if not isinstance(model, UdonModel | JointEmbeddingModel):
        raise CheckpointError(f"{spec} holds a {type(model).__name__}, not a udon or udon_joint model")
    return model


def _domains(text: str) -> list[str]:
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--domains takes distinct comma-separated names, got {text!r}")
    return names


def _describe(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Embed the splits ``args.split``'s kNN needs, for every domain, with the checkpoint's universal embedding."""
    from bramley.core.data import eval_transform
    from bramley.core.train.distributed import resolve_device

    from .data import EvalImages, UnedImages
    from .train import embed_parts
    from .uned import knn_setup

    device = resolve_device(args.device)
    model = _embedding_model(args.checkpoint, str(device))
    transform = eval_transform(args.image_size, crop_pct=args.crop_pct)
    splits = {(d, s) for d in args.domains for s in knn_setup(d, args.split)}
    parts = {(d, s): UnedImages(args.uned, d, s, transform) for d, s in sorted(splits)}
    return embed_parts(model, EvalImages(parts), args.batch_size, device)


def _source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--uned", type=Path, required=True, help="UnED folder: info_files/<domain>/<split>.json, images/")
    p.add_argument("--domains", type=_domains, required=True, help="comma-separated domains, e.g. cars,sop")
    p.add_argument("--split", default="test", help="kNN split (val or test): its query and index splits are used")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--crop-pct", type=unit_float, default=0.875)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")


# -------------------------------------------------------------------------------------------------------- embed
def _embed(args: argparse.Namespace) -> int:
    from .uned import save_descriptors

    check_writable(args.out)
    descriptors = _describe(args)
    save_descriptors(args.out, descriptors)
    shapes = ", ".join(f"{d}/{s} {tuple(t.shape)}" for d, splits in descriptors.items() for s, t in splits.items())
    print(f"wrote {args.out}: {shapes}")
    return 0


def _embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder, save_pretrained folder or .safetensors")
    _source_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="descriptor JSON ({domain: {split: [[...]]}})")


cli.add_command("embed", _embed, "universal descriptors of UnED splits, in the official JSON format", _embed_arguments)


# --------------------------------------------------------------------------------------------------------- eval
def _eval(args: argparse.Namespace) -> int:
    from bramley.core.report import format_table

    from .uned import load_descriptors, uned_eval

    if (args.checkpoint is None) == (args.descriptors is None):
        raise ConfigError("give --checkpoint (embed, then evaluate) or --descriptors (a descriptor JSON), not both")
    check_writable(args.out)
    if args.descriptors is not None:
        descriptors = load_descriptors(args.descriptors, args.embedding)
    else:
        descriptors = _describe(args)
    table = uned_eval(args.uned, descriptors, args.split, args.k, args.domains)
    key = f"mmp@{args.k}"
    rows = [
        {
            "domain": d,
            f"{key} separate": 100 * table["separate"][d][key],
            "R@1 separate": 100 * table["separate"][d]["r@1"],
            f"{key} merged": 100 * table["merged"][d][key],
            "R@1 merged": 100 * table["merged"][d]["r@1"],
            "queries": table["separate"][d]["queries"],
            "no positive": table["separate"][d]["no_positive"],
        }
        for d in args.domains
    ]
    mean = table["mean"]
    rows.append(
        {
            "domain": "mean",
            f"{key} separate": 100 * mean[f"separate_{key}"],
            "R@1 separate": 100 * mean["separate_r@1"],
            f"{key} merged": 100 * mean[f"merged_{key}"],
            "R@1 merged": 100 * mean["merged_r@1"],
        }
    )
    print(format_table(rows, digits=1))
    write_json(args.out, table, echo=False)
    return 0


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="run folder, save_pretrained folder or .safetensors")
    p.add_argument("--descriptors", type=Path, default=None, help="descriptor JSON instead of a checkpoint")
    p.add_argument("--embedding", default=None, help="embedding type in a UDON descriptor dump (per-split dicts)")
    _source_arguments(p)
    p.add_argument("--k", type=positive_int, default=5, help="mMP cut-off")
    p.add_argument("--out", type=Path, default=None, help="also write the table to this JSON file")


cli.add_command("eval", _eval, "UnED kNN table per domain (mMP@k, R@1; separate and merged index)", _eval_arguments)


# -------------------------------------------------------------------------------------------------------- bench
def _bench(args: argparse.Namespace) -> int:
    from bramley.core.report import environment

    from .bench import run_benchmark

    check_writable(args.out)
    with torch_threads(args.threads):  # the results record the count used
        result = run_benchmark(
            backbone=args.backbone,
            num_classes=[args.num_classes] * args.domains,
            batch_size=args.batch_size,
            image_size=args.image_size,
            steps=args.steps,
            rounds=args.rounds,
        )
        result["environment"] = environment()
    lo, hi = result["ratio_iqr"]
    print(
        f"{args.backbone}, batch {args.batch_size} at {args.image_size} px, {args.domains} domains: UDON "
        f"{result['udon_step_ms']:.1f} ms/step, joint {result['joint_step_ms']:.1f} ms/step, ratio "
        f"{result['ratio_median']:.3f}x (IQR {lo:.3f}-{hi:.3f}, median of {args.rounds} interleaved rounds)"
    )
    write_json(args.out, result, echo=False)
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="convnet", help="convnet, a timm name or a bramley model name")
    p.add_argument("--domains", type=positive_int, default=4)
    p.add_argument("--num-classes", type=positive_int, default=100, help="classes per domain")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--steps", type=positive_int, default=5, help="training steps per method per round")
    p.add_argument("--rounds", type=positive_int, default=7)
    add_threads_argument(p, default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")


cli.add_command(
    "bench", _bench, "UDON training step time over one-head joint training (same backbone)", _bench_arguments
)
cli.add_reproduce("bramley.udon.reproduce")

main = cli.main

if __name__ == "__main__":
    sys.exit(main())
