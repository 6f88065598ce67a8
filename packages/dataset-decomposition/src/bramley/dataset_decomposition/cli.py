"""Command line of bramley-dataset-decomposition (also available as `bramley dataset-decomposition`).

Subcommands: ``make-buckets`` (text -> on-disk buckets), ``train`` (DD or concat-and-chunk with the core trainer,
single process or torchrun DDP/FSDP), ``eval`` (per-bucket held-out loss of a trained model), ``bench`` (training
tokens/s, DD vs concat-and-chunk), ``reproduce`` (the mini reproduction).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bramley.core.cli import add_config_arguments, config_from_args, run_method_cli
from bramley.core.config import ConfigError
from bramley.core.config import recipe_path as core_recipe_path  # the package's wrapper keeps its name

METHOD_CHOICES = ("dd", "concat_chunk")

TRAIN_DEFAULTS: dict[str, Any] = {
    # null model settings keep the factory's value
    "model": {
        "name": "dd_gpt_tiny",
        "vocab_size": None,
        "dim": None,
        "depth": None,
        "num_heads": None,
        "max_seq_len": None,
        "rope_base": None,
        "norm": None,
        "tie_embeddings": None,
        "qk_norm": None,
    },
    "data": {
        "method": "dd",  # dd | concat_chunk
        "tokens_per_step": 16384,  # input tokens per process and micro-batch, both methods
        # dd: a folder written by make-buckets
        "buckets": None,
        "curriculum": "grow_p2",
        "num_cycles": 8,
        # concat_chunk: jsonl / text files or folders, read as make-buckets reads them (into memory)
        "documents": None,
        "pattern": "**/*.txt",
        "text_field": "text",
        "txt_mode": "file",
        "tokenizer": "byte",
        "seq_len": 8192,
        "document_masking": False,
        # optional held-out buckets (make-buckets output), evaluated at the end
        "val_buckets": None,
        "val_rows_per_bucket": 64,
    },
    "loss": {"z_loss": 0.0},
    "train": {},  # filled with TrainConfig's defaults
}


def recipe_path(name: str) -> Path:
    """Path of a packaged recipe (``openlm_1b_dd``) or of a YAML file given directly."""
    return core_recipe_path("dataset-decomposition", name)


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, indent=2, default=float)
    if path is None:
        print(text)
        return
    from bramley.core.checkpoint import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    print(f"wrote {path}")


def build_model_from_config(mcfg: dict[str, Any]):
    """The registry model named in ``mcfg`` with its non-null settings."""
    from bramley.core.registry import create_model

    from . import model as _  # noqa: F401  (registers the dd_gpt_* models)

    kwargs = {k: v for k, v in mcfg.items() if k != "name" and v is not None}
    try:
        return create_model(mcfg["name"], **kwargs)
    except (KeyError, ValueError, TypeError) as err:  # unknown name, invalid sizes
        raise ConfigError(f"model: {err.args[0] if isinstance(err, KeyError) else err}") from err


def _val_batches(path: str, rows_per_bucket: int) -> list:
    """The first ``rows_per_bucket`` rows of every bucket of a held-out bucket folder, one batch per bucket."""
    import torch

    from .buckets import BucketFormatError, Buckets

    try:
        buckets = Buckets(path)
    except BucketFormatError as err:
        raise ConfigError(f"data.val_buckets: {err}") from err
    batches = []
    for b in range(len(buckets)):
        rows = buckets.array(b)[:rows_per_bucket]
        if len(rows):
            batches.append(torch.from_numpy(rows.astype("int64")))
    if not batches:
        raise ConfigError(f"validation buckets {path} hold no rows")
    return batches


# ----------------------------------------------------------------------------------------------------------- train
def build_training(config: dict[str, Any], rank: int = 0, world_size: int = 1):
    """``(train_data, batch_sampler, tokens_per_step)`` for the configured method (``batch_sampler`` None: rows).

    Raises:
        ConfigError: unknown method, missing data path, or data that does not fit the settings (the message names it).
    """
    data = config["data"]
    method = data["method"]
    if method not in METHOD_CHOICES:
        raise ConfigError(f"data.method must be one of {', '.join(METHOD_CHOICES)}, got {method!r}")
    if method == "dd" and not data.get("buckets"):
        raise ConfigError("data.method=dd needs data.buckets=DIR (a folder written by make-buckets)")
    if method == "concat_chunk" and not data.get("documents"):
        raise ConfigError("data.method=concat_chunk needs data.documents=PATH (jsonl / text files or folders)")
    try:
        tokens_per_step = int(data["tokens_per_step"])
        if method == "dd":
            return _dd_data(data, tokens_per_step, int(config["train"]["seed"]), rank, world_size)
        return _concat_chunk_data(data, tokens_per_step, int(config["train"]["seed"]))
    except (ValueError, FileNotFoundError, ImportError) as err:  # BucketFormatError is a ValueError
        raise ConfigError(f"data ({method}): {err}") from err


def _dd_data(data: dict[str, Any], tokens_per_step: int, seed: int, rank: int, world_size: int):
    from .buckets import Buckets
    from .sampling import BucketBatchSampler

    buckets = Buckets(data["buckets"])
    sampler = BucketBatchSampler.from_buckets(
        buckets, tokens_per_step, curriculum=data["curriculum"], num_cycles=int(data["num_cycles"]), seed=seed,
        num_replicas=world_size, rank=rank,
    )  # fmt: skip
    return buckets.dataset(), sampler, tokens_per_step


def _concat_chunk_data(data: dict[str, Any], tokens_per_step: int, seed: int):
    from .baseline import ConcatChunkDataset
    from .make_buckets import read_documents

    seq_len = int(data["seq_len"])
    if tokens_per_step % seq_len:
        raise ValueError(f"data.tokens_per_step ({tokens_per_step}) must be a multiple of data.seq_len ({seq_len})")
    sources = data["documents"] if isinstance(data["documents"], list) else [data["documents"]]
    documents = read_documents(
        sources, pattern=data["pattern"], text_field=data["text_field"], txt_mode=data["txt_mode"]
    )
    dataset = ConcatChunkDataset.from_documents(
        documents, seq_len, tokenizer=data["tokenizer"], seed=seed, return_segments=bool(data["document_masking"])
    )
    return dataset, None, tokens_per_step


def _check_data_fits_model(model: Any, train_data: Any, sampler: Any, seq_len: int) -> None:
    """``ConfigError`` before training (not at the first batch that trips it) when the data's token ids exceed the
    model's vocabulary or its longest drawn sequence exceeds ``model.max_seq_len``."""
    from .buckets import BucketDataset

    if isinstance(train_data, BucketDataset):
        vocab = train_data.buckets.vocab_size  # the tokenizer's, from the manifest
        longest = max(n for n, batches in zip(sampler.lengths, sampler.batches_per_bucket) if batches)
    else:
        vocab = int(train_data.tokens.max()) + 1  # concat-and-chunk: the stream is in memory
        longest = seq_len
    if vocab is not None and vocab > model.vocab_size:
        raise ConfigError(
            f"the training data holds token ids up to {vocab - 1} but model.vocab_size={model.vocab_size}: "
            f"set model.vocab_size={vocab} or more (or use the tokenizer the model was meant for)"
        )
    if longest > model.max_seq_len:
        raise ConfigError(
            f"the training data has sequences of {longest} tokens but model.max_seq_len={model.max_seq_len}"
        )


def cycle_coverage_note(batches_per_epoch: int, num_cycles: int, cfg: Any) -> str | None:
    """A warning when ``train.steps`` ends inside an epoch of the buckets, so the curriculum's last cycles never run.

    The sampler's cycles divide one pass over the buckets; the official code instead sizes its cycles ("epochs") to
    the token budget. The two agree only when the steps cover whole passes, which this checks.
    """
    if cfg.steps is None:
        return None
    epochs = cfg.steps * cfg.grad_accum_steps / batches_per_epoch
    last = epochs - math.floor(epochs)
    if last == 0:
        return None
    whole = max(1, round(epochs)) * batches_per_epoch // cfg.grad_accum_steps
    return (
        f"train.steps={cfg.steps} covers {epochs:.3f} passes over the buckets ({batches_per_epoch} batches each, "
        f"{num_cycles} curriculum cycles per pass): the last pass stops in cycle {math.ceil(last * num_cycles)} of "
        f"{num_cycles}. For whole cycles set train.steps={whole} (or sample the buckets to the token budget)"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from bramley.core.train import TrainConfig, Trainer
    from bramley.core.train.distributed import init_distributed

    from .train import TrainingMeter, evaluate_lm, lm_loss_fn

    if args.recipe is not None:
        if args.config is not None:
            raise ConfigError("give either --recipe or --config, not both")
        args.config = recipe_path(args.recipe)
    if args.out is None:
        raise ConfigError("train needs --out DIR")
    defaults = {**TRAIN_DEFAULTS, "train": TrainConfig().to_dict()}
    config = config_from_args(args, defaults)
    cfg = TrainConfig.from_dict(config["train"], out_dir=str(args.out))
    info, _ = init_distributed(cfg.device)  # before the sampler, so it shards for this rank
    train_data, sampler, tokens_per_step = build_training(config, info.rank, info.world_size)
    if sampler is None:
        seq_len = int(config["data"]["seq_len"])
        cfg = cfg.replace(batch_size=tokens_per_step // seq_len)
    elif info.is_main and (note := cycle_coverage_note(len(sampler), sampler.num_cycles, cfg)):
        warnings.warn(note, stacklevel=1)
    model = build_model_from_config(config["model"])
    _check_data_fits_model(model, train_data, sampler, int(config["data"]["seq_len"]))
    meter = TrainingMeter.for_model(model, world_size=info.world_size)
    val = config["data"].get("val_buckets")
    val_batches = _val_batches(val, int(config["data"]["val_rows_per_bucket"])) if val else None  # fail before training
    trainer = Trainer(
        model, cfg, train_data=train_data, loss_fn=lm_loss_fn(float(config["loss"]["z_loss"]), meter),
        batch_sampler=sampler, callbacks=[meter],
    )  # fmt: skip
    metrics = trainer.fit()
    summary: dict[str, Any] = {"metrics": metrics, "cost": meter.totals(), "method": config["data"]["method"]}
    summary["tokens_by_sequence_length"] = {str(k): v for k, v in sorted(meter.seq_len_tokens.items())}
    if val_batches is not None:
        summary["val"] = evaluate_lm(trainer.model, [b.to(trainer.device) for b in val_batches])
    if info.is_main:
        summary["model"] = str(args.out / "model.safetensors")
        _write_json(args.out / "train_results.json", summary)
    return 0


# ------------------------------------------------------------------------------------------------------------ eval
def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.checkpoint import CheckpointError, load_checkpoint, read_metadata
    from bramley.core.registry import create_model

    from . import model as _  # noqa: F401
    from .buckets import BucketFormatError, Buckets
    from .train import evaluate_lm

    try:
        config = read_metadata(args.checkpoint).get("bramley_config")
        if not isinstance(config, dict) or "name" not in config:
            raise CheckpointError(f"{args.checkpoint} carries no model config (was it written by `train`?)")
        model = create_model(config["name"], **config.get("kwargs", {}))
        load_checkpoint(args.checkpoint, model)
    except CheckpointError as err:
        raise ConfigError(f"--checkpoint: {err}") from err
    try:
        buckets = Buckets(args.buckets)
    except BucketFormatError as err:
        raise ConfigError(f"--buckets: {err}") from err
    per_bucket = {}
    batches_all = []
    for b, length in enumerate(buckets.lengths):
        rows = torch.from_numpy(buckets.array(b)[: args.rows_per_bucket].astype("int64"))
        if len(rows):
            batches = list(rows.split(args.batch_size))
            per_bucket[str(length)] = evaluate_lm(model, batches)["loss"]
            batches_all += batches
    if not batches_all:
        raise ConfigError(f"{args.buckets} holds no rows")
    overall = evaluate_lm(model, batches_all)
    _write_json(args.out, {"checkpoint": str(args.checkpoint), "buckets": str(args.buckets), "loss": overall,
                           "loss_by_bucket_length": per_bucket})  # fmt: skip
    return 0


# ----------------------------------------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from bramley.core.report import environment

    from .bench import run_benchmark

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    kwargs = {k: v for k, v in (("dim", args.dim), ("depth", args.depth), ("num_heads", args.num_heads)) if v}
    try:
        result = run_benchmark(
            args.model, model_kwargs=kwargs, min_log2=args.min_log2, max_log2=args.max_log2,
            tokens_per_step=args.tokens_per_step, steps=args.steps, warmup=args.warmup, device=args.device,
            amp=args.amp, methods=tuple(args.methods), seed=args.seed,
        )  # fmt: skip
    except (KeyError, ValueError) as err:  # unknown model, sizes that do not fit
        raise ConfigError(f"bench: {err.args[0] if isinstance(err, KeyError) else err}") from err
    result["environment"] = environment()
    context, device = 1 << args.max_log2, result["device"]
    print(f"{args.model} at max context {context}, {args.tokens_per_step} tokens/step on {device}:")
    for name, r in result["methods"].items():
        attn = r["attention_flops_per_step"] / 1e9
        print(f"  {name:6s} {r['tokens_per_s']:12.0f} tokens/s  attention {attn:.2f} GFLOP/step")
    for name, ratio in result["ratios"].items():
        print(f"  {name}: {ratio:.2f}x")
    _write_json(args.out, result)
    return 0


# ---------------------------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .make_buckets import add_make_buckets_arguments

    parser = argparse.ArgumentParser(
        prog="bramley-dataset-decomposition",
        description="Dataset Decomposition: Faster LLM Training with Variable Sequence Length Curriculum.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("make-buckets", help="tokenize and decompose text files into on-disk buckets")
    add_make_buckets_arguments(p)
    p.set_defaults(func=_make_buckets)

    p = sub.add_parser("train", help="train a GPT with DD buckets or concat-and-chunk (torchrun for DDP/FSDP)")
    p.add_argument("--recipe", default=None, help="packaged recipe name (openlm_1b_dd, ...) or YAML path")
    add_config_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="held-out loss of a trained model on a bucket folder, per bucket length")
    p.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors written by train")
    p.add_argument("--buckets", type=Path, required=True, help="held-out bucket folder (make-buckets output)")
    p.add_argument("--rows-per-bucket", type=_positive_int, default=256)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: print)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="training tokens/s, DD vs concat-and-chunk, same model and tokens per step")
    p.add_argument("--model", default="dd_gpt_tiny")
    p.add_argument("--dim", type=_positive_int, default=None)
    p.add_argument("--depth", type=_positive_int, default=None)
    p.add_argument("--num-heads", type=_positive_int, default=None)
    p.add_argument("--min-log2", type=int, default=4)
    p.add_argument("--max-log2", type=int, default=9, help="maximum context 2^max_log2 (13 for 8k)")
    p.add_argument("--tokens-per-step", type=_positive_int, default=4096)
    p.add_argument("--steps", type=_positive_int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["cc", "cc_dm", "dd"], choices=["cc", "cc_dm", "dd"])
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "none", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: print)")
    p.set_defaults(func=cmd_bench)

    sub.add_parser("reproduce", help="run the mini reproduction (options: reproduce --help)", add_help=False)
    return parser


def _make_buckets(args: argparse.Namespace) -> int:
    from .make_buckets import run_make_buckets

    return run_make_buckets(args)


def _reproduce(argv: list[str]) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_method_cli(build_parser(), argv, passthrough={"reproduce": _reproduce})


if __name__ == "__main__":
    import sys

    sys.exit(main())
