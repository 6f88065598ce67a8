"""FCT's evaluation protocol (leave-one-out CMC top-k, mAP, mAP@R in percent) against sklearn, one query at a time.

The metrics live in :mod:`bramley.core.retrieval` (tested there against a naive loop); ``bramley.fct`` re-exports them.
"""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from bramley.core.retrieval import distance_matrix
from bramley.fct import retrieval_metrics


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
