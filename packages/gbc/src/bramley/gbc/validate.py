"""What a well-formed GBC graph must satisfy beyond its structure, as a list of problems (errors and warnings).

Errors: no vertices, duplicate vertex ids, edges whose source or target is no vertex, an edge listed in one endpoint
but not the other (``in_edges`` / ``out_edges`` disagree), unknown vertex or caption labels, boxes outside [0, 1] or
inverted. Warning (an error with ``strict_edge_text``): an edge text that occurs in none of its source's captions
(compared case-insensitively: the official files write "tree 1" for a caption's "Tree 1").
"""

from __future__ import annotations

from dataclasses import dataclass

from .graph import DESC_LABELS, VERTEX_LABELS, GbcGraph

__all__ = ["BBOX_TOLERANCE", "Problem", "validate_graph"]

#: Box coordinates may leave [0, 1] by this much before it is an error: the official sample files hold detector boxes
#: at -1.9e-05 (float32 rounding of a clipped box).
BBOX_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Problem:
    """One finding: ``level`` is ``"error"`` or ``"warning"``; ``message`` names the vertex or edge."""

    level: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def validate_graph(graph: GbcGraph, strict_edge_text: bool = False) -> list[Problem]:
    """The graph's problems, errors first; an empty list means valid.

    Args:
        graph: the parsed graph.
        strict_edge_text: an edge text missing from its source's captions is an error instead of a warning.
    """
    errors: list[str] = []
    warnings: list[str] = []
    if not graph.vertices:
        errors.append("empty graph: no vertices")
    vertices: dict[str, object] = {}
    for v in graph.vertices:
        if v.vertex_id in vertices:
            errors.append(f"duplicate vertex id {v.vertex_id!r}")
        vertices[v.vertex_id] = v
    by_id = graph.vertex_dict()
    for v in graph.vertices:
        name = f"vertex {v.vertex_id!r}"
        if v.label not in VERTEX_LABELS:
            errors.append(f"{name}: unknown label {v.label!r} (expected one of {', '.join(VERTEX_LABELS)})")
        for i, d in enumerate(v.descs):
            if d.label not in DESC_LABELS:
                expected = ", ".join(DESC_LABELS)
                errors.append(f"{name}: descs[{i}] has unknown label {d.label!r} (expected one of {expected})")
        b = v.bbox
        coords = {"left": b.left, "top": b.top, "right": b.right, "bottom": b.bottom}
        outside = [f"{k}={x}" for k, x in coords.items() if not -BBOX_TOLERANCE <= x <= 1 + BBOX_TOLERANCE]
        if outside:
            errors.append(f"{name}: bbox outside [0, 1] ({', '.join(outside)})")
        elif b.right < b.left or b.bottom < b.top:
            errors.append(f"{name}: bbox is inverted (left={b.left}, right={b.right}, top={b.top}, bottom={b.bottom})")
        for kind, edges, own in (("out_edges", v.out_edges, "source"), ("in_edges", v.in_edges, "target")):
            for e in edges:
                if getattr(e, own) != v.vertex_id:
                    errors.append(f"{name}: {kind} lists an edge with {own} {getattr(e, own)!r}")
                    continue
                other_id = e.target if own == "source" else e.source
                other = by_id.get(other_id)
                if other is None:
                    errors.append(f"{name}: dangling edge {e.text!r} to missing vertex {other_id!r}")
                    continue
                mirror = other.in_edges if own == "source" else other.out_edges
                if all(m.key() != e.key() for m in mirror):
                    where = "in_edges" if own == "source" else "out_edges"
                    errors.append(f"{name}: edge {e.text!r} -> {e.target!r} is missing from {other_id!r}'s {where}")
        for e in v.out_edges:
            if e.source == v.vertex_id and not any(e.text.lower() in d.text.lower() for d in v.descs):
                message = f"vertex {v.vertex_id!r}: edge text {e.text!r} (to {e.target!r}) is in none of its captions"
                (errors if strict_edge_text else warnings).append(message)
    return [Problem("error", m) for m in errors] + [Problem("warning", m) for m in warnings]
