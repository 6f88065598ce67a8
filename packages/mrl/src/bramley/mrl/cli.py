"""Command line of bramley-mrl (also available as `bramley mrl`).

Subcommands: ``train`` (a backbone + Matryoshka head on an ImageFolder), ``eval`` (top-1 of every nesting size),
``embed`` (representations of an ImageFolder to safetensors), ``retrieve`` (exact / shortlist-rerank / funnel search
between two embedding files, with metrics), ``bench`` (funnel vs exact search on generated data), ``reproduce``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bramley.core.cli import add_config_arguments, config_from_args, run_method_cli
from bramley.core.config import ConfigError
from bramley.core.config import recipe_path as core_recipe_path  # the package's wrapper keeps its name

TRAIN_DEFAULTS: dict[str, Any] = {
    "model": {"backbone": "resnet50", "source": "auto", "nesting": None, "efficient": False, "backbone_kwargs": {}},
    "data": {"train": None, "val": None, "image_size": 224, "val_image_size": None, "crop_pct": 0.875},
    "loss": {"label_smoothing": 0.1, "relative_importance": None},
    "train": {},  # filled with TrainConfig's defaults
}


def recipe_path(name: str) -> Path:
    """Path of a packaged recipe (``imagenet_resnet50``) or of a YAML file given directly."""
    return core_recipe_path("mrl", name)


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2)
    if path is None:
        print(text)
        return
    from bramley.core.checkpoint import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.data import ImageFolder
    from bramley.core.train import TrainConfig, Trainer

    from .losses import MatryoshkaLoss
    from .model import build_mrl_model, save_mrl_model
    from .train import mrl_eval_fn, mrl_loss_fn

    if args.recipe is not None:
        if args.config is not None:
            raise ConfigError("give either --recipe or --config, not both")
        args.config = recipe_path(args.recipe)
    if args.out is None:
        raise ConfigError("train needs --out DIR")
    defaults = {**TRAIN_DEFAULTS, "train": TrainConfig().to_dict()}  # every trainer setting can be overridden
    config = config_from_args(args, defaults)
    data, mcfg = config["data"], config["model"]
    if not data.get("train"):
        raise ConfigError("set the training folder: data.train=/path/to/train (root/<class>/<image>)")
    train_set = ImageFolder(data["train"], train=True, image_size=data["image_size"])
    val_set = None
    if data.get("val"):
        val_size = data.get("val_image_size") or data["image_size"]
        val_set = ImageFolder(data["val"], image_size=val_size, crop_pct=data["crop_pct"])
        if val_set.classes != train_set.classes:
            raise ConfigError(f"train and val folders have different classes: {train_set.classes} vs {val_set.classes}")
    model = build_mrl_model(
        mcfg["backbone"],
        num_classes=len(train_set.classes),
        nesting=mcfg.get("nesting"),
        efficient=bool(mcfg.get("efficient")),
        source=mcfg.get("source", "auto"),
        backbone_kwargs=mcfg.get("backbone_kwargs") or {},
    )
    loss = MatryoshkaLoss(config["loss"].get("relative_importance"), config["loss"].get("label_smoothing", 0.0))
    if loss.relative_importance is not None and len(loss.relative_importance) != len(model.nesting):
        raise ConfigError(
            f"loss.relative_importance has {len(loss.relative_importance)} weights for nesting {model.nesting}"
        )
    cfg = TrainConfig.from_dict(config["train"], out_dir=str(args.out))
    trainer = Trainer(
        model,
        cfg,
        train_data=train_set,
        loss_fn=mrl_loss_fn(loss, model.nesting),
        eval_data=val_set,
        eval_fn=mrl_eval_fn(model.nesting) if val_set is not None else None,
    )
    metrics = trainer.fit()
    if trainer.dist.is_main:
        trained = trainer.model
        trained.model_config = model.model_config
        path = save_mrl_model(trained.to(torch.device("cpu")), args.out / "model.safetensors")
        summary = {"metrics": metrics, "classes": train_set.classes, "model": str(path)}
        _write_json(args.out / "train_results.json", summary)
    return 0


# ---------------------------------------------------------------------------------------------------------- eval
def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.data import ImageFolder

    from .model import load_mrl_model
    from .train import mrl_eval_fn

    model = load_mrl_model(args.checkpoint).eval()
    data = ImageFolder(args.data, image_size=args.image_size, crop_pct=args.crop_pct)
    if len(data.classes) != model.head.num_classes:
        raise ValueError(
            f"{args.data} has {len(data.classes)} classes but the model was trained on {model.head.num_classes}"
        )
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    with torch.no_grad():
        metrics = mrl_eval_fn(model.nesting)(model, loader)
    _write_json(args.out, {"checkpoint": str(args.checkpoint), "data": str(args.data), "metrics": metrics})
    return 0


# ---------------------------------------------------------------------------------------------------------- embed
def cmd_embed(args: argparse.Namespace) -> int:
    from bramley.core.data import ImageFolder

    from .embeddings import save_embeddings
    from .model import load_mrl_model
    from .train import embed_dataset

    model = load_mrl_model(args.checkpoint)
    data = ImageFolder(args.data, image_size=args.image_size, crop_pct=args.crop_pct)
    feats, labels = embed_dataset(model, data, batch_size=args.batch_size)
    meta = {
        "model": model.model_config,
        "nesting": model.nesting,
        "classes": data.classes,
        "source": str(args.data),
    }
    path = save_embeddings(args.out, feats, labels, meta)
    print(f"wrote {path}: {feats.shape[0]} x {feats.shape[1]} embeddings")
    return 0


# ---------------------------------------------------------------------------------------------------------- retrieve
def cmd_retrieve(args: argparse.Namespace) -> int:
    from bramley.core.retrieval import ranking_metrics as retrieval_metrics

    from .embeddings import load_embeddings
    from .retrieval import MatryoshkaIndex

    db, queries = load_embeddings(args.index), load_embeddings(args.queries)
    if db.embeddings.shape[1] != queries.embeddings.shape[1]:
        raise ValueError(
            f"index {args.index} has {db.embeddings.shape[1]}-dim embeddings but queries {args.queries} have "
            f"{queries.embeddings.shape[1]}-dim ones"
        )
    index = MatryoshkaIndex(db.embeddings, backend=args.backend)
    if args.rerank_dims:
        if args.dim is not None:
            raise ValueError("--dim is for exact search; a funnel takes --retrieval-dim, --rerank-dims, --shortlists")
        if args.retrieval_dim is None or not args.shortlists:
            raise ValueError("a funnel needs --retrieval-dim, --rerank-dims and --shortlists")
        result = index.funnel(queries.embeddings, args.retrieval_dim, args.rerank_dims, args.shortlists)
        search = {
            "mode": "funnel" if len(args.rerank_dims) > 1 else "shortlist_rerank",
            "retrieval_dim": args.retrieval_dim,
            "rerank_dims": args.rerank_dims,
            "shortlists": args.shortlists,
        }
    else:
        if args.retrieval_dim is not None or args.shortlists:
            raise ValueError("--retrieval-dim/--shortlists need --rerank-dims (use --dim for exact search)")
        result = index.search(queries.embeddings, args.k, args.dim)
        search = {"mode": "exact", "dim": args.dim or index.dim, "k": args.k}
    payload: dict[str, Any] = {
        "index": str(args.index),
        "queries": str(args.queries),
        "backend": args.backend,
        "search": search,
        "mflops_per_query": result.mflops_per_query,
    }
    if db.labels is not None and queries.labels is not None:
        ks = [k for k in args.ks if k <= result.indices.shape[1]]
        skipped = sorted(set(args.ks) - set(ks))
        if skipped:
            print(f"note: cut-offs {skipped} exceed the {result.indices.shape[1]} neighbours returned; not computed")
        payload["metrics"] = retrieval_metrics(result.indices, queries.labels, db.labels, ks=ks or [1])
    else:
        print("note: no labels in the embedding files, so no metrics (neighbours only)")
    if args.neighbors is not None:
        from safetensors.torch import save_file

        from bramley.core.checkpoint import atomic_write

        tensors = {"indices": result.indices.contiguous(), "scores": result.scores.contiguous()}
        meta = {"search": json.dumps(search), "index": str(args.index), "queries": str(args.queries)}
        atomic_write(args.neighbors, lambda tmp: save_file(tensors, tmp, metadata=meta))
        payload["neighbors"] = str(args.neighbors)
    _write_json(args.out, payload)
    return 0


# ---------------------------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from bramley.core.report import environment

    from .bench import DEFAULT_FUNNEL, PAPER_FUNNEL, run_benchmark

    funnels = [DEFAULT_FUNNEL, PAPER_FUNNEL]
    if args.rerank_dims:
        if args.retrieval_dim is None or not args.shortlists:
            raise ValueError("a custom funnel needs --retrieval-dim, --rerank-dims and --shortlists")
        funnels = [
            {"retrieval_dim": args.retrieval_dim, "rerank_dims": args.rerank_dims, "shortlists": args.shortlists}
        ]
    result = run_benchmark(
        num_database=args.num_database,
        num_queries=args.num_queries,
        dim=args.dim,
        num_classes=args.num_classes,
        funnels=funnels,
        dtype=args.dtype,
        repeats=args.repeats,
        backend=args.backend,
        seed=args.seed,
    )
    result["environment"] = environment()
    e = result["exact"]
    print(
        f"{args.num_database} x {args.dim} {args.dtype} database, {args.num_queries} queries, {args.backend}: "
        f"exact search {e['queries_per_s']:.2f} queries/s, top-1 {e['top1']:.4f}"
    )
    for f in result["funnels"]:
        k = f["shortlists"][-1]
        print(
            f"  funnel {f['retrieval_dim']} -> {f['rerank_dims']} shortlists {f['shortlists']}: "
            f"{f['queries_per_s']:.2f} queries/s ({f['speedup']:.1f}x), top-1 {f['top1']:.4f} "
            f"({f['top1_minus_exact']:+.4f}), recall@{k} vs exact {f[f'recall@{k}_vs_exact']:.3f}"
        )
    _write_json(args.out, result)
    return 0


# ---------------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bramley-mrl", description="Matryoshka Representation Learning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a backbone + Matryoshka head on an ImageFolder")
    p.add_argument("--recipe", default=None, help="packaged recipe name (imagenet_resnet50) or YAML path")
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    def image_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors written by train")
        p.add_argument("--data", type=Path, required=True, help="ImageFolder root (root/<class>/<image>)")
        p.add_argument("--image-size", type=int, default=224)
        p.add_argument("--crop-pct", type=float, default=0.875)
        p.add_argument("--batch-size", type=int, default=128)

    p = sub.add_parser("eval", help="top-1 accuracy of every nesting size on an ImageFolder")
    image_args(p)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: print)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("embed", help="write full-size embeddings + labels of an ImageFolder to safetensors")
    image_args(p)
    p.add_argument("--out", type=Path, required=True, help="output .safetensors")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("retrieve", help="exact, shortlist-rerank or funnel search of queries against an index")
    p.add_argument("--index", type=Path, required=True, help="database embeddings (.safetensors from embed)")
    p.add_argument("--queries", type=Path, required=True, help="query embeddings (.safetensors from embed)")
    p.add_argument("--dim", type=int, default=None, help="exact search at this size (default: full)")
    p.add_argument("--k", type=int, default=10, help="neighbours returned by exact search")
    p.add_argument("--retrieval-dim", type=int, default=None, help="funnel: size of the first full search")
    p.add_argument("--rerank-dims", type=int, nargs="+", default=None, help="funnel: rerank sizes (one = rerank)")
    p.add_argument("--shortlists", type=int, nargs="+", default=None, help="funnel: shortlist length per stage")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10], help="metric cut-offs")
    p.add_argument("--backend", choices=["torch", "faiss"], default="torch")
    p.add_argument("--neighbors", type=Path, default=None, help="also save indices + scores to this .safetensors")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: print)")
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("bench", help="funnel vs full-size exact search on generated Matryoshka-like data")
    p.add_argument("--num-database", type=int, default=200_000, help="database size (1000000 for the full bench)")
    p.add_argument("--num-queries", type=int, default=256)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="database storage")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--backend", choices=["torch", "faiss"], default="torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrieval-dim", type=int, default=None, help="custom funnel (default: two built-in funnels)")
    p.add_argument("--rerank-dims", type=int, nargs="+", default=None)
    p.add_argument("--shortlists", type=int, nargs="+", default=None)
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: print)")
    p.set_defaults(func=cmd_bench)

    sub.add_parser("reproduce", help="run the mini reproduction (options: reproduce --help)", add_help=False)
    return parser


def _reproduce(argv: list[str]) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_method_cli(build_parser(), argv, passthrough={"reproduce": _reproduce})


if __name__ == "__main__":
    import sys

    sys.exit(main())
