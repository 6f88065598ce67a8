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

_VERTEX_LABELS = frozenset(VERTEX_LABELS)
_DESC_LABELS = frozenset(DESC_LABELS)


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
    vertices = graph.vertices
    if not vertices:
        errors.append("empty graph: no vertices")
    by_id = {v.vertex_id: v for v in vertices}  # the last one wins on a duplicated id, as in GbcGraph.vertex_dict
    if len(by_id) != len(vertices):
        seen: set[str] = set()
        for v in vertices:
            if v.vertex_id in seen:
                errors.append(f"duplicate vertex id {v.vertex_id!r}")
            seen.add(v.vertex_id)
    # every edge listed where it belongs, as a (source, text, target) key: the mirror of an edge is one set lookup
    # (on duplicated ids only the vertex that by_id keeps counts)
    owners = vertices if len(by_id) == len(vertices) else list(by_id.values())
    in_keys = {(e.source, e.text, e.target) for v in owners for e in v.in_edges if e.target == v.vertex_id}
    out_keys = {(e.source, e.text, e.target) for v in owners for e in v.out_edges if e.source == v.vertex_id}
    low, high = -BBOX_TOLERANCE, 1 + BBOX_TOLERANCE
    for v in vertices:
        vid = v.vertex_id
        if v.label not in _VERTEX_LABELS:
            errors.append(f"vertex {vid!r}: unknown label {v.label!r} (expected one of {', '.join(VERTEX_LABELS)})")
        for i, d in enumerate(v.descs):
            if d.label not in _DESC_LABELS:
                expected = ", ".join(DESC_LABELS)
                errors.append(f"vertex {vid!r}: descs[{i}] has unknown label {d.label!r} (expected one of {expected})")
        b = v.bbox
        left, top, right, bottom = b.left, b.top, b.right, b.bottom
        if not (low <= left <= high and low <= top <= high and low <= right <= high and low <= bottom <= high):
            coords = {"left": left, "top": top, "right": right, "bottom": bottom}
            outside = ", ".join(f"{k}={x}" for k, x in coords.items() if not low <= x <= high)
            errors.append(f"vertex {vid!r}: bbox outside [0, 1] ({outside})")
        elif right < left or bottom < top:
            errors.append(f"vertex {vid!r}: bbox is inverted (left={left}, right={right}, top={top}, bottom={bottom})")
        for e in v.out_edges:
            source, text, target = e.source, e.text, e.target
            if source != vid:
                errors.append(f"vertex {vid!r}: out_edges lists an edge with source {source!r}")
            elif (source, text, target) in in_keys:
                continue  # mirrored, hence its target exists
            elif target not in by_id:
                errors.append(f"vertex {vid!r}: dangling edge {text!r} to missing vertex {target!r}")
            else:
                errors.append(f"vertex {vid!r}: edge {text!r} -> {target!r} is missing from {target!r}'s in_edges")
        for e in v.in_edges:
            source, text, target = e.source, e.text, e.target
            if target != vid:
                errors.append(f"vertex {vid!r}: in_edges lists an edge with target {target!r}")
            elif (source, text, target) in out_keys:
                continue
            elif source not in by_id:
                errors.append(f"vertex {vid!r}: dangling edge {text!r} to missing vertex {source!r}")
            else:
                errors.append(f"vertex {vid!r}: edge {text!r} -> {target!r} is missing from {source!r}'s out_edges")
        if v.out_edges:
            captions = [d.text.lower() for d in v.descs]
            for e in v.out_edges:
                if e.source != vid:
                    continue
                text = e.text.lower()
                for caption in captions:
                    if text in caption:
                        break
                else:
                    message = f"vertex {vid!r}: edge text {e.text!r} (to {e.target!r}) is in none of its captions"
                    (errors if strict_edge_text else warnings).append(message)
    return [Problem("error", m) for m in errors] + [Problem("warning", m) for m in warnings]
