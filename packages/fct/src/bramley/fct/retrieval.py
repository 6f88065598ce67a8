"""Retrieval evaluation as in the FCT paper: gallery = query set, leave-one-out, CMC top-k, mAP and mAP@R.

The query embeddings and the gallery embeddings may come from different models (e.g. new-model queries against a
gallery of transformed old embeddings); item ``i`` of both is the same image, and with ``leave_one_out`` that image
is removed from its own ranking. Queries without any relevant gallery item after the removal are skipped (as in the
official evaluation) and counted in ``num_queries``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["METRICS", "distance_matrix", "retrieval_metrics"]

METRICS = ("l2", "cosine")


def distance_matrix(queries: torch.Tensor, gallery: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """Pairwise distances ``(num_queries, num_gallery)``: Euclidean (``l2``) or ``1 - cosine similarity``.

    The official code normalises with the L1 norm before its "cosine" distance; that is not a cosine distance, so
    here both sides are L2-normalised.
    """
    if metric == "l2":
        return torch.cdist(queries, gallery, p=2)
    if metric == "cosine":
        return 1.0 - F.normalize(queries, dim=-1) @ F.normalize(gallery, dim=-1).T
    raise ValueError(f"unknown distance metric {metric!r}; choose one of {', '.join(METRICS)}")


def _check(name: str, emb: torch.Tensor) -> torch.Tensor:
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(f"{name} must be a 2-D (count, dim) tensor, got {shape}")
    if not emb.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {emb.dtype}")
    if not torch.isfinite(emb).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return emb.float()


@torch.no_grad()
def retrieval_metrics(
    query_embeddings: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_labels: torch.Tensor | None = None,
    metric: str = "l2",
    topk: Sequence[int] = (1, 5),
    leave_one_out: bool = True,
    chunk_size: int = 512,
) -> dict[str, float]:
    """CMC top-k, mAP and mAP@R of a query set against a gallery, in percent.

    Args:
        query_embeddings: ``(Q, D)`` query embeddings.
        gallery_embeddings: ``(G, D)`` gallery embeddings (same ``D``; may come from another model).
        query_labels: ``(Q,)`` integer class labels.
        gallery_labels: ``(G,)`` labels; default ``query_labels`` (gallery = query set).
        metric: ``"l2"`` or ``"cosine"``.
        topk: the CMC ranks to report.
        leave_one_out: remove gallery item ``i`` from query ``i``'s ranking (needs ``Q == G``).
        chunk_size: queries ranked at a time (memory is ``chunk_size * G``).

    Returns:
        ``{"top1": ..., "top5": ..., "mAP": ..., "mAP@R": ..., "num_queries": ...}`` (metrics in percent).
    """
    q = _check("query embeddings", query_embeddings)
    g = _check("gallery embeddings", gallery_embeddings)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}: embeddings are not in the same space")
    if leave_one_out and q.shape[0] != g.shape[0]:
        raise ValueError(f"leave_one_out needs the gallery to be the query set, got {q.shape[0]} vs {g.shape[0]} items")
    g = g.to(q.device)
    q_lab = torch.as_tensor(query_labels).reshape(-1).to(q.device)
    g_lab = q_lab if gallery_labels is None else torch.as_tensor(gallery_labels).reshape(-1).to(q.device)
    if q_lab.numel() != q.shape[0]:
        raise ValueError(f"{q_lab.numel()} query labels for {q.shape[0]} query embeddings")
    if g_lab.numel() != g.shape[0]:
        raise ValueError(f"{g_lab.numel()} gallery labels for {g.shape[0]} gallery embeddings")
    topk = sorted({int(k) for k in topk})
    if not topk or topk[0] < 1:
        raise ValueError(f"topk must hold positive ranks, got {topk}")
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; choose one of {', '.join(METRICS)}")

    hits = torch.zeros(len(topk), dtype=torch.float64)
    ap_sum = torch.zeros((), dtype=torch.float64)
    ap_r_sum = torch.zeros((), dtype=torch.float64)
    valid = 0
    num_gallery = g.shape[0] - (1 if leave_one_out else 0)
    ranks = torch.arange(1, num_gallery + 1, dtype=torch.float64, device=q.device)
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        order = torch.argsort(distance_matrix(q[start:stop], g, metric), dim=1, stable=True)
        rel = g_lab[order] == q_lab[start:stop, None]
        if leave_one_out:
            is_self = order == torch.arange(start, stop, device=q.device)[:, None]
            rel = rel[~is_self].view(stop - start, num_gallery)
        num_rel = rel.sum(1)
        keep = num_rel > 0
        if not keep.any():
            continue
        rel, num_rel = rel[keep].double(), num_rel[keep].double()
        valid += int(keep.sum())
        first = rel.argmax(1)  # 0-based rank of the first relevant item
        hits += torch.stack([(first < k).sum() for k in topk]).double().cpu()
        precision = rel.cumsum(1) / ranks
        ap_sum += ((precision * rel).sum(1) / num_rel).sum().cpu()
        within_r = ranks[None, :] <= num_rel[:, None]
        ap_r_sum += ((precision * rel * within_r).sum(1) / num_rel).sum().cpu()
    if valid == 0:
        raise ValueError("no query has a relevant gallery item: every class has a single example")
    out = {f"top{k}": 100.0 * float(h) / valid for k, h in zip(topk, hits)}
    out["mAP"] = 100.0 * float(ap_sum) / valid
    out["mAP@R"] = 100.0 * float(ap_r_sum) / valid
    out["num_queries"] = valid
    return out
