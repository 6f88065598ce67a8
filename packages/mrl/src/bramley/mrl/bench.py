"""Retrieval benchmark on generated Matryoshka-like data: funnel vs full-size exact search, in one process.

The data imitate what MRL training produces: class-clustered vectors whose leading coordinates carry most of the
variance (coordinate ``j`` is scaled by ``(j + 1) ** -decay``), so a short prefix already separates the classes
coarsely and the full vector separates them best. Generation is chunked and stored in ``dtype`` (float16 by default:
a 1M x 2048 database takes 4 GiB instead of 8), queries come from the same distribution.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from .metrics import retrieval_metrics
from .retrieval import MatryoshkaIndex, funnel_mflops, neighbor_recall

__all__ = ["PAPER_FUNNEL", "run_benchmark", "synthetic_mrl_data"]

# The paper's funnel (Sec. 5.3 / official reranking notebook): retrieve at 8, rerank cascade with shrinking shortlists.
PAPER_FUNNEL = {"retrieval_dim": 8, "rerank_dims": [16, 32, 64, 128, 2048], "shortlists": [200, 100, 50, 25, 10]}

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def synthetic_mrl_data(
    num: int,
    dim: int = 2048,
    num_classes: int = 1000,
    noise: float = 1.0,
    decay: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    chunk_size: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` vectors ``x = s * (mu[y] + noise * eps)`` with ``s_j = (j + 1) ** -decay``; returns ``(x, y)``.

    ``mu`` are ``num_classes`` standard-normal class means, ``eps`` standard-normal noise, ``y`` uniform labels.
    """
    if num < 1 or dim < 1 or num_classes < 1:
        raise ValueError(f"num, dim and num_classes must be >= 1, got {num}, {dim}, {num_classes}")
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=gen)
    scale = torch.arange(1, dim + 1, dtype=torch.float32).pow(-decay)
    return _draw(num, means, scale, noise, gen, dtype, chunk_size)


def _draw(num, means, scale, noise, gen, dtype, chunk_size) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, means.shape[0], (num,), generator=gen)
    x = torch.empty(num, means.shape[1], dtype=dtype)
    for start in range(0, num, chunk_size):
        y = labels[start : start + chunk_size]
        block = torch.randn(len(y), means.shape[1], generator=gen).mul_(noise).add_(means[y]).mul_(scale)
        x[start : start + len(y)] = block.to(dtype)
    return x, labels


def _timed(fn, repeats: int) -> tuple[Any, float]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def run_benchmark(
    num_database: int = 1_000_000,
    num_queries: int = 256,
    dim: int = 2048,
    num_classes: int = 1000,
    noise: float = 0.7,
    decay: float = 0.5,
    retrieval_dim: int = PAPER_FUNNEL["retrieval_dim"],
    rerank_dims: Sequence[int] = PAPER_FUNNEL["rerank_dims"],
    shortlists: Sequence[int] = PAPER_FUNNEL["shortlists"],
    dtype: str = "float16",
    repeats: int = 1,
    seed: int = 0,
    backend: str = "torch",
) -> dict[str, Any]:
    """Time full-size exact search and the funnel on the same generated data; report speed-up, top-1 and recall.

    ``recall@k`` is the share of the exact full-size top-``k`` (``k = shortlists[-1]``) that the funnel returns;
    ``top1`` is label accuracy of the first neighbour for both methods. Timings are the best of ``repeats`` and
    include everything per query (query normalisation, scoring, top-k, reranking); index construction (normalising
    the database, caching the funnel's small prefix) is timed separately.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    rerank_dims = list(rerank_dims)
    if rerank_dims and rerank_dims[-1] != dim:
        rerank_dims = [d for d in rerank_dims if d < dim] + [dim]  # the funnel always ends at the full size
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=gen)
    scale = torch.arange(1, dim + 1, dtype=torch.float32).pow(-decay)
    t0 = time.perf_counter()
    db, db_labels = _draw(num_database, means, scale, noise, gen, _DTYPES[dtype], 65536)
    queries, query_labels = _draw(num_queries, means, scale, noise, gen, torch.float32, 65536)
    generate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    index = MatryoshkaIndex(db, backend=backend, copy=False)
    del db
    index.prefix(retrieval_dim)
    build_s = time.perf_counter() - t0
    k = shortlists[-1]

    exact, exact_s = _timed(lambda: index.search(queries, k, dim), repeats)
    funnel, funnel_s = _timed(lambda: index.funnel(queries, retrieval_dim, rerank_dims, shortlists), repeats)
    exact_metrics = retrieval_metrics(exact.indices, query_labels, db_labels, ks=(k,))
    funnel_metrics = retrieval_metrics(funnel.indices, query_labels, db_labels, ks=(k,))
    return {
        "config": {
            "num_database": num_database,
            "num_queries": num_queries,
            "dim": dim,
            "num_classes": num_classes,
            "noise": noise,
            "decay": decay,
            "dtype": dtype,
            "backend": backend,
            "retrieval_dim": retrieval_dim,
            "rerank_dims": rerank_dims,
            "shortlists": list(shortlists),
            "repeats": repeats,
            "seed": seed,
            "threads": torch.get_num_threads(),
        },
        "generate_s": generate_s,
        "index_build_s": build_s,
        "exact": {
            "queries_per_s": num_queries / exact_s,
            "seconds": exact_s,
            "mflops_per_query": exact.mflops_per_query,
            "top1": exact_metrics["top1"],
            f"map@{k}": exact_metrics[f"map@{k}"],
        },
        "funnel": {
            "queries_per_s": num_queries / funnel_s,
            "seconds": funnel_s,
            "mflops_per_query": funnel_mflops(num_database, retrieval_dim, rerank_dims, shortlists),
            "top1": funnel_metrics["top1"],
            f"map@{k}": funnel_metrics[f"map@{k}"],
            f"recall@{k}_vs_exact": neighbor_recall(funnel.indices, exact.indices, k),
            "recall@1_vs_exact": neighbor_recall(funnel.indices, exact.indices, 1),
        },
        "speedup": exact_s / funnel_s,
        "top1_difference": funnel_metrics["top1"] - exact_metrics["top1"],
    }
