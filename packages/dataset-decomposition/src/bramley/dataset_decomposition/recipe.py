"""Recipes of Dataset Decomposition: the ``data`` and ``loss`` sections and the training run behind ``train``.

A recipe has core's six sections (:mod:`bramley.core.recipe`)::

    model:  {name: dd_gpt_1b, kwargs: {vocab_size: 50432, qk_norm: true}}   a registered dd_gpt_* model
    data:   DDData    the method (dd | concat_chunk) and its data
    loss:   LMLoss    next-token cross entropy plus OpenLM's z-loss
    optim, train, eval: core's (optimizer and schedule; budget, numerics, runtime)

Training data, by ``data.method``:

- ``dd``: Dataset Decomposition buckets; every step draws one bucket and takes ``data.tokens_per_step / length`` rows
  of it, in the order of ``data.curriculum`` with ``data.num_cycles`` cycles per pass. The buckets are a
  ``make-buckets`` folder (``data.buckets``), or documents (``data.documents``, or ``data.source: python_stdlib``)
  that ``make-buckets``' code decomposes into ``<out>/buckets`` before training, into buckets of
  ``2^data.min_log2 .. data.seq_len`` tokens.
- ``concat_chunk``: the baseline: the documents tokenized, concatenated in a seeded random order and cut into rows of
  ``data.seq_len`` tokens (``data.document_masking``: attention stays within each document).

Documents are read as ``make-buckets`` reads its inputs (``data.pattern``, ``data.text_field``, ``data.txt_mode``,
``data.tokenizer``), so both methods see the same documents; ``data.source: python_stdlib`` takes the running
Python's standard-library sources instead (no files needed: the smoke recipe). ``data.tokens_per_step`` is the number
of input tokens per process and micro-batch for both methods (it replaces ``train.batch_size``), so equal steps mean
equal tokens.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn as nn

from bramley.core.errors import ConfigError
from bramley.core.recipe import Recipe, RecipeSchema
from bramley.core.train import TrainConfig

from .buckets import MANIFEST, Buckets
from .sampling import BucketBatchSampler

__all__ = [
    "RECIPES",
    "DDData",
    "LMLoss",
    "build_training",
    "check_fits_model",
    "cycle_coverage_note",
    "recipe_documents",
    "train_recipe",
]

#: Where ``train`` decomposes a recipe's documents (``data.method=dd`` without ``data.buckets``), inside ``--out``.
DECOMPOSED_DIR = "buckets"
# the manifest's source label of buckets that train decomposed (only those may be replaced by a later run)
_TRAIN_SOURCE = "train: "


@dataclass
class DDData:
    """``data`` of a Dataset Decomposition recipe (see the module docstring)."""

    method: Literal["dd", "concat_chunk"] = "dd"
    tokens_per_step: int = 16384
    # dd
    buckets: str | None = None
    curriculum: Literal["natural", "uniform", "grow_p2", "grow_linear"] = "grow_p2"
    num_cycles: int = 8
    min_log2: int = 8
    # documents: concat_chunk, or dd without buckets
    source: Literal["files", "python_stdlib"] = "files"
    documents: str | list[str] | None = None
    max_documents: int | None = None
    pattern: str = "**/*.txt"
    text_field: str = "text"
    txt_mode: Literal["file", "line"] = "file"
    tokenizer: str = "byte"
    seq_len: int = 8192
    document_masking: bool = False
    # held-out buckets (make-buckets output), evaluated at the end
    val_buckets: str | None = None
    val_rows_per_bucket: int = 64

    def __post_init__(self) -> None:
        for name in ("tokens_per_step", "num_cycles", "seq_len", "max_documents", "val_rows_per_bucket"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {value}")
        if not 0 <= self.min_log2 <= 30:
            raise ConfigError(f"data.min_log2 must be in [0, 30], got {self.min_log2}")
        if self.documents == []:
            raise ConfigError("data.documents is an empty list: give files or folders, or null")


@dataclass
class LMLoss:
    """``loss``: mean next-token cross entropy plus ``z_loss * mean(logsumexp(logits)^2)`` (OpenLM's z-loss)."""

    z_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.z_loss < 0:
            raise ConfigError(f"loss.z_loss must be >= 0, got {self.z_loss}")


#: What Dataset Decomposition recipes hold (bundled: ``recipes/*.yaml``).
RECIPES = RecipeSchema("dataset-decomposition", data=DDData, loss=LMLoss)


# ------------------------------------------------------------------------------------------------------------ data
def recipe_documents(data: DDData) -> Iterator[str]:
    """The recipe's documents, read as ``make-buckets`` reads its inputs (at most ``data.max_documents``)."""
    from bramley.core.data import python_stdlib_documents

    from .make_buckets import read_documents

    if data.source == "python_stdlib":
        documents = iter(python_stdlib_documents())
    else:
        sources = data.documents if isinstance(data.documents, list) else [data.documents]
        documents = read_documents(sources, pattern=data.pattern, text_field=data.text_field, txt_mode=data.txt_mode)
    return itertools.islice(documents, data.max_documents)


def _has_documents(data: DDData) -> bool:
    if data.source == "python_stdlib" and data.documents is not None:
        raise ConfigError("data.documents and data.source=python_stdlib both name the documents: set one of them")
    return data.source == "python_stdlib" or data.documents is not None


def build_training(
    data: DDData, seed: int = 0, out_dir: str | Path | None = None, rank: int = 0, world_size: int = 1
) -> tuple[torch.utils.data.Dataset, BucketBatchSampler | None]:
    """``(train_data, batch_sampler)`` for ``data.method``; ``batch_sampler`` is ``None`` for concat-and-chunk rows.

    Documents to decompose (``dd`` without ``data.buckets``) are written into ``<out_dir>/buckets`` by rank 0 while
    the other ranks wait.

    Raises:
        ConfigError: a missing or ambiguous data source, or data that does not fit the settings (the message names
            it).
    """
    documents = _has_documents(data)
    if data.method == "dd" and not (data.buckets or documents):
        raise ConfigError(
            "data.method=dd needs data.buckets=DIR (a folder written by make-buckets), or documents to decompose: "
            "data.documents=PATH or data.source=python_stdlib"
        )
    if data.method == "dd" and data.buckets and documents:
        raise ConfigError("data.method=dd takes data.buckets or documents to decompose, not both: set one of them")
    if data.method == "concat_chunk" and not documents:
        raise ConfigError(
            "data.method=concat_chunk needs data.documents=PATH (jsonl / text files or folders) "
            "or data.source=python_stdlib"
        )
    try:
        if data.method == "dd":
            buckets = Buckets(data.buckets) if data.buckets else _decompose(data, seed, out_dir, rank, world_size)
            sampler = BucketBatchSampler.from_buckets(
                buckets, data.tokens_per_step, curriculum=data.curriculum, num_cycles=data.num_cycles, seed=seed,
                num_replicas=world_size, rank=rank,
            )  # fmt: skip
            return buckets.dataset(), sampler
        return _concat_chunk(data, seed), None
    except (ValueError, OSError, ImportError) as err:  # ConfigError, DataError and BucketFormatError are ValueErrors
        raise ConfigError(f"data ({data.method}): {err}") from None


def _decompose(data: DDData, seed: int, out_dir: str | Path | None, rank: int, world_size: int) -> Buckets:
    """The recipe's documents decomposed into ``<out_dir>/buckets`` (replacing buckets a previous run decomposed)."""
    from .make_buckets import _remove_outputs, write_buckets

    if out_dir is None:
        raise ConfigError("decomposing data.documents needs an output folder (train --out DIR)")
    max_log2 = data.seq_len.bit_length() - 1
    if data.seq_len != 1 << max_log2 or data.min_log2 > max_log2:
        raise ConfigError(
            f"data.seq_len={data.seq_len} is the longest bucket of the decomposed documents: it must be a power of "
            f"two >= 2^data.min_log2 = {1 << data.min_log2}"
        )
    root = Path(out_dir) / DECOMPOSED_DIR
    what = "python_stdlib" if data.source == "python_stdlib" else f"data.documents={data.documents}"
    source = f"{_TRAIN_SOURCE}{what}, max_documents={data.max_documents}"
    if rank == 0:
        if (root / MANIFEST).exists():
            sources = Buckets(root).manifest.get("sources") or [{}]
            if not str(sources[0].get("path", "")).startswith(_TRAIN_SOURCE):
                raise ConfigError(
                    f"{root} holds buckets that train did not write: choose another --out (or train on them with "
                    f"data.buckets={root})"
                )
            _remove_outputs(root)  # rebuilt from the same settings: a resumed run sees the same rows
        write_buckets(
            recipe_documents(data), root, tokenizer=data.tokenizer, min_log2=data.min_log2, max_log2=max_log2,
            seed=seed, source=source,
        )  # fmt: skip
    if world_size > 1:
        torch.distributed.barrier()  # the other ranks open the folder once rank 0 has finished it
    return Buckets(root)


def _concat_chunk(data: DDData, seed: int):
    from .baseline import ConcatChunkDataset

    if data.tokens_per_step % data.seq_len:
        raise ConfigError(
            f"data.tokens_per_step ({data.tokens_per_step}) must be a multiple of data.seq_len ({data.seq_len})"
        )
    return ConcatChunkDataset.from_documents(
        recipe_documents(data), data.seq_len, tokenizer=data.tokenizer, seed=seed,
        return_segments=data.document_masking,
    )  # fmt: skip


def check_fits_model(model: nn.Module, vocab_size: int | None, longest: int, what: str) -> None:
    """``ConfigError`` when ``what`` holds token ids beyond the model's vocabulary or sequences longer than its
    ``max_seq_len``: checked before a run, not at the first batch that trips it."""
    if vocab_size is not None and vocab_size > model.vocab_size:
        raise ConfigError(
            f"{what} holds token ids up to {vocab_size - 1} but the model's vocab_size is {model.vocab_size}: use a "
            f"model with vocab_size >= {vocab_size} (or the tokenizer the model was meant for)"
        )
    if longest > model.max_seq_len:
        raise ConfigError(
            f"{what} has sequences of {longest} tokens but the model's max_seq_len is {model.max_seq_len}"
        )


def _val_batches(path: str, rows_per_bucket: int, model: nn.Module) -> list[torch.Tensor]:
    """The first ``rows_per_bucket`` rows of every bucket of a held-out bucket folder, one batch per bucket."""
    try:
        buckets = Buckets(path)
    except ValueError as err:
        raise ConfigError(f"data.val_buckets: {err}") from None
    batches = [torch.from_numpy(buckets.array(b)[:rows_per_bucket].astype("int64")) for b in range(len(buckets))]
    batches = [b for b in batches if len(b)]
    if not batches:
        raise ConfigError(f"data.val_buckets: {path} holds no rows")
    check_fits_model(model, buckets.vocab_size, max(b.shape[1] - 1 for b in batches), f"data.val_buckets {path}")
    return batches


def cycle_coverage_note(batches_per_epoch: int, num_cycles: int, cfg: TrainConfig) -> str | None:
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


# ----------------------------------------------------------------------------------------------------------- train
def train_recipe(recipe: Recipe, out: Path) -> dict[str, Any]:
    """Train the recipe's model on its data with the core trainer into the run folder ``out``; returns the results.

    Every setting is checked before training starts: the data source, the data against the model (vocabulary,
    longest sequence), the held-out buckets. Results: the trainer's final metrics, the cost (tokens, attention and
    model FLOPs, training wall-clock; :class:`~.train.TrainingMeter`), the tokens per sequence length and, with
    ``data.val_buckets``, the held-out loss.
    """
    from bramley.core.recipe import build_model
    from bramley.core.train import Trainer
    from bramley.core.train.distributed import init_distributed

    from .train import TrainingMeter, evaluate_lm, lm_loss_fn

    data = recipe.data
    cfg = recipe.train_config(out)
    info, _ = init_distributed(cfg.device)  # before the sampler, so it shards for this rank
    train_data, sampler = build_training(data, recipe.train.seed, out, info.rank, info.world_size)
    model = build_model(recipe.model.name, recipe.model.kwargs)
    if sampler is None:
        cfg = cfg.replace(batch_size=data.tokens_per_step // data.seq_len)
        check_fits_model(model, int(train_data.tokens.max()) + 1, data.seq_len, "the training data")
    else:
        longest = max(n for n, batches in zip(sampler.lengths, sampler.batches_per_bucket) if batches)
        check_fits_model(model, train_data.buckets.vocab_size, longest, "the training data")
        if info.is_main and (note := cycle_coverage_note(len(sampler), sampler.num_cycles, cfg)):
            warnings.warn(note, stacklevel=1)
    val_batches = _val_batches(data.val_buckets, data.val_rows_per_bucket, model) if data.val_buckets else None
    meter = TrainingMeter.for_model(model, world_size=info.world_size)
    trainer = Trainer(
        model, cfg, train_data=train_data, loss_fn=lm_loss_fn(recipe.loss.z_loss, meter), batch_sampler=sampler,
        callbacks=[meter],
    )  # fmt: skip
    metrics = trainer.fit()
    results: dict[str, Any] = {"method": data.method, "metrics": metrics, "cost": meter.totals()}
    results["tokens_by_sequence_length"] = {str(k): v for k, v in sorted(meter.seq_len_tokens.items())}
    if val_batches is not None:
        results["val"] = evaluate_lm(trainer.model, [b.to(trainer.device) for b in val_batches])
    return results
