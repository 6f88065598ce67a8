"""Command line of bramley-mrl (also ``bramley mrl``).

Shared verbs (core's argument shapes): ``info``, ``convert`` (official RAIVNLab/MRL checkpoints), ``train`` (a recipe
into a run folder), ``eval`` (top-1 / top-5 of every nesting size on an ImageFolder), ``reproduce``. MRL's own:
``embed`` (representations of an ImageFolder to safetensors), ``retrieve`` (exact / shortlist-rerank / funnel search
between two embedding files, with metrics) and ``bench`` (funnel vs exact search on generated data).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bramley.core.cli import MethodCLI, check_writable, positive_int, unit_float, write_json
from bramley.core.errors import CheckpointError, ConfigError, DataError

from .convert import convert_official
from .train import RECIPES, train

cli = MethodCLI("mrl", "Matryoshka Representation Learning: one embedding, accurate at every prefix size.")


# ------------------------------------------------------------------------------------------------------- helpers
def _mrl_model(model: Any, source: str) -> Any:
    from .model import MatryoshkaModel

    if not isinstance(model, MatryoshkaModel):
        name = getattr(model, "model_config", {}).get("name", type(model).__name__)
        raise CheckpointError(f"{source} holds a {name} model, not an MRL model (mrl_resnet50, mrl_backbone, mrl_mlp)")
    return model


def _image_folder(args: argparse.Namespace, model: Any):
    from bramley.core.data import ImageFolder

    data = ImageFolder(args.data, image_size=args.image_size, crop_pct=args.crop_pct)
    if len(data.classes) != model.num_classes:
        raise DataError(f"{args.data} has {len(data.classes)} classes but the model was trained on {model.num_classes}")
    return data


def _image_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root (root/<class>/<image>)")
    p.add_argument("--image-size", type=positive_int, default=224, help="center-crop size")
    p.add_argument("--crop-pct", type=unit_float, default=0.875, help="crop / resize ratio (224/256)")
    p.add_argument("--batch-size", type=positive_int, default=128)


# ------------------------------------------------------------------------------------------------------ info
def _info_columns(name: str) -> dict[str, Any]:
    import torch

    from bramley.core.registry import create_model

    with torch.device("meta"):
        model = create_model(name)
    nesting = model.nesting
    return {"representation": model.feature_dim, "nesting": f"{nesting[0]}..{nesting[-1]} ({len(nesting)} sizes)"}


cli.add_info(columns=_info_columns)


# --------------------------------------------------------------------------------------------------- convert
def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nesting", type=positive_int, nargs="+", default=None, help="MRL-E nesting (default 8 .. 2048)")
    p.add_argument("--efficient", action="store_true", help="a plain fc head is MRL-E (the official old notation)")


cli.add_convert(
    convert_official, "convert an official MRL / MRL-E ResNet-50 checkpoint (RAIVNLab/MRL)", _convert_arguments
)


# ----------------------------------------------------------------------------------------------------- train
cli.add_train(RECIPES, train)


# ------------------------------------------------------------------------------------------------------ eval
def _evaluate(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from bramley.core.progress import track
    from bramley.core.train.data import move_to_device

    from .train import nesting_eval

    model = _mrl_model(model, args.checkpoint)
    data = _image_folder(args, model)
    device = next(model.parameters()).device
    batches = track(DataLoader(data, batch_size=args.batch_size), desc="eval", unit="batch")
    metrics = nesting_eval(model, (move_to_device(batch, device) for batch in batches))
    return {"data": str(args.data), "images": len(data), "metrics": metrics}


cli.add_export()
cli.add_eval(
    _evaluate, "top-1 / top-5 accuracy (percent) of every nesting size on an ImageFolder", _image_data_arguments
)


# ----------------------------------------------------------------------------------------------------- embed
def _embed(args: argparse.Namespace) -> int:
    from bramley.core.checkpoint import load_model
    from bramley.core.train.distributed import resolve_device

    from .embeddings import embed_dataset, save_embeddings

    device = resolve_device(args.device)
    check_writable(args.out)
    model = _mrl_model(load_model(args.checkpoint, device=str(device)), args.checkpoint)
    data = _image_folder(args, model)
    feats, labels = embed_dataset(model, data, batch_size=args.batch_size)
    meta = {"model": model.model_config, "nesting": model.nesting, "classes": data.classes, "source": str(args.data)}
    path = save_embeddings(args.out, feats, labels, meta)
    print(f"wrote {path}: {feats.shape[0]} x {feats.shape[1]} embeddings")
    return 0


def _embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder, save_pretrained folder or .safetensors")
    _image_data_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="output .safetensors (embeddings, labels, metadata)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")


cli.add_command(
    "embed", _embed, "write the full-size embeddings + labels of an ImageFolder to safetensors", _embed_arguments
)


# -------------------------------------------------------------------------------------------------- retrieve
def _retrieve(args: argparse.Namespace) -> int:
    from bramley.core.retrieval import ranking_metrics

    from .embeddings import load_embeddings
    from .retrieval import MatryoshkaIndex

    funnel = args.rerank_dims is not None
    if funnel and args.dim is not None:
        raise ConfigError("--dim is for exact search; a funnel takes --retrieval-dim, --rerank-dims, --shortlists")
    if funnel and (args.retrieval_dim is None or args.shortlists is None):
        raise ConfigError("a funnel needs --retrieval-dim, --rerank-dims and --shortlists")
    if not funnel and (args.retrieval_dim is not None or args.shortlists is not None):
        raise ConfigError("--retrieval-dim/--shortlists need --rerank-dims (use --dim for exact search)")
    check_writable(args.out)
    check_writable(args.neighbors, "--neighbors")
    db, queries = load_embeddings(args.index), load_embeddings(args.queries)
    if db.embeddings.shape[1] != queries.embeddings.shape[1]:
        raise DataError(
            f"index {args.index} has {db.embeddings.shape[1]}-dim embeddings but queries {args.queries} have "
            f"{queries.embeddings.shape[1]}-dim ones"
        )
    db_rows, query_rows = _usable_rows(db, "index", args), _usable_rows(queries, "queries", args)
    db_embeddings, query_embeddings = db.embeddings[db_rows], queries.embeddings[query_rows]
    index = MatryoshkaIndex(db_embeddings, backend=args.backend)
    if funnel:
        result = index.funnel(query_embeddings, args.retrieval_dim, args.rerank_dims, args.shortlists)
        search = {
            "mode": "funnel" if len(args.rerank_dims) > 1 else "shortlist_rerank",
            "retrieval_dim": args.retrieval_dim,
            "rerank_dims": args.rerank_dims,
            "shortlists": args.shortlists,
        }
    else:
        result = index.search(query_embeddings, args.k, args.dim)
        search = {"mode": "exact", "dim": args.dim or index.dim, "k": args.k}
    neighbors = db_rows.nonzero().squeeze(1)[result.indices]  # rows of the index file, skipped ones included
    payload: dict[str, Any] = {
        "index": str(args.index),
        "queries": str(args.queries),
        "backend": args.backend,
        "search": search,
        "mflops_per_query": result.mflops_per_query,
    }
    if db.labels is not None and queries.labels is not None:
        ks = [k for k in args.ks if k <= neighbors.shape[1]]
        skipped = sorted(set(args.ks) - set(ks))
        if skipped:
            print(f"note: cut-offs {skipped} exceed the {neighbors.shape[1]} neighbours returned; not computed")
        payload["metrics"] = ranking_metrics(neighbors, queries.labels[query_rows], db.labels, ks=ks or [1])
    else:
        print("note: no labels in the embedding files, so no metrics (neighbours only)")
    if args.neighbors is not None:
        from safetensors.torch import save_file

        from bramley.core.checkpoint import atomic_write

        tensors = {"indices": neighbors.contiguous(), "scores": result.scores.contiguous()}
        meta = {"search": json.dumps(search), "index": str(args.index), "queries": str(args.queries)}
        atomic_write(args.neighbors, lambda tmp: save_file(tensors, tmp, metadata=meta))
        payload["neighbors"] = str(args.neighbors)
    write_json(args.out, payload)
    return 0


def _usable_rows(file, role: str, args: argparse.Namespace):
    """The rows of an embeddings file to search with: all of them, or (``--skip-non-finite``) the finite ones."""
    import torch

    from .retrieval import finite_rows

    rows = finite_rows(file.embeddings)
    skipped = int((~rows).sum())
    if skipped and args.skip_non_finite:
        print(f"warning: skipping {skipped} {role} rows with NaN or infinite values", file=sys.stderr)
        return rows
    return torch.ones_like(rows)  # non-finite rows are refused by the index, naming their count


def _retrieve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", type=Path, required=True, help="database embeddings (.safetensors from embed)")
    p.add_argument("--queries", type=Path, required=True, help="query embeddings (.safetensors from embed)")
    p.add_argument("--dim", type=positive_int, default=None, help="exact search at this size (default: full)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours returned by exact search")
    p.add_argument("--retrieval-dim", type=positive_int, default=None, help="funnel: size of the first full search")
    p.add_argument("--rerank-dims", type=positive_int, nargs="+", default=None, help="funnel: rerank sizes")
    p.add_argument("--shortlists", type=positive_int, nargs="+", default=None, help="funnel: shortlist per stage")
    p.add_argument("--ks", type=positive_int, nargs="+", default=[1, 5, 10], help="metric cut-offs")
    p.add_argument("--backend", choices=["torch", "faiss"], default="torch")
    p.add_argument("--neighbors", type=Path, default=None, help="also save indices + scores to this .safetensors")
    p.add_argument("--skip-non-finite", action="store_true", help="drop NaN / inf rows (with a warning) instead")
    p.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")


cli.add_command(
    "retrieve", _retrieve, "exact, shortlist-rerank or funnel search of queries against an index", _retrieve_arguments
)


# ----------------------------------------------------------------------------------------------------- bench
def _bench(args: argparse.Namespace) -> int:
    from bramley.core.report import environment

    from .bench import DEFAULT_FUNNEL, PAPER_FUNNEL, run_benchmark

    funnels = [DEFAULT_FUNNEL, PAPER_FUNNEL]
    if args.retrieval_dim is not None or args.rerank_dims is not None or args.shortlists is not None:
        if args.retrieval_dim is None or args.rerank_dims is None or args.shortlists is None:
            raise ConfigError("a custom funnel needs --retrieval-dim, --rerank-dims and --shortlists")
        funnel = {"retrieval_dim": args.retrieval_dim, "rerank_dims": args.rerank_dims, "shortlists": args.shortlists}
        funnels = [funnel]
    check_writable(args.out)
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
        f"exact search {e['queries_per_s']:.2f} queries/s, top-1 {e['top1']:.2f}%"
    )
    for f in result["funnels"]:
        k = f["shortlists"][-1]
        print(
            f"  funnel {f['retrieval_dim']} -> {f['rerank_dims']} shortlists {f['shortlists']}: "
            f"{f['queries_per_s']:.2f} queries/s ({f['speedup']:.1f}x), top-1 {f['top1']:.2f}% "
            f"({f['top1_minus_exact']:+.2f} pt), recall@{k} vs exact {f[f'recall@{k}_vs_exact']:.3f}"
        )
    write_json(args.out, result, echo=args.out is None)
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-database", type=positive_int, default=200_000, help="database size (1000000: full bench)")
    p.add_argument("--num-queries", type=positive_int, default=256)
    p.add_argument("--dim", type=positive_int, default=2048)
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="database storage")
    p.add_argument("--repeats", type=positive_int, default=1)
    p.add_argument("--backend", choices=["torch", "faiss"], default="torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrieval-dim", type=positive_int, default=None, help="custom funnel (default: two built in)")
    p.add_argument("--rerank-dims", type=positive_int, nargs="+", default=None)
    p.add_argument("--shortlists", type=positive_int, nargs="+", default=None)
    p.add_argument("--out", type=Path, default=None, help="write the results to this JSON file (default: print)")


cli.add_command("bench", _bench, "funnel vs full-size exact search on generated Matryoshka-like data", _bench_arguments)


# ------------------------------------------------------------------------------------------------- reproduce
cli.add_reproduce("bramley.mrl.reproduce")

main = cli.main

if __name__ == "__main__":
    sys.exit(main())
