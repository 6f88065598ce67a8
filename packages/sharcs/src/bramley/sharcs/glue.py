"""GLUE classification tasks from their local TSV files (the paper's benchmark), tokenized with a local tokenizer.

Nothing is downloaded: ``data.train`` / ``data.val`` are the task's ``train.tsv`` / ``dev.tsv`` (GLUE's own
layout) and ``data.tokenizer`` a local Hugging Face tokenizer folder (e.g. a saved ``roberta-base`` tokenizer).
Sequences longer than ``max_length`` are an error, never truncated silently, unless ``truncate: true``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from bramley.core.errors import ConfigError, DataError

__all__ = ["TASKS", "GlueData", "GlueDataset", "collate_text", "read_glue_tsv"]

#: task -> (first text column, second text column or None, label column, label names). Columns by header name; CoLA
#: has no header and is read by position (label 1, sentence 3).
TASKS: dict[str, tuple[Any, Any, Any, tuple[str, ...]]] = {
    "sst-2": ("sentence", None, "label", ("0", "1")),
    "cola": (3, None, 1, ("0", "1")),
    "mrpc": ("#1 String", "#2 String", "Quality", ("0", "1")),
    "qqp": ("question1", "question2", "is_duplicate", ("0", "1")),
    "mnli": ("sentence1", "sentence2", "gold_label", ("contradiction", "entailment", "neutral")),
    "qnli": ("question", "sentence", "label", ("entailment", "not_entailment")),
    "rte": ("sentence1", "sentence2", "label", ("entailment", "not_entailment")),
    "wnli": ("sentence1", "sentence2", "label", ("0", "1")),
}


@dataclass
class GlueData:
    """``data`` of the GLUE recipe: the task, its local TSV files and a local tokenizer folder."""

    task: str = "sst-2"
    train: str | None = None
    val: str | None = None
    tokenizer: str | None = None
    max_length: int = 128
    truncate: bool = False

    def __post_init__(self) -> None:
        if self.task.lower() not in TASKS:
            raise ConfigError(f"data.task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.max_length < 2:
            raise ConfigError(f"data.max_length must be >= 2, got {self.max_length}")


def read_glue_tsv(path: str | os.PathLike, task: str) -> tuple[list[str], list[str] | None, list[int]]:
    """``(texts_a, texts_b or None, labels)`` of a GLUE task's TSV file; a missing column or unknown label is a
    :class:`DataError` naming the file and the line."""
    col_a, col_b, col_label, names = TASKS[task.lower()]
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such GLUE file")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if isinstance(col_a, str):
        if not rows:
            raise DataError(f"{path} is empty")
        header, rows, first = rows[0], rows[1:], 2
        missing = [c for c in (col_a, col_b, col_label) if c is not None and c not in header]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} in the header {header} (is it a {task} file?)")
        col_a, col_label = header.index(col_a), header.index(col_label)
        col_b = None if col_b is None else header.index(col_b)
    else:
        first = 1
    texts_a, texts_b, labels = [], [] if col_b is not None else None, []
    for line, row in enumerate(rows, start=first):
        needed = max(c for c in (col_a, col_b, col_label) if c is not None)
        if len(row) <= needed:
            raise DataError(f"{path}:{line}: {len(row)} columns, expected at least {needed + 1}")
        if row[col_label] not in names:
            raise DataError(f"{path}:{line}: label {row[col_label]!r} is not one of {list(names)}")
        texts_a.append(row[col_a])
        if texts_b is not None:
            texts_b.append(row[col_b])
        labels.append(names.index(row[col_label]))
    if not labels:
        raise DataError(f"{path} holds no examples")
    return texts_a, texts_b, labels


def load_tokenizer(folder: str | None) -> Any:
    """A Hugging Face tokenizer from a local folder (never downloaded)."""
    if not folder:
        raise ConfigError("data.tokenizer is not set: give a local tokenizer folder (e.g. a saved roberta-base one)")
    from transformers import AutoTokenizer

    if not Path(folder).is_dir():
        raise ConfigError(f"data.tokenizer={folder}: no such folder (tokenizers are read locally, never downloaded)")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


class GlueDataset(Dataset):
    """A GLUE split as token ids: item ``i`` is ``({"input_ids", "attention_mask"[, "token_type_ids"]}, label)``."""

    def __init__(self, path: str | os.PathLike, task: str, tokenizer: Any, max_length: int, truncate: bool = False):
        texts_a, texts_b, labels = read_glue_tsv(path, task)
        encoded = tokenizer(texts_a, texts_b, truncation=truncate, max_length=max_length if truncate else None)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        longest = max(lengths)
        if longest > max_length:
            line = lengths.index(longest)
            raise DataError(
                f"{path}: example {line} has {longest} tokens > data.max_length={max_length}; raise max_length or set "
                "data.truncate=true"
            )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        self.items = [{k: torch.tensor(encoded[k][i]) for k in keys} for i in range(len(labels))]
        self.targets = labels
        self.classes = list(TASKS[task.lower()][3])
        self.pad_id = tokenizer.pad_token_id or 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index], self.targets[index]


def collate_text(batch: list, pad_id: int = 0) -> tuple:
    """Pad a batch of ``(tokens, label[, index])`` items to its longest sequence (mask 0 on the padding)."""
    longest = max(item[0]["input_ids"].shape[0] for item in batch)
    out: dict[str, torch.Tensor] = {}
    for key in batch[0][0]:
        fill = pad_id if key == "input_ids" else 0
        rows = [
            torch.nn.functional.pad(item[0][key], (0, longest - item[0][key].shape[0]), value=fill) for item in batch
        ]
        out[key] = torch.stack(rows)
    rest = [torch.tensor([item[j] for item in batch]) for j in range(1, len(batch[0]))]
    return (out, *rest)
