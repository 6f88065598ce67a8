"""Command line of bramley-gbc (also ``bramley gbc``).

Data: ``stats`` (counts over graph files, streamed), ``validate`` (every problem with file and line;
``--skip-invalid`` counts bad graphs instead of stopping), ``convert`` (.jsonl / .json <-> .parquet, exact), ``view``
(one graph as a tree or in an official text form). Model: ``info``, ``train`` (a recipe), ``eval`` (retrieval and the
compositional probes of a trained GBC-CLIP), ``bench``, ``reproduce``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bramley.core.cli import MethodCLI, non_negative_int, positive_int, write_json
from bramley.core.errors import ConfigError, DataError

from .train import RECIPES, train

DESCRIPTION = "Graph-Based Captioning: GBC graphs, GBC-CLIP and structure-induced attention."

cli = MethodCLI("gbc", DESCRIPTION)
cli.add_info()


def _reader_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["jsonl", "json", "parquet"], default=None, help="default: from the suffix")
    p.add_argument("--skip-invalid", action="store_true", help="skip invalid graphs (counted) instead of stopping")
    p.add_argument(
        "--strict-edge-text", action="store_true", help="an edge text missing from its source's captions is an error"
    )


def _reader(path: Path, args: argparse.Namespace, validate: bool = True):
    from .io import read_graphs

    return read_graphs(
        path, fmt=args.format, validate=validate, strict_edge_text=args.strict_edge_text, skip_invalid=args.skip_invalid
    )


def _report_skips(reader) -> None:
    if reader.skipped or reader.warnings:
        print(
            f"{reader.path}: {reader.read} graphs read, {reader.skipped} invalid skipped, {reader.warnings} warnings",
            file=sys.stderr,
        )
        for message in reader.problems:
            print(f"  {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------------ stats
def _stats(args: argparse.Namespace) -> int:
    from .views import GraphStats

    stats = GraphStats()
    skipped = 0
    for path in args.files:
        reader = _reader(path, args)
        for graph in reader:
            stats.update(graph)
        skipped += reader.skipped
        _report_skips(reader)
    if stats.graphs == 0:
        raise DataError(f"no valid graphs in {', '.join(map(str, args.files))}")
    write_json(args.out, {"files": [str(f) for f in args.files], "skipped": skipped, **stats.summary()})
    return 0


def _stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", type=Path, nargs="+", help=".jsonl, .json or .parquet graph files")
    _reader_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="also write the statistics to this JSON file")


cli.add_command(
    "stats", _stats, "statistics of GBC graph files (vertices, edges, captions by label, depth)", _stats_arguments
)


# --------------------------------------------------------------------------------------------------- validate
def _validate(args: argparse.Namespace) -> int:
    from .graph import GbcGraph, GraphFormatError
    from .io import iter_records
    from .validate import validate_graph

    errors = warnings = graphs = 0
    for path in args.files:
        for record in iter_records(path, args.format):
            graphs += 1
            problems = []
            if record.error is not None:
                problems = [f"error: {record.error}"]
            else:
                try:
                    graph = GbcGraph.from_dict(record.value)
                    problems = [str(p) for p in validate_graph(graph, args.strict_edge_text)]
                except GraphFormatError as e:
                    problems = [f"error: {e}"]
            for p in problems:
                if p.startswith("error") or not args.quiet:
                    print(f"{path}:{record.where}: {p}")
            bad = any(p.startswith("error") for p in problems)
            errors += bad
            warnings += sum(p.startswith("warning") for p in problems)
    print(f"{graphs} graphs, {errors} invalid, {warnings} warnings")
    if errors and not args.skip_invalid:
        raise DataError(f"{errors} of {graphs} graphs are invalid (listed above; --skip-invalid accepts that)")
    return 0


def _validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", type=Path, nargs="+", help=".jsonl, .json or .parquet graph files")
    _reader_arguments(p)
    p.add_argument("--quiet", action="store_true", help="list errors only, not warnings")


cli.add_command(
    "validate", _validate, "check GBC graph files; every problem named with its file and line", _validate_arguments
)


# ---------------------------------------------------------------------------------------------------- convert
def _convert(args: argparse.Namespace) -> int:
    from .io import file_format, parquet_schema, write_graphs

    fmt_in = file_format(args.source, args.format)
    fmt_out = file_format(args.out)
    if Path(args.out).resolve() == Path(args.source).resolve():
        raise ConfigError(f"--out {args.out} is the source file")
    schema = parquet_schema(_reader(args.source, args)) if fmt_out == "parquet" else None
    reader = _reader(args.source, args)
    count = write_graphs(reader, args.out, schema=schema)
    _report_skips(reader)
    print(f"converted {count} graphs {args.source} ({fmt_in}) -> {args.out} ({fmt_out})")
    return 0


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="a .jsonl, .json or .parquet graph file")
    p.add_argument("--out", type=Path, required=True, help="destination (.jsonl, .json or .parquet)")
    _reader_arguments(p)


cli.add_command("convert", _convert, "convert GBC graph files between .jsonl, .json and .parquet", _convert_arguments)


# ------------------------------------------------------------------------------------------------------- view
def _view(args: argparse.Namespace) -> int:
    from .views import graph_text, tree_view

    reader = _reader(args.file, args, validate=False)
    for i, graph in enumerate(reader):
        if i == args.index:
            if args.form == "tree":
                print(tree_view(graph, width=args.width))
            else:
                text = graph_text(graph, args.form, args.order)
                print(text if isinstance(text, str) else "\n".join(map(str, text)))
            return 0
    raise DataError(f"{args.file} has {reader.read} graphs; --index {args.index} is out of range")


def _view_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="a .jsonl, .json or .parquet graph file")
    p.add_argument("--index", type=non_negative_int, default=0, help="which graph (0-based)")
    p.add_argument(
        "--form", choices=["tree", "set", "set_bbox", "concat", "structured"], default="tree", help="how to show it"
    )
    p.add_argument("--order", choices=["bfs", "dfs", "topological", "random"], default="bfs")
    p.add_argument("--width", type=positive_int, default=100, help="terminal width for the tree")
    _reader_arguments(p)


cli.add_command("view", _view, "show one graph as a tree or in an official text form", _view_arguments)


# ------------------------------------------------------------------------------------------------ train / eval
cli.add_train(RECIPES, train)


def _evaluate(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    from bramley.core.clip_eval import ClipTokenizer

    from .train import GbcData, GbcLoss, build_datasets, evaluate_retrieval

    if not hasattr(model, "encode_graphs"):
        raise ConfigError(f"{args.checkpoint} does not hold a GBC-CLIP model")
    if args.files:
        data = GbcData(
            source="files",
            train_files=[str(f) for f in args.files],
            image_root=str(args.image_root),
            image_size=args.image_size,
        )
    else:
        data = GbcData(image_size=args.image_size, num_train=1, num_val=args.num_scenes, data_seed=args.data_seed)
    dataset = build_datasets(data, GbcLoss(mode="short"), 0)[0 if args.files else 1]
    if args.files:
        dataset.caps = None
    metrics = evaluate_retrieval(model, dataset, ClipTokenizer(model.text.context_length))
    return {
        "data": [str(f) for f in args.files] or "synthetic scenes (val split)",
        "images": len(dataset),
        "metrics": metrics,
    }


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--files", type=Path, nargs="*", default=[], help="GBC graph files (default: synthetic scenes)")
    p.add_argument("--image-root", type=Path, default=Path("."), help="folder the graphs' img_path are under")
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--num-scenes", type=positive_int, default=300, help="synthetic scenes evaluated")
    p.add_argument("--data-seed", type=non_negative_int, default=0)


cli.add_eval(_evaluate, "image-text retrieval R@1/5 (and compositional probes on synthetic scenes)", _eval_arguments)


# ------------------------------------------------------------------------------------------------------ bench
def _bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmark

    result = run_benchmark(graphs=args.graphs, rounds=args.rounds, sia_graphs=args.sia_graphs, workdir=args.workdir)
    print(json.dumps(result, indent=2))
    write_json(args.out, result, echo=False)
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--graphs", type=positive_int, default=200_000, help="graphs in the generated streaming files")
    p.add_argument("--sia-graphs", type=positive_int, default=64, help="graphs per SIA forward+backward step")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds (median reported)")
    p.add_argument("--workdir", type=Path, default=None, help="where the generated files go (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")


cli.add_command(
    "bench", _bench, "streaming graphs/s and memory vs json.loads; SIA packed vs padded tokens/s", _bench_arguments
)

cli.add_reproduce("bramley.gbc.reproduce")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `bramley-gbc` and of `bramley gbc`."""
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
