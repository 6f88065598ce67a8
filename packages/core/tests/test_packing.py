"""Packing helpers: offsets, positions, pack/unpack (torch and Triton-interpreter gather), bin packing, sampler."""

from __future__ import annotations

import importlib.util
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bramley.core.ops import attention, gather_rows
from bramley.core.packing import (
    TokenBudgetBatchSampler,
    _argsort_stable,
    _document_ids_static,
    best_fit_decreasing,
    bucket_by_length,
    cu_seqlens_from_lengths,
    document_ids,
    document_mean,
    lengths_from_cu_seqlens,
    next_power_of_two,
    pack,
    position_ids,
    unpack,
)

ROOT = Path(__file__).resolve().parents[3]


def test_offsets_and_positions():
    cu = cu_seqlens_from_lengths([3, 0, 1, 2])
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 3, 4, 6]
    assert lengths_from_cu_seqlens(cu).tolist() == [3, 0, 1, 2]
    assert position_ids(cu).tolist() == [0, 1, 2, 0, 0, 1]
    assert cu_seqlens_from_lengths([]).tolist() == [0]
    with pytest.raises(ValueError, match=">= 0"):
        cu_seqlens_from_lengths([2, -1])
    with pytest.raises(TypeError, match="integers"):
        cu_seqlens_from_lengths([1.5])


# ----------------------------------------------------------------------------------------------- per-document
def _naive_ids(lengths):
    return [doc for doc, n in enumerate(lengths) for _ in range(n)]


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), max_size=8), int64=st.booleans())
def test_document_and_position_ids_match_a_loop(lengths, int64):
    cu = cu_seqlens_from_lengths(lengths).to(torch.int64 if int64 else torch.int32)
    total = sum(lengths)
    for ids in (document_ids(cu), document_ids(cu, total), _document_ids_static(cu, total)):  # numpy / searchsorted
        assert ids.dtype == torch.int64 and ids.tolist() == _naive_ids(lengths)
    positions = [p for n in lengths for p in range(n)]
    assert position_ids(cu).tolist() == positions and position_ids(cu, total).tolist() == positions


def test_document_ids_follow_the_offsets_when_traced():
    def per_token(per_doc: torch.Tensor, cu: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return per_doc[document_ids(cu, tokens.shape[0])]

    per_doc, tokens = torch.tensor([10.0, 20.0, 30.0]), torch.zeros(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape checks turned into constants
        traced = torch.jit.trace(per_token, (per_doc, torch.tensor([0, 1, 3, 6]), tokens))
    assert traced(per_doc, torch.tensor([0, 4, 4, 6]), tokens).tolist() == [10.0] * 4 + [30.0] * 2


def test_document_mean_compiles_without_graph_breaks():
    compiled = torch.compile(document_mean, backend="eager", fullgraph=True)
    x, cu = torch.randn(7, 3), torch.tensor([0, 2, 3, 7], dtype=torch.int32)
    torch.testing.assert_close(compiled(x, cu), document_mean(x, cu), rtol=0, atol=0)


def _naive_mean(x, lengths):
    starts = np.cumsum([0, *lengths]).tolist()
    return torch.stack([x[a:b].double().mean(0) for a, b in itertools.pairwise(starts)])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("feature_shape", [(), (5,), (2, 3)])
def test_document_mean_matches_a_loop(dtype, feature_shape):
    gen = torch.Generator().manual_seed(0)
    packings = [[1], [13], [1, 1, 1], [4, 1, 7, 2], torch.randint(1, 40, (50,), generator=gen).tolist()]
    for lengths in packings:
        x = torch.randn(sum(lengths), *feature_shape, generator=gen).to(dtype)
        out = document_mean(x, cu_seqlens_from_lengths(lengths))
        assert out.dtype == dtype and out.shape == (len(lengths), *feature_shape)
        torch.testing.assert_close(out, _naive_mean(x, lengths).to(dtype))


def test_document_mean_accumulates_half_precision_in_float32():
    # bfloat16 has 8 significant bits: a bfloat16 running sum of ones stops growing at 256.
    x = torch.ones(1000, 4, dtype=torch.bfloat16)
    assert document_mean(x, torch.tensor([0, 1000], dtype=torch.int32)).eq(1).all()


def test_document_mean_empty_documents_and_batch():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    out = document_mean(x, cu_seqlens_from_lengths([2, 0, 3, 0]))
    assert out[[1, 3]].isnan().all()
    torch.testing.assert_close(out[[0, 2]], _naive_mean(x.detach(), [2, 3]))
    out.sum().backward()  # the NaN rows own no tokens: they send no gradient anywhere
    torch.testing.assert_close(
        x.grad, torch.tensor([1 / 2] * 2 + [1 / 3] * 3, dtype=torch.float64)[:, None].expand(5, 3)
    )
    empty = document_mean(torch.zeros(0, 3), torch.zeros(1, dtype=torch.int32))
    assert empty.shape == (0, 3)
    assert document_ids(torch.zeros(1, dtype=torch.int32)).shape == (0,)


def test_document_mean_gradient():
    lengths = [3, 1, 5]
    x = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    cu = cu_seqlens_from_lengths(lengths)
    assert torch.autograd.gradcheck(lambda t: document_mean(t, cu), (x,))
    weights = torch.randn(3, 2, dtype=torch.float64)
    (grad,) = torch.autograd.grad((document_mean(x, cu) * weights).sum(), x)
    (expected,) = torch.autograd.grad((_naive_mean(x, lengths) * weights).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: document_mean(torch.arange(4), torch.tensor([0, 4])), TypeError, "floating-point"),
        (lambda: document_mean(torch.randn(4), torch.tensor([0.0, 4.0])), TypeError, "int32/int64"),
        (lambda: document_mean(torch.randn(4), torch.tensor([0, 3])), ValueError, r"0 to the number .* \(4\)"),
        (lambda: document_ids(torch.tensor([0, 3, 2])), ValueError, "non-decreasing"),
        (lambda: document_ids(torch.tensor([1, 3]), 3), ValueError, "got 1..3"),
        (lambda: position_ids(torch.zeros(0, dtype=torch.int32)), ValueError, "num_docs \\+ 1"),
    ],
)
def test_document_helpers_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    extra=st.integers(0, 3),
    width=st.integers(1, 5),
)
def test_pack_unpack_round_trip(lengths, extra, width):
    seq = max(lengths) + extra
    padded = torch.randn(len(lengths), seq, width)
    packed, cu, max_len = pack(padded, lengths=lengths)
    assert packed.shape == (sum(lengths), width) and max_len == max(lengths)
    expected = torch.cat([padded[b, :n] for b, n in enumerate(lengths)])
    assert torch.equal(packed, expected)
    back = unpack(packed, cu, seq, fill=-7.0)
    for b, n in enumerate(lengths):
        assert torch.equal(back[b, :n], padded[b, :n])
        assert (back[b, n:] == -7.0).all()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=1, max_size=5))
def test_pack_unpack_with_any_mask(rows):
    mask = torch.tensor(rows)
    padded = torch.randn(*mask.shape, 3)
    packed, cu, _ = pack(padded, mask=mask)
    assert torch.equal(packed, padded[mask])
    assert cu.tolist() == [0, *mask.sum(1).cumsum(0).tolist()]
    back = unpack(packed, mask=mask)
    assert torch.equal(back[mask], padded[mask]) and (back[~mask] == 0).all()


def test_pack_is_differentiable_and_feeds_attention():
    lengths = [4, 1, 6]
    x = torch.randn(3, 6, 2, 8, requires_grad=True)
    packed, cu, max_len = pack(x, lengths=lengths)
    out = attention(packed, packed, packed, cu_seqlens=cu, max_seqlen=max_len, causal=True)
    unpack(out, cu, 6).sum().backward()
    assert (x.grad[1, 1:] == 0).all() and (x.grad[0, :4] != 0).any()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: pack(x, lengths=[1, 9]), "exceeds the padded sequence length"),
        (lambda x: pack(x, lengths=[1]), "2 lengths|1 lengths"),
        (lambda x: pack(x), "exactly one of"),
        (lambda x: pack(x, mask=torch.ones(2, 3)), "bool"),
        (lambda x: unpack(x[0], torch.tensor([0, 2], dtype=torch.int32)), "covers 2 tokens"),
        (lambda x: unpack(x[0, :3], torch.tensor([0, 3], dtype=torch.int32), 2), "shorter than the longest"),
    ],
)
def test_pack_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(2, 4, 3))


def test_gather_rows_bad_index():
    with pytest.raises(IndexError, match="out of range"):
        gather_rows(torch.randn(3, 2), torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="int32/int64"):
        gather_rows(torch.randn(3, 2), torch.tensor([0.0]))


def test_gather_rows_triton_interpreter(triton_interpret):
    pytest.importorskip("triton")
    src = torch.randn(11, 3, 7, dtype=torch.float16, requires_grad=True)
    index = torch.tensor([4, -1, 0, 10, 10, -1, 2])
    out = gather_rows(src, index, fill=1.5, backend="triton")
    expected = gather_rows(src, index, fill=1.5, backend="torch")
    assert torch.equal(out, expected) and (out[1] == 1.5).all()
    out.float().sum().backward()
    assert src.grad[10].eq(2).all() and src.grad[1].eq(0).all()  # duplicate index: gradients add up
    padded = torch.randn(3, 5, 4)
    packed, cu, _ = pack(padded, lengths=[5, 0, 2], backend="triton")
    assert torch.equal(unpack(packed, cu, 5, backend="triton"), unpack(packed, cu, 5, backend="torch"))


# ----------------------------------------------------------------------------------------------- bin packing
@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 100), max_size=60), budget=st.integers(100, 300))
def test_best_fit_decreasing_properties(lengths, budget):
    result = best_fit_decreasing(lengths, budget)
    items = sorted(i for b in result.bins for i in b)
    assert items == list(range(len(lengths)))  # every item in exactly one bin
    loads = [sum(lengths[i] for i in b) for b in result.bins]
    assert all(load <= budget for load in loads)
    assert result.tokens == sum(lengths)
    if result.bins:
        assert 0 < result.fill_ratio <= 1 or result.tokens == 0
        assert result.fill_ratio == pytest.approx(sum(loads) / (len(result.bins) * budget))
    # Any two non-empty bins could not be merged into one, or BFD would have placed them together.
    assert sum(load <= budget / 2 for load in loads if load) <= 1


def _naive_best_fit(lengths, budget):
    """Per-item BFD in O(items x bins): each item into the bin with the least room that fits; among bins with equal
    room, the one that reached it last. Items of equal length in input order; zero-length items into the first bin."""
    bins, rooms, reached = [], [], []
    for step, item in enumerate(sorted(range(len(lengths)), key=lambda i: -lengths[i])):
        length = lengths[item]
        if length == 0:
            if not bins:
                bins.append([])
                rooms.append(budget)
                reached.append(step)
            bins[0].append(item)
            continue
        fits = [b for b, room in enumerate(rooms) if room >= length]
        if fits:
            b = min(fits, key=lambda b: (rooms[b], -reached[b]))
        else:
            b = len(bins)
            bins.append([])
            rooms.append(budget)
            reached.append(step)
        bins[b].append(item)
        rooms[b] -= length
        reached[b] = step
    return bins


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 60), max_size=50) | st.lists(st.sampled_from([0, 3, 5, 7, 20]), max_size=80),
    budget=st.integers(60, 150),
)
def test_best_fit_equals_naive_per_item_bfd(lengths, budget):
    """Same bins, in the same order, with the same items in the same order (ties included: many equal lengths)."""
    assert best_fit_decreasing(lengths, budget).bins == _naive_best_fit(lengths, budget)


@pytest.mark.parametrize("seed", range(4))
def test_best_fit_equals_naive_on_wider_random_instances(seed):
    rng = np.random.default_rng(seed)
    budget = int(rng.integers(1, 400))
    lengths = rng.integers(0, int(rng.integers(1, budget + 1)) + 1, size=300).tolist()
    assert best_fit_decreasing(lengths, budget).bins == _naive_best_fit(lengths, budget)


def test_best_fit_decreasing_huge_budget_and_lengths():
    """No per-token memory: a 10^12-token budget packs like any other (lengths beyond 32 bits sort exactly)."""
    lengths = [6 * 10**11, 5 * 10**11, 4 * 10**11, 2**40 // 4, 3, 0]
    result = best_fit_decreasing(lengths, 10**12)
    assert result.bins == _naive_best_fit(lengths, 10**12)
    assert len(result) == 2 and result.tokens == sum(lengths)


@pytest.mark.parametrize("top", [10, 2**16 - 1, 2**16, 2**32 - 1, 2**40])
def test_argsort_stable_matches_numpy(top):
    keys = np.random.default_rng(0).integers(0, top + 1, size=5000)
    keys[:50] = top  # ties at the largest key
    assert np.array_equal(_argsort_stable(keys), np.argsort(keys, kind="stable"))


def test_best_fit_decreasing_fills_log_uniform_lengths():
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.uniform(np.log(128), np.log(8192), 20_000)).astype(np.int64)
    result = best_fit_decreasing(lengths, 65_536)
    assert result.fill_ratio >= 0.99


def test_bench_packing_smoke_prints_one_row_per_workload(tmp_path):
    """tools/bench_packing.py in its tiny mode: every workload, the peer and a previous revision, markdown written."""
    spec = importlib.util.spec_from_file_location("bench_packing", ROOT / "tools" / "bench_packing.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# t\n<!-- {bench.MARKER}:start -->\nold\n<!-- {bench.MARKER}:end -->\ntail\n")
    results = bench.main(["--smoke", "--compare-rev", "HEAD", "--markdown", str(md)])
    assert [row["workload"] for row in results["rows"]] == list(bench.WORKLOADS)
    for row in results["rows"]:
        assert row["same bins as HEAD"] == "yes" and row["bramley / peer speed"].startswith("**")
        assert len(row["cpu_s"]["bramley"]) == len(row["cpu_s"]["peer"]) == 1
    text = md.read_text()
    assert "old" not in text and "tail" in text and "| workload" in text and "load average" in text
    lengths = np.random.default_rng(0).integers(1, 50, 500).tolist()
    bins = bench.first_fit_decreasing(lengths, 100)  # the peer is a valid packing
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert max(sum(lengths[i] for i in b) for b in bins) <= 100


def test_best_fit_decreasing_bad_input():
    with pytest.raises(ValueError, match="> budget"):
        best_fit_decreasing([5, 11], 10)
    with pytest.raises(ValueError, match="positive int"):
        best_fit_decreasing([5], 0)
    with pytest.raises(ValueError, match=">= 0"):
        best_fit_decreasing([5, -1], 10)


def test_buckets():
    assert [next_power_of_two(n) for n in (0, 1, 2, 3, 5, 1024, 1025)] == [1, 1, 2, 4, 8, 1024, 2048]
    buckets = bucket_by_length([1, 3, 4, 5, 16, 17], min_bucket=4, max_bucket=32)
    assert buckets == {4: [0, 1, 2], 8: [3], 16: [4], 32: [5]}
    with pytest.raises(ValueError, match="max_bucket"):
        bucket_by_length([40], max_bucket=32)


@pytest.mark.parametrize("drop_last", [False, True])
def test_token_budget_sampler_shards_and_reshuffles(drop_last):
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 50, size=101)
    samplers = [
        TokenBudgetBatchSampler(lengths, 100, num_replicas=3, rank=r, drop_last=drop_last, seed=5) for r in range(3)
    ]
    batches = [list(s) for s in samplers]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(samplers[0])
    for batch in (b for rank in batches for b in rank):
        assert sum(lengths[i] for i in batch) <= 100
    seen = [i for rank in batches for b in rank for i in b]
    if drop_last:
        assert len(seen) == len(set(seen))
    else:
        assert set(seen) == set(range(101))
    first = [b for b in samplers[0]]
    samplers[0].set_epoch(1)
    assert [b for b in samplers[0]] != first
    assert samplers[0].fill_ratio > 0.9
    samplers[0].set_epoch(0)
    assert [b for b in samplers[0]] == first, "an epoch's batches depend on (seed, epoch) only: exact resume"


def test_token_budget_sampler_mixes_equal_lengths():
    """Files of one length in class order (a byte folder): each batch must mix the classes, every epoch anew."""
    labels = np.repeat(np.arange(10), 20)  # 200 items, 20 per class, sorted by class
    sampler = TokenBudgetBatchSampler(np.full(200, 7), 7 * 20, seed=0)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(200))
        assert all(len(set(labels[b])) > 3 for b in batches), "a batch of one class: packing followed input order"
    ordered = TokenBudgetBatchSampler(np.full(200, 7), 7 * 20, shuffle=False)
    assert [len(set(labels[b])) for b in ordered] == [1] * 10, "without shuffle the dataset order is kept"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_pack_unpack_triton_matches_torch(dtype):
    lengths = torch.randint(0, 300, (37,), device="cuda")
    padded = torch.randn(37, 300, 3, 129, device="cuda", dtype=dtype)
    packed, cu, _ = pack(padded, lengths=lengths)  # auto: the Triton gather on CUDA
    reference, _, _ = pack(padded, lengths=lengths, backend="torch")
    assert torch.equal(packed, reference)
    assert torch.equal(unpack(packed, cu, 300), unpack(packed, cu, 300, backend="torch"))


@pytest.mark.gpu
def test_cuda_document_helpers_match_cpu():
    cu = cu_seqlens_from_lengths([5, 0, 1, 300, 17])
    x = torch.randn(323, 3, 8, dtype=torch.float64)
    assert torch.equal(document_ids(cu.cuda(), 323).cpu(), document_ids(cu))  # searchsorted vs numpy
    assert torch.equal(position_ids(cu.cuda(), 323).cpu(), position_ids(cu))
    torch.testing.assert_close(document_mean(x.cuda(), cu.cuda()).cpu(), document_mean(x, cu), equal_nan=True)
