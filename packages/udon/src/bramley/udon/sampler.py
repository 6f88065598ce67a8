"""Every batch from one domain: the per-domain batch sampler and UDON's dynamic domain weights.

:class:`DomainBatchSampler` yields batches of indices into the concatenation of the domains' datasets (domain 0's
items first); each batch holds samples of one domain. Which domain batch ``s`` comes from is a pure function of the
seed and the weight history, so a run resumes exactly and every DDP rank picks the same domain at every step (each
rank then takes its own shard of that domain's global batch, as the official code splits one domain's batch across
devices).

Strategies:

- ``round_robin``: domain ``s mod D``;
- ``uniform`` / ``size``: fixed weights ``1 / D`` / proportional to the domains' sizes (the official ``balanced`` /
  ``dataset_size``);
- ``dynamic`` (UDON): round robin until the first update; then every ``update_every`` batches (1000 in the paper)
  each domain's weight becomes proportional to the mean teacher classification loss of its batches **in the window
  of the last ``update_every`` batches** (non-overlapping windows of fixed length: ours). As officially, the seen
  domains' mean losses are normalised to sum to one, a domain absent from the window keeps its previous weight, and
  all weights are renormalised.

With weights, domains are drawn from pools of ``POOL_BLOCKS * update_every`` batches: a pool holds
``round(pool * w_d)`` batches of domain ``d`` (largest remainders) in a seeded random order, and successive blocks of
``update_every`` batches take successive slices of it. The official sampler draws from one pool as long as the whole
run (``int(total_steps * w)``, the last domain taking the rest), so a domain of small weight still gets a batch now
and then and is measured again; a pool of one block would round any weight under ``1 / (2 * update_every)`` to no
batch at all, and the domain would never come back (what the first mini reproduction showed at ``update_every=20``).

The official window is not fixed: the per-domain losses are the training metrics accumulated since the last
training-summary log, which is reset every ``log_summary_steps`` (a tenth of an epoch), so the window the update
at step ``1000 n`` sees has a length that varies with how the logging and update periods interleave and can
reach back past the previous update. A fixed window is reproducible and does not depend on a logging setting.

New weights apply from the first batch the loader has not drawn yet (the next step without DataLoader workers;
``2 x num_workers`` batches later with them, which prefetch); that batch index is stored, so a resumed run draws
the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from bramley.core.errors import ConfigError

__all__ = ["POOL_BLOCKS", "STRATEGIES", "DomainBatchSampler", "DynamicWeights", "largest_remainder"]

STRATEGIES = ("dynamic", "round_robin", "uniform", "size")
#: Blocks of ``update_every`` batches per pool that weighted sampling draws from (weights are rounded to 1 / pool).
POOL_BLOCKS = 50


def _mix(*values: int) -> int:
    """A generator seed from several non-negative ints (the same in every process, unlike ``hash`` of a str)."""
    seed = 0
    for v in values:
        seed = (seed * 1_000_003 + int(v) + 1) % (2**61 - 1)
    return seed


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """Integer counts summing to ``total`` in proportion to ``weights`` (Hamilton's largest-remainder method)."""
    norm = sum(weights)
    if norm <= 0 or any(w < 0 for w in weights) or not all(math.isfinite(w) for w in weights):
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {list(weights)}")
    exact = [total * w / norm for w in weights]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda d: (counts[d] - exact[d], d))
    for d in by_remainder[: total - sum(counts)]:
        counts[d] += 1
    return counts


class DomainBatchSampler:
    """Single-domain batches over the concatenation of ``len(domain_sizes)`` datasets (see the module docstring).

    Args:
        domain_sizes: items of each domain, in concatenation order.
        batch_size: per-process batch size (the global batch is ``batch_size * world_size``).
        strategy: one of :data:`STRATEGIES`.
        update_every: batches per block of weighted sampling and between dynamic updates.
        seed: the data-order seed.
        rank, world_size: this process's shard (default: the initialised process group, else a single process).

    An epoch is ``sum_d floor(n_d / global_batch)`` batches, the number one pass over every domain gives. Within a
    domain, samples come in a new random order each time the domain's data is used up (the remainder that does not
    fill a global batch is left out of that pass).
    """

    def __init__(
        self,
        domain_sizes: Sequence[int],
        batch_size: int,
        strategy: str = "dynamic",
        update_every: int = 1000,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ConfigError(f"sampler strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        if update_every < 1:
            raise ConfigError(f"update_every must be >= 1, got {update_every}")
        if world_size is None:
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            rank = dist.get_rank() if world_size > 1 else 0
        self.rank, self.world_size = int(rank or 0), int(world_size)
        self.sizes = [int(n) for n in domain_sizes]
        self.batch_size, self.strategy, self.update_every, self.seed = batch_size, strategy, update_every, seed
        self.global_batch = batch_size * self.world_size
        small = [(d, n) for d, n in enumerate(self.sizes) if n < self.global_batch]
        if small:
            d, n = small[0]
            raise ConfigError(
                f"domain {d} has {n} samples, fewer than one global batch of {self.global_batch} "
                f"({batch_size} x {self.world_size} processes): every domain must fill a batch"
            )
        self.offsets = [sum(self.sizes[:d]) for d in range(len(self.sizes))]
        self.per_cycle = [n // self.global_batch for n in self.sizes]
        self.epoch_length = sum(self.per_cycle)
        self.epoch = 0
        if strategy == "uniform":
            weights: list[float] | None = [1.0 / len(self.sizes)] * len(self.sizes)
        elif strategy == "size":
            weights = [n / sum(self.sizes) for n in self.sizes]
        else:
            weights = None  # round robin
        #: ``[(first batch index, weights or None for round robin), ...]``, in order
        self.history: list[tuple[int, list[float] | None]] = [(0, weights)]
        self._plan: list[int] = []
        self._pool_cache: tuple[tuple[int, int] | None, list[int]] = (None, [])
        self.drawn = 0  # global index of the next batch to draw

    @property
    def num_domains(self) -> int:
        return len(self.sizes)

    @property
    def num_replicas(self) -> int:  # what the trainer checks a user sampler's sharding with
        return self.world_size

    @property
    def weights(self) -> list[float]:
        """The domain weights in force for the next batches (round robin: uniform)."""
        current = self.history[-1][1]
        return list(current) if current is not None else [1.0 / self.num_domains] * self.num_domains

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.epoch_length

    def set_weights(self, weights: Sequence[float]) -> int:
        """Sample with ``weights`` from the first batch not drawn yet; returns that batch index."""
        weights = [float(w) for w in weights]
        if len(weights) != self.num_domains:
            raise ValueError(f"{len(weights)} weights for {self.num_domains} domains")
        largest_remainder(self.update_every, weights)  # validates
        start = max(self.drawn, self.history[-1][0])
        if self.history[-1][0] == start:
            self.history[-1] = (start, weights)
        else:
            self.history.append((start, weights))
        del self._plan[start:]
        return start

    # ------------------------------------------------------------------------------------------------ the plan
    def domain_of(self, batch: int) -> int:
        """The domain of global batch ``batch``."""
        while len(self._plan) <= batch:
            self._extend()
        return self._plan[batch]

    def _extend(self) -> None:
        """Append the next block of domains to the plan."""
        at = len(self._plan)
        segment = max(i for i, (start, _) in enumerate(self.history) if start <= at)
        start, weights = self.history[segment]
        end = self.history[segment + 1][0] if segment + 1 < len(self.history) else None
        if weights is None:
            block = [(at + i) % self.num_domains for i in range(self.update_every)]
        else:
            pool_index, block_index = divmod((at - start) // self.update_every, POOL_BLOCKS)
            first = block_index * self.update_every + (at - start) % self.update_every
            block = self._pool(start, pool_index, weights)[first : (block_index + 1) * self.update_every]
        if end is not None:
            block = block[: end - at]
        self._plan.extend(block)

    def _pool(self, start: int, pool_index: int, weights: list[float]) -> list[int]:
        """The domains of one pool of a weighted segment, in their seeded order (the last one is cached)."""
        key = (start, pool_index)
        if self._pool_cache[0] != key:
            counts = largest_remainder(POOL_BLOCKS * self.update_every, weights)
            order = torch.tensor([d for d, c in enumerate(counts) for _ in range(c)])
            g = torch.Generator().manual_seed(_mix(self.seed, 1, start, pool_index))
            self._pool_cache = (key, order[torch.randperm(len(order), generator=g)].tolist())
        return self._pool_cache[1]

    def _indices(self, domain: int, k: int) -> list[int]:
        """This rank's share of the ``k``-th global batch of ``domain``."""
        cycle, position = divmod(k, self.per_cycle[domain])
        g = torch.Generator().manual_seed(_mix(self.seed, 2, domain, cycle))
        order = torch.randperm(self.sizes[domain], generator=g)
        chunk = order[position * self.global_batch : (position + 1) * self.global_batch]
        return (chunk[self.rank :: self.world_size] + self.offsets[domain]).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        first = self.epoch * self.epoch_length
        used = [0] * self.num_domains
        for s in range(first):
            used[self.domain_of(s)] += 1
        for s in range(first, first + self.epoch_length):
            domain = self.domain_of(s)
            self.drawn = s + 1
            yield self._indices(domain, used[domain])
            used[domain] += 1

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"history": [[start, w] for start, w in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(start), None if w is None else [float(x) for x in w]) for start, w in state["history"]]
        self._plan = []
        self._pool_cache = (None, [])


class DynamicWeights:
    """The trainer callback of the dynamic sampler: collects each batch's teacher loss and, every
    ``sampler.update_every`` batches, sets the domain weights proportional to the window's mean loss per domain.

    The loss function calls :meth:`record` for every training batch; the window's sums are all-reduced over DDP
    ranks before the update, so every rank computes the same weights. Its state (the window, the sampler's weight
    history) is saved in the trainer's checkpoints.
    """

    def __init__(self, sampler: DomainBatchSampler) -> None:
        self.sampler = sampler
        self.sums = torch.zeros(sampler.num_domains, dtype=torch.float64)
        self.counts = torch.zeros(sampler.num_domains, dtype=torch.float64)
        self.batches = 0
        self.updates: list[dict[str, Any]] = []

    def record(self, domain: int, loss: torch.Tensor) -> None:
        """Add one batch's (detached) teacher classification loss to the window."""
        self.sums[domain] += float(loss)
        self.counts[domain] += 1
        self.batches += 1

    def __call__(self, trainer: Any = None) -> None:
        if self.batches < self.sampler.update_every:
            return
        sums, counts = self.sums.clone(), self.counts.clone()
        if dist.is_available() and dist.is_initialized():
            device = trainer.device if trainer is not None else torch.device("cpu")
            both = torch.stack([sums, counts]).to(device)
            dist.all_reduce(both)
            sums, counts = both.cpu()
        previous = self.sampler.weights
        seen = counts > 0
        means = {d: float(sums[d] / counts[d]) for d in range(len(previous)) if seen[d]}
        total = sum(means.values())
        # as officially: the seen domains' losses normalised to sum 1, an absent domain's previous weight beside them,
        # then all renormalised (mixing raw losses with normalised weights would shrink an absent domain each time)
        new = [means[d] / total if d in means else previous[d] for d in range(len(previous))] if total > 0 else []
        if sum(new) > 0:
            start = self.sampler.set_weights([w / sum(new) for w in new])
            self.updates.append({"from_batch": start, "weights": self.sampler.weights})
        self.sums.zero_()
        self.counts.zero_()
        self.batches = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self.sums.tolist(),
            "counts": self.counts.tolist(),
            "batches": self.batches,
            "updates": self.updates,
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = torch.tensor(state["sums"], dtype=torch.float64)
        self.counts = torch.tensor(state["counts"], dtype=torch.float64)
        self.batches = int(state["batches"])
        self.updates = list(state["updates"])
        self.sampler.load_state_dict(state["sampler"])
