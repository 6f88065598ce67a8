"""Packed batches of byte sequences: collate functions and the token-budget sampler.

Training batches are packed (``tokens (total,)`` + ``cu_seqlens (B + 1,)``), never padded. :func:`collate_padded`
exists only for the packed-vs-padded benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bramley.core.errors import ConfigError, DataError
from bramley.core.packing import TokenBudgetBatchSampler, cu_seqlens_from_lengths

from .model import MASK_TOKEN

__all__ = ["collate_packed", "collate_padded", "pack_samples", "token_budget_sampler"]


def _as_sample(sample: Any, index: int) -> torch.Tensor:
    if isinstance(sample, str):
        raise TypeError(f"sample {index} is a str: pass the file's bytes (e.g. path.read_bytes()), not text")
    if isinstance(sample, (bytes, bytearray, memoryview)):
        sample = np.frombuffer(bytes(sample), dtype=np.uint8).copy()
    t = torch.as_tensor(sample)
    if t.dim() != 1:
        raise ValueError(f"sample {index} must be a 1-D sequence of bytes, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise DataError(f"sample {index} is empty: a byte sequence needs at least one byte")
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"sample {index} must hold integer byte values, got {t.dtype}")
    if t.dtype != torch.uint8 and (bool((t < 0).any()) or bool((t > MASK_TOKEN).any())):
        bad = int(t.min()) if bool((t < 0).any()) else int(t.max())
        raise DataError(f"sample {index} holds {bad}, not a byte: expected 0..255 (or {MASK_TOKEN}, the mask token)")
    return t.long()


def pack_samples(samples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate byte sequences: ``(tokens (total,) int64, cu_seqlens (B + 1,) int32)`` for :class:`ByteFormer`.

    A sample is ``bytes`` / ``bytearray``, a uint8 array or any 1-D integer sequence of values 0..256 (256: the mask
    token); empty samples, text and other values raise.
    """
    if len(samples) == 0:
        raise ValueError("cannot pack an empty list of samples")
    tensors = [_as_sample(s, i) for i, s in enumerate(samples)]
    return torch.cat(tensors), cu_seqlens_from_lengths([t.numel() for t in tensors])


def collate_packed(batch: Sequence[tuple[Any, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DataLoader ``collate_fn``: items ``(bytes, label)`` -> ``(tokens, cu_seqlens, labels)``."""
    tokens, cu_seqlens = pack_samples([item[0] for item in batch])
    return tokens, cu_seqlens, torch.tensor([int(item[1]) for item in batch], dtype=torch.int64)


def collate_padded(
    batch: Sequence[tuple[Any, int]], pad_value: int = MASK_TOKEN
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Benchmark baseline: ``(tokens (B, L) padded with pad_value, lengths (B,), labels)``."""
    samples = [_as_sample(item[0], i) for i, item in enumerate(batch)]
    lengths = torch.tensor([s.numel() for s in samples])
    tokens = torch.full((len(samples), int(lengths.max())), pad_value, dtype=torch.int64)
    for i, s in enumerate(samples):
        tokens[i, : s.numel()] = s
    return tokens, lengths, torch.tensor([int(item[1]) for item in batch], dtype=torch.int64)


def token_budget_sampler(
    dataset: Any, max_tokens: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False
) -> TokenBudgetBatchSampler:
    """Batches of at most ``max_tokens`` bytes (best-fit decreasing) over a dataset with static ``lengths()``.

    Only for datasets whose byte lengths do not change between epochs (byte folders, the bundled sets); the lengths
    of images cropped at random and then compressed change every epoch, so use a fixed batch size there.
    """
    if not hasattr(dataset, "lengths"):
        raise TypeError(f"{type(dataset).__name__} has no lengths(): a token budget needs every item's length")
    lengths = np.asarray(dataset.lengths())
    if lengths.size and int(lengths.max()) > max_tokens:
        raise ConfigError(
            f"item {int(lengths.argmax())} has {int(lengths.max())} bytes, more than the batch budget of {max_tokens} "
            "(data.batch_tokens): every batch must hold at least one item"
        )
    return TokenBudgetBatchSampler(lengths, max_tokens, shuffle=shuffle, seed=seed, drop_last=drop_last)
