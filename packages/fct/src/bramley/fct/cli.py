"""Command line of bramley-fct (also available as ``bramley fct``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bramley.core.cli import MethodCLI, check_writable, positive_int, write_json
from bramley.core.errors import ConfigError

from .models import convert_official
from .pipeline import train_chain
from .recipe import SCHEMA

EPILOG = """\
The whole chain in one run folder (one sub-folder per stage, the evaluation table in results.json):
  bramley-fct train --out runs/fct                                     digits, seconds per stage on a CPU
  bramley-fct train --recipe cifar100 --out runs/c100 data.root=/data/cifar100

Or stage by stage, each into its own run folder:
  bramley-fct train-backbone --role old --out runs/old
  bramley-fct train-backbone --role new --out runs/new
  bramley-fct train-backbone --role bct --old runs/old --out runs/bct      the BCT baseline
  bramley-fct train-side-info --out runs/side
  bramley-fct train-transformation --old runs/old --new runs/new --side runs/side --out runs/h
  bramley-fct embed --checkpoint runs/old --side runs/side --out old_gallery.safetensors
  bramley-fct transform-gallery --checkpoint runs/h --gallery old_gallery.safetensors --out backfilled.safetensors
  bramley-fct embed --checkpoint runs/new --out new_queries.safetensors
  bramley-fct eval --query new_queries.safetensors --gallery backfilled.safetensors

Bundled recipes: digits (the default: the mini reproduction's setup), smoke (toy size, seconds), cifar100 and
imagenet (the paper's settings); or a .yaml file. key=value overrides follow the recipe's sections, e.g.
train.epochs=3, loss.side_info.train.epochs=5, eval.cases=[old_old,bct,fct,new_new], data.root=/data/cifar100.
"""


# ------------------------------------------------------------------------------------------------------ stages
def _load(path: str):
    from bramley.core.checkpoint import load_model

    return load_model(path)


def _train_stage(recipe, out: Path, stage: str, **paths: str | None) -> dict:
    """Train one stage of the chain into its own run folder (the models it needs given as paths)."""
    from .data import build_dataset
    from .pipeline import check_stages, train_stage

    models = {f"{name}_model": _load(path) for name, path in paths.items() if path is not None}
    train, num_classes = build_dataset(recipe.data, "train")
    check_stages(recipe, [stage], num_classes, out)
    _, metrics = train_stage(recipe, stage, out, train, num_classes, **models)
    return {"stage": stage, "metrics": metrics}


def _train_backbone(recipe, out: Path, args: argparse.Namespace) -> dict:
    if args.role == "bct" and args.old is None:
        raise ConfigError("--role bct trains the new model with BCT against the old one: give --old OLD_RUN_FOLDER")
    if args.role != "bct" and args.old is not None:
        raise ConfigError(f"--old is the old model of BCT (--role bct); --role {args.role} trains without it")
    return _train_stage(recipe, out, args.role, old=args.old)


def _train_side_info(recipe, out: Path) -> dict:
    return _train_stage(recipe, out, "side_info")


def _train_transformation(recipe, out: Path, args: argparse.Namespace) -> dict:
    stage = "transformation" if args.side is not None else "transformation_no_side_info"
    return _train_stage(recipe, out, stage, old=args.old, new=args.new, side=args.side)


def _backbone_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", choices=["old", "new", "bct"], required=True, help="bct: the new model trained with BCT")
    p.add_argument("--old", default=None, help="--role bct: the old model (run folder or .safetensors)")


def _transformation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--old", required=True, help="the old model (run folder or .safetensors)")
    p.add_argument("--new", required=True, help="the new model")
    p.add_argument("--side", default=None, help="the side-information model (omit: FCT without side information)")


# ------------------------------------------------------------------------------------------------- galleries
def _embed(args: argparse.Namespace) -> int:
    from bramley.core.recipe import load_recipe
    from bramley.core.train.distributed import resolve_device

    from .backfill import save_gallery
    from .data import build_dataset
    from .pipeline import check_embedder
    from .train import embed_dataset

    check_writable(args.out)
    device = resolve_device(args.device)
    recipe = load_recipe(SCHEMA, args.recipe, args.overrides)
    model = _load(args.checkpoint)
    check_embedder(model, args.checkpoint)
    side = _load(args.side) if args.side is not None else None
    if side is not None:
        check_embedder(side, args.side)
    data, _ = build_dataset(recipe.data, args.split)
    kw = {
        "batch_size": recipe.eval.batch_size or recipe.train.batch_size,
        "device": device,
        "num_workers": recipe.train.num_workers,
    }
    embeddings, labels = embed_dataset(model, data, **kw)
    tensors = {"embeddings": embeddings, "labels": labels}
    if side is not None:
        tensors["side_info"] = embed_dataset(side, data, **kw)[0]
    save_gallery(args.out, **tensors)
    print(f"wrote {len(labels)} embeddings ({', '.join(tensors)}) to {args.out}")
    return 0


def _embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the model whose embeddings to store (run folder, .safetensors)")
    p.add_argument("--side", default=None, help="also store this side-information model's output (side_info)")
    p.add_argument("--split", choices=["val", "train"], default="val", help="the recipe's evaluation or training split")
    p.add_argument(
        "--recipe", default=None, help=f"the data: bundled recipe or .yaml (default: {SCHEMA.default_recipe})"
    )
    p.add_argument("--out", type=Path, required=True, help="the gallery file (.safetensors)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. data.root=/data/cifar100 eval.batch_size=512"
    )


def _transform_gallery(args: argparse.Namespace) -> int:
    from bramley.core.train.distributed import resolve_device

    from .backfill import transform_gallery
    from .models import FCTTransformation

    check_writable(args.out)
    device = resolve_device(args.device)
    transformation = _load(args.checkpoint)
    if not isinstance(transformation, FCTTransformation):
        name = transformation.model_config.get("name", type(transformation).__name__)
        raise ConfigError(f"--checkpoint {args.checkpoint} holds {name}, not an fct_transformation")
    result = transform_gallery(
        transformation,
        args.gallery,
        args.out,
        side_info_path=args.side_info,
        batch_size=args.batch_size,
        device=device,
        resume=not args.restart,
        max_batches=args.max_batches,
        progress=not args.no_progress,
    )
    if result.complete:
        print(f"backfilled {result.num_items} embeddings into {result.out_path}")
    else:
        print(f"stopped after {result.batches_done}/{result.batches_total} batches; run the same command to resume")
    return 0


def _transform_gallery_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the transformation (run folder or .safetensors)")
    p.add_argument("--gallery", required=True, help="safetensors with 'embeddings' (and 'side_info', 'labels', ...)")
    p.add_argument("--side-info", default=None, help="separate safetensors file with 'side_info'")
    p.add_argument("--out", type=Path, required=True, help="the backfilled gallery (.safetensors)")
    p.add_argument("--batch-size", type=positive_int, default=4096, help="items per batch (and per resumable part)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--restart", action="store_true", help="discard an unfinished backfill instead of resuming it")
    p.add_argument("--max-batches", type=positive_int, default=None, help="stop after this many batches (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _eval(args: argparse.Namespace) -> int:
    from bramley.core.report import format_table
    from bramley.core.train.distributed import resolve_device

    from .backfill import gallery_metrics

    check_writable(args.out)
    device = resolve_device(args.device)
    metrics = gallery_metrics(args.query, args.gallery, metric=args.metric, device=device)
    row = {"query": Path(args.query).name, "gallery": Path(args.gallery).name, **metrics}
    print(format_table([row], digits=2))
    if args.out is not None:
        write_json(args.out, row, echo=False)
    return 0


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--query", required=True, help="safetensors with 'embeddings' and 'labels' (embed's output)")
    p.add_argument("--gallery", required=True, help="safetensors with 'embeddings' and 'labels' of the same images")
    p.add_argument("--metric", choices=["l2", "cosine"], default="l2", help="distance (l2: the official one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--out", type=Path, default=None, help="also write the metrics to this JSON file")


# -------------------------------------------------------------------------------------------------------- cli
cli = MethodCLI("fct", "FCT: forward compatible training for large-scale embedding retrieval.", EPILOG)
cli.add_info()
cli.add_train(SCHEMA, train_chain, "train the whole chain (old, new, side-info, transformation) and evaluate it")
cli.add_train(
    SCHEMA,
    _train_backbone,
    "train the old or the new model (or the BCT new model)",
    "train-backbone",
    _backbone_arguments,
)
cli.add_train(SCHEMA, _train_side_info, "train the side-information model on the old classes", "train-side-info")
cli.add_train(
    SCHEMA,
    _train_transformation,
    "train h(old, side) -> new, the others frozen",
    "train-transformation",
    _transformation_arguments,
)
cli.add_command(
    "embed", _embed, "embed the recipe's evaluation (or training) split into a gallery file", _embed_arguments
)
cli.add_command(
    "transform-gallery",
    _transform_gallery,
    "backfill: transform stored old embeddings into the new space",
    _transform_gallery_arguments,
)
cli.add_command(
    "eval", _eval, "CMC top-1/5, mAP, mAP@R of query embeddings against a gallery (leave-one-out)", _eval_arguments
)
cli.add_convert(convert_official, "convert an official apple/ml-fct transformation state dict (MLP_BN_SIDE_PROJECTION)")
cli.add_reproduce("bramley.fct.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bramley-fct`` console script and the ``bramley fct`` entry point."""
    return cli.main(argv)


if __name__ == "__main__":  # torchrun --nproc_per_node 8 -m bramley.fct.cli train --recipe cifar100 ...
    sys.exit(main())
