"""Language-model data from local text: files -> byte tokens -> fixed-length windows (map-style, for exact resume).

Files come from a folder (core's :class:`~bramley.core.data.TextDocuments` finds them, sorted) or from the running
Python's standard library (:func:`~bramley.core.data.python_stdlib_documents`). Without a separate validation source,
every ``round(1 / val_fraction)``-th file is held out. Each file is one document, tokenized with core's byte tokenizer
and followed by end-of-text; a split's documents are concatenated and, with a token budget, read only until the
budget is met (its first ``max_tokens`` ids are used: the user's explicit setting). Sample ``i`` is the window
``ids[i * L : i * L + L + 1]`` (inputs: its first ``L`` ids, targets: its last ``L``); the tail shorter than one
window is not used (``unused_tokens``). Files that do not decode as UTF-8 are skipped with one warning naming them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from bramley.core.data import ByteTokenizer, TextDocuments, python_stdlib_documents
from bramley.core.errors import ConfigError, DataError

__all__ = ["TokenWindows", "read_tokens", "split_paths", "text_datasets"]


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
        return self.ids.numel() - 1 - self.num_windows * self.seq_len

    def inputs_and_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All windows as ``(inputs, targets)``, each ``(windows, seq_len)``."""
        n, length = self.num_windows, self.seq_len
        return self.ids[: n * length].view(n, length), self.ids[1 : n * length + 1].view(n, length)


def split_paths(paths: Sequence[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Every ``round(1 / val_fraction)``-th file goes to validation (deterministic, spread over the corpus)."""
    if not 0 < val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    step = max(2, round(1 / val_fraction))
    train = [p for i, p in enumerate(paths) if i % step != step - 1]
    val = [p for i, p in enumerate(paths) if i % step == step - 1]
    if not val or not train:
        raise DataError(f"{len(paths)} files are too few to hold out a {val_fraction:g} validation fraction")
    return train, val


def read_tokens(paths: Sequence[Path], max_tokens: int | None = None) -> torch.Tensor:
    """Byte ids of the files (one document each, end-of-text after each), concatenated; with ``max_tokens``, files are
    read only until that many ids exist and the first ``max_tokens`` are returned."""
    tokenizer, parts, total, undecodable = ByteTokenizer(), [], 0, []
    for path in paths:
        if max_tokens is not None and total >= max_tokens:
            break
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            undecodable.append(str(path))
            continue
        parts.append(tokenizer.encode(text))
        total += parts[-1].numel()
    if undecodable:
        more = f" and {len(undecodable) - 3} more" if len(undecodable) > 3 else ""
        warnings.warn(
            f"skipped {len(undecodable)} file(s) not decodable as UTF-8: {undecodable[:3]}{more}", stacklevel=2
        )
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
    max_val_tokens: int | None = None,
) -> tuple[TokenWindows, TokenWindows]:
    """``(train, val)`` windows of a text source.

    Args:
        source: ``stdlib`` (this Python's standard library) or ``text`` (files under ``train`` / ``val``).
        seq_len: tokens per sample.
        train: file or folder of training text (``text``).
        val: file or folder of validation text; default: ``val_fraction`` of the training files.
        pattern: glob of text files in folders.
        val_fraction: held-out share of the files when ``val`` is not given.
        max_tokens: use at most this many training tokens (the first ones).
        max_val_tokens: the same for validation (default: ``max_tokens``).
    """
    if source == "stdlib":
        paths = python_stdlib_documents().paths
    elif source == "text":
        if not train:
            raise ConfigError("data.train is not set: pass data.train=/path/to/text (a file or a folder)")
        paths = TextDocuments(train, pattern=pattern).paths
    else:
        raise ConfigError(f"unknown text source {source!r} (stdlib, text)")
    if val:
        train_paths, val_paths = paths, TextDocuments(val, pattern=pattern).paths
    else:
        train_paths, val_paths = split_paths(paths, val_fraction)
    val_budget = max_tokens if max_val_tokens is None else max_val_tokens
    return (
        TokenWindows(read_tokens(train_paths, max_tokens), seq_len),
        TokenWindows(read_tokens(val_paths, val_budget), seq_len),
    )
