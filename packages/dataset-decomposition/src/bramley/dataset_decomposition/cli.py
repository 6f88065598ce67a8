"""Command line of bramley-dataset-decomposition (also available as `bramley dataset-decomposition`).

Core's verbs: ``info`` (the dd_gpt_* models), ``train`` (a recipe: DD buckets or concat-and-chunk with the core
trainer, single process or torchrun DDP/FSDP; see :mod:`.recipe`), ``eval`` (per-bucket held-out loss of a trained
model), ``reproduce`` (the mini reproduction). The package's own: ``make-buckets`` (text -> on-disk buckets) and
``bench`` (training tokens/s, DD vs concat-and-chunk).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bramley.core.cli import MethodCLI, add_threads_argument, positive_int, torch_threads, write_json

from .make_buckets import add_make_buckets_arguments, run_make_buckets
from .model import CONFIGS
from .recipe import RECIPES, train_recipe


# ------------------------------------------------------------------------------------------------------------ eval
def evaluate_buckets(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Held-out loss of a trained model on a bucket folder: over all rows read, and per bucket length."""
    import torch

    from bramley.core.errors import CheckpointError, DataError

    from .buckets import Buckets
    from .model import DDGPT
    from .recipe import check_fits_model
    from .train import evaluate_lm

    if not isinstance(model, DDGPT):
        name = getattr(model, "model_config", {}).get("name", type(model).__name__)
        raise CheckpointError(f"{args.checkpoint} holds {name}, not a Dataset Decomposition language model (dd_gpt_*)")
    buckets = Buckets(args.buckets)
    rows = {n: buckets.array(b)[: args.rows_per_bucket] for b, n in enumerate(buckets.lengths)}
    rows = {n: torch.from_numpy(r.astype("int64")) for n, r in rows.items() if len(r)}
    if not rows:
        raise DataError(f"{args.buckets} holds no rows")
    check_fits_model(model, buckets.vocab_size, max(rows), f"--buckets {args.buckets}")
    device = next(model.parameters()).device
    per_bucket = {n: evaluate_lm(model, [b.to(device) for b in r.split(args.batch_size)]) for n, r in rows.items()}
    tokens = sum(m["tokens"] for m in per_bucket.values())
    loss = sum(m["loss"] * m["tokens"] for m in per_bucket.values()) / tokens  # token-weighted, as evaluate_lm
    return {
        "buckets": str(args.buckets),
        "loss": {"loss": loss, "bits_per_token": loss / math.log(2), "tokens": tokens},
        "loss_by_bucket_length": {str(n): m["loss"] for n, m in per_bucket.items()},
    }


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--buckets", type=Path, required=True, help="held-out bucket folder (make-buckets output)")
    p.add_argument("--rows-per-bucket", type=positive_int, default=256, help="rows read from the start of each bucket")
    p.add_argument("--batch-size", type=positive_int, default=16)


# ----------------------------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    """Training tokens/s of each method at one maximum context, interleaved rounds; prints a table and the JSON."""
    import os

    import torch

    from bramley.core.report import environment, replace_marked

    from .bench import markdown_table, run_benchmark

    load_before = os.getloadavg()[0]
    kwargs = {k: v for k, v in (("dim", args.dim), ("depth", args.depth), ("num_heads", args.num_heads)) if v}
    with torch_threads(args.threads):
        result = run_benchmark(
            args.model, model_kwargs=kwargs, min_log2=args.min_log2, max_log2=args.max_log2,
            tokens_per_step=args.tokens_per_step, steps=args.steps, rounds=args.rounds, warmup=args.warmup,
            device=args.device, amp=args.amp, methods=tuple(args.methods), seed=args.seed,
        )  # fmt: skip
        result["environment"] = environment()  # records the thread count used, as the table does
        threads = torch.get_num_threads()
    result["load_average"] = [load_before, os.getloadavg()[0]]
    shown = ("min_log2", "max_log2", "tokens_per_step", "steps", "rounds", "warmup")  # the sizes, even at defaults
    defaults = vars(_bench_parser().parse_args([]))
    words = []
    for name, default in defaults.items():
        value = getattr(args, name, default)
        if value != default or name in shown:
            value = " ".join(value) if isinstance(value, list) else value
            words += [f"--{name.replace('_', '-')}", str(value)]
    body = markdown_table(result, " ".join(["bramley dataset-decomposition bench", *words]), threads)
    print(body)
    write_json(args.out, result)
    if args.markdown is not None:
        replace_marked(args.markdown, f"bench_dd:{result['device']}-context{1 << args.max_log2}", body)
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="dd_gpt_tiny", help="a registered dd_gpt_* model")
    p.add_argument("--dim", type=positive_int, default=None)
    p.add_argument("--depth", type=positive_int, default=None)
    p.add_argument("--num-heads", type=positive_int, default=None)
    p.add_argument("--min-log2", type=int, default=4)
    p.add_argument("--max-log2", type=int, default=9, help="maximum context 2^max_log2 (13 for 8k)")
    p.add_argument("--tokens-per-step", type=positive_int, default=4096)
    p.add_argument("--steps", type=positive_int, default=6, help="timed steps per method and round")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved rounds (order rotates; median ratio)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 0)")
    p.add_argument("--methods", nargs="+", default=["cc", "cc_dm", "dd"], choices=["cc", "cc_dm", "dd"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)
    add_threads_argument(p, default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON results to this file")
    p.add_argument("--markdown", type=Path, default=None, help="write the result table into this markdown file")


def _bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    _bench_arguments(parser)
    return parser


# ---------------------------------------------------------------------------------------------------------- parser
def _model_columns(name: str) -> dict[str, Any]:
    config = CONFIGS[name]
    return {
        "dim": config["dim"],
        "depth": config["depth"],
        "heads": config["num_heads"],
        "context": config["max_seq_len"],
    }


cli = MethodCLI(
    "dataset-decomposition", "Dataset Decomposition: Faster LLM Training with Variable Sequence Length Curriculum."
)
cli.add_command(
    "make-buckets",
    run_make_buckets,
    "tokenize and decompose text files into on-disk buckets",
    add_make_buckets_arguments,
)
cli.add_train(RECIPES, train_recipe, "train a GPT on DD buckets or concat-and-chunk (recipes; torchrun for DDP/FSDP)")
cli.add_eval(
    evaluate_buckets, "held-out loss of a trained model on a bucket folder, per bucket length", _eval_arguments
)
cli.add_command(
    "bench", cmd_bench, "training tokens/s, DD vs concat-and-chunk, same model and tokens per step", _bench_arguments
)
cli.add_info(columns=_model_columns, note="vocab_size 257 (bytes) unless model.kwargs.vocab_size is set")
cli.add_reproduce("bramley.dataset_decomposition.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``bramley-dataset-decomposition`` console script and the ``bramley dataset-decomposition`` entry point."""
    return cli.main(argv)


if __name__ == "__main__":  # torchrun -m bramley.dataset_decomposition.cli train ...
    import sys

    sys.exit(main())
