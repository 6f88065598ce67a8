"""The GBC graph: vertices (image, entity, composition, relation) with boxes and captions, joined by labelled edges.

Field names and meanings are the official ones (apple/ml-gbc ``gbc.data``): a graph has ``vertices``, ``img_url``,
``img_path``, ``original_caption``, ``short_caption``, ``detail_caption``; a vertex has ``vertex_id`` (``""`` for the
image vertex, ``"[horse|snow]"`` for a relation), ``bbox`` (``left, top, right, bottom`` in [0, 1] of the image,
``confidence``), ``label``, ``descs`` (captions with a ``text`` and a ``label``), ``in_edges`` and ``out_edges``; an
edge has ``source``, ``text`` (the phrase of the source's caption that names the target) and ``target``.

Every field the model does not name (``full_label``, ``statistics``, ``clip_scores``, ``sub_masks``, ``img_size``,
anything a future file adds) is kept in ``extra`` and written back, so that ``to_dict(from_dict(d)) == d`` holds key
for key and in the same key order: reading and writing a file changes nothing.

Parsing checks structure (required fields, types) and raises :class:`GraphFormatError` naming the field path; the
graph's meaning (labels, dangling edges, boxes, edge texts) is checked by :func:`bramley.gbc.validate.validate_graph`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DESC_LABELS",
    "VERTEX_LABELS",
    "Bbox",
    "Description",
    "Edge",
    "GbcGraph",
    "GraphFormatError",
    "Vertex",
]

VERTEX_LABELS = ("image", "entity", "composition", "relation")
DESC_LABELS = ("short", "relation", "composition", "detail", "original", "hardcode", "bagofwords")


class GraphFormatError(ValueError):
    """A graph whose structure is not the GBC format; the message names the field path (``vertices[2].bbox.left``)."""


# ------------------------------------------------------------------------------------------------ parsing helpers
def _require(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise GraphFormatError(f"{where}: missing required field {key!r}")
    return d[key]


def _string(value: Any, where: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise GraphFormatError(f"{where}: expected a string, got {_show(value)}")
    return value


def _number(value: Any, where: str, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GraphFormatError(f"{where}: expected a number, got {_show(value)}")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise GraphFormatError(f"{where}: expected an object, got {_show(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise GraphFormatError(f"{where}: expected a list, got {_show(value)}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _layout(d: Mapping[str, Any], known: tuple[str, ...], extra: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The key order of ``d`` when it is not the canonical one (known fields in order, then the extras); else None."""
    keys = tuple(d)
    return None if keys == known + tuple(extra) else keys


def _emit(obj: Any, known: tuple[str, ...]) -> dict[str, Any]:
    values = {name: getattr(obj, name) for name in known}
    if obj.layout is None:
        return {**values, **obj.extra}
    return {key: values[key] if key in values else obj.extra[key] for key in obj.layout}


# -------------------------------------------------------------------------------------------------------- model
@dataclass(slots=True)
class Bbox:
    """A box in relative image coordinates (the official ``Bbox``); ``confidence`` is the detector's, if any."""

    left: float
    top: float
    right: float
    bottom: float
    confidence: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    layout: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    FIELDS = ("left", "top", "right", "bottom", "confidence")

    @classmethod
    def from_dict(cls, d: Any, where: str = "bbox") -> Bbox:
        try:
            return _fast_bbox(d)
        except _NotFast:
            return cls._checked(d, where)

    @classmethod
    def _checked(cls, d: Any, where: str) -> Bbox:
        d = _mapping(d, where)
        coords = [_number(_require(d, k, where), f"{where}.{k}") for k in cls.FIELDS[:4]]
        confidence = _number(d.get("confidence"), f"{where}.confidence", optional=True)
        extra = {k: v for k, v in d.items() if k not in cls.FIELDS}
        return cls(*coords, confidence, extra, _layout(d, cls.FIELDS, extra))

    def to_dict(self) -> dict[str, Any]:
        return _emit(self, self.FIELDS)

    def to_xyxy(self) -> tuple[float, float, float, float]:
        return self.left, self.top, self.right, self.bottom

    @property
    def area(self) -> float:
        return max(0.0, self.right - self.left) * max(0.0, self.bottom - self.top)


@dataclass(slots=True)
class Description:
    """One caption of a vertex (the official ``Description``; ``full_label``, ``clip_scores``, ... live in extra)."""

    text: str
    label: str
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    layout: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    FIELDS = ("text", "label")

    @classmethod
    def from_dict(cls, d: Any, where: str = "desc") -> Description:
        try:
            return _fast_descriptions([d])[0]
        except _NotFast:
            return cls._checked(d, where)

    @classmethod
    def _checked(cls, d: Any, where: str) -> Description:
        d = _mapping(d, where)
        text = _string(_require(d, "text", where), f"{where}.text")
        label = _string(_require(d, "label", where), f"{where}.label")
        extra = {k: v for k, v in d.items() if k not in cls.FIELDS}
        return cls(text, label, extra, _layout(d, cls.FIELDS, extra))

    def to_dict(self) -> dict[str, Any]:
        return _emit(self, self.FIELDS)

    def clip_score(self, model: str) -> float | None:
        """The stored CLIP score of this caption under ``model`` (official ``clip_scores.scores``), if any."""
        scores = (self.extra.get("clip_scores") or {}).get("scores") or {}
        value = scores.get(model)
        return None if value is None else float(value)


@dataclass(slots=True)
class Edge:
    """A labelled edge: ``text`` is the phrase in ``source``'s caption that names ``target``."""

    source: str
    text: str
    target: str
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    layout: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    FIELDS = ("source", "text", "target")

    @classmethod
    def from_dict(cls, d: Any, where: str = "edge") -> Edge:
        try:
            return _fast_edges([d])[0]
        except _NotFast:
            return cls._checked(d, where)

    @classmethod
    def _checked(cls, d: Any, where: str) -> Edge:
        d = _mapping(d, where)
        source, text, target = (_string(_require(d, k, where), f"{where}.{k}") for k in cls.FIELDS)
        extra = {k: v for k, v in d.items() if k not in cls.FIELDS}
        return cls(source, text, target, extra, _layout(d, cls.FIELDS, extra))

    def to_dict(self) -> dict[str, Any]:
        return _emit(self, self.FIELDS)

    def key(self) -> tuple[str, str, str]:
        return self.source, self.text, self.target


@dataclass(slots=True)
class Vertex:
    """A node of the graph: the image (id ``""``), an entity, a composition of entities or a relation."""

    vertex_id: str
    bbox: Bbox
    label: str
    descs: list[Description]
    in_edges: list[Edge] = field(default_factory=list)
    out_edges: list[Edge] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    layout: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    FIELDS = ("vertex_id", "bbox", "label", "descs", "in_edges", "out_edges")

    @classmethod
    def from_dict(cls, d: Any, where: str = "vertex") -> Vertex:
        try:
            return _fast_vertex(d)
        except _NotFast:
            return cls._checked(d, where)

    @classmethod
    def _checked(cls, d: Any, where: str) -> Vertex:
        d = _mapping(d, where)
        vertex_id = _string(_require(d, "vertex_id", where), f"{where}.vertex_id")
        bbox = Bbox._checked(_require(d, "bbox", where), f"{where}.bbox")
        label = _string(_require(d, "label", where), f"{where}.label")
        descs = _list(_require(d, "descs", where), f"{where}.descs")
        descs = [Description._checked(x, f"{where}.descs[{i}]") for i, x in enumerate(descs)]
        edges = {}
        for key in ("in_edges", "out_edges"):
            items = _list(d.get(key, []), f"{where}.{key}")
            edges[key] = [Edge._checked(x, f"{where}.{key}[{i}]") for i, x in enumerate(items)]
        extra = {k: v for k, v in d.items() if k not in cls.FIELDS}
        # in_edges / out_edges default to [] in the official model: a file without them round-trips without them
        layout = _layout(d, cls.FIELDS, extra)
        return cls(vertex_id, bbox, label, descs, edges["in_edges"], edges["out_edges"], extra, layout)

    def to_dict(self) -> dict[str, Any]:
        values = {
            "vertex_id": self.vertex_id,
            "bbox": self.bbox.to_dict(),
            "label": self.label,
            "descs": [x.to_dict() for x in self.descs],
            "in_edges": [e.to_dict() for e in self.in_edges],
            "out_edges": [e.to_dict() for e in self.out_edges],
        }
        if self.layout is None:
            return {**values, **self.extra}
        return {k: values[k] if k in values else self.extra[k] for k in self.layout}

    @property
    def is_leaf(self) -> bool:
        return not self.out_edges

    def texts(self) -> list[str]:
        return [d.text for d in self.descs]


@dataclass(slots=True)
class GbcGraph:
    """A GBC graph: its vertices and the image's captions (``short_caption`` etc. are optional top-level copies)."""

    vertices: list[Vertex]
    img_url: str | None = None
    img_path: str | None = None
    original_caption: str | None = None
    short_caption: str | None = None
    detail_caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    layout: tuple[str, ...] | None = field(default=None, repr=False, compare=False)

    FIELDS = ("vertices", "img_url", "img_path", "original_caption", "short_caption", "detail_caption")

    @classmethod
    def from_dict(cls, d: Any, where: str = "graph") -> GbcGraph:
        """Parse a graph object (as ``json.loads`` gives it); raises :class:`GraphFormatError` naming the field."""
        try:
            return _fast_graph(d)
        except _NotFast:
            return cls._checked(d, where)

    @classmethod
    def _checked(cls, d: Any, where: str) -> GbcGraph:
        d = _mapping(d, where)
        items = _list(_require(d, "vertices", where), f"{where}.vertices" if where != "graph" else "vertices")
        prefix = "" if where == "graph" else f"{where}."
        vertices = [Vertex._checked(v, f"{prefix}vertices[{i}]") for i, v in enumerate(items)]
        optional = [_string(d.get(k), f"{prefix}{k}", optional=True) for k in cls.FIELDS[1:]]
        extra = {k: v for k, v in d.items() if k not in cls.FIELDS}
        return cls(vertices, *optional, extra=extra, layout=_layout(d, cls.FIELDS, extra))

    def to_dict(self) -> dict[str, Any]:
        """The graph as the official JSON object (``from_dict(g.to_dict())`` is ``g``; key order is kept)."""
        values = {"vertices": [v.to_dict() for v in self.vertices]}
        values.update({k: getattr(self, k) for k in self.FIELDS[1:]})
        if self.layout is None:
            return {**values, **self.extra}
        return {k: values[k] if k in values else self.extra[k] for k in self.layout}

    # ------------------------------------------------------------------------------------------- structure
    def vertex_dict(self) -> dict[str, Vertex]:
        """Vertex id -> vertex (the last one wins on a duplicated id; validation reports duplicates)."""
        return {v.vertex_id: v for v in self.vertices}

    def edges(self) -> Iterator[Edge]:
        """Every edge once, as listed in its source's ``out_edges``."""
        for v in self.vertices:
            yield from v.out_edges

    @property
    def n_vertices(self) -> int:
        return len(self.vertices)

    @property
    def n_edges(self) -> int:
        """Edges counted as the official ``GbcGraphFull.n_edges``: the sum of ``out_edges`` lengths."""
        return sum(len(v.out_edges) for v in self.vertices)

    @property
    def n_captions(self) -> int:
        return sum(len(v.descs) for v in self.vertices)

    def roots(self) -> list[Vertex]:
        """Image vertices first, then any other vertex without parents (the official ``roots``)."""
        image = [v for v in self.vertices if v.label == "image"]
        return image + [v for v in self.vertices if v.label != "image" and not v.in_edges]

    def image_caption(self, label: str = "short") -> str | None:
        """The image vertex's first caption with this label, else the top-level ``<label>_caption`` field."""
        for v in self.vertices:
            if v.label == "image":
                for d in v.descs:
                    if d.label == label:
                        return d.text
        return getattr(self, f"{label}_caption", None)


# ------------------------------------------------------------------------------------------------- fast parsing
# ``from_dict`` first tries these: plain ``dict`` / ``list`` / ``str`` / ``int`` / ``float`` as ``json.loads`` gives
# them, checked with ``type(x) is``, extras taken by copying the object and deleting the known fields. Anything else
# (a missing field, a wrong type, a ``Mapping`` or a ``str`` subclass) raises ``_NotFast`` and the whole object is
# parsed again by the ``_checked`` path above, which names the field path in its error or accepts it. The two paths
# build equal objects (same extras, same layout); tests/test_data.py checks them against each other.
class _NotFast(Exception):
    pass


_NUMBER = frozenset({int, float})
_NUMBER_OR_NONE = frozenset({int, float, type(None)})
_STRING_OR_NONE = frozenset({str, type(None)})
_ABSENT: Any = object()  # a missing in_edges / out_edges (``d.get(key, _ABSENT)``)


def _fast_edges(items: list[Any]) -> list[Edge]:
    edges = []
    fields = Edge.FIELDS
    for d in items:
        if type(d) is not dict:
            raise _NotFast
        source, text, target = d.get("source"), d.get("text"), d.get("target")
        if type(source) is not str or type(text) is not str or type(target) is not str:
            raise _NotFast
        keys = tuple(d)
        if len(keys) == 3:
            edges.append(Edge(source, text, target, {}, None if keys == fields else keys))
            continue
        extra = d.copy()
        del extra["source"], extra["text"], extra["target"]
        edges.append(Edge(source, text, target, extra, None if keys[:3] == fields else keys))
    return edges


def _fast_descriptions(items: list[Any]) -> list[Description]:
    descs = []
    fields = Description.FIELDS
    for d in items:
        if type(d) is not dict:
            raise _NotFast
        text, label = d.get("text"), d.get("label")
        if type(text) is not str or type(label) is not str:
            raise _NotFast
        keys = tuple(d)
        if len(keys) == 2:
            descs.append(Description(text, label, {}, None if keys == fields else keys))
            continue
        extra = d.copy()
        del extra["text"], extra["label"]
        descs.append(Description(text, label, extra, None if keys[:2] == fields else keys))
    return descs


def _fast_bbox(d: Any) -> Bbox:
    if type(d) is not dict:
        raise _NotFast
    left, top, right, bottom = d.get("left"), d.get("top"), d.get("right"), d.get("bottom")
    confidence = d.get("confidence")
    if (
        type(left) not in _NUMBER
        or type(top) not in _NUMBER
        or type(right) not in _NUMBER
        or type(bottom) not in _NUMBER
        or type(confidence) not in _NUMBER_OR_NONE
    ):
        raise _NotFast
    keys = tuple(d)
    if len(keys) == 5 and keys == Bbox.FIELDS:
        return Bbox(left, top, right, bottom, confidence, {}, None)
    extra = d.copy()
    del extra["left"], extra["top"], extra["right"], extra["bottom"]
    extra.pop("confidence", None)
    return Bbox(left, top, right, bottom, confidence, extra, None if keys[:5] == Bbox.FIELDS else keys)


def _fast_edge_list(value: Any) -> list[Edge]:
    """An optional edge list of the fast path: absent is empty; anything but a plain list takes the checked path."""
    if value is _ABSENT:
        return []
    if type(value) is not list:
        raise _NotFast
    return _fast_edges(value)


def _fast_vertex(d: Any) -> Vertex:
    if type(d) is not dict:
        raise _NotFast
    vertex_id, label, descs = d.get("vertex_id"), d.get("label"), d.get("descs")
    in_edges, out_edges = d.get("in_edges", _ABSENT), d.get("out_edges", _ABSENT)
    if type(vertex_id) is not str or type(label) is not str or type(descs) is not list:
        raise _NotFast
    bbox = _fast_bbox(d.get("bbox"))
    descs = _fast_descriptions(descs)
    in_edges, out_edges = _fast_edge_list(in_edges), _fast_edge_list(out_edges)
    keys = tuple(d)
    if keys == Vertex.FIELDS:
        return Vertex(vertex_id, bbox, label, descs, in_edges, out_edges, {}, None)
    extra = d.copy()
    del extra["vertex_id"], extra["bbox"], extra["label"], extra["descs"]
    extra.pop("in_edges", None)
    extra.pop("out_edges", None)
    return Vertex(
        vertex_id, bbox, label, descs, in_edges, out_edges, extra, None if keys[:6] == Vertex.FIELDS else keys
    )


def _fast_graph(d: Any) -> GbcGraph:
    if type(d) is not dict:
        raise _NotFast
    items = d.get("vertices")
    if type(items) is not list:
        raise _NotFast
    get = d.get
    img_url, img_path, original = get("img_url"), get("img_path"), get("original_caption")
    short, detail = get("short_caption"), get("detail_caption")
    if (
        type(img_url) not in _STRING_OR_NONE
        or type(img_path) not in _STRING_OR_NONE
        or type(original) not in _STRING_OR_NONE
        or type(short) not in _STRING_OR_NONE
        or type(detail) not in _STRING_OR_NONE
    ):
        raise _NotFast
    vertices = [_fast_vertex(v) for v in items]
    keys = tuple(d)
    extra = d.copy()
    for name in GbcGraph.FIELDS:
        extra.pop(name, None)
    layout = None if keys[:6] == GbcGraph.FIELDS else keys
    return GbcGraph(vertices, img_url, img_path, original, short, detail, extra, layout)
