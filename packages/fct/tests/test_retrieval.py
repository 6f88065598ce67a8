import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from bramley.fct.retrieval import distance_matrix, retrieval_metrics


def _reference(q, g, y, metric):
    """Brute-force leave-one-out CMC / AP with sklearn, one query at a time."""
    d = distance_matrix(q, g, metric).numpy()
    y = y.numpy()
    top1, top5, aps, aps_r = [], [], [], []
    for i in range(len(y)):
        mask = np.arange(len(y)) != i
        rel = y[mask] == y[i]
        if not rel.any():
            continue
        order = np.argsort(d[i][mask], kind="stable")
        ranked = rel[order]
        first = int(np.argmax(ranked))
        top1.append(first < 1)
        top5.append(first < 5)
        aps.append(average_precision_score(rel, -d[i][mask]))
        r = int(rel.sum())
        prec = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
        aps_r.append(float((prec[:r] * ranked[:r]).sum() / r))
    return {
        "top1": 100 * np.mean(top1),
        "top5": 100 * np.mean(top5),
        "mAP": 100 * np.mean(aps),
        "mAP@R": 100 * np.mean(aps_r),
    }


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("chunk", [7, 512])
def test_matches_bruteforce_reference(metric, chunk):
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 6, (83,), generator=g)
    q = torch.randn(83, 5, generator=g) + 0.7 * torch.nn.functional.one_hot(y, 6)[:, :5].float()
    gal = q + 0.3 * torch.randn(83, 5, generator=g)  # cross-model case: another model's gallery
    ours = retrieval_metrics(q, gal, y, metric=metric, chunk_size=chunk)
    ref = _reference(q, gal, y, metric)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key


def test_perfect_and_leave_one_out():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    emb = torch.nn.functional.one_hot(y).float()
    m = retrieval_metrics(emb, emb, y)
    assert m["top1"] == m["mAP"] == m["mAP@R"] == 100.0
    # without leave-one-out each query finds itself first
    y2 = torch.tensor([0, 1, 2, 3])
    m = retrieval_metrics(torch.eye(4), torch.eye(4), y2, leave_one_out=False)
    assert m["top1"] == 100.0
    # with it, singleton classes have no relevant item and are skipped, and all-singletons is an error
    with pytest.raises(ValueError, match="no query has a relevant"):
        retrieval_metrics(torch.eye(4), torch.eye(4), y2)


def test_singleton_queries_skipped():
    y = torch.tensor([0, 0, 1])
    m = retrieval_metrics(torch.randn(3, 2), torch.randn(3, 2), y)
    assert m["num_queries"] == 2


def test_cosine_is_scale_invariant():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (40,), generator=g)
    q = torch.randn(40, 4, generator=g)
    scaled = q * torch.rand(40, 1, generator=g).add(0.1) * 10
    assert retrieval_metrics(q, q, y, metric="cosine") == retrieval_metrics(scaled, scaled, y, metric="cosine")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gallery_embeddings": torch.randn(10, 3)}, "query dim 4 != gallery dim 3"),
        ({"gallery_embeddings": torch.randn(9, 4)}, "leave_one_out"),
        ({"query_labels": torch.zeros(9)}, "9 query labels for 10"),
        ({"metric": "manhattan"}, "unknown distance metric"),
        ({"query_embeddings": torch.full((10, 4), float("nan"))}, "NaN"),
        ({"query_embeddings": torch.zeros(10, 4, dtype=torch.long)}, "floating point"),
        ({"query_embeddings": torch.zeros(10)}, "2-D"),
    ],
)
def test_bad_input(kwargs, match):
    args = {
        "query_embeddings": torch.randn(10, 4),
        "gallery_embeddings": torch.randn(10, 4),
        "query_labels": torch.zeros(10),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(**args)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 4, (64,), generator=g)
    q, gal = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    cpu = retrieval_metrics(q, gal, y, chunk_size=16)
    cuda = retrieval_metrics(q.cuda(), gal.cuda(), y, chunk_size=16)
    for key in cpu:
        assert cuda[key] == pytest.approx(cpu[key], abs=1e-6), key
