"""Data iteration built for exact resume: seeded, sharded batch order and batch skipping without loading."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["ResumableBatchSampler", "ShardedBatchSampler", "move_to_device"]


class ShardedBatchSampler:
    """Batches of dataset indices whose order depends only on ``(seed, epoch)``.

    Each epoch draws one permutation of ``range(num_samples)`` from a generator seeded with ``seed`` and ``epoch``,
    shards it across ``world_size`` ranks the way ``DistributedSampler`` does (rank ``r`` takes positions
    ``r, r + world_size, ...``), and cuts the shard into batches of ``batch_size``. So one process with batch ``B``
    sees exactly the union of what ``W`` processes with batch ``B / W`` see, batch by batch.

    With ``drop_last`` the samples that do not fill a last batch on every rank are dropped (as in every epoch-based
    recipe); without it every rank gets the same number of samples by repeating the first ones of the permutation,
    and the last batch may be smaller.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        if self.per_rank == 0 or len(self) == 0:
            raise ConfigError(
                f"the training data ({num_samples} samples) gives no batch of train.batch_size={batch_size} per rank "
                f"over {world_size} rank(s) with train.drop_last={drop_last}: use a smaller train.batch_size or "
                "train.drop_last=false"
            )

    @property
    def per_rank(self) -> int:
        """Samples each rank sees per epoch (before batching)."""
        if self.drop_last:
            return self.num_samples // self.world_size
        return math.ceil(self.num_samples / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.per_rank * self.world_size
        if total > len(order):  # pad so every rank has per_rank samples
            order += (order * math.ceil(total / len(order)))[: total - len(order)]
        shard = order[self.rank : total : self.world_size]
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield shard[start : start + self.batch_size]


class ResumableBatchSampler:
    """Wraps a batch sampler (anything iterable with ``set_epoch``) and skips its first ``k`` batches on request.

    Skipped batches are only indices: no sample is loaded. The wrapped sampler must yield the same batches for the
    same epoch every time (true of :class:`ShardedBatchSampler` and bramley's multi-scale sampler).
    """

    def __init__(self, batch_sampler: Any) -> None:
        if not hasattr(batch_sampler, "__iter__"):
            raise TypeError(f"batch_sampler {type(batch_sampler).__name__} is not iterable")
        self.batch_sampler = batch_sampler
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch and how many of its leading batches the next iteration leaves out."""
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)
        self.skip = skip

    def epoch_length(self) -> int | None:
        """Number of batches in the current epoch (without skipping), or None if the sampler has no ``len``."""
        try:
            return len(self.batch_sampler)
        except TypeError:
            return None

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Recursively move tensors inside tuples, lists and mappings to ``device``; other values pass unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device, non_blocking) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


class DeviceLoader:
    """Iterates a DataLoader and moves each batch to a device (what ``eval_fn`` receives)."""

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device, non_blocking: bool = False):
        self.loader, self.device, self.non_blocking = loader, device, non_blocking
        self.dataset = loader.dataset
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            yield move_to_device(batch, self.device, self.non_blocking)
