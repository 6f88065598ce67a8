"""Retrieval metrics on neighbour lists with class labels: top-1, mAP@k, precision@k, recall@k, top-k hit rate."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["retrieval_metrics"]


def retrieval_metrics(
    neighbors: torch.Tensor, query_labels: torch.Tensor, database_labels: torch.Tensor, ks: Sequence[int] = (10,)
) -> dict[str, float]:
    """Label-based metrics of ranked neighbour lists (a neighbour is relevant when it has the query's label).

    Definitions follow the official ``compute_metrics`` notebook with two corrections:

    - ``recall@k`` = relevant retrieved / relevant in the database for that query's class (the official notebook
      divides by a hard-coded 1300, ImageNet's images per class);
    - ``mAP@k`` = mean over queries of ``sum_{relevant ranks r <= k} precision@r / min(k, R_q)`` with ``R_q`` the
      number of relevant database items; the notebook divides by ``k``, which is the same whenever ``R_q >= k``
      (always on ImageNet) but penalises rare classes otherwise.

    ``top1`` is the label accuracy of the first neighbour; ``top{k}`` is the share of queries with any relevant
    neighbour among the first ``k``. Queries whose class is absent from the database score 0 on recall and mAP and
    are counted in ``queries_without_relevant``.

    Args:
        neighbors: ``(Q, L)`` database indices, best first.
        query_labels: ``(Q,)`` int labels.
        database_labels: ``(N,)`` int labels.
        ks: cut-offs, each at most ``L``.
    """
    if neighbors.ndim != 2:
        raise ValueError(f"neighbors must be (Q, L), got shape {tuple(neighbors.shape)}")
    if query_labels.shape != (neighbors.shape[0],):
        raise ValueError(f"query_labels must have shape ({neighbors.shape[0]},), got {tuple(query_labels.shape)}")
    if database_labels.ndim != 1:
        raise ValueError(f"database_labels must be 1-D, got shape {tuple(database_labels.shape)}")
    if neighbors.numel() and not 0 <= int(neighbors.min()) <= int(neighbors.max()) < database_labels.shape[0]:
        raise ValueError(f"neighbour indices must lie in [0, {database_labels.shape[0]})")
    ks = sorted(set(int(k) for k in ks))
    if any(k < 1 or k > neighbors.shape[1] for k in ks):
        raise ValueError(f"cut-offs {ks} must be in [1, {neighbors.shape[1]}] (the neighbour list length)")
    query_labels, database_labels = query_labels.long(), database_labels.long()
    relevant = database_labels[neighbors.long()] == query_labels[:, None]  # (Q, L)
    classes, counts = database_labels.unique(return_counts=True)
    lookup = dict(zip(classes.tolist(), counts.tolist()))
    num_relevant = torch.tensor([lookup.get(int(y), 0) for y in query_labels], dtype=torch.float64)
    out = {"top1": relevant[:, 0].double().mean().item() if len(relevant) else float("nan")}
    for k in ks:
        rel = relevant[:, :k].double()
        hits = rel.sum(1)
        precision_at_r = rel.cumsum(1) / torch.arange(1, k + 1, dtype=torch.float64)
        denom = num_relevant.clamp(max=k).clamp(min=1)
        out[f"map@{k}"] = ((precision_at_r * rel).sum(1) / denom).mean().item()
        out[f"precision@{k}"] = (hits / k).mean().item()
        out[f"recall@{k}"] = (hits / num_relevant.clamp(min=1)).mean().item()
        out[f"top{k}"] = (hits > 0).double().mean().item()
    out["queries_without_relevant"] = int((num_relevant == 0).sum())
    return out
