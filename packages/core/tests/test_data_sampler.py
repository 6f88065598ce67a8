from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from bramley.core.data import MultiScaleDataset, VariableBatchSampler, make_scales, multiscale_collate


def test_make_scales_matches_cvnets_defaults():
    # CVNets defaults: base 256, 160..320, 5 scales, divisible by 32 -> linspace 160,200,240,280,320 rounded
    assert make_scales() == [(160, 160), (192, 192), (256, 256), (288, 288), (320, 320)]
    # linspace 128, 176, 224, 272, 320 -> half-way values round up (176 -> 192, 272 -> 288), as in CVNets
    assert make_scales(224, 128, 320, 5, 32) == [(128, 128), (192, 192), (224, 224), (288, 288), (320, 320)]
    assert make_scales((256, 192), (128, 96), (384, 288), 3, 32) == [(128, 96), (256, 192), (384, 288)]
    with pytest.raises(ValueError, match="differ in length"):  # CVNets' zip would silently drop a scale here
        make_scales((256, 192), (128, 96), (320, 256), 3, 32)
    with pytest.raises(ValueError, match="min_size"):
        make_scales(256, 320, 160)


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_batch_budget_and_batch_sizes():
    sampler = VariableBatchSampler(5000, base_batch_size=32, base_size=256, seed=1)
    budget = 32 * 256 * 256
    batches = _epoch(sampler, 0)
    assert len(batches) == len(sampler)
    assert {(b[0][1], b[0][2]) for b in batches} == set(sampler.scales)  # all scales used over ~170 batches
    for batch in batches[:-1]:
        _, h, w = batch[0]
        assert all((hh, ww) == (h, w) for _, hh, ww in batch)
        b = len(batch)
        assert b * h * w <= budget < (b + 1) * h * w
        assert abs(b * h * w - budget) / budget < 1 / b
    assert sampler.batch_size_for(160) == 81 and sampler.batch_size_for(320) == 20


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    replicas=st.integers(1, 5),
    base_batch=st.integers(1, 64),
    base=st.sampled_from([32, 64, 96]),
    scales=st.lists(st.integers(1, 8).map(lambda k: 16 * k), min_size=1, max_size=5),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 50),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
)
def test_sampler_properties(n, replicas, base_batch, base, scales, seed, epoch, drop_last, shuffle):
    if drop_last and n < replicas:
        with pytest.raises(ValueError, match="drop_last"):
            VariableBatchSampler(n, base_batch, base, scales, num_replicas=replicas, rank=0, drop_last=drop_last)
        return
    samplers = [
        VariableBatchSampler(
            n, base_batch, base, scales, seed=seed, num_replicas=replicas, rank=r, drop_last=drop_last, shuffle=shuffle
        )
        for r in range(replicas)
    ]
    per_rank = [_epoch(s, epoch) for s in samplers]
    budget = base_batch * base * base
    # same number of batches and the same scale sequence on every rank
    seqs = [[(b[0][1], b[0][2]) for b in batches] for batches in per_rank]
    assert all(seq == seqs[0] for seq in seqs)
    assert all(len(s) == len(seqs[0]) for s in samplers)
    shard = samplers[0].shard_size
    all_indices = []
    for batches in per_rank:
        indices = [i for b in batches for i, _, _ in b]
        assert len(indices) == shard and len(set(indices)) == shard  # each shard index exactly once
        for batch in batches[:-1]:  # budget holds for every full batch
            _, h, w = batch[0]
            assert len(batch) == max(1, budget // (h * w))
        assert 1 <= len(batches[-1]) <= max(1, budget // (batches[-1][0][1] * batches[-1][0][2]))
        all_indices += indices
    counts = Counter(all_indices)
    assert all(0 <= i < n for i in counts)
    if drop_last:
        assert max(counts.values()) == 1 and len(counts) == (n // replicas) * replicas  # disjoint shards
    else:
        assert len(counts) == n  # every sample somewhere; padding repeats fewer than `replicas` samples
        assert sum(counts.values()) - n == shard * replicas - n < replicas or n < replicas


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), epoch=st.integers(0, 100), replicas=st.integers(1, 4))
def test_sampler_deterministic_per_seed_and_epoch(seed, epoch, replicas):
    kw = dict(base_batch_size=8, base_size=64, scales=[32, 48, 64, 96], num_replicas=replicas, rank=replicas - 1)
    a, b = VariableBatchSampler(300, seed=seed, **kw), VariableBatchSampler(300, seed=seed, **kw)
    a.set_epoch(epoch + 1)
    list(a)  # visiting another epoch first must not change anything
    assert _epoch(a, epoch) == _epoch(b, epoch)


def test_sampler_reshuffles_across_epochs_and_seeds():
    s = VariableBatchSampler(500, 8, 64, [32, 64, 96], seed=0)
    e0, e1 = _epoch(s, 0), _epoch(s, 1)
    assert e0 != e1
    assert _epoch(VariableBatchSampler(500, 8, 64, [32, 64, 96], seed=1), 0) != e0
    unshuffled = _epoch(VariableBatchSampler(500, 8, 64, [64], shuffle=False), 0)
    assert [i for b in unshuffled for i, _, _ in b] == list(range(500))


def test_curriculum_grows_scales_linearly():
    s = VariableBatchSampler(2000, 16, 128, [64, 96, 128, 160, 192], curriculum_epochs=4, curriculum_start=1)
    allowed = [s.allowed_scales(e) for e in range(7)]
    assert [len(a) for a in allowed] == [1, 2, 3, 4, 5, 5, 5]
    assert allowed[0] == [(64, 64)] and allowed[4][-1] == (192, 192)
    for e in range(7):  # batches only ever use allowed scales; the set only grows
        used = {(b[0][1], b[0][2]) for b in _epoch(s, e)}
        assert used <= set(allowed[e])
        if e:
            assert set(allowed[e - 1]) <= set(allowed[e])
    s2 = VariableBatchSampler(100, 4, 64, [32, 64, 96], curriculum_epochs=10, curriculum_start=2)
    assert [len(s2.allowed_scales(e)) for e in (0, 4, 5, 9, 10)] == [2, 2, 2, 2, 3]  # floor(1 * e / 10)
    assert len(VariableBatchSampler(100, 4, 64, [32, 64, 96]).allowed_scales(0)) == 3  # no curriculum


def test_sampler_bad_arguments():
    with pytest.raises(ValueError, match="base_batch_size"):
        VariableBatchSampler(10, 0)
    with pytest.raises(ValueError, match="rank"):
        VariableBatchSampler(10, 4, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="curriculum_start"):
        VariableBatchSampler(10, 4, 64, [32, 64], curriculum_epochs=3, curriculum_start=3)
    with pytest.raises(ValueError, match="scale"):
        VariableBatchSampler(10, 4, 64, [(32, 0)])
    with pytest.raises(ValueError, match="at least one sample"):
        VariableBatchSampler([], 4)


def test_max_batch_size_caps():
    s = VariableBatchSampler(100, 8, 64, [16, 64], max_batch_size=10)
    assert s.batch_size_for(16) == 10 and s.batch_size_for(64) == 8


def test_multiscale_dataloader_end_to_end():
    images = torch.rand(40, 3, 24, 24)
    base = TensorDataset(images, torch.arange(40))

    def transform_for(h, w):
        return lambda x: torch.nn.functional.interpolate(x[None], size=(h, w), mode="bilinear")[0]

    sampler = VariableBatchSampler(base, 4, 32, [16, 32, 48], seed=0)
    loader = DataLoader(MultiScaleDataset(base, transform_for), batch_sampler=sampler, collate_fn=multiscale_collate)
    seen = []
    for (x, y), plan in zip(loader, sampler):
        _, h, w = plan[0]
        assert x.shape == (len(plan), 3, h, w)
        assert y.tolist() == [i for i, _, _ in plan]
        seen += y.tolist()
    assert sorted(seen) == list(range(40))


def test_multiscale_seeded_augmentation_independent_of_order():
    base = TensorDataset(torch.zeros(10, 1, 4, 4), torch.arange(10))
    ds = MultiScaleDataset(base, lambda h, w: lambda x: x + torch.rand(1), seed=7)
    a = ds[(3, 8, 8)][0]
    torch.rand(5)  # global RNG use in between must not matter
    _ = ds[(5, 8, 8)]
    assert torch.equal(ds[(3, 8, 8)][0], a)
    ds.set_epoch(1)
    assert not torch.equal(ds[(3, 8, 8)][0], a)
    with pytest.raises(TypeError, match="height, width"):
        ds[3]


def test_collate_rejects_mixed_shapes():
    with pytest.raises(ValueError, match="share a shape"):
        multiscale_collate([(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 16, 16), 1)])


def test_defaults_from_torch_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 2)
    s = VariableBatchSampler(30, 4, 64, [64])
    assert (s.num_replicas, s.rank) == (3, 2)
    assert list(s) == list(VariableBatchSampler(30, 4, 64, [64], num_replicas=3, rank=2))


def test_trains_with_core_trainer_on_digits(tmp_path):
    """The sampler + wrapper plug into bramley.core.train: every step sees one resolution, loss goes down."""
    from bramley.core.data import DigitsDataset
    from bramley.core.train import TrainConfig, Trainer

    def transform_for(h, w):
        return lambda x: torch.nn.functional.interpolate(x[None], size=(h, w), mode="bilinear")[0]

    data = MultiScaleDataset(DigitsDataset("train"), transform_for, seed=0)
    sampler = VariableBatchSampler(data, base_batch_size=128, base_size=12, scales=[8, 12, 16], seed=0)
    seen_sizes = set()

    def loss_fn(model, batch):
        x, y = batch
        seen_sizes.add(tuple(x.shape[-2:]))
        return torch.nn.functional.cross_entropy(model(x), y)

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
        torch.nn.Linear(64, 10),
    )  # fmt: skip
    cfg = TrainConfig(epochs=2, lr=0.05, optimizer="adamw", weight_decay=0.0, out_dir=str(tmp_path), seed=0)
    trainer = Trainer(
        model, cfg, train_data=data, loss_fn=loss_fn, batch_sampler=sampler, collate_fn=multiscale_collate
    )
    trainer.fit()
    assert seen_sizes == {(8, 8), (12, 12), (16, 16)}
    first, last = sum(trainer.losses[:3]) / 3, sum(trainer.losses[-3:]) / 3
    assert last < 0.7 * first
