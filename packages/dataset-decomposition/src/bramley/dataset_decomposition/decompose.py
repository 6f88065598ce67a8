"""Binary dataset decomposition: one tokenized document -> chunks of ``2^k + 1`` tokens, ``min_log2 <= k <= max_log2``.

This is the decomposition of Pouransari et al., "Dataset Decomposition: Faster LLM Training with Variable Sequence
Length Curriculum" (NeurIPS 2024), as the official ``make_dd_buckets.py`` (function ``get_binary``) performs it:

- A chunk of bucket ``k`` holds ``2^k + 1`` consecutive tokens of one document: a training row whose inputs are its
  first ``2^k`` tokens and whose targets are its last ``2^k`` tokens (the ``+ 1`` is the shifted target). Chunks do
  **not** overlap: the next chunk starts right after the last token of the previous one, so every kept token is
  stored exactly once (the last token of a chunk is only ever a target, the first only ever an input).
- Chunks are cut from the start of the document, largest first: while ``r`` tokens remain, ``k = floor(log2(r - 1))``
  (the largest chunk that fits). This follows the binary digits of the remaining length minus one at each cut.
- If ``k > max_log2`` (at least ``2^(max_log2 + 1) + 1`` tokens remain) the chunk size is drawn at random instead:
  ``P(k) = 2^(max_log2 - k) / sum_j 2^(max_log2 - j)`` over ``k = min_log2..max_log2``. A chunk of bucket ``k`` holds
  ``~2^k`` tokens, so every bucket receives the same expected number of tokens from these cuts. With
  ``randomize=False`` the cut is always ``max_log2`` (the official code's non-random option).
- Cutting stops when at most ``2^min_log2`` tokens remain (no chunk of ``2^min_log2 + 1`` fits): these trailing
  tokens are dropped and counted, so ``0 <= dropped <= 2^min_log2`` per document.

Randomness comes only from the ``numpy.random.Generator`` passed in, so a decomposition is a pure function of the
document length, the bucket range and the generator state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bramley.core.errors import ConfigError

__all__ = [
    "bucket_lengths",
    "check_bucket_range",
    "cut_probabilities",
    "decompose",
    "decompose_length",
]


def check_bucket_range(min_log2: int, max_log2: int) -> None:
    """Raise :class:`~bramley.core.errors.ConfigError` (a ``ValueError``) unless ``0 <= min_log2 <= max_log2 <= 30``
    are ints."""
    for name, value in (("min_log2", min_log2), ("max_log2", max_log2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be an int, got {value!r}")
    if not 0 <= min_log2 <= max_log2 <= 30:
        raise ConfigError(f"need 0 <= min_log2 <= max_log2 <= 30, got min_log2={min_log2} max_log2={max_log2}")


def bucket_lengths(min_log2: int, max_log2: int) -> list[int]:
    """Sequence lengths (inputs per row, ``2^k``) of the buckets ``k = min_log2..max_log2``, shortest first."""
    check_bucket_range(min_log2, max_log2)
    return [1 << k for k in range(min_log2, max_log2 + 1)]


def cut_probabilities(min_log2: int, max_log2: int) -> np.ndarray:
    """Probability of each bucket ``k = min_log2..max_log2`` for a random cut of a long document.

    ``P(k)`` is proportional to ``2^(max_log2 - k)``, so that ``P(k) * 2^k`` (expected tokens) is equal for all ``k``.
    """
    check_bucket_range(min_log2, max_log2)
    weights = np.exp2(np.arange(max_log2 - min_log2, -1, -1, dtype=np.float64))
    return weights / weights.sum()


def decompose_length(
    num_tokens: int,
    min_log2: int,
    max_log2: int,
    *,
    rng: np.random.Generator | None = None,
    randomize: bool = True,
) -> tuple[list[tuple[int, int]], int]:
    """Decompose a document of ``num_tokens`` tokens (end-of-text included) into chunks.

    Args:
        num_tokens: document length in tokens, including its end-of-text token.
        min_log2: the shortest bucket is ``2^min_log2`` (+1) tokens.
        max_log2: the longest bucket is ``2^max_log2`` (+1) tokens.
        rng: generator for the random cuts of long documents; required when ``randomize`` and the document needs one.
        randomize: draw the cuts of long documents (official default); otherwise always cut ``2^max_log2 + 1``.

    Returns:
        ``(chunks, dropped)``: ``chunks`` lists ``(start, k)`` (the chunk is ``tokens[start : start + 2^k + 1]``) in
        document order; ``dropped`` is the number of trailing tokens left out (``<= 2^min_log2``).
    """
    check_bucket_range(min_log2, max_log2)
    if isinstance(num_tokens, bool) or not isinstance(num_tokens, (int, np.integer)) or num_tokens < 0:
        raise ValueError(f"num_tokens must be an int >= 0, got {num_tokens!r}")
    chunks: list[tuple[int, int]] = []
    start, remaining = 0, int(num_tokens)
    long_threshold = (1 << (max_log2 + 1)) + 1  # from here on floor(log2(remaining - 1)) > max_log2
    if remaining >= long_threshold:
        if randomize:
            if rng is None:
                raise ValueError(
                    f"a document of {num_tokens} tokens is longer than 2^{max_log2 + 1} + 1 and needs random "
                    "cuts: pass rng=np.random.default_rng(seed) (or randomize=False)"
                )
            # All random cuts in one draw: at most this many fit before the remainder gets short.
            bound = (remaining - long_threshold) // ((1 << min_log2) + 1) + 1
            ks = min_log2 + rng.choice(max_log2 - min_log2 + 1, size=bound, p=cut_probabilities(min_log2, max_log2))
        else:
            ks = np.full((remaining - long_threshold) // ((1 << max_log2) + 1) + 1, max_log2)
        ends = np.cumsum((np.int64(1) << ks.astype(np.int64)) + 1)
        # cut i is taken while the tokens left before it are still >= long_threshold
        taken = int(np.searchsorted(ends, remaining - long_threshold, side="right")) + 1
        starts = np.concatenate([[0], ends[: taken - 1]])
        chunks = list(zip(starts.tolist(), ks[:taken].tolist()))
        start = int(ends[taken - 1])
        remaining -= start
    smallest = (1 << min_log2) + 1
    while remaining >= smallest:
        k = (remaining - 1).bit_length() - 1  # floor(log2(remaining - 1)): the largest 2^k + 1 that fits
        chunks.append((start, k))
        size = (1 << k) + 1
        start += size
        remaining -= size
    return chunks, remaining


def decompose(
    tokens: Sequence[int] | np.ndarray | torch.Tensor,
    min_log2: int,
    max_log2: int,
    *,
    rng: np.random.Generator | None = None,
    randomize: bool = True,
) -> tuple[dict[int, np.ndarray], int]:
    """Decompose one tokenized document (end-of-text token already appended) into power-of-two rows.

    Args:
        tokens: the document's token ids (1-D).
        min_log2, max_log2, rng, randomize: as in :func:`decompose_length`.

    Returns:
        ``(rows, dropped)``: ``rows[k]`` is a ``(count, 2^k + 1)`` array (the input dtype; numpy for tensors) of the
        chunks of bucket ``k`` in document order, only for buckets that got a chunk; ``dropped`` as in
        :func:`decompose_length`.
    """
    array = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else np.asarray(tokens)
    if array.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {array.dtype}")
    chunks, dropped = decompose_length(array.size, min_log2, max_log2, rng=rng, randomize=randomize)
    starts: dict[int, list[int]] = {}
    for start, k in chunks:
        starts.setdefault(k, []).append(start)
    rows = {}
    for k in sorted(starts):
        index = np.asarray(starts[k], dtype=np.int64)[:, None] + np.arange((1 << k) + 1, dtype=np.int64)
        rows[k] = array[index]
    return rows, dropped
