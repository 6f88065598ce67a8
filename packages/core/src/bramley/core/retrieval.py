"""Label-based retrieval metrics, in percent: CMC top-k, precision / recall / mAP at cut-offs, mAP and mAP@R.

A gallery item is *relevant* to a query when it has the query's label. Two entry points share one implementation:
:func:`ranking_metrics` scores ranked neighbour lists (e.g. the top-k of a search index) and
:func:`retrieval_metrics` ranks the whole gallery by distance to query embeddings (``l2`` or ``cosine``), optionally
leaving each query out of its own ranking (gallery = query set, the FCT protocol).

For a query with ``R`` relevant gallery items, ``rel_r`` = 1 when the item at rank ``r`` is relevant, ``hits@k`` =
relevant items among the first ``k`` and ``P@r = hits@r / r``, the per-query metrics are:

- ``top{k}`` (CMC): 100 if ``hits@k > 0``, else 0;
- ``precision@{k}`` = ``100 hits@k / k``; ``recall@{k}`` = ``100 hits@k / R``;
- ``mAP@{k}`` = ``100 sum_{r <= k} P@r rel_r / min(k, R)`` (the MRL notebook divides by ``k``: the same whenever
  ``R >= k``, but it would penalise classes with fewer than ``k`` items);
- ``mAP`` = ``100 sum_r P@r rel_r / R`` and ``mAP@R`` = ``100 sum_{r <= R} P@r rel_r / R`` (Musgrave et al., 2020),
  only for complete rankings (every gallery item ranked).

Each is averaged over the queries with ``R > 0``. Queries without any relevant gallery item have no defined metric:
they are skipped, as in the official FCT evaluation, and counted in ``queries_without_relevant``; ``num_queries``
is the number averaged over. Percent is the unit of the papers' tables and of
:class:`bramley.core.metrics.ClassificationMeter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError

__all__ = ["METRICS", "distance_matrix", "ranking_metrics", "retrieval_metrics"]

#: The distances :func:`distance_matrix` and :func:`retrieval_metrics` rank by.
METRICS = ("l2", "cosine")


def distance_matrix(queries: torch.Tensor, gallery: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Pairwise distances ``(num_queries, num_gallery)``: Euclidean (``l2``) or ``1 - cosine similarity``.

    Both sides are L2-normalised for ``cosine`` (FCT's official code divides by the L1 norm, which does not give a
    cosine distance).
    """
    if metric == "l2":
        return torch.cdist(queries, gallery, p=2)
    if metric == "cosine":
        return 1.0 - F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T
    raise ConfigError(f"unknown distance metric {metric!r}; choose one of {', '.join(METRICS)}")


def ranking_metrics(
    neighbors: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor,
    ks: Sequence[int] = (),
    *,
    topk: Sequence[int] | None = None,
) -> dict[str, float]:
    """Metrics (percent) of ranked neighbour lists, see the module docstring.

    Reports ``top{k}`` for each ``k`` in ``topk``, ``precision@{k}``, ``recall@{k}`` and ``mAP@{k}`` for each ``k``
    in ``ks``, and ``mAP`` and ``mAP@R`` when the lists rank the whole gallery (``L == G``); then ``num_queries`` and
    ``queries_without_relevant``. ``R`` counts the whole gallery, not only the lists. To leave queries out of their
    own rankings, remove them from the lists and the gallery before calling.

    Args:
        neighbors: ``(Q, L)`` gallery indices, best first.
        query_labels: ``(Q,)`` integer labels.
        gallery_labels: ``(G,)`` integer labels.
        ks: cut-offs for precision, recall and mAP@k, each at most ``L``.
        topk: CMC ranks; default ``1`` and every cut-off in ``ks``. At most ``L`` unless the lists are complete.
    """
    if neighbors.ndim != 2:
        raise DataError(f"neighbors must be (Q, L), got shape {tuple(neighbors.shape)}")
    if query_labels.shape != (neighbors.shape[0],):
        raise DataError(f"query_labels must have shape ({neighbors.shape[0]},), got {tuple(query_labels.shape)}")
    if gallery_labels.ndim != 1 or gallery_labels.numel() == 0:
        raise DataError(f"gallery_labels must be 1-D and non-empty, got shape {tuple(gallery_labels.shape)}")
    num_gallery = gallery_labels.shape[0]
    if neighbors.numel() and not 0 <= int(neighbors.min()) <= int(neighbors.max()) < num_gallery:
        raise DataError(f"neighbour indices must lie in [0, {num_gallery})")
    length = neighbors.shape[1]
    topk = (1, *ks) if topk is None else topk
    scorer = _Scorer(topk, ks, length, complete=length == num_gallery)
    device = neighbors.device
    query_labels, gallery_labels = query_labels.to(device).long(), gallery_labels.to(device).long()
    classes, counts = gallery_labels.unique(return_counts=True)  # sorted
    slot = torch.searchsorted(classes, query_labels).clamp(max=classes.numel() - 1)
    num_relevant = torch.where(classes[slot] == query_labels, counts[slot], 0)
    scorer.add(gallery_labels[neighbors.long()] == query_labels[:, None], num_relevant)
    return scorer.result()


@torch.no_grad()
def retrieval_metrics(
    query_embeddings: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor | None = None,
    *,
    metric: str = "l2",
    topk: Sequence[int] = (1, 5),
    ks: Sequence[int] = (),
    leave_one_out: bool = True,
    chunk_size: int = 512,
) -> dict[str, float]:
    """Metrics (percent) of queries ranking the whole gallery by embedding distance, see the module docstring.

    The query and gallery embeddings may come from different models (new-model queries against a gallery of
    transformed old embeddings); with ``leave_one_out`` item ``i`` of both is the same image, removed from its own
    ranking. Ties in distance keep gallery order (stable sort).

    Args:
        query_embeddings: ``(Q, D)`` query embeddings.
        gallery_embeddings: ``(G, D)`` gallery embeddings (same ``D``).
        query_labels: ``(Q,)`` integer class labels.
        gallery_labels: ``(G,)`` labels; default ``query_labels`` (gallery = query set).
        metric: ``"l2"`` or ``"cosine"``.
        topk: CMC ranks (``top{k}``).
        ks: cut-offs for ``precision@{k}``, ``recall@{k}`` and ``mAP@{k}``.
        leave_one_out: remove gallery item ``i`` from query ``i``'s ranking (needs ``Q == G``).
        chunk_size: queries ranked at a time (memory is ``chunk_size * G``).

    Returns:
        ``{"top1", "top5", ..., "mAP", "mAP@R", "num_queries", "queries_without_relevant"}``.
    """
    q = _check_embeddings("query embeddings", query_embeddings)
    g = _check_embeddings("gallery embeddings", gallery_embeddings).to(q.device)
    if q.shape[1] != g.shape[1]:
        raise DataError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}: embeddings are not in the same space")
    if leave_one_out and q.shape[0] != g.shape[0]:
        raise DataError(f"leave_one_out needs the gallery to be the query set, got {q.shape[0]} vs {g.shape[0]} items")
    q_lab = torch.as_tensor(query_labels).reshape(-1).to(q.device)
    g_lab = q_lab if gallery_labels is None else torch.as_tensor(gallery_labels).reshape(-1).to(q.device)
    if q_lab.numel() != q.shape[0]:
        raise DataError(f"{q_lab.numel()} query labels for {q.shape[0]} query embeddings")
    if g_lab.numel() != g.shape[0]:
        raise DataError(f"{g_lab.numel()} gallery labels for {g.shape[0]} gallery embeddings")
    if metric not in METRICS:
        raise ConfigError(f"unknown distance metric {metric!r}; choose one of {', '.join(METRICS)}")
    length = g.shape[0] - (1 if leave_one_out else 0)
    scorer = _Scorer(topk, ks, length, complete=True)
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        order = torch.argsort(distance_matrix(q[start:stop], g, metric), dim=1, stable=True)
        relevant = g_lab[order] == q_lab[start:stop, None]
        if leave_one_out:
            is_self = order == torch.arange(start, stop, device=q.device)[:, None]
            relevant = relevant[~is_self].view(stop - start, length)
        scorer.add(relevant, relevant.sum(1))
    return scorer.result()


class _Scorer:
    """Sums of the per-query metrics over chunks of rankings; :meth:`result` averages them in percent."""

    def __init__(self, topk: Sequence[int], ks: Sequence[int], length: int, complete: bool):
        self.topk = sorted({int(k) for k in topk})
        self.ks = sorted({int(k) for k in ks})
        if any(k < 1 or k > length for k in self.ks):
            raise DataError(f"cut-offs {self.ks} must be in [1, {length}] (the ranking length)")
        if any(k < 1 for k in self.topk):
            raise DataError(f"topk must hold positive ranks, got {self.topk}")
        if not complete and any(k > length for k in self.topk):
            raise DataError(f"topk ranks {self.topk} must be at most {length} (the neighbour list length)")
        self.complete = complete
        self.names = [f"top{k}" for k in self.topk]
        self.names += [f"{name}@{k}" for k in self.ks for name in ("precision", "recall", "mAP")]
        self.names += ["mAP", "mAP@R"] if complete else []
        self.sums = torch.zeros(len(self.names), dtype=torch.float64)
        self.counts = torch.zeros(2, dtype=torch.int64)  # queries evaluated, queries skipped

    def add(self, relevant: torch.Tensor, num_relevant: torch.Tensor) -> None:
        """``relevant (n, L)`` bool along each query's ranking; ``num_relevant (n,)``: its relevant gallery items."""
        keep = num_relevant > 0
        self.counts = self.counts.to(keep.device) + torch.stack([keep.sum(), (~keep).sum()])
        if relevant.shape[1] == 0:  # nothing ranked: no metric was asked for, or every query is skipped
            return
        rel = relevant.double()
        count = num_relevant.double().clamp(min=1)  # skipped queries divide by 1, then weigh 0
        ranks = torch.arange(1, rel.shape[1] + 1, dtype=torch.float64, device=rel.device)
        hits = rel.cumsum(1)
        gains = hits / ranks * rel  # P@r rel_r
        values = [(hits[:, min(k, rel.shape[1]) - 1] > 0).double() for k in self.topk]
        for k in self.ks:
            values += [hits[:, k - 1] / k, hits[:, k - 1] / count, gains[:, :k].sum(1) / count.clamp(max=k)]
        if self.complete:
            values += [gains.sum(1) / count, (gains * (ranks <= count[:, None])).sum(1) / count]
        if values:
            self.sums = self.sums.to(rel.device) + (torch.stack(values, 1) * keep[:, None]).sum(0)

    def result(self) -> dict[str, float]:
        """The averages in percent, ``num_queries`` and ``queries_without_relevant``."""
        evaluated, skipped = self.counts.tolist()
        if evaluated == 0:
            raise DataError(f"none of the {skipped} queries has a relevant gallery item (a label it shares)")
        out = {name: 100.0 * total / evaluated for name, total in zip(self.names, self.sums.tolist())}
        return {**out, "num_queries": evaluated, "queries_without_relevant": skipped}


def _check_embeddings(name: str, emb: torch.Tensor) -> torch.Tensor:
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise DataError(f"{name} must be a 2-D (count, dim) tensor, got {shape}")
    if not emb.is_floating_point():
        raise DataError(f"{name} must be floating point, got {emb.dtype}")
    if not torch.isfinite(emb).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return emb.float()
