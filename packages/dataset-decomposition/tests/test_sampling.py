import numpy as np
import pytest
import torch

from bramley.dataset_decomposition.sampling import (
    BucketBatchSampler,
    apportion,
    bucket_schedule,
    curriculum_odds,
    cycle_quotas,
    subcycle_odds,
)


def test_curriculum_odds():
    assert curriculum_odds("grow_p2", 6).tolist() == [32, 16, 8, 4, 2, 1]
    assert curriculum_odds("grow_linear", 6).tolist() == [6, 5, 4, 3, 2, 1]
    assert curriculum_odds("natural", 3).tolist() == [1, 1, 1]
    assert curriculum_odds("uniform", 3) is None
    assert curriculum_odds([1, 2, 4], 3).tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="unknown curriculum"):
        curriculum_odds("grow_p3", 3)
    with pytest.raises(ValueError, match="one entry per bucket"):
        curriculum_odds([1, 2], 3)
    with pytest.raises(ValueError, match=">= 0"):
        curriculum_odds([1, -2, 1], 3)


def test_cycle_quotas():
    q = cycle_quotas([10, 7, 0, 3], 3)
    assert q.shape == (3, 4)
    assert q.sum(0).tolist() == [10, 7, 0, 3]
    assert q.tolist() == [[4, 3, 0, 1], [3, 2, 0, 1], [3, 2, 0, 1]]
    with pytest.raises(ValueError, match="num_cycles"):
        cycle_quotas([1], 0)


@pytest.mark.parametrize("curriculum", ["natural", "uniform", "grow_p2", "grow_linear", [1, 2, 4, 8]])
@pytest.mark.parametrize("num_cycles", [1, 3])
def test_schedule_uses_exactly_the_quotas(curriculum, num_cycles):
    batches = [40, 25, 12, 9]
    schedule = bucket_schedule(batches, curriculum=curriculum, num_cycles=num_cycles, seed=1)
    assert np.bincount(schedule, minlength=4).tolist() == batches
    quotas = cycle_quotas(batches, num_cycles)
    bounds = np.concatenate([[0], np.cumsum(quotas.sum(1))])
    for c in range(num_cycles):  # cumulative tokens per bucket match the natural mixture at every cycle end
        part = schedule[bounds[c] : bounds[c + 1]]
        assert np.bincount(part, minlength=4).tolist() == quotas[c].tolist()
    again = bucket_schedule(batches, curriculum=curriculum, num_cycles=num_cycles, seed=1)
    assert np.array_equal(schedule, again)
    other = bucket_schedule(batches, curriculum=curriculum, num_cycles=num_cycles, seed=1, epoch=1)
    assert not np.array_equal(schedule, other)


def test_grow_p2_goes_from_shortest_to_longest():
    batches = [300, 300, 300, 300]
    firsts, lasts, early, late = [], [], [], []
    for seed in range(20):
        s = bucket_schedule(batches, curriculum="grow_p2", num_cycles=1, seed=seed)
        firsts.append(s[0])
        lasts.append(s[-1])
        early.append(s[:120].mean())
        late.append(s[-120:].mean())
    assert np.mean(np.array(firsts) == 0) > 0.3  # P(first = shortest) = 8 / 15
    assert all(last == 3 for last in lasts)  # the longest bucket is the last to run out
    assert np.mean(early) < 0.8 < 2.7 < np.mean(late)


def test_cycles_repeat_the_growth():
    s = bucket_schedule([200, 200, 200], curriculum="grow_linear", num_cycles=4, seed=0)
    cycles = s.reshape(4, 150)
    for cycle in cycles:
        assert cycle[:30].mean() < cycle[-30:].mean()
        assert np.bincount(cycle, minlength=3).tolist() == [50, 50, 50]


def test_first_step_distribution_matches_the_weights():
    # step 0 of a cycle draws bucket b with probability w_b / sum(w): odds * batches (grow_p2), 1 (uniform), batches
    batches = np.array([60, 30, 10])
    expectations = {
        "grow_p2": np.array([4, 2, 1]) * batches,
        "uniform": np.ones(3),
        "natural": batches.astype(float),
    }
    for name, weights in expectations.items():
        draws = [bucket_schedule(batches, curriculum=name, seed=seed)[0] for seed in range(1500)]
        freq = np.bincount(draws, minlength=3) / len(draws)
        assert np.allclose(freq, weights / weights.sum(), atol=0.04), (name, freq)


def test_natural_keeps_the_mixture_throughout():
    batches = [4000, 2000, 1000]
    s = bucket_schedule(batches, curriculum="natural", seed=0)
    for part in np.array_split(s, 4)[:3]:  # every quarter but the (exhausting) last has the natural mixture
        assert np.allclose(np.bincount(part, minlength=3) / part.size, np.array(batches) / sum(batches), atol=0.03)


# ----------------------------------------------------------------------------------------------- sampler
def make_sampler(**kw):
    args = dict(rows_per_bucket=[96, 50, 20, 9], lengths=[8, 16, 32, 64], tokens_per_step=64)
    args.update(kw)
    return BucketBatchSampler(args.pop("rows_per_bucket"), args.pop("lengths"), args.pop("tokens_per_step"), **args)


def test_token_budget_batches():
    sampler = make_sampler(curriculum="grow_p2", num_cycles=2, seed=3, num_replicas=1, rank=0)
    assert sampler.batch_sizes == [8, 4, 2, 1]
    assert sampler.batches_per_bucket == [12, 12, 10, 9]
    assert len(sampler) == 43
    batches = list(sampler)
    assert len(batches) == len(sampler)
    used = set()
    lengths = [8, 16, 32, 64]
    for batch in batches:
        buckets = {b for b, _ in batch}
        assert len(buckets) == 1
        (b,) = buckets
        assert len(batch) * lengths[b] == 64  # constant tokens per step
        for item in batch:
            assert item not in used  # every row at most once per epoch
            used.add(item)
    assert sampler.unused_rows_per_bucket == [0, 2, 0, 0]
    assert sampler.tokens_per_epoch == 43 * 64
    assert [batch[0][0] for batch in batches] == sampler.schedule().tolist()


def test_epochs_reshuffle_deterministically():
    a, b = make_sampler(seed=5), make_sampler(seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    c = make_sampler(seed=5, shuffle=False, curriculum="natural")
    rows_of_bucket0 = [r for batch in c for bb, r in batch if bb == 0]
    assert rows_of_bucket0 == list(range(96))


def test_two_ranks_share_buckets_and_split_rows():
    kw = dict(curriculum="grow_linear", num_cycles=2, seed=11, num_replicas=2)
    ranks = [make_sampler(rank=r, **kw) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == sum(ranks[0].batches_per_bucket)
    assert ranks[0].batches_per_bucket == [6, 6, 5, 4]  # rows // (batch size * 2 ranks)
    for epoch in range(2):
        seen = set()
        for sampler in ranks:
            sampler.set_epoch(epoch)
        for batch0, batch1 in zip(*ranks):
            assert {b for b, _ in batch0} == {b for b, _ in batch1} and len(batch0) == len(batch1)
            assert not set(batch0) & set(batch1)
            for item in batch0 + batch1:
                assert item not in seen
                seen.add(item)


def test_sampler_errors():
    with pytest.raises(ValueError, match="multiple of every bucket length"):
        make_sampler(tokens_per_step=96)
    with pytest.raises(ValueError, match="multiple of every bucket length"):
        make_sampler(tokens_per_step=32)  # smaller than the longest bucket
    with pytest.raises(ValueError, match="invalid rank"):
        make_sampler(num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="one global batch"):
        make_sampler(rows_per_bucket=[1, 1, 0, 0])
    with pytest.raises(ValueError, match="unknown curriculum"):
        make_sampler(curriculum="shrink")
    with pytest.raises(ValueError, match="odds 0"):
        list(make_sampler(curriculum=[1, 1, 0, 1]))


def test_trainer_accepts_the_sampler(tmp_path):
    from bramley.core.train import TrainConfig, Trainer
    from bramley.dataset_decomposition.buckets import Buckets, BucketWriter

    writer = BucketWriter(tmp_path / "b", 2, 3, "uint16")
    rng = np.random.default_rng(0)
    writer.add({2: rng.integers(0, 50, (16, 5)), 3: rng.integers(0, 50, (8, 9))})
    writer.finish(tokenizer={"name": "test", "vocab_size": 50})
    buckets = Buckets(tmp_path / "b")
    sampler = BucketBatchSampler.from_buckets(buckets, 16, curriculum="grow_p2", seed=0, num_replicas=1, rank=0)

    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 50)

        def forward(self, x):
            return self.emb(x)

    shapes = []

    def loss_fn(model, batch):
        shapes.append(tuple(batch.shape))
        logits = model(batch[:, :-1])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 50), batch[:, 1:].reshape(-1))

    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.1, optimizer="sgd", schedule="constant", progress=False)
    Trainer(Bigram(), cfg, train_data=buckets.dataset(), loss_fn=loss_fn, batch_sampler=sampler).fit()
    assert sorted(set(shapes)) == [(2, 9), (4, 5)]
    assert len(shapes) == len(sampler) == 8


# ----------------------------------------------------------------------------------------------- sub-cycles
def test_subcycle_odds_match_olmo_core_numbers():
    p2 = subcycle_odds("grow_p2", 6)
    assert p2[0].tolist() == [32, 16, 8, 4, 2, 1]  # sub-cycle 0: the paper's Grow-P2 odds
    assert p2[:, 2].tolist() == [8, 16, 32, 4, 2, 1]  # bucket 2 over the sub-cycles, peaking at sub-cycle 2
    assert p2[:, 5].tolist() == [1, 2, 4, 8, 16, 32]
    assert p2[5].tolist() == [1, 1, 1, 1, 1, 32]  # the last sub-cycle: almost only the longest bucket
    assert p2[2].tolist() == [8, 8, 32, 16, 8, 4]
    assert subcycle_odds("grow_linear", 6)[:, 0].tolist() == [6, 5, 4, 3, 2, 1]
    with pytest.raises(ValueError, match="grow_p2"):
        subcycle_odds("natural", 3)


def test_apportion_is_exact():
    # OLMo-core rounds each share on its own, which overshoots e.g. 11 batches over Grow-Linear odds 6..1 (12)
    for total in range(0, 60):
        for weights in ([6, 5, 4, 3, 2, 1], [32, 16, 8, 4, 2, 1], [1, 1, 1]):
            counts = apportion(total, np.array(weights))
            assert counts.sum() == total and counts.min() >= 0
            assert np.all(np.abs(counts - total * np.array(weights) / sum(weights)) < 1)
    assert apportion(11, np.array([6, 5, 4, 3, 2, 1])).tolist() == [3, 3, 2, 2, 1, 0]


@pytest.mark.parametrize("curriculum", ["grow_p2", "grow_linear"])
def test_subcycle_schedule(curriculum):
    batches = [63, 63, 63]
    s = bucket_schedule(batches, curriculum=curriculum, num_cycles=1, mixing="subcycles", seed=2)
    assert np.bincount(s, minlength=3).tolist() == batches
    counts = [apportion(63, subcycle_odds(curriculum, 3)[:, b]) for b in range(3)]
    bounds = np.concatenate([[0], np.cumsum(np.sum(counts, axis=0))])
    for sub in range(3):  # every sub-cycle holds exactly its apportioned batches
        part = s[bounds[sub] : bounds[sub + 1]]
        assert np.bincount(part, minlength=3).tolist() == [int(c[sub]) for c in counts]
    means = [s[bounds[i] : bounds[i + 1]].mean() for i in range(3)]
    assert means[0] < means[1] < means[2]
    sampler = make_sampler(curriculum=curriculum, mixing="subcycles", num_cycles=2)
    assert sum(1 for _ in sampler) == len(sampler)
    with pytest.raises(ValueError, match="mixing"):
        make_sampler(mixing="other")
    with pytest.raises(ValueError, match="grow_p2"):
        make_sampler(curriculum="natural", mixing="subcycles")
