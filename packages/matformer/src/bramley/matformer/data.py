"""Language-model data from local text: documents -> byte tokens -> fixed-length windows (map-style, for exact resume).

Documents come from core's :class:`~bramley.core.data.TextDocuments` (a folder of files) or the running Python's
standard library (:func:`~bramley.core.data.python_stdlib_documents`), are tokenized with core's byte tokenizer (each
document followed by end-of-text) and concatenated; sample ``i`` is the window ``ids[i * L : i * L + L + 1]`` (inputs
are its first ``L`` ids, targets its last ``L``). The tail shorter than one window is not used (``unused_tokens``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from bramley.core.data import ByteTokenizer, TextDocuments, python_stdlib_documents
from bramley.core.errors import ConfigError, DataError

__all__ = ["TokenWindows", "split_documents", "text_datasets", "token_ids"]


class TokenWindows(Dataset):
    """Non-overlapping windows of ``seq_len + 1`` token ids of one id stream.

    Args:
        ids: int64 ``(n,)`` token ids.
        seq_len: tokens the model sees per sample.
    """

    def __init__(self, ids: torch.Tensor, seq_len: int) -> None:
        if seq_len < 1:
            raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
        self.ids = ids.to(torch.int64).flatten()
        self.seq_len = seq_len
        self.num_windows = (self.ids.numel() - 1) // seq_len
        if self.num_windows < 1:
            raise DataError(f"{self.ids.numel()} tokens make no window of {seq_len} + 1 tokens")

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.num_windows:
            raise IndexError(f"window {index} of {self.num_windows}")
        start = index * self.seq_len
        return self.ids[start : start + self.seq_len + 1]

    @property
    def unused_tokens(self) -> int:
        """Tokens after the last full window."""
        return self.ids.numel() - self.num_windows * self.seq_len


def split_documents(documents: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Every ``round(1 / val_fraction)``-th document goes to validation (deterministic, spread over the corpus)."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    step = max(2, round(1 / val_fraction))
    train = [d for i, d in enumerate(documents) if i % step != step - 1]
    val = [d for i, d in enumerate(documents) if i % step == step - 1]
    if not val or not train:
        raise DataError(f"{len(documents)} documents are too few to hold out a {val_fraction:g} validation fraction")
    return train, val


def token_ids(documents: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
    """Byte ids of the documents, each followed by end-of-text, concatenated; with ``max_tokens``, the first
    ``max_tokens`` of them (the user's explicit budget, ``data.max_tokens``), encoding no more documents than that."""
    tokenizer, parts, total = ByteTokenizer(), [], 0
    for document in documents:
        if max_tokens is not None and total >= max_tokens:
            break
        parts.append(tokenizer.encode(document))
        total += parts[-1].numel()
    ids = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
    return ids if max_tokens is None else ids[:max_tokens]


def text_datasets(
    source: str,
    seq_len: int,
    *,
    train: str | None = None,
    val: str | None = None,
    pattern: str = "**/*.txt",
    val_fraction: float = 0.05,
    max_tokens: int | None = None,
) -> tuple[TokenWindows, TokenWindows]:
    """``(train, val)`` windows of a text source.

    Args:
        source: ``stdlib`` (this Python's standard library) or ``text`` (files under ``train`` / ``val``).
        seq_len: tokens per sample.
        train: file or folder of training text (``text``).
        val: file or folder of validation text; default: ``val_fraction`` of the training documents.
        pattern: glob of text files in folders.
        val_fraction: held-out share of the documents when ``val`` is not given.
        max_tokens: use at most this many tokens of each split (the first ones).
    """
    if source == "stdlib":
        documents = python_stdlib_documents().documents()
    elif source == "text":
        if not train:
            raise ConfigError("data.train is not set: pass data.train=/path/to/text (a file or a folder)")
        documents = TextDocuments(train, pattern=pattern).documents()
    else:
        raise ConfigError(f"unknown text source {source!r} (stdlib, text)")
    if val:
        val_documents = TextDocuments(val, pattern=pattern).documents()
    else:
        documents, val_documents = split_documents(documents, val_fraction)
    train_ids, val_ids = token_ids(documents, max_tokens), token_ids(val_documents, max_tokens)
    return TokenWindows(train_ids, seq_len), TokenWindows(val_ids, seq_len)
