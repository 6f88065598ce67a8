"""Retrieval benchmark on generated Matryoshka-like data: funnel vs full-size exact search, in one process.

The generator imitates what MRL training produces (coarse-to-fine, information front-loaded): a point of class ``y``
is ``x_j = signal * (j + 1) ** -signal_decay * mu[y, j] + (j + 1) ** -noise_decay * eps_j`` with standard-normal
class means ``mu`` and noise ``eps``. The class signal decays faster than the noise, so leading coordinates have the
best signal-to-noise ratio: with the defaults 1-NN top-1 on 1000 classes grows from ~30 % at 8 dims to ~70 % at 16
and saturates near ~99 % from 256 dims on, the same shape as MRL-ResNet-50's retrieval curve on ImageNet (steep
below 32 dims, flat above). Generation is chunked; the database is stored in ``dtype``.

With FAISS installed, each funnel also runs against its **peer**: the same cascade written in 15 lines on FAISS and
numpy (:func:`faiss_funnel`), the shortlist from an exact ``faiss.IndexFlatIP`` and each rerank in numpy. All
contenders run once per round in a rotating order, so they share the machine's load; ratios are medians over rounds.

    python -m bramley.mrl.bench --num-database 1000000 --rounds 3 --threads 1 --markdown BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bramley.core.bench import busy_cores, interleaved_rounds, ratio_spread
from bramley.core.errors import ConfigError
from bramley.core.retrieval import ranking_metrics

from .retrieval import MatryoshkaIndex, faiss_available, funnel_mflops, neighbor_recall

__all__ = ["DEFAULT_FUNNEL", "PAPER_FUNNEL", "faiss_funnel", "run_benchmark", "synthetic_mrl_data"]

# The paper's funnel (Sec. 5.3 / official reranking notebook): retrieve at 8, rerank cascade with shrinking shortlists.
PAPER_FUNNEL = {"retrieval_dim": 8, "rerank_dims": [16, 32, 64, 128, 2048], "shortlists": [200, 100, 50, 25, 10]}
# On the generated data 8 dims are weaker than MRL's on ImageNet; starting at 32 keeps top-1 equal to exact search.
DEFAULT_FUNNEL = {"retrieval_dim": 32, "rerank_dims": [64, 128, 256, 2048], "shortlists": [200, 100, 50, 10]}

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class _Generator:
    def __init__(self, dim, num_classes, signal, signal_decay, noise_decay, seed) -> None:
        if dim < 1 or num_classes < 1:
            raise ConfigError(f"dim and num_classes must be >= 1, got {dim}, {num_classes}")
        self.gen = torch.Generator().manual_seed(seed)
        self.means = torch.randn(num_classes, dim, generator=self.gen)
        j = torch.arange(1, dim + 1, dtype=torch.float32)
        self.signal = signal * j.pow(-signal_decay)
        self.noise = j.pow(-noise_decay)

    def draw(self, num: int, dtype: torch.dtype, chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
        if num < 1:
            raise ConfigError(f"num must be >= 1, got {num}")
        labels = torch.randint(0, self.means.shape[0], (num,), generator=self.gen)
        x = torch.empty(num, self.means.shape[1], dtype=dtype)
        for start in range(0, num, chunk_size):
            y = labels[start : start + chunk_size]
            block = torch.randn(len(y), self.means.shape[1], generator=self.gen).mul_(self.noise)
            x[start : start + len(y)] = block.addcmul_(self.means[y], self.signal).to(dtype)
        return x, labels


def synthetic_mrl_data(
    num: int,
    dim: int = 2048,
    num_classes: int = 1000,
    signal: float = 2.5,
    signal_decay: float = 0.75,
    noise_decay: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` generated Matryoshka-like vectors and their labels (see the module docstring)."""
    return _Generator(dim, num_classes, signal, signal_decay, noise_decay, seed).draw(num, dtype)


def faiss_funnel(
    database: np.ndarray, retrieval_dim: int, rerank_dims: Sequence[int], shortlists: Sequence[int]
) -> Callable[[np.ndarray], np.ndarray]:
    """The funnel a user writes on FAISS instead of bramley (issue 14's peer): neighbours of numpy queries.

    Shortlist at ``retrieval_dim`` with an exact ``faiss.IndexFlatIP`` over the normalised prefixes, then the same
    cascade as :meth:`MatryoshkaIndex.funnel` in numpy: cosine at each rerank size, stable descending sort, cut.
    """
    import faiss

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    index = faiss.IndexFlatIP(retrieval_dim)
    index.add(np.ascontiguousarray(unit(database[:, :retrieval_dim])))

    def funnel(queries: np.ndarray) -> np.ndarray:
        _, neighbors = index.search(np.ascontiguousarray(unit(queries[:, :retrieval_dim])), shortlists[0])
        for dim, length in zip(rerank_dims, shortlists):
            neighbors = neighbors[:, :length]
            scores = np.einsum("qld,qd->ql", unit(database[neighbors, :dim]), unit(queries[:, :dim]))
            neighbors = np.take_along_axis(neighbors, np.argsort(-scores, axis=1, kind="stable"), axis=1)
        return neighbors

    return funnel


def _ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median and range over rounds of the per-round ratio ``numerator / denominator`` (a speed-up of times)."""
    return dict(zip(("median", "min", "max"), ratio_spread(numerator, denominator)))


def run_benchmark(
    num_database: int = 1_000_000,
    num_queries: int = 256,
    dim: int = 2048,
    num_classes: int = 1000,
    funnels: Sequence[Mapping[str, Any]] = (DEFAULT_FUNNEL, PAPER_FUNNEL),
    dtype: str = "float32",
    repeats: int = 1,
    seed: int = 0,
    backend: str = "torch",
    signal: float = 2.5,
    peer: bool = True,
    busy: int = 0,
) -> dict[str, Any]:
    """Time full-size exact search, each funnel and its FAISS peer on the same generated data, interleaved.

    ``repeats`` rounds each time every contender once, in a rotating order; times are medians over rounds and each
    ratio is the median of the per-round ratios, with its range (``speedup`` over exact search; ``vs_peer``, the
    peer's time over the funnel's). ``recall@k`` is the share of the exact full-size top-``k`` (``k`` = the funnel's
    last shortlist) that the funnel returns (a fraction); ``top1`` is the label accuracy (%) of the first neighbour
    and ``top1_minus_exact`` its difference to exact search in points; ``same_as_peer`` is the share of queries whose
    neighbour list equals the peer's. Timings cover all per-query work (checking and normalising queries, scoring,
    top-k, reranking). Building the index (normalising the database, caching the funnels' small prefixes, the
    peer's FAISS index) is timed separately. The peer runs when FAISS is installed and ``peer`` is set. A funnel's
    last rerank size is clamped to ``dim``. ``busy`` other processes spin while the rounds run (a set load:
    :func:`bramley.core.bench.busy_cores`).
    """
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    funnels = [_fit_funnel(f, dim) for f in funnels]
    data = _Generator(dim, num_classes, signal, 0.75, 0.5, seed)
    t0 = time.perf_counter()
    db, db_labels = data.draw(num_database, _DTYPES[dtype])
    queries, query_labels = data.draw(num_queries, torch.float32)
    generate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    index = MatryoshkaIndex(db, backend=backend, copy=False)
    del db
    for f in funnels:
        index.prefix(f["retrieval_dim"])
    build_s = time.perf_counter() - t0
    peers: dict[int, Callable[[np.ndarray], np.ndarray]] = {}
    t0 = time.perf_counter()
    if peer and faiss_available() and index.data.dtype == torch.float32:
        peers = {i: faiss_funnel(index.data.numpy(), **f) for i, f in enumerate(funnels)}
    peer_build_s = time.perf_counter() - t0

    k_max = max(f["shortlists"][-1] for f in funnels)
    queries_np = queries.numpy()
    searches: dict[str, Callable[[], torch.Tensor]] = {"exact": lambda: index.search(queries, k_max, dim).indices}
    for i, f in enumerate(funnels):
        searches[f"funnel {i}"] = lambda f=f: index.funnel(queries, **f).indices
        if i in peers:
            searches[f"peer {i}"] = lambda i=i: torch.from_numpy(peers[i](queries_np))
    found: dict[str, torch.Tensor] = {}  # the last round's neighbours of each

    def keep(name: str) -> Callable[[], None]:
        return lambda: found.__setitem__(name, searches[name]())

    with busy_cores(busy):
        seconds = interleaved_rounds({name: keep(name) for name in searches}, repeats)
    exact, exact_s = found["exact"], statistics.median(seconds["exact"])
    exact_top1 = ranking_metrics(exact, query_labels, db_labels)["top1"]
    results = []
    for i, f in enumerate(funnels):
        k = f["shortlists"][-1]
        out, times = found[f"funnel {i}"], seconds[f"funnel {i}"]
        top1 = ranking_metrics(out, query_labels, db_labels)["top1"]
        row = {
            **f,
            "queries_per_s": num_queries / statistics.median(times),
            "seconds": statistics.median(times),
            "mflops_per_query": funnel_mflops(num_database, **f),
            "top1": top1,
            "top1_minus_exact": top1 - exact_top1,
            f"recall@{k}_vs_exact": neighbor_recall(out, exact[:, :k], k),
            "recall@1_vs_exact": neighbor_recall(out, exact, 1),
            "speedup": statistics.median(seconds["exact"]) / statistics.median(times),
            "speedup_rounds": _ratio(seconds["exact"], times),
        }
        if i in peers:
            peer_out, peer_times = found[f"peer {i}"], seconds[f"peer {i}"]
            row["peer"] = {
                "name": "faiss funnel (15 lines: faiss.IndexFlatIP shortlist, numpy rerank)",
                "queries_per_s": num_queries / statistics.median(peer_times),
                "seconds": statistics.median(peer_times),
                "speedup": _ratio(seconds["exact"], peer_times),
                "top1": ranking_metrics(peer_out, query_labels, db_labels)["top1"],
                f"recall@{k}_vs_exact": neighbor_recall(peer_out, exact[:, :k], k),
            }
            row["vs_peer"] = _ratio(peer_times, times)
            row["same_as_peer"] = float((peer_out == out).all(dim=1).float().mean())
        results.append(row)
    return {
        "config": {
            "num_database": num_database,
            "num_queries": num_queries,
            "dim": dim,
            "num_classes": num_classes,
            "signal": signal,
            "dtype": dtype,
            "backend": backend,
            "repeats": repeats,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "busy_cores": busy,
        },
        "versions": _versions(),
        "generate_s": generate_s,
        "index_build_s": build_s,
        "peer_build_s": peer_build_s,
        "exact": {
            "queries_per_s": num_queries / exact_s,
            "seconds": exact_s,
            "mflops_per_query": num_database * dim / 1e6,
            "top1": exact_top1,
        },
        "funnels": results,
        "seconds_per_round": seconds,
    }


def _versions() -> dict[str, str]:
    versions = {"numpy": np.__version__, "torch": torch.__version__}
    if faiss_available():
        import faiss

        versions["faiss"] = faiss.__version__
    return versions


def _fit_funnel(funnel: Mapping[str, Any], dim: int) -> dict[str, Any]:
    """A copy whose sizes fit a ``dim``-dimensional database: sizes >= dim collapse into one final stage at dim."""
    rerank = [d for d in funnel["rerank_dims"] if d < dim]
    shortlists = [*funnel["shortlists"][: len(rerank)], funnel["shortlists"][-1]]
    if funnel["retrieval_dim"] >= dim:
        raise ConfigError(f"funnel retrieval_dim {funnel['retrieval_dim']} must be below the data dim {dim}")
    return {"retrieval_dim": funnel["retrieval_dim"], "rerank_dims": [*rerank, dim], "shortlists": shortlists}


# ------------------------------------------------------------------------------------------------ BENCHMARKS.md
def markdown_table(result: Mapping[str, Any]) -> str:
    """The BENCHMARKS.md table of one :func:`run_benchmark` result: exact search, each funnel and its peer."""

    def ratio(r: Mapping[str, float]) -> str:
        return f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"

    exact = result["exact"]
    lines = [
        "| search | queries/s | speed-up vs exact | vs its FAISS peer | top-1 % | recall@k vs exact | same as peer |",
        "|---|---|---|---|---|---|---|",
        f"| exact {result['config']['dim']}-d | {exact['queries_per_s']:.2f} | 1x | | {exact['top1']:.1f} | 1 | |",
    ]
    for f in result["funnels"]:
        name = f"funnel {f['retrieval_dim']} -> {f['rerank_dims']} x {f['shortlists']}"
        recall = f"recall@{f['shortlists'][-1]}_vs_exact"
        vs_peer, same = (ratio(f["vs_peer"]), f"{100 * f['same_as_peer']:.1f}%") if "peer" in f else ("no FAISS", "")
        lines.append(
            f"| bramley {name} | {f['queries_per_s']:.2f} | **{ratio(f['speedup_rounds'])}** | **{vs_peer}** "
            f"| {f['top1']:.1f} | {f[recall]:.3f} | {same} |"
        )
        if "peer" in f:
            p = f["peer"]
            lines.append(
                f"| FAISS peer {name} | {p['queries_per_s']:.2f} | {ratio(p['speedup'])} | 1x | {p['top1']:.1f} "
                f"| {p[recall]:.3f} | |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run :func:`run_benchmark` with the given threads and write its table into BENCHMARKS.md (``--markdown``)."""
    from bramley.core.cli import add_threads_argument, torch_threads

    parser = argparse.ArgumentParser(description="funnel vs exact search vs the FAISS peer, interleaved")
    parser.add_argument("--num-database", type=int, default=1_000_000)
    parser.add_argument("--num-queries", type=int, default=256)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    add_threads_argument(parser, default=None)  # FAISS's threads follow
    parser.add_argument("--backend", choices=["torch", "faiss"], default="torch")
    parser.add_argument(
        "--busy-cores", type=int, default=0, help="processes spinning while the rounds run (a set load; default 0)"
    )
    parser.add_argument("--markdown", type=Path, default=None, help="write the table into this file")
    args = parser.parse_args(argv)
    with _faiss_threads(args.threads), torch_threads(args.threads):  # the results record the count used
        return _run(args, argv)


@contextlib.contextmanager
def _faiss_threads(count: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads set to ``count`` for the block (``None``, or no FAISS: as they are), then restored."""
    if count is None or not faiss_available():
        yield
        return
    import faiss

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    from bramley.core.report import environment, replace_marked

    load = os.getloadavg()[0]
    result = run_benchmark(
        num_database=args.num_database,
        num_queries=args.num_queries,
        dim=args.dim,
        num_classes=args.num_classes,
        repeats=args.rounds,
        backend=args.backend,
        busy=args.busy_cores,
    )
    env = result["environment"] = environment()
    result["load_average"] = [load, os.getloadavg()[0]]
    command = " ".join(["python -m bramley.mrl.bench", *(sys.argv[1:] if argv is None else argv)])
    versions = ", ".join(f"{k} {v}" for k, v in result["versions"].items())
    threads = result["config"]["threads"]
    header = (
        f"Measured {env['date']} on {env['cpu']} ({os.cpu_count()} cores, load average {load:.1f} before and "
        f"{result['load_average'][1]:.1f} after), {threads} thread{'s' if threads > 1 else ''}, "
        f"{_busy_text(args.busy_cores)}, {versions}, "
        f"{args.num_database:,} x {args.dim} float32, {args.num_queries} queries, {args.backend} backend, "
        f"{args.rounds} interleaved rounds (ratios: median and range over rounds), `{command}`."
    )
    body = header + "\n\n" + markdown_table(result)
    print(body)
    if args.markdown is not None:
        busy = f"-{args.busy_cores}busy" if args.busy_cores else ""
        replace_marked(args.markdown, f"bench_mrl:{args.backend}-{args.num_database}-{threads}t{busy}", body)
    return result


def _busy_text(count: int) -> str:
    if not count:
        return "no set load"
    return f"{count} spinning process{'es' if count > 1 else ''} alongside (`--busy-cores {count}`)"


if __name__ == "__main__":
    main()
