"""Exact search, rerank, funnel and metrics against straightforward references (numpy, official notebook logic)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bramley.core.errors import DataError
from bramley.core.threads import torch_threads
from bramley.mrl import MatryoshkaIndex, exact_search, funnel_mflops, neighbor_recall, retrieval_metrics
from bramley.mrl.bench import faiss_funnel
from bramley.mrl.retrieval import _row_topk, faiss_available


def brute_force(db, q, k, dim):
    """float64 cosine top-k on prefixes (the reference)."""
    a = F.normalize(db[:, :dim].double(), dim=1)
    b = F.normalize(q[:, :dim].double(), dim=1)
    return (b @ a.T).topk(k, dim=1)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 300),
    nq=st.integers(1, 20),
    d=st.integers(1, 24),
    chunk=st.integers(1, 97),
    qbatch=st.integers(1, 7),
    data=st.data(),
)
def test_exact_search_matches_brute_force(n, nq, d, chunk, qbatch, data):
    k = data.draw(st.integers(1, n))
    dim = data.draw(st.integers(1, d))
    gen = torch.Generator().manual_seed(n * 1000 + d)
    db, q = torch.randn(n, d, generator=gen), torch.randn(nq, d, generator=gen)
    result = MatryoshkaIndex(db, chunk_size=chunk, query_batch=qbatch).search(q, k, dim)
    ref_s, ref_i = brute_force(db, q, k, dim)
    assert result.indices.shape == (nq, k)
    torch.testing.assert_close(result.scores.double(), ref_s, atol=1e-5, rtol=0)
    # indices may differ only where scores tie within float32 precision
    same = result.indices == ref_i
    assert bool((same | ((result.scores.double() - ref_s).abs() < 1e-5)).all())
    assert result.mflops_per_query == pytest.approx(n * dim / 1e6)


@pytest.mark.parametrize("dim", [8, 16, 17, 48])
def test_default_query_batch_follows_the_search_size_and_finds_the_same_neighbours(dim):
    gen = torch.Generator().manual_seed(dim)
    db, q = torch.randn(600, 48, generator=gen), torch.randn(150, 48, generator=gen)  # 150 queries: 3 or 2 batches
    default = MatryoshkaIndex(db, chunk_size=256)
    assert default.query_batch is None
    result = default.search(q, 9, dim)
    for query_batch in (1, 64, 128, 150):
        other = MatryoshkaIndex(db, chunk_size=256, query_batch=query_batch).search(q, 9, dim)
        assert torch.equal(result.indices, other.indices)  # no ties in this data
        torch.testing.assert_close(result.scores, other.scores, atol=1e-6, rtol=0)  # the product's blocking differs


def test_several_threads_give_one_threads_neighbours_and_scores_bit_for_bit():
    """With several threads the query batches of each block run on single-threaded workers (each its own buffer):
    the same products as on one thread, so the same scores, also for a 16-bit database converted per block."""
    gen = torch.Generator().manual_seed(3)
    db, queries = torch.randn(3000, 32, generator=gen), torch.randn(150, 32, generator=gen)
    for dtype in (torch.float32, torch.bfloat16):
        index = MatryoshkaIndex(db.to(dtype), chunk_size=1024, query_batch=40)
        found = {}
        for threads in (1, 2):
            with torch_threads(threads):
                exact, funnel = index.search(queries, 20, dim=8), index.funnel(queries, 8, [16, 32], [50, 10])
            found[threads] = (exact.scores, exact.indices, funnel.scores, funnel.indices)
        for one, two in zip(found[1], found[2]):
            assert torch.equal(one, two)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_storage_is_exact_over_the_stored_values(dtype):
    db, q = torch.randn(500, 32).to(dtype), torch.randn(7, 32)
    result = MatryoshkaIndex(db, chunk_size=64).search(q, 5, 16)
    stored = F.normalize(F.normalize(db.float(), dim=1).to(dtype).float()[:, :16], dim=1)
    ref_s, ref_i = (F.normalize(q[:, :16], dim=1) @ stored.T).topk(5, dim=1)
    assert torch.equal(result.indices, ref_i)
    torch.testing.assert_close(result.scores, ref_s)


def test_faiss_backend_gives_the_same_neighbours_and_scores():
    pytest.importorskip("faiss")
    db, q = torch.randn(3000, 64), torch.randn(40, 64)
    for dim in (8, 64):
        t = MatryoshkaIndex(db, chunk_size=700).search(q, 25, dim)
        f = MatryoshkaIndex(db, backend="faiss").search(q, 25, dim)
        assert torch.equal(t.indices, f.indices)
        torch.testing.assert_close(t.scores, f.scores, atol=1e-5, rtol=0)
    # the funnel's first stage through FAISS ends in the same list
    args = (q, 8, [16, 32, 64], [100, 50, 10])
    assert torch.equal(
        MatryoshkaIndex(db).funnel(*args).indices, MatryoshkaIndex(db, backend="faiss").funnel(*args).indices
    )


def official_rerank(db, queries, neighbors, rerank_dims, shortlists):
    """The official reranking notebook's loop (RAIVNLab/MRL retrieval/reranking.ipynb), re-derived in numpy:
    queries normalised at full size then sliced, database rows normalised at each rerank size, L2 argsort."""
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    db = db / np.linalg.norm(db, axis=1, keepdims=True)
    for dim, length in zip(rerank_dims, shortlists):
        neighbors = neighbors[:, :length].copy()
        for j in range(len(neighbors)):
            rows = db[neighbors[j], :dim]
            rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
            order = np.argsort(np.linalg.norm(rows - queries[j, :dim], axis=1), kind="stable")
            neighbors[j] = neighbors[j, order]
    return neighbors


def test_funnel_matches_the_official_cascade():
    gen = torch.Generator().manual_seed(1)
    db, q = torch.randn(2000, 64, generator=gen), torch.randn(30, 64, generator=gen)
    index = MatryoshkaIndex(db, chunk_size=512)
    dims, lengths = [8, 16, 32, 64], [400, 100, 25, 10]
    result = index.funnel(q, 4, dims, lengths)
    first = index.search(q, lengths[0], 4).indices.numpy()
    expected = official_rerank(db.numpy().astype(np.float64), q.numpy().astype(np.float64), first, dims, lengths)
    assert np.array_equal(result.indices.numpy(), expected)
    assert result.mflops_per_query == pytest.approx(funnel_mflops(2000, 4, dims, lengths))
    assert result.mflops_per_query == pytest.approx((2000 * 4 + 400 * 8 + 100 * 16 + 25 * 32 + 10 * 64) / 1e6)
    # shortlist-then-rerank is the one-stage funnel; reranking the whole database at full size is exact search
    exact = index.search(q, 10)
    rr = index.shortlist_rerank(q, 8, 64, 2000, k=10)
    assert torch.equal(rr.indices, exact.indices)
    assert neighbor_recall(rr.indices, exact.indices) == 1.0


@pytest.mark.parametrize("n", [131_072, 68_928, 3200, 20_001])
def test_row_topk_ranks_only_the_columns_that_can_win(n):
    """The grouped top-k (wide blocks) and its plain fallback (short or odd rows) return a top-k of every row."""
    gen = torch.Generator().manual_seed(n)
    for scores in (torch.randn(16, n, generator=gen), torch.randint(0, 7, (16, n), generator=gen).float()):  # + ties
        values, columns = _row_topk(scores, 200)
        assert torch.equal(values.sort(dim=1, descending=True).values, scores.topk(200, dim=1).values)
        assert torch.equal(scores.gather(1, columns), values)
        assert all(len(set(row)) == 200 for row in columns.tolist())


def test_search_and_funnel_on_wide_blocks_match_the_references():
    """Large enough for the grouped top-k: exact search = float64 brute force, funnel = the official cascade."""
    gen = torch.Generator().manual_seed(3)
    db, q = torch.randn(24_000, 64, generator=gen), torch.randn(12, 64, generator=gen)
    index = MatryoshkaIndex(db)
    result = index.search(q, 300, 16)
    ref_s, ref_i = brute_force(db, q, 300, 16)
    torch.testing.assert_close(result.scores.double(), ref_s, atol=1e-5, rtol=0)
    assert bool(((result.indices == ref_i) | ((result.scores.double() - ref_s).abs() < 1e-5)).all())
    dims, lengths = [32, 64], [300, 10]
    funnel = index.funnel(q, 16, dims, lengths).indices.numpy()
    official = official_rerank(
        db.numpy().astype(np.float64), q.numpy().astype(np.float64), ref_i.numpy(), dims, lengths
    )
    assert np.array_equal(funnel, official)
    if faiss_available():  # the benchmark's FAISS peer returns the same lists
        assert np.array_equal(funnel, faiss_funnel(index.data.numpy(), 16, dims, lengths)(q.numpy()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rerank_scores_are_the_normalised_cosines(dtype):
    db, q = torch.randn(500, 48).to(dtype), torch.randn(6, 48)
    index = MatryoshkaIndex(db)
    candidates = torch.randint(0, 500, (6, 40))
    for dim in (12, 48):
        result = index.rerank(q, candidates, dim)

        def cosines(ids, dim=dim):
            rows = F.normalize(index.data[ids, :dim].float(), dim=-1)
            return torch.einsum("qld,qd->ql", rows, F.normalize(q[:, :dim], dim=1))

        torch.testing.assert_close(result.scores, cosines(result.indices), atol=2e-6, rtol=0)
        torch.testing.assert_close(result.scores, cosines(candidates).sort(dim=1, descending=True).values)


def test_non_finite_queries_are_refused_and_huge_finite_ones_are_not():
    index = MatryoshkaIndex(torch.randn(50, 8))
    bad = torch.randn(3, 8)
    bad[1, 2] = float("inf")
    with pytest.raises(DataError, match="1 of 3 query embeddings"):
        index.funnel(bad, 2, [8], [5])
    huge = torch.full((2, 8), 3e38)  # finite; a float32 sum of it would overflow
    assert index.search(huge, 3).indices.shape == (2, 3)


def test_bad_search_input_is_a_clear_error():
    index = MatryoshkaIndex(torch.randn(100, 32))
    with pytest.raises(ValueError, match="query dim 16 does not match the index dim 32"):
        index.search(torch.randn(3, 16), 5)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 100\]"):
        index.search(torch.randn(3, 32), 101)
    with pytest.raises(ValueError, match=r"search dim must be an int in \[1, 32\]"):
        index.search(torch.randn(3, 32), 5, dim=64)
    with pytest.raises(ValueError, match="sorted"):
        index.funnel(torch.randn(3, 32), 16, [8, 32], [20, 10])
    with pytest.raises(ValueError, match="duplicates"):
        index.funnel(torch.randn(3, 32), 8, [8, 32], [20, 10])
    with pytest.raises(ValueError, match="larger than the feature dim 32"):
        index.funnel(torch.randn(3, 32), 8, [16, 64], [20, 10])
    with pytest.raises(ValueError, match="must not grow"):
        index.funnel(torch.randn(3, 32), 8, [16, 32], [10, 20])
    with pytest.raises(ValueError, match="one shortlist length per rerank dim"):
        index.funnel(torch.randn(3, 32), 8, [16, 32], [10])
    with pytest.raises(ValueError, match="non-empty"):
        MatryoshkaIndex(torch.randn(0, 8))
    with pytest.raises(ValueError, match="floating point"):
        MatryoshkaIndex(torch.ones(4, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="candidate indices"):
        index.rerank(torch.randn(2, 32), torch.tensor([[0, 100], [1, 2]]))
    with pytest.raises(ValueError, match="query dim"):
        exact_search(torch.randn(10, 8), torch.randn(2, 4), 3)


def official_metrics(query_labels, db_labels, neighbors, k, class_size):
    """The official compute_metrics notebook, re-derived (recall divides by a fixed class size)."""
    aps, precision, recall, topk = [], [], [], []
    for i in range(len(query_labels)):
        matches = db_labels[neighbors[i, :k]] == query_labels[i]
        topk.append(float(matches.sum() > 0))
        precision.append(matches.sum() / k)
        recall.append(matches.sum() / class_size)
        precs = np.cumsum(matches) / np.arange(1, k + 1)
        aps.append(np.sum(precs[matches]) / k)
    return np.mean(aps), np.mean(precision), np.mean(recall), np.mean(topk)


def test_metrics_match_the_official_definitions_when_classes_are_large():
    rng = np.random.default_rng(0)
    db_labels = np.repeat(np.arange(5), 40)  # 40 per class >= k, as on ImageNet
    query_labels = rng.integers(0, 5, 25)
    neighbors = np.stack([rng.permutation(200)[:20] for _ in range(25)])
    ours = retrieval_metrics(
        torch.from_numpy(neighbors), torch.from_numpy(query_labels), torch.from_numpy(db_labels), ks=(5, 20)
    )
    for k in (5, 20):  # the notebook's fractions, ours in percent
        m, p, r, t = official_metrics(query_labels, db_labels, neighbors, k, class_size=40)
        assert ours[f"mAP@{k}"] == pytest.approx(100 * m)
        assert ours[f"precision@{k}"] == pytest.approx(100 * p)
        assert ours[f"recall@{k}"] == pytest.approx(100 * r)
        assert ours[f"top{k}"] == pytest.approx(100 * t)
    assert ours["top1"] == pytest.approx(100 * np.mean(db_labels[neighbors[:, 0]] == query_labels))


def test_metrics_hand_computed_and_rare_classes():
    db_labels = torch.tensor([0, 0, 1, 1, 1, 2])
    neighbors = torch.tensor([[0, 2, 1], [2, 0, 5]])
    out = retrieval_metrics(neighbors, torch.tensor([0, 2]), db_labels, ks=(3,))
    assert out["top1"] == 50.0  # percent
    # query 0: hits at ranks 1 and 3 -> precisions 1 and 2/3, R=2 -> AP = (1 + 2/3) / 2; query 1: hit at 3, R=1 -> 1/3
    assert out["mAP@3"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert out["recall@3"] == pytest.approx(100.0)
    assert out["precision@3"] == pytest.approx(100 * (2 / 3 + 1 / 3) / 2)
    assert out["queries_without_relevant"] == 0
    missing = retrieval_metrics(neighbors, torch.tensor([0, 7]), db_labels, ks=(3,))  # class 7: skipped, counted
    assert missing["queries_without_relevant"] == 1 and missing["num_queries"] == 1
    assert missing["mAP@3"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="cut-offs"):
        retrieval_metrics(neighbors, torch.tensor([0, 2]), db_labels, ks=(4,))
    with pytest.raises(ValueError, match="query_labels"):
        retrieval_metrics(neighbors, torch.tensor([0]), db_labels)


def test_neighbor_recall():
    exact = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert neighbor_recall(torch.tensor([[3, 2, 9], [6, 5, 4]]), exact) == pytest.approx(5 / 6)
    assert neighbor_recall(torch.tensor([[1, 9, 9], [9, 9, 9]]), exact, 1) == pytest.approx(0.5)
