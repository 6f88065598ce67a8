"""The UnED protocol: kNN metrics exactly as the official ones, the UnED folder layout, the JSON descriptor format.

Metrics (nikosips/UDON ``metrics.py`` and ``knn_utils.py``), for a query of domain ``d`` with label(s) ``y`` and
its neighbours in the index ranked by cosine similarity (inner product of the given descriptors):

- a neighbour is *correct* when its domain is ``d`` and its label is one of ``y`` (R@1 needs both as well);
- ``P`` = index items of domain ``d`` with a label in ``y`` (the query itself excluded when the query set is the
  index set: the official ``throw_first``);
- ``mMP@k = (correct among the first min(k, P) neighbours) / min(P, k)``; ``R@1`` = the first neighbour is correct;
- a query with no positive in the index (``P = 0``) scores 0 on both and stays in the mean (the official code
  returns 0 for it); the mean runs over all queries of the domain.

The official code takes ``top_k`` neighbours with ``jax.lax.top_k``, which fails on an index smaller than ``k``;
here at most ``index size`` neighbours are ranked (``P`` can never exceed it). It drops the *first* neighbour when
query and index sets coincide, assuming it is the query itself; here the query's own row is masked out, which is
the same unless a duplicate image ties with (or beats) the query's own similarity.

Layout (nikosips/Universal-Image-Embeddings): ``<root>/info_files/<domain>/<split>.json`` is a list of
``{"path": "<relative image path>", "class_id": int | [int, ...]}`` and the images are at
``<root>/images/<path>``. The kNN setup of each domain (which split is the index of which query split) is
:data:`UNED_KNN` for the eight UnED domains and ``query = index = split`` for any other domain.

Descriptor files (the official ``descr_eval.py`` input): JSON ``{domain: {split: [[float, ...], ...]}}``, one row
per entry of ``info_files/<domain>/<split>.json`` in that order; UDON's own dump
``{domain: {split: {embedding_type: [[...]]}}}`` is read too (choose the type with ``embedding=``).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bramley.core.errors import DataError

__all__ = [
    "UNED_KNN",
    "InfoEntry",
    "KnnResult",
    "evaluate_descriptors",
    "knn_metrics",
    "knn_setup",
    "load_descriptors",
    "read_info_file",
    "save_descriptors",
    "uned_eval",
]

#: ``{domain: {knn_split: (query_split, index_split)}}`` of the eight UnED domains (the official DATASET_INFO).
UNED_KNN: dict[str, dict[str, tuple[str, str]]] = {
    **{d: {s: (s, s) for s in ("train", "val", "test")} for d in ("cars", "sop", "inat", "food2k", "rp2k")},
    "inshop": {"train": ("train", "train"), "val": ("val", "val"), "test": ("test", "index")},
    "met": {"train": ("train", "train"), "val": ("val", "small_index"), "test": ("test", "index")},
    "gldv2": {"train": ("train", "train"), "val": ("val", "val"), "test": ("test", "index")},
}

Labels = Sequence[int | Sequence[int]]


@dataclass(frozen=True)
class KnnResult:
    """Mean metrics over the queries of one domain: ``mmp`` (mMP@k), ``r1`` (R@1), and counts."""

    mmp: float
    r1: float
    queries: int
    no_positive: int  # queries with no positive in the index (each scores 0)
    k: int


def knn_setup(domain: str, split: str) -> tuple[str, str]:
    """``(query_split, index_split)`` of ``domain``'s kNN evaluation on ``split``."""
    return UNED_KNN.get(domain, {}).get(split, (split, split))


# --------------------------------------------------------------------------------------------------------- metrics
def _label_sets(labels: Labels, what: str) -> list[tuple[int, ...]]:
    sets = []
    for i, label in enumerate(labels):
        group = (label,) if isinstance(label, int) and not isinstance(label, bool) else tuple(label)
        if not group or not all(isinstance(v, int) and not isinstance(v, bool) for v in group):
            raise DataError(f"{what} label {i} is {label!r}: labels are ints (or lists of ints for a query)")
        sets.append(group)
    return sets


def knn_metrics(
    query: torch.Tensor,
    index: torch.Tensor,
    query_labels: Labels,
    index_labels: Sequence[int],
    query_domain: int | str,
    index_domains: Sequence[int | str],
    k: int = 5,
    self_rows: Sequence[int] | None = None,
    chunk: int = 1024,
) -> KnnResult:
    """mMP@k and R@1 of one domain's queries against an index (its own, or the merged one of every domain).

    Args:
        query: ``(Q, D)`` descriptors of the queries (all of domain ``query_domain``).
        index: ``(N, D)`` descriptors of the index.
        query_labels: one int (or list of ints) per query.
        index_labels: one int per index item.
        query_domain: the queries' domain.
        index_domains: the domain of each index item.
        k: the mMP cut-off (5 in UnED).
        self_rows: when the queries are also in the index, each query's own row there (it is never a neighbour).
        chunk: queries per similarity block.

    Raises:
        DataError: shapes or lengths disagree, labels are not ints, or the index has no item a query could match.
    """
    if query.ndim != 2 or index.ndim != 2:
        raise DataError(f"descriptors must be 2-D (items x dims), got {tuple(query.shape)} and {tuple(index.shape)}")
    if query.shape[1] != index.shape[1]:
        raise DataError(f"query descriptors are {query.shape[1]}-d but index descriptors are {index.shape[1]}-d")
    if len(query_labels) != query.shape[0] or len(index_labels) != index.shape[0] or len(index_domains) != len(index):
        raise DataError(
            f"{query.shape[0]} query descriptors for {len(query_labels)} labels, {index.shape[0]} index descriptors "
            f"for {len(index_labels)} labels and {len(index_domains)} domains"
        )
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}")
    for name, t in (("query", query), ("index", index)):
        if not torch.isfinite(t).all():
            raise DataError(f"{name} descriptors hold {int((~torch.isfinite(t)).sum())} NaN or infinite values")
    num_queries = query.shape[0]
    if num_queries == 0:
        raise DataError(f"domain {query_domain!r} has no queries")
    excluded = self_rows is not None
    if excluded and len(self_rows) != num_queries:
        raise DataError(f"self_rows has {len(self_rows)} entries for {num_queries} queries")
    ranked = min(k, index.shape[0] - (1 if excluded else 0))
    if ranked < 1:
        raise DataError(f"the index has {index.shape[0]} item(s): no neighbour to rank for domain {query_domain!r}")
    queries = _label_sets(query_labels, "query")
    index_sets = _label_sets(index_labels, "index")
    if any(len(s) != 1 for s in index_sets):
        raise DataError("index items need exactly one label each (multi-label entries are for queries)")
    flat_index = [s[0] for s in index_sets]
    same_domain = torch.tensor([d == query_domain for d in index_domains])
    counter = Counter(label for label, here in zip(flat_index, same_domain.tolist()) if here)
    # a label no index item of this domain has is replaced by one that matches nothing
    index_label_t = torch.tensor(flat_index, dtype=torch.long)
    width = max(len(s) for s in queries)
    miss = min(flat_index, default=0) - 1
    query_label_t = torch.tensor([list(s) + [miss] * (width - len(s)) for s in queries], dtype=torch.long)
    positives = torch.tensor([sum(counter[v] for v in set(s)) for s in queries], dtype=torch.long)
    if excluded:
        rows = torch.as_tensor(list(self_rows), dtype=torch.long)
        own = _relevant(rows[:, None], index_label_t, same_domain, query_label_t).squeeze(1)
        positives = positives - own.long()  # the query's own row is not a positive of itself
    index_f, query_f = index.float(), query.float()
    hits_at_1 = torch.zeros(num_queries)
    mmp = torch.zeros(num_queries)
    for start in range(0, num_queries, chunk):
        stop = min(start + chunk, num_queries)
        sims = query_f[start:stop] @ index_f.T
        if excluded:
            sims[torch.arange(stop - start), rows[start:stop]] = -math.inf
        order = sims.topk(ranked, dim=1).indices
        relevant = _relevant(order, index_label_t, same_domain, query_label_t[start:stop])
        p = positives[start:stop]
        cut = p.clamp(max=ranked)  # min(k, P), and never past the ranked neighbours
        within = torch.arange(ranked)[None, :] < cut[:, None]
        correct = (relevant & within).sum(1).float()
        mmp[start:stop] = torch.where(p > 0, correct / p.clamp(min=1, max=k).float(), torch.zeros(()))
        hits_at_1[start:stop] = relevant[:, 0].float()
    return KnnResult(
        mmp=float(mmp.mean()),
        r1=float(hits_at_1.mean()),
        queries=num_queries,
        no_positive=int((positives == 0).sum()),
        k=k,
    )


def _relevant(
    rows: torch.Tensor, index_labels: torch.Tensor, same_domain: torch.Tensor, query_labels: torch.Tensor
) -> torch.Tensor:
    """``(Q, K)`` booleans: index item ``rows[q, j]`` has the query's domain and one of its labels."""
    labels = index_labels[rows]  # (Q, K)
    match = (labels[:, :, None] == query_labels[:, None, :]).any(-1)
    return match & same_domain[rows]


# ------------------------------------------------------------------------------------------------- whole protocol
def evaluate_descriptors(
    descriptors: Mapping[str, Mapping[str, torch.Tensor]],
    labels: Mapping[str, Mapping[str, Labels]],
    split: str = "test",
    k: int = 5,
    domains: Sequence[str] | None = None,
    merged: bool = True,
) -> dict[str, Any]:
    """The UnED table: per-domain kNN against the domain's own index (``separate``) and against the index of every
    domain merged (``merged``, the UnED benchmark protocol), and their means over domains.

    Args:
        descriptors: ``{domain: {split_name: (N, D) tensor}}``, holding each domain's query and index splits.
        labels: ``{domain: {split_name: labels}}`` in the same order.
        split: the kNN split (``val`` or ``test``; the query / index split names come from :func:`knn_setup`).
        k: the mMP cut-off.
        domains: the domains to evaluate (default: all in ``descriptors``), in table order.
        merged: also evaluate against the merged index.

    Returns:
        ``{"k", "split", "separate": {domain: metrics}, "merged": {...}, "mean": {...}}`` with metrics
        ``{"mmp@k", "r@1", "queries", "no_positive"}`` (fractions in [0, 1]).
    """
    domains = list(domains or descriptors)
    if not domains:
        raise DataError("no domain to evaluate")
    setups = {}
    for domain in domains:
        query_split, index_split = knn_setup(domain, split)
        for name in {query_split, index_split}:
            if name not in descriptors.get(domain, {}):
                raise DataError(f"no {domain}/{name} descriptors (the {split} kNN of {domain} needs {name})")
            if name not in labels.get(domain, {}):
                raise DataError(f"no {domain}/{name} labels")
            if len(labels[domain][name]) != len(descriptors[domain][name]):
                raise DataError(
                    f"{domain}/{name}: {len(descriptors[domain][name])} descriptors for {len(labels[domain][name])} "
                    "info-file entries"
                )
        setups[domain] = (query_split, index_split)
    dims = {d: descriptors[d][s].shape[-1] for d, (q, i) in setups.items() for s in (q, i)}
    if len(set(dims.values())) > 1:
        raise DataError(f"descriptors of different sizes across domains: {dims}")
    key = f"mmp@{k}"

    def row(result: KnnResult) -> dict[str, Any]:
        return {key: result.mmp, "r@1": result.r1, "queries": result.queries, "no_positive": result.no_positive}

    out: dict[str, Any] = {"k": k, "split": split, "separate": {}}
    for domain, (query_split, index_split) in setups.items():
        index_labels = labels[domain][index_split]
        result = knn_metrics(
            descriptors[domain][query_split],
            descriptors[domain][index_split],
            labels[domain][query_split],
            index_labels,
            domain,
            [domain] * len(index_labels),
            k,
            self_rows=range(len(index_labels)) if query_split == index_split else None,
        )
        out["separate"][domain] = row(result)
    if merged:
        blocks, block_labels, block_domains, starts = [], [], [], {}
        for domain, (_, index_split) in setups.items():
            starts[domain] = sum(len(b) for b in blocks)
            blocks.append(descriptors[domain][index_split])
            block_labels += list(labels[domain][index_split])
            block_domains += [domain] * len(labels[domain][index_split])
        index = torch.cat([b.float() for b in blocks])
        out["merged"] = {}
        for domain, (query_split, index_split) in setups.items():
            query_labels = labels[domain][query_split]
            self_rows = None
            if query_split == index_split:
                self_rows = range(starts[domain], starts[domain] + len(query_labels))
            result = knn_metrics(
                descriptors[domain][query_split], index, query_labels, block_labels, domain, block_domains, k, self_rows
            )
            out["merged"][domain] = row(result)
    out["mean"] = {
        f"{protocol}_{metric}": sum(v[metric] for v in out[protocol].values()) / len(domains)
        for protocol in ("separate", "merged")
        if protocol in out
        for metric in (key, "r@1")
    }
    return out


# ------------------------------------------------------------------------------------------------------ UnED files
@dataclass(frozen=True)
class InfoEntry:
    """One entry of an info file: the image path (relative to ``<root>/images``) and its label(s)."""

    path: str
    label: int | tuple[int, ...]


def read_info_file(path: str | os.PathLike) -> list[InfoEntry]:
    """Read ``info_files/<domain>/<split>.json`` (a JSON list of ``{"path", "class_id"}``), checking every entry."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"UnED info file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: an info file is a JSON list of {{'path', 'class_id'}} entries")
    entries = []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("path"), str) or "class_id" not in item:
            raise DataError(f"{path}: entry {i} is not {{'path': str, 'class_id': int or [int]}}: {str(item)[:80]}")
        label = item["class_id"]
        if isinstance(label, list):
            if not label or not all(isinstance(v, int) and not isinstance(v, bool) for v in label):
                raise DataError(f"{path}: entry {i} has class_id {label!r}; expected an int or a list of ints")
            label = tuple(label) if len(label) > 1 else label[0]
        elif not isinstance(label, int) or isinstance(label, bool):
            raise DataError(f"{path}: entry {i} has class_id {label!r}; expected an int or a list of ints")
        entries.append(InfoEntry(item["path"], label))
    return entries


def info_path(root: str | os.PathLike, domain: str, split: str) -> Path:
    """``<root>/info_files/<domain>/<split>.json``."""
    return Path(root) / "info_files" / domain / f"{split}.json"


def read_labels(root: str | os.PathLike, domains: Sequence[str], split: str) -> dict[str, dict[str, list]]:
    """The labels of every query and index split ``split``'s kNN needs, from the info files under ``root``."""
    labels: dict[str, dict[str, list]] = {}
    for domain in domains:
        for name in set(knn_setup(domain, split)):
            labels.setdefault(domain, {})[name] = [e.label for e in read_info_file(info_path(root, domain, name))]
    return labels


def uned_eval(
    root: str | os.PathLike,
    descriptors: Mapping[str, Mapping[str, torch.Tensor]],
    split: str = "test",
    k: int = 5,
    domains: Sequence[str] | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_descriptors` with the labels of the info files of the UnED folder ``root``."""
    domains = list(domains or descriptors)
    return evaluate_descriptors(descriptors, read_labels(root, domains, split), split, k, domains)


# ----------------------------------------------------------------------------------------------------- descriptors
def load_descriptors(path: str | os.PathLike, embedding: str | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Read a descriptor JSON: ``{domain: {split: [[float, ...], ...]}}`` (UnED's ``descr_eval`` input), or UDON's
    ``{domain: {split: {embedding_type: [[...]]}}}`` with ``embedding`` naming the type."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"descriptor file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DataError(f"{path}: expected {{domain: {{split: [[descriptor], ...]}}}}")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for domain, splits in data.items():
        for split, rows in splits.items():
            where = f"{path}: {domain}/{split}"
            if isinstance(rows, dict):
                if embedding is None:
                    raise DataError(f"{where} holds embedding types {sorted(rows)}; choose one (--embedding)")
                if embedding not in rows:
                    raise DataError(f"{where} has no {embedding!r} descriptors (it has {sorted(rows)})")
                rows = rows[embedding]
            if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
                raise DataError(f"{where} is not a non-empty list of descriptors (lists of numbers)")
            sizes = {len(r) for r in rows}
            if len(sizes) != 1 or 0 in sizes:
                raise DataError(f"{where} has descriptors of sizes {sorted(sizes)[:5]}; all must have one size > 0")
            try:
                tensor = torch.tensor(rows, dtype=torch.float32)
            except (TypeError, ValueError):
                raise DataError(f"{where} holds non-numeric values") from None
            out.setdefault(domain, {})[split] = tensor
    return out


def save_descriptors(path: str | os.PathLike, descriptors: Mapping[str, Mapping[str, torch.Tensor]]) -> Path:
    """Write ``{domain: {split: (N, D) tensor}}`` as UnED's descriptor JSON (atomically)."""
    from bramley.core.checkpoint import atomic_write

    payload = {d: {s: t.float().tolist() for s, t in splits.items()} for d, splits in descriptors.items()}
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(payload)))
