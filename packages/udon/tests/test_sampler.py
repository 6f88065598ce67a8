"""The per-domain batch sampler: one domain per batch, strategies, DDP shards, dynamic weights, exact resume."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from bramley.core.errors import ConfigError
from bramley.udon.sampler import POOL_BLOCKS, DomainBatchSampler, DynamicWeights, largest_remainder

SIZES = [40, 100, 24]


def domains_of(sampler: DomainBatchSampler, batches) -> list[int]:
    out = []
    for batch in batches:
        domain = {max(d for d, off in enumerate(sampler.offsets) if off <= i) for i in batch}
        assert len(domain) == 1, "a batch mixes domains"
        out.append(domain.pop())
    return out


def test_round_robin_start_and_single_domain_batches():
    s = DomainBatchSampler(SIZES, 8, "dynamic", update_every=4)
    batches = list(s)
    assert len(batches) == len(s) == 5 + 12 + 3 and all(len(b) == 8 for b in batches)
    assert domains_of(s, batches)[:6] == [0, 1, 2, 0, 1, 2]


def test_each_domain_pass_covers_its_samples_once():
    s = DomainBatchSampler([16, 16], 4, "round_robin")
    seen = Counter(i for b in s for i in b)
    assert set(seen) == set(range(32)) and set(seen.values()) == {1}


# a pool of 3 * POOL_BLOCKS = 150 batches: 150 * [40, 100, 24] / 164 = 36.59, 91.46, 21.95 by largest remainders
@pytest.mark.parametrize(("strategy", "expected"), [("uniform", [50, 50, 50]), ("size", [37, 91, 22])])
def test_static_weights(strategy, expected):
    """Exact proportions over each pool of POOL_BLOCKS blocks (largest remainders), in a seeded order."""
    assert POOL_BLOCKS == 50
    s = DomainBatchSampler(SIZES, 4, strategy, update_every=3)
    for first in (0, 150):
        assert Counter(s.domain_of(i) for i in range(first, first + 150)) == dict(enumerate(expected))


def test_a_small_weight_still_gets_batches():
    """A weight under 1 / (2 * update_every) is not rounded to zero batches per block: over a pool the domain gets
    its share (the official sampler draws from a pool as long as the run; per-block rounding starved such a domain)."""
    s = DomainBatchSampler(SIZES, 4, "dynamic", update_every=20)
    s.set_weights([0.985, 0.015, 0.0])
    counts = Counter(s.domain_of(i) for i in range(20 * POOL_BLOCKS))
    assert counts == {0: 985, 1: 15}


def test_largest_remainder():
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]
    assert sum(largest_remainder(1000, [0.123, 0.456, 0.421])) == 1000
    with pytest.raises(ValueError):
        largest_remainder(10, [0, 0])


def test_ddp_shards_are_the_single_process_batches():
    single = DomainBatchSampler(SIZES, 8, "size", update_every=5, seed=3)
    ranks = [DomainBatchSampler(SIZES, 4, "size", update_every=5, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        for whole, a, b in zip(single, *ranks, strict=True):
            assert sorted(whole) == sorted(a + b)


def test_same_seed_same_batches_and_epochs_differ():
    a, b = (DomainBatchSampler(SIZES, 8, "uniform", update_every=6, seed=1) for _ in range(2))
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)


def test_dynamic_weights_follow_the_window_losses():
    s = DomainBatchSampler(SIZES, 4, "dynamic", update_every=6)
    w = DynamicWeights(s)
    for step, batch in enumerate(s):
        domain = domains_of(s, [batch])[0]
        w.record(domain, torch.tensor([1.0, 3.0, 0.0][domain] + 0.0))
        w()
        if step == 5:
            break
    # window of 6 round-robin batches: mean losses 1, 3, 0 -> weights 1/4, 3/4, 0
    assert s.weights == pytest.approx([0.25, 0.75, 0.0])
    assert w.updates[0]["from_batch"] == 6
    counts = Counter(s.domain_of(i) for i in range(6, 6 + 6 * POOL_BLOCKS))
    assert counts == {0: 75, 1: 225}  # a pool of 300 batches at [0.25, 0.75, 0]


def test_absent_domain_keeps_its_weight():
    s = DomainBatchSampler(SIZES, 4, "dynamic", update_every=4)
    w = DynamicWeights(s)
    for domain, loss in ((0, 2.0), (1, 2.0), (0, 2.0), (1, 2.0)):  # domain 2 absent from the window
        w.record(domain, torch.tensor(loss))
    w()
    # as officially: the seen losses normalised (1/2, 1/2), the absent domain's 1/3 beside them, all renormalised
    assert s.weights == pytest.approx([0.375, 0.375, 0.25])


def test_state_round_trip_replays_the_plan():
    s = DomainBatchSampler(SIZES, 4, "dynamic", update_every=5, seed=2)
    w = DynamicWeights(s)
    first = []
    for i, batch in enumerate(s):
        first.append(batch)
        w.record(domains_of(s, [batch])[0], torch.tensor(1.0 + (i % 3)))
        w()
    state = w.state_dict()
    again = DomainBatchSampler(SIZES, 4, "dynamic", update_every=5, seed=2)
    DynamicWeights(again).load_state_dict(state)
    assert list(again) == first and again.history == s.history and len(s.history) > 2


def test_domain_smaller_than_a_batch():
    with pytest.raises(ConfigError, match="domain 2 has 24 samples, fewer than one global batch of 32"):
        DomainBatchSampler(SIZES, 16, world_size=2, rank=0)
    with pytest.raises(ConfigError, match="not one of"):
        DomainBatchSampler(SIZES, 4, "random")
