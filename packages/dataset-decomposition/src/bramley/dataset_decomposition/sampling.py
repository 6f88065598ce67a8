"""Variable sequence length curricula and the token-budget batch sampler over dataset-decomposition buckets.

Definitions (bucket ``b = 0..n-1``, shortest first, ``L_b`` input tokens per row):

- **Token budget.** Every step takes rows from one bucket only, ``B_b = tokens_per_step / L_b`` rows per rank, so a
  step always holds ``tokens_per_step`` input tokens per rank (``tokens_per_step * num_replicas`` in all).
  ``tokens_per_step`` must be a multiple of every ``L_b``.
- **Epoch.** One epoch uses every row at most once: bucket ``b`` provides ``N_b = rows_b // (B_b * num_replicas)``
  global batches (the rows left over, fewer than one global batch, wait for the next epoch, which reshuffles).
  Its steps are ``sum_b N_b``, the same in every epoch.
- **Cycles.** An epoch is split into ``num_cycles`` cycles; cycle ``c`` gets ``q[c, b]`` batches of bucket ``b``, the
  ``N_b`` spread as evenly as possible (earlier cycles take the extra ones). So every cycle sees (up to rounding) the
  natural token distribution of the data, and the curriculum only decides the *order* within a cycle.
- **Curriculum.** Within cycle ``c`` each step draws a bucket among those whose quota is not used up, with
  probability ``w_b / sum_{active} w``, where the weights ``w_b`` are fixed for the cycle:

  - ``natural``: ``w_b = q[c, b]``, i.e. by tokens; all buckets run out together (the paper's "Uniform" odds).
  - ``uniform``: ``w_b = 1``, every bucket that still has batches is equally likely at every step.
  - ``grow_p2``: ``w_b = 2^(n-1-b) * q[c, b]``, the paper's Grow-P2 odds (32 16 8 4 2 1 for 6 buckets).
  - ``grow_linear``: ``w_b = (n - b) * q[c, b]``, the paper's Grow-Linear odds (6 5 4 3 2 1).
  - a list of odds: ``w_b = odds[b] * q[c, b]`` (e.g. shrinking odds 1 2 4 8 16 32: longest first).

  With the growing odds, short buckets run out first and a cycle ends on the longest bucket. This is the official
  implementation's sampler (open_lm's ``RandomMix`` patched with fixed weights ``odds * batches`` per epoch, a
  seeded generator shared by all ranks, and exhausted sources removed), with its epochs called cycles here.
- **Sub-cycles** (``mixing="subcycles"``, ``grow_p2`` / ``grow_linear`` only): OLMo-core's deterministic variant.
  Cycle ``c`` is cut into ``n`` sub-cycles; bucket ``b``'s ``q[c, b]`` batches are apportioned over them in
  proportion to the odds of :func:`subcycle_odds`, exactly (largest remainder), and each sub-cycle is shuffled.
  Sub-cycle 0 has the paper's odds; sub-cycle ``s`` favours bucket ``s``.

All ranks compute the same bucket schedule from ``(seed, epoch)``; within a bucket the rows are shuffled once per
epoch and each global batch is split into ``num_replicas`` disjoint per-rank slices. Items are ``(bucket, row)``
pairs, as :class:`bramley.dataset_decomposition.buckets.BucketDataset` takes them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from bramley.core.packing import sampler_replicas

__all__ = [
    "CURRICULA",
    "MIXINGS",
    "BucketBatchSampler",
    "apportion",
    "bucket_schedule",
    "curriculum_odds",
    "cycle_quotas",
    "subcycle_odds",
]

CURRICULA = ("natural", "uniform", "grow_p2", "grow_linear")

Curriculum = str | Sequence[float]


def curriculum_odds(curriculum: Curriculum, num_buckets: int) -> np.ndarray | None:
    """Per-bucket odds (shortest bucket first) of a named curriculum or an explicit odds list.

    Returns ``None`` for ``uniform`` (weights do not scale with the bucket's batches).

    Raises:
        ValueError: unknown name, or odds of the wrong length / negative / all zero.
    """
    if num_buckets < 1:
        raise ValueError(f"need at least one bucket, got {num_buckets}")
    if isinstance(curriculum, str):
        ranks = np.arange(num_buckets, dtype=np.float64)
        if curriculum == "natural":
            return np.ones(num_buckets)
        if curriculum == "uniform":
            return None
        if curriculum == "grow_p2":
            return np.exp2(num_buckets - 1 - ranks)
        if curriculum == "grow_linear":
            return num_buckets - ranks
        raise ValueError(f"unknown curriculum {curriculum!r}; choose one of {', '.join(CURRICULA)} or give odds")
    odds = np.asarray(curriculum, dtype=np.float64)
    if odds.shape != (num_buckets,):
        raise ValueError(f"odds must have one entry per bucket ({num_buckets}), got shape {odds.shape}")
    if not np.all(np.isfinite(odds)) or odds.min() < 0 or odds.sum() <= 0:
        raise ValueError(f"odds must be finite, >= 0 and not all zero, got {odds.tolist()}")
    return odds


def cycle_quotas(batches_per_bucket: Sequence[int], num_cycles: int) -> np.ndarray:
    """``(num_cycles, num_buckets)`` int64 batches of each bucket per cycle, summing to ``batches_per_bucket``.

    Bucket ``b``'s batches are spread as evenly as possible; the first ``N_b % num_cycles`` cycles get one more.
    """
    if isinstance(num_cycles, bool) or not isinstance(num_cycles, (int, np.integer)) or num_cycles < 1:
        raise ValueError(f"num_cycles must be an int >= 1, got {num_cycles!r}")
    batches = np.asarray(batches_per_bucket, dtype=np.int64)
    if batches.ndim != 1 or (batches.size and batches.min() < 0):
        raise ValueError(f"batches_per_bucket must be a 1-D list of counts >= 0, got {batches_per_bucket!r}")
    base, extra = np.divmod(batches, num_cycles)
    return base[None, :] + (np.arange(num_cycles)[:, None] < extra[None, :])


def _cycle_schedule(quota: np.ndarray, odds: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Bucket of every step of one cycle: draws from fixed weights, exhausted buckets removed (renormalized).

    Equivalent to one draw per step, but vectorized: draw ``sum(remaining)`` steps from the current distribution
    (some bucket must run out within them), keep the draws up to the first exhaustion, drop that bucket, repeat.
    """
    remaining = quota.astype(np.int64).copy()
    weights = np.ones(len(quota)) if odds is None else odds * quota
    active = (remaining > 0) & (weights > 0)
    if np.any((remaining > 0) & ~active):
        raise ValueError("a bucket with batches to give has odds 0: it could never be drawn")
    parts = []
    while active.any():
        p = np.where(active, weights, 0.0)
        draws = rng.choice(len(quota), size=int(remaining.sum()), p=p / p.sum())
        cut = draws.size
        for b in np.flatnonzero(active):
            hits = np.flatnonzero(draws == b)
            if hits.size >= remaining[b]:
                cut = min(cut, int(hits[remaining[b] - 1]) + 1)
        kept = draws[:cut]
        parts.append(kept)
        remaining -= np.bincount(kept, minlength=len(quota))
        active &= remaining > 0
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def subcycle_odds(curriculum: str, num_buckets: int) -> np.ndarray:
    """``(num_buckets, num_buckets)`` odds ``[s, b]`` of bucket ``b`` in sub-cycle ``s`` (``mixing="subcycles"``).

    With the level ``e[s, b] = n - b + s`` for ``b >= s`` and ``n - s`` for ``b < s``, the odds are ``2^(e - 1)``
    (``grow_p2``) or ``e`` (``grow_linear``): sub-cycle 0 has the paper's odds, sub-cycle ``s`` gives bucket ``s`` the
    top odds, the longer buckets the paper's decay after it and the shorter ones the low level ``n - s``. These are
    the numbers of OLMo-core's ``VSLGrowP2Curriculum`` / ``VSLGrowLinearCurriculum``.
    """
    sub = np.arange(num_buckets)[:, None]
    bucket = np.arange(num_buckets)[None, :]
    level = np.where(bucket >= sub, num_buckets - bucket + sub, num_buckets - sub).astype(np.float64)
    if curriculum == "grow_p2":
        return np.exp2(level - 1)
    if curriculum == "grow_linear":
        return level
    raise ValueError(f"mixing='subcycles' takes curriculum 'grow_p2' or 'grow_linear', got {curriculum!r}")


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` that sum exactly to ``total`` (largest remainder;
    ties go to the earlier entry)."""
    weights = np.asarray(weights, dtype=np.float64)
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    short = int(total - counts.sum())
    if short:
        counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts


def _subcycle_schedule(quota: np.ndarray, odds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One cycle as ``n`` sub-cycles: bucket ``b``'s batches are apportioned over them by ``odds[:, b]``, and each
    sub-cycle is shuffled."""
    counts = np.stack([apportion(int(q), odds[:, b]) for b, q in enumerate(quota)], axis=1)  # [sub-cycle, bucket]
    parts = []
    for row in counts:
        part = np.repeat(np.arange(len(quota)), row)
        rng.shuffle(part)
        parts.append(part)
    return np.concatenate(parts)


MIXINGS = ("sampled", "subcycles")


def bucket_schedule(
    batches_per_bucket: Sequence[int],
    *,
    curriculum: Curriculum = "grow_p2",
    num_cycles: int = 1,
    seed: int = 0,
    epoch: int = 0,
    mixing: str = "sampled",
) -> np.ndarray:
    """The bucket index of every step of one epoch (int64, ``sum(batches_per_bucket)`` steps).

    See the module docstring for the definition. Deterministic in ``(seed, epoch)``; bucket ``b`` appears exactly
    ``batches_per_bucket[b]`` times, and ``cycle_quotas(...)[c, b]`` times within cycle ``c``.
    """
    batches = np.asarray(batches_per_bucket, dtype=np.int64)
    quotas = cycle_quotas(batches, num_cycles)
    rng = np.random.default_rng([int(seed), int(epoch)])
    if mixing == "sampled":
        odds = curriculum_odds(curriculum, len(batches))
        cycles = [_cycle_schedule(q, odds, rng) for q in quotas]
    elif mixing == "subcycles":
        if not isinstance(curriculum, str):
            raise ValueError("mixing='subcycles' takes curriculum 'grow_p2' or 'grow_linear', not an odds list")
        table = subcycle_odds(curriculum, len(batches))
        cycles = [_subcycle_schedule(q, table, rng) for q in quotas]
    else:
        raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
    return np.concatenate(cycles).astype(np.int64)


class BucketBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Token-budget batches of ``(bucket, row)`` items, one bucket per step, following a curriculum, DDP-aware.

    Use it as ``Trainer(..., train_data=buckets.dataset(), batch_sampler=sampler)``. Every rank must build it with
    the same arguments (except ``rank``): all ranks then draw the same bucket at every step and disjoint rows.

    Args:
        rows_per_bucket: rows available in each bucket (shortest bucket first).
        lengths: input tokens per row of each bucket (``2^k``; a row holds ``2^k + 1`` tokens with the target).
        tokens_per_step: input tokens per step on each rank; a multiple of every length.
        curriculum: ``natural``, ``uniform``, ``grow_p2``, ``grow_linear`` or a list of per-bucket odds.
        num_cycles: curriculum cycles per epoch.
        mixing: ``sampled`` (the paper's random draws) or ``subcycles`` (OLMo-core's deterministic sub-cycles).
        seed: seed of the bucket schedule and the row shuffles (``(seed, epoch)`` per epoch).
        shuffle: shuffle the rows of each bucket every epoch (otherwise rows are taken in order).
        num_replicas, rank: the data-parallel world; default: from ``torch.distributed`` if initialized, else 1 / 0.
    """

    def __init__(
        self,
        rows_per_bucket: Sequence[int],
        lengths: Sequence[int],
        tokens_per_step: int,
        *,
        curriculum: Curriculum = "grow_p2",
        num_cycles: int = 1,
        mixing: str = "sampled",
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        num_replicas, rank = sampler_replicas(num_replicas, rank)
        rows = np.asarray(rows_per_bucket, dtype=np.int64)
        lens = np.asarray(lengths, dtype=np.int64)
        if rows.ndim != 1 or lens.shape != rows.shape or rows.size == 0:
            raise ValueError(f"rows_per_bucket and lengths must be equal-length 1-D lists, got {rows} and {lens}")
        if rows.min() < 0 or lens.min() < 1:
            raise ValueError(f"rows must be >= 0 and lengths >= 1, got rows={rows.tolist()} lengths={lens.tolist()}")
        if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, (int, np.integer)):
            raise ValueError(f"tokens_per_step must be an int, got {tokens_per_step!r}")
        bad = [int(n) for n in lens if tokens_per_step < n or tokens_per_step % n]
        if bad:
            raise ValueError(
                f"tokens_per_step={tokens_per_step} must be a multiple of every bucket length; it is not of {bad}"
            )
        curriculum_odds(curriculum, rows.size)  # validate early
        if mixing not in MIXINGS:
            raise ValueError(f"mixing must be one of {MIXINGS}, got {mixing!r}")
        if mixing == "subcycles":
            if not isinstance(curriculum, str):
                raise ValueError("mixing='subcycles' takes curriculum 'grow_p2' or 'grow_linear', not an odds list")
            subcycle_odds(curriculum, rows.size)
        self.mixing = mixing
        self.rows_per_bucket = rows.tolist()
        self.lengths = lens.tolist()
        self.tokens_per_step = int(tokens_per_step)
        self.curriculum, self.num_cycles, self.seed, self.shuffle = curriculum, num_cycles, seed, shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.batch_sizes = [self.tokens_per_step // n for n in self.lengths]
        self.batches_per_bucket = [r // (b * num_replicas) for r, b in zip(self.rows_per_bucket, self.batch_sizes)]
        cycle_quotas(self.batches_per_bucket, num_cycles)  # validate num_cycles
        if sum(self.batches_per_bucket) == 0:
            raise ValueError(
                f"no bucket has enough rows for one global batch: rows {self.rows_per_bucket}, global batch sizes "
                f"{[b * num_replicas for b in self.batch_sizes]} (lower tokens_per_step or use more data)"
            )
        self._schedule_cache: tuple[int, np.ndarray] | None = None

    @classmethod
    def from_buckets(cls, buckets: Any, tokens_per_step: int, **kwargs: Any) -> BucketBatchSampler:
        """Sampler over a :class:`~bramley.dataset_decomposition.buckets.Buckets` (its rows and lengths)."""
        return cls(buckets.rows_per_bucket, buckets.lengths, tokens_per_step, **kwargs)

    @property
    def unused_rows_per_bucket(self) -> list[int]:
        """Rows of each bucket that an epoch leaves out (fewer than one global batch each)."""
        return [
            r - n * b * self.num_replicas
            for r, n, b in zip(self.rows_per_bucket, self.batches_per_bucket, self.batch_sizes)
        ]

    @property
    def tokens_per_epoch(self) -> int:
        """Input tokens one epoch trains on, over all ranks."""
        return len(self) * self.tokens_per_step * self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return sum(self.batches_per_bucket)

    def schedule(self, epoch: int | None = None) -> np.ndarray:
        """Bucket index of every step of ``epoch`` (default: the current one); the same on every rank."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._schedule_cache is None or self._schedule_cache[0] != epoch:
            steps = bucket_schedule(
                self.batches_per_bucket,
                curriculum=self.curriculum,
                num_cycles=self.num_cycles,
                seed=self.seed,
                epoch=epoch,
                mixing=self.mixing,
            )
            self._schedule_cache = (epoch, steps)
        return self._schedule_cache[1]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        schedule = self.schedule(self.epoch)
        orders = []
        for b, rows in enumerate(self.rows_per_bucket):
            if self.shuffle:
                orders.append(np.random.default_rng([int(self.seed), self.epoch, 1 + b]).permutation(rows))
            else:
                orders.append(np.arange(rows))
        taken = [0] * len(self.rows_per_bucket)
        for b in schedule.tolist():
            size = self.batch_sizes[b]
            start = (taken[b] * self.num_replicas + self.rank) * size
            taken[b] += 1
            yield [(b, int(row)) for row in orders[b][start : start + size]]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(buckets={self.lengths}, tokens_per_step={self.tokens_per_step}, "
            f"curriculum={self.curriculum!r}, num_cycles={self.num_cycles}, steps={len(self)}, "
            f"rank={self.rank}/{self.num_replicas})"
        )
