"""Adaptive retrieval with Matryoshka embeddings: exact kNN at any size, shortlist-then-rerank, funnel.

Similarity is the cosine between embeddings truncated to the searched size and L2-normalised there, which ranks
exactly like the official code's L2 distance between normalised vectors (``|a - b|^2 = 2 - 2 cos``). Scores are
cosines, best first. Exact search is a chunked matmul + top-k in float32 (the database may be stored in float16 or
bfloat16 to halve its memory; blocks are converted to float32 before the product, so the search is exact over the
stored values). FAISS (``pip install bramley-mrl[faiss]``) can run the full-database stage instead
(``backend="faiss"``, an exact ``IndexFlatIP``) with the same neighbours.

Compute is reported as the paper does: MFLOPs per query = (vectors scored) x (dimension) / 1e6, i.e. one
multiply-add per dimension, so a funnel costs ``N * d_0 + sum_i L_i * d_i``.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bramley.core.errors import ConfigError, DataError
from bramley.core.threads import map_single_threaded

from .nesting import check_nesting

__all__ = ["MatryoshkaIndex", "SearchResult", "exact_search", "faiss_available", "funnel_mflops", "neighbor_recall"]

_CACHE_BYTES = 1 << 30  # normalised prefixes up to this size are kept as float32 copies
# Default queries scored together: at <= 16 dims writing and ranking the scores dominates the product, and a smaller
# score block is faster (64 instead of 128 queries, one thread, k = 200: 1.2x at 8 dims and 1.14x at 16 on 200k rows,
# the paper's 8-d funnel 1.3x on 1M); from 32 dims on 128 queries are as fast or faster (0.95x with 64 at 32 dims on
# 1M rows, 0.95x at 128, 0.78x at 2048).
_NARROW_DIM, _NARROW_QUERY_BATCH, _QUERY_BATCH = 16, 64, 128


@dataclass
class SearchResult:
    """Neighbours of each query: ``indices`` and cosine ``scores`` of shape ``(Q, k)``, best first."""

    scores: torch.Tensor
    indices: torch.Tensor
    mflops_per_query: float


def faiss_available() -> bool:
    """Whether the optional FAISS backend can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def funnel_mflops(
    num_database: int, retrieval_dim: int, rerank_dims: Sequence[int], shortlists: Sequence[int]
) -> float:
    """MFLOPs per query of a funnel: ``N * d_0`` to shortlist, then ``L_i * d_i`` per rerank stage."""
    return (num_database * retrieval_dim + sum(L * d for L, d in zip(shortlists, rerank_dims))) / 1e6


def neighbor_recall(approx: torch.Tensor, exact: torch.Tensor, k: int | None = None) -> float:
    """Share of the exact top-``k`` neighbours that the approximate top-``k`` contains (the ANN "recall@k")."""
    if approx.ndim != 2 or exact.ndim != 2 or approx.shape[0] != exact.shape[0]:
        shapes = f"{tuple(approx.shape)}, {tuple(exact.shape)}"
        raise DataError(f"neighbour lists must be (Q, k) with equal Q, got {shapes}")
    k = k or exact.shape[1]
    if k > approx.shape[1] or k > exact.shape[1]:
        raise ConfigError(f"k={k} exceeds the neighbour lists' length {approx.shape[1]}, {exact.shape[1]}")
    a, e = approx[:, :k], exact[:, :k]
    hits = (a.unsqueeze(2) == e.unsqueeze(1)).any(dim=1).sum()
    return float(hits) / e.numel()


def finite_rows(embeddings: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the rows whose values are all finite."""
    return torch.isfinite(embeddings).all(dim=1)


def _refuse_non_finite(embeddings: torch.Tensor, what: str) -> None:
    """A NaN row scores NaN, which sorts first: with the torch backend it became every query's top-1."""
    # A sum is finite only if every entry is (NaN and inf propagate): one pass, no copy. A sum of finite values that
    # overflows falls through to the exact check. (sum(dtype=float64) converted the whole matrix first: 16 GB at 1M.)
    if math.isfinite(embeddings.detach().sum()):
        return
    bad = int((~finite_rows(embeddings)).sum())
    if bad:
        raise DataError(
            f"{bad} of {embeddings.shape[0]} {what} embeddings hold NaN or infinite values (the first is row "
            f"{int((~finite_rows(embeddings)).nonzero()[0])}); drop them first (retrieve --skip-non-finite does)"
        )


def _row_topk(scores: torch.Tensor, k: int, groups: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.topk(k, dim=1, sorted=False)`` of a wide block of scores, ranking only the columns that can win.

    The ``n`` columns of a row fall into ``m = n / groups`` groups of columns ``j, j + m, j + 2m, ...``. The ``k``
    groups with the largest maxima hold ``k`` values at least as large as the ``k``-th largest maximum, so they hold a
    top ``k`` of the row: the same values (ties at the boundary may pick other columns, as ``topk`` may). One max over
    strided groups, a top-``k`` of the ``m`` maxima and one of ``k * groups`` values replace the top-``k`` of all ``n``
    columns, with as few passes as possible (each is a parallel region that waits for its threads on a busy machine).
    """
    rows, n = scores.shape
    m = n // groups
    if m < 4 * k or n % groups:
        return scores.topk(k, dim=1, sorted=False)
    grouped = scores.unflatten(1, (groups, m))  # grouped[r, i, j] = scores[r, i * m + j]
    _, best = grouped.amax(1).topk(k, dim=1, sorted=False)  # (rows, k) groups j
    values, pick = grouped.gather(2, best.unsqueeze(1).expand(rows, groups, k)).flatten(1).topk(k, dim=1, sorted=False)
    return values, (pick // k) * m + best.gather(1, pick % k)


class MatryoshkaIndex:
    """A database of Matryoshka embeddings searchable at any prefix size.

    Args:
        embeddings: ``(N, D)`` database vectors (any float dtype; the dtype is kept for storage).
        chunk_size: database rows scored per block (bounds memory: ``query_batch x chunk_size`` floats).
        query_batch: queries scored together (default: 64 when searching at 16 dims or fewer, else 128).
        backend: ``"torch"`` (default) or ``"faiss"`` for the full-database stage.
        copy: keep a normalised copy (default); ``False`` normalises ``embeddings`` in place to save memory.
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        chunk_size: int = 131072,
        query_batch: int | None = None,
        backend: str = "torch",
        copy: bool = True,
    ) -> None:
        if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
            raise DataError(f"database embeddings must be a non-empty (N, D) tensor, got {tuple(embeddings.shape)}")
        if not embeddings.is_floating_point():
            raise DataError(f"database embeddings must be floating point, got {embeddings.dtype}")
        _refuse_non_finite(embeddings, "database")
        if backend not in ("torch", "faiss"):
            raise ConfigError(f"backend must be 'torch' or 'faiss', got {backend!r}")
        if backend == "faiss" and not faiss_available():
            raise ModuleNotFoundError("backend='faiss' needs FAISS: pip install 'bramley-mrl[faiss]'")
        if chunk_size < 1 or (query_batch is not None and query_batch < 1):
            raise ConfigError("chunk_size and query_batch must be >= 1")
        self.chunk_size = chunk_size
        self.query_batch = query_batch
        self.backend = backend
        # Store the rows normalised at full size: a prefix of it, renormalised, equals the normalised raw prefix.
        embeddings = embeddings.detach()
        self.data = torch.empty_like(embeddings, device="cpu") if copy else embeddings.cpu()
        for start in range(0, embeddings.shape[0], chunk_size):
            block = embeddings[start : start + chunk_size].float()
            self.data[start : start + chunk_size] = F.normalize(block, dim=1).to(self.data.dtype)
        self._prefix_cache: dict[int, torch.Tensor] = {}
        self._faiss_cache: dict[int, object] = {}
        self._buffers = threading.local()  # each thread's block of scores, kept: first touching one costs page faults

    @property
    def size(self) -> int:
        return self.data.shape[0]

    @property
    def dim(self) -> int:
        return self.data.shape[1]

    def _check_dim(self, dim: int | None) -> int:
        dim = self.dim if dim is None else dim
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= self.dim:
            raise ConfigError(f"search dim must be an int in [1, {self.dim}] (the index dim), got {dim!r}")
        return dim

    def _check_queries(self, queries: torch.Tensor) -> torch.Tensor:
        if queries.ndim != 2:
            raise DataError(f"queries must be (Q, D), got shape {tuple(queries.shape)}")
        if queries.shape[1] != self.dim:
            raise DataError(
                f"query dim {queries.shape[1]} does not match the index dim {self.dim}; "
                "pass full-size query embeddings and choose the search size with dim="
            )
        if not queries.is_floating_point():
            raise DataError(f"queries must be floating point, got {queries.dtype}")
        _refuse_non_finite(queries, "query")
        return queries.detach().float().cpu()

    def prefix(self, dim: int) -> torch.Tensor | None:
        """The float32 normalised ``(N, dim)`` prefix if it is small enough to cache, else ``None``."""
        if dim == self.dim and self.data.dtype == torch.float32:
            return self.data
        if dim not in self._prefix_cache:
            if self.size * dim * 4 > _CACHE_BYTES:
                return None
            self._prefix_cache[dim] = self._as_unit(self.data[:, :dim])
        return self._prefix_cache[dim]

    def _blocks(self, dim: int) -> Iterator[tuple[int, torch.Tensor]]:
        cached = self.prefix(dim)
        for start in range(0, self.size, self.chunk_size):
            if cached is not None:
                yield start, cached[start : start + self.chunk_size]
                continue
            yield start, self._as_unit(self.data[start : start + self.chunk_size, :dim])

    def _as_unit(self, rows: torch.Tensor) -> torch.Tensor:
        # Stored float32 full-size rows are unit already; prefixes and rounded (16-bit) rows are renormalised.
        if rows.shape[-1] == self.dim and rows.dtype == torch.float32:
            return rows
        return F.normalize(rows.float(), dim=-1)

    def _check_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.size:
            raise ConfigError(f"k must be an int in [1, {self.size}] (the database size), got {k!r}")

    def search(self, queries: torch.Tensor, k: int, dim: int | None = None) -> SearchResult:
        """Exact top-``k`` neighbours of each query over the whole database at size ``dim`` (default full)."""
        dim = self._check_dim(dim)
        queries = self._check_queries(queries)
        self._check_k(k)
        return self._search(queries, k, dim)

    def _search(self, queries: torch.Tensor, k: int, dim: int) -> SearchResult:
        q = F.normalize(queries[:, :dim], dim=1)
        if self.backend == "faiss":
            scores, indices = self._faiss_search(q, k, dim)
        else:
            scores, indices = self._torch_search(q, k, dim)
        return SearchResult(scores, indices, self.size * dim / 1e6)

    def _torch_search(self, q: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Database blocks outside, query batches inside: each (possibly 16-bit) block is converted once. Every
        # block keeps its own top-k candidates; one final top-k per query merges them. All score blocks are written
        # into one buffer: a fresh one per block (tens of MB) cost more in page faults than the product itself.
        # With several threads the query batches of a block go to single-threaded workers, each with its own buffer
        # (:func:`bramley.core.threads.map_single_threaded`): on a busy machine a free worker takes the next batch
        # instead of every small op waiting for a descheduled thread, and the result is the same as on one thread.
        query_batch = self.query_batch or (_NARROW_QUERY_BATCH if dim <= _NARROW_DIM else _QUERY_BATCH)
        batches = range(0, q.shape[0], query_batch)
        cand_s: list[list[torch.Tensor]] = [[] for _ in batches]
        cand_i: list[list[torch.Tensor]] = [[] for _ in batches]
        buffer_size = min(query_batch, q.shape[0]) * min(self.chunk_size, self.size)
        for start, block in self._blocks(dim):
            kk = min(k, block.shape[0])

            def top(first: int, block: torch.Tensor = block, kk: int = kk) -> tuple[torch.Tensor, torch.Tensor]:
                qb = q[first : first + query_batch]
                buffer = getattr(self._buffers, "scores", None)
                if buffer is None or buffer.numel() < buffer_size:
                    buffer = self._buffers.scores = torch.empty(buffer_size)
                scores = torch.mm(qb, block.T, out=buffer[: qb.shape[0] * block.shape[0]].view(qb.shape[0], -1))
                return _row_topk(scores, kk)

            for b, (s, i) in enumerate(map_single_threaded(top, batches)):
                cand_s[b].append(s)
                cand_i[b].append(i + start)
        scores, indices = [], []
        for b in range(len(batches)):
            s, order = torch.cat(cand_s[b], 1).topk(k, dim=1)
            scores.append(s)
            indices.append(torch.cat(cand_i[b], 1).gather(1, order))
        return torch.cat(scores), torch.cat(indices)

    def _faiss_search(self, q: torch.Tensor, k: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        import faiss

        if dim not in self._faiss_cache:
            index = faiss.IndexFlatIP(dim)
            for _, block in self._blocks(dim):
                index.add(np.ascontiguousarray(block.numpy(), dtype=np.float32))
            self._faiss_cache[dim] = index
        scores, indices = self._faiss_cache[dim].search(np.ascontiguousarray(q.numpy()), k)
        return torch.from_numpy(scores), torch.from_numpy(indices).long()

    def rerank(self, queries: torch.Tensor, candidates: torch.Tensor, dim: int | None = None) -> SearchResult:
        """Reorder each query's ``candidates`` (``(Q, L)`` database indices) by cosine at size ``dim``."""
        dim = self._check_dim(dim)
        queries = self._check_queries(queries)
        if candidates.ndim != 2 or candidates.shape[0] != queries.shape[0]:
            shape = tuple(candidates.shape)
            raise ConfigError(f"candidates must be (Q={queries.shape[0]}, L), got shape {shape}")
        if candidates.numel() and not 0 <= int(candidates.min()) <= int(candidates.max()) < self.size:
            raise ConfigError(f"candidate indices must lie in [0, {self.size})")
        return self._rerank(queries, candidates.long(), dim)

    def _rerank(self, queries: torch.Tensor, candidates: torch.Tensor, dim: int) -> SearchResult:
        # A few thousand rows per query: numpy, on one thread, is several times faster than the same torch ops on a
        # busy machine, where each torch op is a parallel region that waits for its threads. Cosine = (row . unit
        # query) / |row|: the gathered rows are read (product, norm), never rewritten. bfloat16 has no numpy type.
        cached = self._prefix_cache.get(dim)
        source = self.data[:, :dim] if cached is None else cached
        unit = cached is not None or (dim == self.dim and self.data.dtype == torch.float32)
        q = F.normalize(queries[:, :dim], dim=1)
        if source.dtype == torch.bfloat16:
            rows = source[candidates].float().numpy()
        else:
            rows = source.numpy()[candidates.numpy()].astype(np.float32, copy=False)  # (Q, L, dim)
        scores_np = np.matmul(rows, q.numpy()[:, :, None])[:, :, 0]
        if not unit:
            scores_np /= np.maximum(np.sqrt(np.einsum("qld,qld->ql", rows, rows)), 1e-12)  # F.normalize's eps
        order = np.argsort(-scores_np, axis=1, kind="stable")
        scores = torch.from_numpy(np.take_along_axis(scores_np, order, axis=1))
        return SearchResult(scores, candidates.gather(1, torch.from_numpy(order)), candidates.shape[1] * dim / 1e6)

    def funnel(
        self, queries: torch.Tensor, retrieval_dim: int, rerank_dims: Sequence[int], shortlists: Sequence[int]
    ) -> SearchResult:
        """Funnel retrieval (paper, Sec. 5.3): shortlist at ``retrieval_dim``, then rerank-and-cut repeatedly.

        Stage ``i`` keeps the first ``shortlists[i]`` neighbours of the previous ranking and reorders them at size
        ``rerank_dims[i]``; the result has ``shortlists[-1]`` neighbours. Sizes must increase, shortlists must not.
        Shortlist-then-rerank (adaptive retrieval) is the one-stage funnel. The queries are checked once.
        """
        rerank_dims, shortlists = list(rerank_dims), list(shortlists)
        check_nesting([retrieval_dim, *rerank_dims], self.dim, name="funnel sizes (retrieval_dim, *rerank_dims)")
        if len(rerank_dims) != len(shortlists) or not shortlists:
            raise ConfigError(f"need one shortlist length per rerank dim, got {shortlists} for {rerank_dims}")
        if any(isinstance(L, bool) or not isinstance(L, int) or L < 1 for L in shortlists):
            raise ConfigError(f"shortlist lengths must be positive ints, got {shortlists}")
        if any(b > a for a, b in itertools.pairwise(shortlists)):
            raise ConfigError(f"funnel shortlists must not grow, got {shortlists}")
        queries = self._check_queries(queries)
        self._check_k(shortlists[0])
        result = self._search(queries, shortlists[0], retrieval_dim)
        mflops = result.mflops_per_query
        for dim, length in zip(rerank_dims, shortlists):
            result = self._rerank(queries, result.indices[:, :length], dim)
            mflops += result.mflops_per_query
        return SearchResult(result.scores, result.indices, mflops)

    def shortlist_rerank(
        self, queries: torch.Tensor, shortlist_dim: int, rerank_dim: int, shortlist: int, k: int | None = None
    ) -> SearchResult:
        """Adaptive retrieval: ``shortlist`` neighbours at ``shortlist_dim``, reordered at ``rerank_dim``, top ``k``."""
        result = self.funnel(queries, shortlist_dim, [rerank_dim], [shortlist])
        k = shortlist if k is None else k
        if not 1 <= k <= shortlist:
            raise ConfigError(f"k must be in [1, shortlist={shortlist}], got {k}")
        return SearchResult(result.scores[:, :k], result.indices[:, :k], result.mflops_per_query)


def exact_search(
    database: torch.Tensor, queries: torch.Tensor, k: int, dim: int | None = None, backend: str = "torch"
) -> SearchResult:
    """One-shot exact cosine kNN at size ``dim`` (builds a :class:`MatryoshkaIndex`)."""
    return MatryoshkaIndex(database, backend=backend).search(queries, k, dim)
