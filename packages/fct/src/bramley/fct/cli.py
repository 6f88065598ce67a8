"""Command line of bramley-fct (also available as `bramley fct`).

The stages of the paper, each writing a ``save_pretrained`` folder or a safetensors gallery::

    bramley-fct train-backbone --role old --config R --out runs/old
    bramley-fct train-backbone --role new --config R --out runs/new          (--bct-old runs/old: BCT baseline)
    bramley-fct train-side-info --config R --out runs/side
    bramley-fct train-transformation --old runs/old --new runs/new --side runs/side --config R --out runs/h
    bramley-fct embed --model runs/old --side-model runs/side --config R --out old_gallery.safetensors
    bramley-fct transform-gallery --transformation runs/h --gallery old_gallery.safetensors --out backfilled.safetensors
    bramley-fct embed --model runs/new --config R --out new_queries.safetensors
    bramley-fct eval --query new_queries.safetensors --gallery backfilled.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bramley.core.checkpoint import save_pretrained
from bramley.core.cli import add_config_arguments, run_method_cli


def _cfg(args: argparse.Namespace, save: bool = True) -> dict:
    if args.recipe is not None:
        if args.config is not None:
            raise SystemExit("bramley-fct: give either --recipe or --config, not both")
        from .pipeline import recipe_path

        args.config = recipe_path(args.recipe)
    from bramley.core.config import save_config

    from .pipeline import resolve_run_config

    config = resolve_run_config(args.config, args.overrides)
    if save:
        save_config(config, _need_out(args))
    return config


def _config_args(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--recipe", default=None, help="a bundled recipe instead of --config: cifar100, imagenet, digits")


def _need_out(args: argparse.Namespace) -> Path:
    if args.out is None:
        raise SystemExit("bramley-fct: --out is required")
    return Path(args.out)


def _save(model, out: Path) -> None:
    """Write a stage's model once (rank 0 only under torchrun)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        save_pretrained(model, out)


def _train_backbone(args: argparse.Namespace) -> int:
    from .pipeline import load_model, run_stage

    out = _need_out(args)
    cfg = _cfg(args)
    if args.bct_old and args.role != "new":
        raise SystemExit("bramley-fct: --bct-old trains the NEW model with BCT; use it with --role new")
    old = load_model(args.bct_old) if args.bct_old else None
    model = run_stage(cfg, args.role, old_model=old, bct=old is not None)
    _save(model, out)
    print(f"saved {args.role} model{' (BCT)' if old is not None else ''} to {out}")
    return 0


def _train_side_info(args: argparse.Namespace) -> int:
    from .pipeline import run_stage

    out = _need_out(args)
    model = run_stage(_cfg(args), "side_info")
    _save(model, out)
    print(f"saved side-information model to {out}")
    return 0


def _train_transformation(args: argparse.Namespace) -> int:
    from .pipeline import load_model, run_stage

    out = _need_out(args)
    cfg = _cfg(args)
    old, new = load_model(args.old), load_model(args.new)
    side = load_model(args.side) if args.side else None
    model = run_stage(cfg, "transformation", old_model=old, new_model=new, side_model=side)
    _save(model, out)
    print(f"saved transformation ({'with' if side is not None else 'without'} side information) to {out}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from .backfill import save_gallery
    from .data import build_dataset
    from .pipeline import load_model
    from .train import embed_dataset

    out = _need_out(args)
    cfg = _cfg(args, save=False)  # --out is a file here
    data = build_dataset(cfg["data"], args.split)
    kw = {
        "batch_size": int(cfg["eval"]["batch_size"]),
        "device": args.device,
        "num_workers": cfg["eval"]["num_workers"],
    }
    emb, labels = embed_dataset(load_model(args.model), data, **kw)
    tensors = {"embeddings": emb, "labels": labels}
    if args.side_model:
        tensors["side_info"] = embed_dataset(load_model(args.side_model), data, **kw)[0]
    save_gallery(out, **tensors)
    print(f"wrote {len(labels)} embeddings ({', '.join(tensors)}) to {out}")
    return 0


def _transform_gallery(args: argparse.Namespace) -> int:
    from .backfill import transform_gallery
    from .pipeline import load_model

    res = transform_gallery(
        load_model(args.transformation),
        args.gallery,
        args.out,
        side_info_path=args.side_info,
        batch_size=args.batch_size,
        device=args.device,
        resume=not args.restart,
        max_batches=args.max_batches,
        progress=not args.no_progress,
    )
    if res.complete:
        print(f"backfilled {res.num_items} embeddings into {res.out_path}")
    else:
        print(f"stopped after {res.batches_done}/{res.batches_total} batches; run the same command again to resume")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from bramley.core.report import format_table
    from bramley.core.retrieval import retrieval_metrics

    from .backfill import load_gallery

    query, gallery = load_gallery(args.query), load_gallery(args.gallery)
    if "labels" not in query:
        raise SystemExit(f"bramley-fct: {args.query} has no 'labels' tensor")
    if "labels" in gallery and not (
        gallery["labels"].shape == query["labels"].shape and (gallery["labels"] == query["labels"]).all()
    ):
        raise SystemExit(
            "bramley-fct: query and gallery labels differ: they must embed the same images in the same order"
        )
    m = retrieval_metrics(query["embeddings"], gallery["embeddings"], query["labels"], metric=args.metric)
    row = {"query": Path(args.query).name, "gallery": Path(args.gallery).name, **m}
    print(format_table([row], digits=2))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


def _reproduce(argv: list[str]) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(argv)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bramley-fct",
        description="Forward Compatible Training for large-scale embedding retrieval.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train-backbone", help="train the old or the new embedding model (or the BCT new model)")
    p.add_argument("--role", choices=["old", "new"], required=True)
    p.add_argument("--bct-old", default=None, help="old model folder: train the new model with BCT against it")
    _config_args(p)
    p.set_defaults(func=_train_backbone)

    p = sub.add_parser("train-side-info", help="train the self-supervised side-information model on the old data")
    _config_args(p)
    p.set_defaults(func=_train_side_info)

    p = sub.add_parser("train-transformation", help="train h(old, side) -> new with the other models frozen")
    p.add_argument("--old", required=True, help="old model folder")
    p.add_argument("--new", required=True, help="new model folder")
    p.add_argument("--side", default=None, help="side-information model folder (omit: FCT without side info)")
    _config_args(p)
    p.set_defaults(func=_train_transformation)

    p = sub.add_parser("embed", help="embed the evaluation (or training) split into a gallery file")
    p.add_argument("--model", required=True, help="backbone folder whose embeddings to store")
    p.add_argument("--side-model", default=None, help="also store this side-information model's output")
    p.add_argument("--split", choices=["val", "train"], default="val")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="default: cuda when available")
    _config_args(p)
    p.set_defaults(func=_embed)

    p = sub.add_parser("transform-gallery", help="backfill: transform stored old embeddings into the new space")
    p.add_argument("--transformation", required=True, help="transformation folder")
    p.add_argument("--gallery", required=True, help="safetensors with 'embeddings' (and 'side_info', 'labels', ...)")
    p.add_argument("--side-info", default=None, help="separate safetensors file with 'side_info'")
    p.add_argument("--out", required=True, help="output safetensors file")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--restart", action="store_true", help="discard an unfinished backfill instead of resuming it")
    p.add_argument("--max-batches", type=int, default=None, help="stop after this many batches (resume later)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_transform_gallery)

    p = sub.add_parser("eval", help="CMC top-1/5, mAP, mAP@R of query embeddings against a gallery (leave-one-out)")
    p.add_argument("--query", required=True, help="safetensors with 'embeddings' and 'labels'")
    p.add_argument("--gallery", required=True, help="safetensors with 'embeddings' of the same images")
    p.add_argument("--metric", choices=["l2", "cosine"], default="l2")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    p.set_defaults(func=_eval)

    sub.add_parser("reproduce", help="run the mini reproduction (options: reproduce --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.checkpoint import CheckpointError

    from .backfill import BackfillError

    try:
        return run_method_cli(build_parser(), argv, passthrough={"reproduce": _reproduce})
    except (BackfillError, CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"bramley-fct: error: {e}") from e


if __name__ == "__main__":
    sys.exit(main())
