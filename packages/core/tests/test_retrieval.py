"""Retrieval metrics against a naive per-query loop: ranked neighbour lists, embedding rankings, leave-one-out."""

from __future__ import annotations

import math

import pytest
import torch

from bramley.core.retrieval import distance_matrix, ranking_metrics, retrieval_metrics


def _naive_query(ranked: list[bool], num_relevant: int, topk, ks, complete: bool) -> dict[str, float]:
    """Every metric of one query by its definition (percent), from the relevance of its ranked items."""

    def average_precision(depth: int, divisor: int) -> float:
        hits, total = 0, 0.0
        for rank, relevant in enumerate(ranked[:depth], start=1):
            if relevant:
                hits += 1
                total += hits / rank
        return 100 * total / divisor

    out = {f"top{k}": 100.0 * any(ranked[:k]) for k in topk}
    for k in ks:
        out[f"precision@{k}"] = 100 * sum(ranked[:k]) / k
        out[f"recall@{k}"] = 100 * sum(ranked[:k]) / num_relevant
        out[f"mAP@{k}"] = average_precision(k, min(k, num_relevant))
    if complete:
        out["mAP"] = average_precision(len(ranked), num_relevant)
        out["mAP@R"] = average_precision(num_relevant, num_relevant)
    return out


def _naive_average(per_query: list[dict[str, float]], skipped: int) -> dict[str, float]:
    mean = {key: sum(q[key] for q in per_query) / len(per_query) for key in per_query[0]}
    return {**mean, "num_queries": len(per_query), "queries_without_relevant": skipped}


def _assert_same(ours: dict[str, float], expected: dict[str, float]) -> None:
    assert list(ours) == list(expected)
    for key, value in expected.items():
        assert math.isclose(ours[key], value, rel_tol=1e-12, abs_tol=1e-10), (key, ours[key], value)


def _random_case(gen: torch.Generator, max_gallery: int = 40):
    num_gallery = int(torch.randint(1, max_gallery, (), generator=gen))
    num_queries = int(torch.randint(1, 30, (), generator=gen))
    classes = int(torch.randint(1, 7, (), generator=gen))
    gallery_labels = torch.randint(0, classes, (num_gallery,), generator=gen)
    query_labels = torch.randint(0, classes + 1, (num_queries,), generator=gen)  # label `classes`: no relevant item
    return query_labels, gallery_labels


@pytest.mark.parametrize("seed", range(40))
def test_ranking_metrics_match_a_naive_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    query_labels, gallery_labels = _random_case(gen)
    num_gallery = gallery_labels.numel()
    length = num_gallery if seed % 4 == 0 else int(torch.randint(1, num_gallery + 1, (), generator=gen))
    neighbors = torch.stack([torch.randperm(num_gallery, generator=gen)[:length] for _ in query_labels])
    ks = sorted({int(k) for k in torch.randint(1, length + 1, (2,), generator=gen)})
    complete = length == num_gallery
    per_query, skipped, gallery_list = [], 0, gallery_labels.tolist()
    for label, row in zip(query_labels.tolist(), neighbors.tolist()):
        num_relevant = gallery_list.count(label)
        if num_relevant == 0:
            skipped += 1
            continue
        ranked = [gallery_list[j] == label for j in row]
        per_query.append(_naive_query(ranked, num_relevant, [1, *ks], ks, complete))
    if not per_query:
        with pytest.raises(ValueError, match="relevant gallery item"):
            ranking_metrics(neighbors, query_labels, gallery_labels, ks)
        return
    _assert_same(ranking_metrics(neighbors, query_labels, gallery_labels, ks), _naive_average(per_query, skipped))


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_retrieval_metrics_match_a_naive_loop(seed, metric):
    gen = torch.Generator().manual_seed(seed)
    query_labels, gallery_labels = _random_case(gen)
    leave_one_out = seed % 2 == 0
    gallery = torch.randn(gallery_labels.numel(), 3, generator=gen)
    if leave_one_out:  # the gallery is the query set, seen by another (noisier) model
        query_labels, queries = gallery_labels, gallery + 0.5 * torch.randn(gallery.shape, generator=gen)
    else:
        queries = torch.randn(query_labels.numel(), 3, generator=gen)
    distances = distance_matrix(queries, gallery, metric).tolist()
    topk, ks = (1, 2, 5), (1, 3) if gallery.shape[0] > 3 else ()
    per_query, skipped, gallery_list = [], 0, gallery_labels.tolist()
    for i, (label, row) in enumerate(zip(query_labels.tolist(), distances)):
        order = sorted(range(len(row)), key=lambda j: (row[j], j))  # stable: ties keep gallery order
        ranked = [gallery_list[j] == label for j in order if not (leave_one_out and j == i)]
        if not any(ranked):
            skipped += 1
            continue
        per_query.append(_naive_query(ranked, sum(ranked), topk, ks, complete=True))
    args = (queries, gallery, query_labels, None if leave_one_out else gallery_labels)
    kwargs = {"metric": metric, "topk": topk, "ks": ks, "leave_one_out": leave_one_out, "chunk_size": seed % 5 + 1}
    if not per_query:
        with pytest.raises(ValueError, match="relevant gallery item"):
            retrieval_metrics(*args, **kwargs)
        return
    _assert_same(retrieval_metrics(*args, **kwargs), _naive_average(per_query, skipped))


def test_the_two_entry_points_agree_on_complete_rankings():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (25,), generator=gen)
    queries, gallery = torch.randn(10, 6, generator=gen), torch.randn(25, 6, generator=gen)
    neighbors = distance_matrix(queries, gallery).argsort(dim=1, stable=True)
    from_lists = ranking_metrics(neighbors, labels[:10], labels, ks=(3, 25), topk=(1, 5))
    from_embeddings = retrieval_metrics(queries, gallery, labels[:10], labels, leave_one_out=False, ks=(3, 25))
    _assert_same(from_lists, from_embeddings)


def test_percent_and_hand_computed_values():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    embeddings = torch.eye(3)[labels]
    perfect = retrieval_metrics(embeddings, embeddings, labels)
    assert perfect == {"top1": 100.0, "top5": 100.0, "mAP": 100.0, "mAP@R": 100.0, "num_queries": 6,
                       "queries_without_relevant": 0}  # fmt: skip
    gallery_labels = torch.tensor([0, 0, 1, 1, 1, 2])
    neighbors = torch.tensor([[0, 2, 1], [2, 0, 5], [3, 4, 0]])
    out = ranking_metrics(neighbors, torch.tensor([0, 2, 7]), gallery_labels, ks=(3,))
    # query 0: hits at ranks 1 and 3, R = 2; query 1: hit at rank 3, R = 1; query 2: label 7 is not in the gallery
    assert out["top1"] == 50.0 and out["top3"] == 100.0
    assert out["mAP@3"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert out["precision@3"] == pytest.approx(100 * (2 / 3 + 1 / 3) / 2) and out["recall@3"] == 100.0
    assert out["num_queries"] == 2 and out["queries_without_relevant"] == 1


def test_leave_one_out_skips_singletons():
    y = torch.tensor([0, 1, 2, 3])
    assert retrieval_metrics(torch.eye(4), torch.eye(4), y, leave_one_out=False)["top1"] == 100.0
    with pytest.raises(ValueError, match="none of the 4 queries"):
        retrieval_metrics(torch.eye(4), torch.eye(4), y)
    m = retrieval_metrics(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 0, 1]))
    assert m["num_queries"] == 2 and m["queries_without_relevant"] == 1


def test_distance_matrix_matches_definitions():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 4, dtype=torch.float64, generator=gen), torch.randn(7, 4, dtype=torch.float64, generator=gen)
    l2 = [[math.dist(x, y) for y in b.tolist()] for x in a.tolist()]
    cosine = [[1 - (x @ y / (x.norm() * y.norm())).item() for y in b] for x in a]
    torch.testing.assert_close(distance_matrix(a, b, "l2"), torch.tensor(l2, dtype=torch.float64))
    torch.testing.assert_close(distance_matrix(a, b, "cosine"), torch.tensor(cosine, dtype=torch.float64))
    torch.testing.assert_close(distance_matrix(3 * a, b, "cosine"), distance_matrix(a, b, "cosine"))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ranking_metrics(torch.zeros(3, dtype=torch.long), torch.zeros(3), torch.zeros(4)), r"\(Q, L\)"),
        (lambda: ranking_metrics(torch.zeros(2, 2, dtype=torch.long), torch.zeros(3), torch.zeros(4)), "query_labels"),
        (lambda: ranking_metrics(torch.tensor([[0, 4]]), torch.zeros(1), torch.zeros(4)), r"\[0, 4\)"),
        (lambda: ranking_metrics(torch.tensor([[0, 1]]), torch.zeros(1), torch.zeros(4), ks=(3,)), "cut-offs"),
        (lambda: ranking_metrics(torch.tensor([[0, 1]]), torch.zeros(1), torch.zeros(4), topk=(3,)), "at most 2"),
        (lambda: retrieval_metrics(torch.randn(4, 3), torch.randn(4, 2), torch.zeros(4)), "query dim 3 != gallery"),
        (lambda: retrieval_metrics(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4)), "leave_one_out"),
        (lambda: retrieval_metrics(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(3)), "3 query labels for 4"),
        (lambda: retrieval_metrics(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4), metric="l1"), "unknown"),
        (lambda: retrieval_metrics(torch.full((4, 3), math.nan), torch.randn(4, 3), torch.zeros(4)), "NaN"),
        (lambda: retrieval_metrics(torch.zeros(4, 3, dtype=torch.long), torch.randn(4, 3), torch.zeros(4)), "float"),
        (lambda: retrieval_metrics(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(4), topk=(0,)), "positive"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.gpu
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 4, (64,), generator=gen)
    queries, gallery = torch.randn(64, 8, generator=gen), torch.randn(64, 8, generator=gen)
    cpu = retrieval_metrics(queries, gallery, labels, chunk_size=16, ks=(10,))
    cuda = retrieval_metrics(queries.cuda(), gallery.cuda(), labels, chunk_size=16, ks=(10,))
    assert cuda.keys() == cpu.keys()
    for key in cpu:
        assert cuda[key] == pytest.approx(cpu[key], abs=1e-6), key
    neighbors = distance_matrix(queries, gallery).topk(10, largest=False).indices
    assert ranking_metrics(neighbors.cuda(), labels.cuda(), labels.cuda(), (5,)) == ranking_metrics(
        neighbors, labels, labels, (5,)
    )
