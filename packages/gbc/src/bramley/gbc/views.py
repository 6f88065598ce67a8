"""Views of a GBC graph: vertex orders, the graph as text, subgraph filters and statistics.

Orders are the official ones (``GbcGraphFull.get_order``): ``bfs`` level by level from the roots (image vertices
first, then vertices without parents), children in ``out_edges`` order, a vertex at its first visit; ``dfs`` preorder
with children in ``out_edges`` order; ``topological`` the reverse of the DFS finishing order (parents before
children); ``random`` a permutation of the BFS order. Text forms: ``set`` (the captions in order), ``set_bbox``
(each caption with its vertex's box), ``concat`` (the captions joined) and ``structured`` (one block per vertex with
type, leaf flag, caption, parents with their edge texts and box, as the official ``get_graph_text_repr``).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bramley.core.errors import ConfigError

from .graph import Edge, GbcGraph, Vertex

__all__ = [
    "FORMS",
    "ORDERS",
    "GraphStats",
    "captions",
    "drop_vertex",
    "drop_vertices_by_type",
    "filter_by_clip_score",
    "graph_text",
    "node_depths",
    "order",
    "subgraph_by_depth",
    "tree_view",
]

ORDERS = ("bfs", "dfs", "topological", "random")
FORMS = ("set", "set_bbox", "concat", "structured")


# ------------------------------------------------------------------------------------------------------- orders
def _bfs(graph: GbcGraph) -> tuple[list[str], dict[str, int]]:
    by_id = graph.vertex_dict()
    order: list[str] = []
    depths: dict[str, int] = {}
    level = graph.roots()
    depth = 0
    while level:
        following: list[Vertex] = []
        for v in level:
            if v.vertex_id in depths:
                continue
            depths[v.vertex_id] = depth
            order.append(v.vertex_id)
            following.extend(by_id[e.target] for e in v.out_edges if e.target not in depths and e.target in by_id)
        level, depth = following, depth + 1
    return order, depths


def _dfs(graph: GbcGraph) -> tuple[list[str], list[str]]:
    by_id = graph.vertex_dict()
    preorder: list[str] = []
    finished: list[str] = []
    visited: set[str] = set()
    stack: list[tuple[Vertex, bool]] = [(v, False) for v in graph.roots()]
    while stack:
        v, done = stack.pop()
        if done:
            finished.append(v.vertex_id)
            continue
        if v.vertex_id in visited:
            continue
        visited.add(v.vertex_id)
        preorder.append(v.vertex_id)
        stack.append((v, True))
        stack.extend((by_id[e.target], False) for e in reversed(v.out_edges) if e.target not in visited)
    return preorder, finished[::-1]


def order(graph: GbcGraph, mode: str = "bfs", rng: np.random.Generator | None = None) -> list[str]:
    """The vertex ids in one of :data:`ORDERS`; vertices unreachable from a root (only in cyclic graphs without a
    parentless vertex) are not listed, as in the official code."""
    if mode == "bfs":
        return _bfs(graph)[0]
    if mode == "dfs":
        return _dfs(graph)[0]
    if mode == "topological":
        return _dfs(graph)[1]
    if mode == "random":
        rng = np.random.default_rng() if rng is None else rng
        bfs = _bfs(graph)[0]
        return [bfs[i] for i in rng.permutation(len(bfs))]
    raise ConfigError(f"unknown graph order {mode!r} (expected one of {', '.join(ORDERS)})")


def node_depths(graph: GbcGraph) -> dict[str, int]:
    """Vertex id -> BFS depth from the roots (the image vertex is depth 0)."""
    return _bfs(graph)[1]


# -------------------------------------------------------------------------------------------------------- texts
def captions(
    graph: GbcGraph, mode: str = "bfs", with_bbox: bool = False, rng: np.random.Generator | None = None
) -> list[Any]:
    """Every caption of every vertex, vertices in ``mode`` order; with ``with_bbox``, ``(text, (l, t, r, b))``."""
    by_id = graph.vertex_dict()
    out: list[Any] = []
    for vid in order(graph, mode, rng):
        v = by_id[vid]
        out.extend((d.text, v.bbox.to_xyxy()) if with_bbox else d.text for d in v.descs)
    return out


def graph_text(
    graph: GbcGraph,
    form: str = "structured",
    mode: str = "bfs",
    separator: str = " ",
    first_caption_only: bool = True,
    root_name: str = "image",
    rng: np.random.Generator | None = None,
) -> Any:
    """The graph in one of the text :data:`FORMS`: ``set`` and ``set_bbox`` give lists, the others one string.

    Args:
        form: ``set``, ``set_bbox``, ``concat`` or ``structured``.
        mode: the vertex order (:data:`ORDERS`).
        separator: between captions (``concat``; between a vertex's captions in ``structured``).
        first_caption_only: ``structured`` shows each vertex's first caption only (the official default) or all.
        root_name: the name the image vertex (id ``""``) gets in ``structured``.
    """
    if form == "set":
        return captions(graph, mode, rng=rng)
    if form == "set_bbox":
        return captions(graph, mode, with_bbox=True, rng=rng)
    if form == "concat":
        return separator.join(captions(graph, mode, rng=rng))
    if form != "structured":
        raise ConfigError(f"unknown graph text form {form!r} (expected one of {', '.join(FORMS)})")
    ids = order(graph, mode, rng)
    number = {vid: i for i, vid in enumerate(ids)}
    by_id = graph.vertex_dict()
    blocks = []
    for i, vid in enumerate(ids):
        v = by_id[vid]
        texts = v.texts()[:1] if first_caption_only else v.texts()
        parents = "".join(f" #{number.get(e.source, '?')}({e.source or root_name}: {e.text})" for e in v.in_edges)
        box = ", ".join(f"{k}: {getattr(v.bbox, k):.7f}" for k in ("left", "top", "right", "bottom"))
        blocks.append(
            f"Node #{i} {vid or root_name}\ntype: {v.label}\nis_leaf: {v.is_leaf}\n"
            f"desc: {separator.join(texts)}\nparents:{parents}\nbbox: {box}\n"
        )
    return "\n".join(blocks)


def tree_view(graph: GbcGraph, width: int = 100, root_name: str = "image") -> str:
    """The graph as an indented tree for a terminal: each vertex under its parents in DFS order, with the edge text,
    its label, box and first caption (cut to ``width``); a vertex already shown is referred to, not repeated."""
    by_id = graph.vertex_dict()
    lines: list[str] = []
    shown: set[str] = set()

    def visit(v: Vertex, phrases: list[str], prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("`-- " if last else "|-- ")
        via = f"[{', '.join(phrases)}] " if phrases else ""
        name = v.vertex_id or root_name
        if v.vertex_id in shown:
            lines.append(f"{prefix}{branch}{via}{name} (see above)")
            return
        shown.add(v.vertex_id)
        b = v.bbox
        caption = v.descs[0].text.replace("\n", " ") if v.descs else ""
        head = f"{prefix}{branch}{via}{name} <{v.label}> ({b.left:.2f}, {b.top:.2f}, {b.right:.2f}, {b.bottom:.2f})"
        lines.append(head)
        pad = prefix + ("" if top else ("    " if last else "|   "))
        if caption:
            room = max(20, width - len(pad) - 4)
            lines.append(f'{pad}  "{caption[: room - 3] + "..." if len(caption) > room else caption}"')
        children: dict[str, list[str]] = {}  # one line per child, with every phrase that names it
        for e in v.out_edges:
            if e.target in by_id:
                children.setdefault(e.target, []).append(e.text)
        for k, (target, texts) in enumerate(children.items()):
            visit(by_id[target], texts, pad, k == len(children) - 1, False)

    for root in graph.roots():
        visit(root, [], "", True, True)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- subgraph filters
def drop_vertex(graph: GbcGraph, vertex_id: str, shortcut: bool = True) -> GbcGraph:
    """A copy of the graph without one vertex. Dropping a non-relation vertex with ``shortcut`` links each parent to
    each child with the parent's edge text (the official ``drop_vertex`` with ``keep_in_edges``/``keep_out_edges``)."""
    graph = copy.deepcopy(graph)
    _drop(graph, vertex_id, shortcut)
    return graph


def _drop(graph: GbcGraph, vertex_id: str, shortcut: bool) -> None:
    by_id = graph.vertex_dict()
    gone = by_id[vertex_id]
    # The shortcut parent -> child keeps the parent's phrase (it occurs in the parent's caption), on both ends. The
    # official drop_vertex writes the child's phrase into the parent's out_edges and the parent's into the child's
    # in_edges, so the two ends disagree until its cache reset adds both; here they agree from the start.
    links = (
        [Edge(i.source, i.text, o.target) for i in gone.in_edges for o in gone.out_edges if i.source != o.target]
        if shortcut and gone.label != "relation"
        else []
    )
    kept = []
    for v in graph.vertices:
        if v.vertex_id == vertex_id:
            continue
        v.out_edges = [e for e in v.out_edges if e.target != vertex_id]
        v.in_edges = [e for e in v.in_edges if e.source != vertex_id]
        _add_edges(v.out_edges, (e for e in links if e.source == v.vertex_id))
        _add_edges(v.in_edges, (e for e in links if e.target == v.vertex_id))
        kept.append(v)
    graph.vertices = kept


def _add_edges(edges: list[Edge], new: Iterable[Edge]) -> None:
    keys = {e.key() for e in edges}
    for e in new:
        if e.key() not in keys:
            edges.append(e)
            keys.add(e.key())


def drop_vertices_by_type(graph: GbcGraph, labels: Sequence[str], shortcut: bool = True) -> GbcGraph:
    """A copy without the vertices of these labels (``["relation", "composition"]``); the image vertex stays."""
    graph = copy.deepcopy(graph)
    for vid in [v.vertex_id for v in graph.vertices if v.label in labels and v.label != "image"]:
        _drop(graph, vid, shortcut)
    return graph


def subgraph_by_depth(graph: GbcGraph, max_depth: int) -> GbcGraph:
    """A copy with the vertices at BFS depth <= ``max_depth``; edges to dropped vertices go with them."""
    depths = node_depths(graph)
    keep = {vid for vid, d in depths.items() if d <= max_depth}
    return _restrict(graph, keep)


def filter_by_clip_score(graph: GbcGraph, model: str, min_score: float, drop_empty: bool = True) -> GbcGraph:
    """A copy without the captions whose stored CLIP score under ``model`` is below ``min_score`` (captions without a
    score stay); vertices left without captions are dropped (the image vertex stays)."""
    graph = copy.deepcopy(graph)
    empty = []
    for v in graph.vertices:
        v.descs = [d for d in v.descs if (s := d.clip_score(model)) is None or s >= min_score]
        if drop_empty and not v.descs and v.label != "image":
            empty.append(v.vertex_id)
    for vid in empty:
        _drop(graph, vid, shortcut=True)
    return graph


def _restrict(graph: GbcGraph, keep: set[str]) -> GbcGraph:
    graph = copy.deepcopy(graph)
    graph.vertices = [v for v in graph.vertices if v.vertex_id in keep]
    for v in graph.vertices:
        v.in_edges = [e for e in v.in_edges if e.source in keep]
        v.out_edges = [e for e in v.out_edges if e.target in keep]
    return graph


# ---------------------------------------------------------------------------------------------------- statistics
class GraphStats:
    """Statistics over a stream of graphs, in constant memory: counts of graphs, vertices by label, edges, captions
    by label, depth, and caption length in words (mean and max)."""

    def __init__(self) -> None:
        self.graphs = 0
        self.vertices: Counter[str] = Counter()
        self.captions: Counter[str] = Counter()
        self.edges = 0
        self.words = 0
        self.max_words = 0
        self.depth_sum = 0
        self.max_depth = 0
        self.max_vertices = 0

    def update(self, graph: GbcGraph) -> None:
        self.graphs += 1
        self.edges += graph.n_edges
        self.max_vertices = max(self.max_vertices, graph.n_vertices)
        for v in graph.vertices:
            self.vertices[v.label] += 1
            for d in v.descs:
                self.captions[d.label] += 1
                n = len(d.text.split())
                self.words += n
                self.max_words = max(self.max_words, n)
        depths = node_depths(graph)
        depth = max(depths.values(), default=0)
        self.depth_sum += depth
        self.max_depth = max(self.max_depth, depth)

    def summary(self) -> dict[str, Any]:
        n = max(self.graphs, 1)
        n_captions = sum(self.captions.values())
        return {
            "graphs": self.graphs,
            "vertices": sum(self.vertices.values()),
            "edges": self.edges,
            "captions": n_captions,
            "vertices_by_label": dict(sorted(self.vertices.items())),
            "captions_by_label": dict(sorted(self.captions.items())),
            "vertices_per_graph": sum(self.vertices.values()) / n,
            "edges_per_graph": self.edges / n,
            "captions_per_graph": n_captions / n,
            "max_vertices": self.max_vertices,
            "mean_depth": self.depth_sum / n,
            "max_depth": self.max_depth,
            "words_per_caption": self.words / max(n_captions, 1),
            "max_words_per_caption": self.max_words,
        }
