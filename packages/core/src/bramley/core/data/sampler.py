"""Variable-batch-size multi-scale sampling (MobileViT / CVNets "variable batch sampler", used by MobileOne).

Each batch gets one resolution ``(h, w)`` drawn at random from a set of scales, and its batch size is chosen so that
``batch * h * w`` stays close to ``base_batch_size * base_h * base_w``: small images come in big batches and large
images in small ones, so memory and step cost stay roughly constant while the network sees many resolutions.

Semantics follow CVNets / corenet (``corenet/data/sampler/variable_batch_sampler.py`` and ``utils.py``, read for
reference, not copied), with these deliberate differences:

- Scales: like ``image_batch_pairs`` there, heights and widths are ``linspace(min, max, num_scales)`` plus the base
  size, each rounded to a multiple of ``divisor`` (32), paired in order. Batch size is ``max(1, budget // (h * w))``
  computed exactly in integers (corenet rounds the ratio to 2 decimals first, which can overshoot the budget).
- Randomness: corenet re-seeds Python's *global* ``random`` with the epoch, which also resets every augmentation that
  uses ``random``; here all draws come from private ``numpy`` generators seeded by ``(seed, epoch)``.
- Last batch: corenet fills a short last batch with indices from the start of the epoch (those samples are seen
  twice); here the last batch is simply shorter, so every index of a rank's shard appears exactly once per epoch.
- Curriculum: corenet's ``scale_inc`` *shifts* ``min``/``max`` crop sizes up by a factor at given epochs through a
  stateful ``update_scales`` call (lost on resume). Here the allowed set *grows* and is a pure function of the epoch;
  see :meth:`VariableBatchSampler.allowed_scales`.
- ``len()`` is the number of batches this rank yields in the current epoch (corenet returns a sample count).

DDP: the permutation and the scale sequence depend only on ``(seed, epoch)``, never on the rank, so every rank draws
the same ``(h, w)`` and the same number of batches at every step (no rank waits on another for a collective).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from .seeded import SharedEpoch, apply_to_first, seeded_rng

Scale = tuple[int, int]


def _as_hw(size: int | Sequence[int], name: str) -> Scale:
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _round_to_multiple(value: float, divisor: int) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def make_scales(
    base_size: int | Sequence[int] = 256,
    min_size: int | Sequence[int] = 160,
    max_size: int | Sequence[int] = 320,
    num_scales: int = 5,
    divisor: int = 32,
) -> list[Scale]:
    """CVNets-style scale set: ``num_scales`` evenly spaced sizes in ``[min_size, max_size]`` plus the base size.

    Heights and widths are spaced independently, rounded to the nearest multiple of ``divisor`` (at least
    ``divisor``), de-duplicated, sorted and paired in order. Defaults give 160, 192, 256, 288, 320 (squares).
    """
    if num_scales < 1:
        raise ValueError(f"num_scales must be >= 1, got {num_scales}")
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    base, lo, hi = _as_hw(base_size, "base_size"), _as_hw(min_size, "min_size"), _as_hw(max_size, "max_size")
    dims = []
    for axis in range(2):
        if lo[axis] > hi[axis]:
            raise ValueError(f"min_size {lo} must not exceed max_size {hi}")
        values = {*np.linspace(lo[axis], hi[axis], num_scales).tolist(), base[axis]}
        dims.append(sorted({_round_to_multiple(v, divisor) for v in values}))
    if len(dims[0]) != len(dims[1]):
        raise ValueError(f"height and width grids differ in length after rounding: {dims[0]} vs {dims[1]}")
    return list(zip(dims[0], dims[1]))


def _distributed_defaults(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if num_replicas is None:
        num_replicas = torch.distributed.get_world_size() if initialized else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialized else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas=} {rank=}")
    return num_replicas, rank


class VariableBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Batch sampler yielding lists of ``(index, height, width)``; one random scale per batch.

    Per epoch ``e`` (set with :meth:`set_epoch`), with ``N`` samples and ``R`` replicas:

    1. Indices are permuted by ``numpy.random.default_rng([seed, e])`` (identity when ``shuffle=False``).
    2. Like ``DistributedSampler``: with ``drop_last=False`` the permutation is padded by repeating its head to a
       multiple of ``R`` (at most ``R - 1`` samples appear on two ranks); with ``drop_last=True`` the tail is
       dropped so shards are exactly disjoint. Rank ``r`` takes positions ``r, r + R, r + 2R, ...``.
    3. A scale sequence is drawn from ``default_rng([seed, e, 1])`` uniformly over :meth:`allowed_scales` ``(e)``;
       the shard is cut in order into batches of ``batch_size_for(scale)``; the last batch may be shorter.

    Tolerance of the budget: every full batch satisfies ``b * h * w <= budget < (b + 1) * h * w`` where
    ``budget = base_batch_size * base_h * base_w`` (so the relative shortfall is below ``1 / b``), except that a
    scale larger than the budget allows still gets ``b = 1``; ``max_batch_size`` caps ``b`` if given.

    Args:
        data_source: the dataset (anything with ``len``) or the number of samples.
        base_batch_size: batch size per replica at the base resolution.
        base_size: base resolution, int or ``(h, w)``.
        scales: explicit list of sizes (ints or ``(h, w)``); ``None`` builds :func:`make_scales` from
            ``base_size, min_size, max_size, num_scales, divisor``.
        curriculum_epochs: ``0`` allows every scale from the start. Otherwise scales sorted by area ascending are
            unlocked linearly: at epoch ``e`` the ``curriculum_start + floor((S - curriculum_start) * min(e, E) / E)``
            smallest of the ``S`` scales are allowed (``E = curriculum_epochs``), so training starts at cheap low
            resolutions and every scale is allowed from epoch ``E`` on.
        curriculum_start: number of (smallest) scales allowed at epoch 0.
        shuffle: permute the samples each epoch.
        seed: shared seed; must be equal on every rank.
        num_replicas, rank: defaults from ``torch.distributed`` when initialised, else 1 and 0.
        drop_last: drop the tail instead of padding so that shards are disjoint (see step 2).
        max_batch_size: optional upper bound on any batch size.
    """

    def __init__(
        self,
        data_source: Sized | int,
        base_batch_size: int,
        base_size: int | Sequence[int] = 256,
        scales: Sequence[int | Sequence[int]] | None = None,
        *,
        min_size: int | Sequence[int] = 160,
        max_size: int | Sequence[int] = 320,
        num_scales: int = 5,
        divisor: int = 32,
        curriculum_epochs: int = 0,
        curriculum_start: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        max_batch_size: int | None = None,
    ) -> None:
        self.num_samples = data_source if isinstance(data_source, int) else len(data_source)
        if self.num_samples < 1:
            raise ValueError(f"need at least one sample, got {self.num_samples}")
        if base_batch_size < 1:
            raise ValueError(f"base_batch_size must be >= 1, got {base_batch_size}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        self.base_size = _as_hw(base_size, "base_size")
        if scales is None:
            scales = make_scales(self.base_size, min_size, max_size, num_scales, divisor)
        if len(scales) == 0:
            raise ValueError("scales must not be empty")
        self.scales: list[Scale] = sorted({_as_hw(s, "scale") for s in scales}, key=lambda s: (s[0] * s[1], s))
        if curriculum_epochs < 0:
            raise ValueError(f"curriculum_epochs must be >= 0, got {curriculum_epochs}")
        if not 1 <= curriculum_start <= len(self.scales):
            raise ValueError(f"curriculum_start must be in [1, {len(self.scales)}], got {curriculum_start}")
        self.base_batch_size = base_batch_size
        self.budget = base_batch_size * self.base_size[0] * self.base_size[1]
        self.max_batch_size = max_batch_size
        self.curriculum_epochs = curriculum_epochs
        self.curriculum_start = curriculum_start
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas, self.rank = _distributed_defaults(num_replicas, rank)
        self.drop_last = drop_last
        if drop_last and self.num_samples < self.num_replicas:
            raise ValueError(f"drop_last=True with {self.num_samples} samples and {self.num_replicas} replicas")
        self.epoch = 0
        self._plan_cache: tuple[int, list[np.ndarray], list[Scale]] | None = None

    def batch_size_for(self, scale: int | Sequence[int]) -> int:
        """Batch size used at ``scale``: ``max(1, budget // (h * w))``, capped by ``max_batch_size``."""
        h, w = _as_hw(scale, "scale")
        size = max(1, self.budget // (h * w))
        return min(size, self.max_batch_size) if self.max_batch_size is not None else size

    def allowed_scales(self, epoch: int | None = None) -> list[Scale]:
        """Scales that batches may use at ``epoch`` (default: the current one), smallest area first."""
        epoch = self.epoch if epoch is None else epoch
        if self.curriculum_epochs == 0:
            return list(self.scales)
        extra = (len(self.scales) - self.curriculum_start) * min(max(epoch, 0), self.curriculum_epochs)
        return self.scales[: self.curriculum_start + extra // self.curriculum_epochs]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: reshuffles the samples and redraws the scale sequence (same on every rank)."""
        self.epoch = epoch

    @property
    def shard_size(self) -> int:
        """Samples each rank sees per epoch."""
        n, r = self.num_samples, self.num_replicas
        return n // r if self.drop_last else math.ceil(n / r)

    def _plan(self) -> tuple[list[np.ndarray], list[Scale]]:
        if self._plan_cache is not None and self._plan_cache[0] == self.epoch:
            return self._plan_cache[1], self._plan_cache[2]
        n, r = self.num_samples, self.num_replicas
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        total = self.shard_size * r
        order = order[:total] if total <= n else np.resize(order, total)  # np.resize repeats the head cyclically
        shard = order[self.rank : total : r]
        allowed = self.allowed_scales()
        scale_rng = np.random.default_rng([self.seed, self.epoch, 1])
        batches, batch_scales, start = [], [], 0
        while start < len(shard):
            scale = allowed[int(scale_rng.integers(len(allowed)))]
            size = self.batch_size_for(scale)
            batches.append(shard[start : start + size])
            batch_scales.append(scale)
            start += size
        self._plan_cache = (self.epoch, batches, batch_scales)
        return batches, batch_scales

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        batches, batch_scales = self._plan()
        for indices, (h, w) in zip(batches, batch_scales):
            yield [(int(i), h, w) for i in indices]

    def __len__(self) -> int:
        return len(self._plan()[0])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{h}x{w}:{self.batch_size_for((h, w))}" for h, w in self.scales)
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, base={self.base_size[0]}x{self.base_size[1]}"
            f"@{self.base_batch_size}, scales=[{sizes}], curriculum_epochs={self.curriculum_epochs}, "
            f"rank={self.rank}/{self.num_replicas}, epoch={self.epoch})"
        )


class MultiScaleDataset(Dataset):
    """Wrap a map-style dataset for :class:`VariableBatchSampler`: item ``(index, h, w)`` gets an ``(h, w)`` transform.

    ``transform_for(h, w)`` returns the transform for that size (built once per size and cached); it is applied to
    the first element of the wrapped item (``(image, target)`` -> ``(transform(image), target)``) or to the item
    itself if it is not a tuple. With ``seed`` set, the transform for sample ``index`` in epoch ``e`` runs under
    :func:`~bramley.core.data.seeded.seeded_rng` ``(seed, e, index)``, so augmentations do not depend on the number
    of workers or on what ran before (call :meth:`set_epoch` each epoch).

    Args:
        dataset: the wrapped dataset.
        transform_for: ``(h, w) -> callable``.
        seed: per-sample augmentation seed, or ``None`` to use the worker's global RNG as usual.
    """

    def __init__(self, dataset: Dataset, transform_for: Callable[[int, int], Callable], seed: int | None = None):
        self.dataset = dataset
        self.transform_for = transform_for
        self.seed = seed
        self._epoch = SharedEpoch()
        self._transforms: dict[Scale, Callable] = {}

    def set_epoch(self, epoch: int) -> None:
        """Epoch used to seed per-sample augmentations (visible to already-started workers)."""
        self._epoch.set(epoch)

    @property
    def classes(self) -> Any:
        """The wrapped dataset's class names (an ``AttributeError`` when it has none)."""
        return self.dataset.classes

    @property
    def targets(self) -> Any:
        """The wrapped dataset's labels (an ``AttributeError`` when it has none)."""
        return self.dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> Any:
        if not (isinstance(key, tuple) and len(key) == 3):
            raise TypeError(f"MultiScaleDataset expects (index, height, width) keys, got {key!r}")
        index, h, w = key
        transform = self._transforms.get((h, w))
        if transform is None:
            transform = self._transforms[(h, w)] = self.transform_for(h, w)
        item = self.dataset[index]
        if self.seed is None:
            return apply_to_first(transform, item)
        with seeded_rng(self.seed, self._epoch.get(), index):
            return apply_to_first(transform, item)


def multiscale_collate(batch: list[Any]) -> Any:
    """``default_collate`` after checking that all images in the batch share one shape (clear error otherwise)."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = [b[0] if isinstance(b, tuple) else b for b in batch]
    shapes = {tuple(x.shape) for x in images if isinstance(x, torch.Tensor)}
    if len(shapes) > 1:
        raise ValueError(f"images in one multi-scale batch must share a shape, got {sorted(shapes)}")
    return default_collate(batch)
