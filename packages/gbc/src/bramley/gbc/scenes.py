"""GBC graphs of core's synthetic scenes, and the held-out texts that test what the graphs teach.

A scene (:class:`bramley.core.data.synthetic_scenes.Scene`: objects with shape, color, texture and box, relations)
becomes a graph in the official layout, with ids named as the official pipeline names them:

- the image vertex ``""``: a short caption naming the kinds of shapes only ("a scene with a circle and a square"),
  no colors, counts or positions: what (a) trains on;
- entity vertices, one per object ("a red circle"); objects of the same kind share a composition vertex
  (``"red circles"``: "two red circles, circle 1 on the left and circle 2 on the right") whose children are
  ``"red circles_0"``, ``"red circles_1"`` with edge texts "circle 1", "circle 2", as the official files do;
- relation vertices ``"[red circle|blue square]"`` ("a red circle left of a blue square") for up to
  ``max_relations`` pairs of different kinds with a horizontal relation, linked from the image by each shape word
  and to the two entities by their names.

Held-out texts (never a training caption): the scene description (every kind with its count: "two red circles and a
blue square", the retrieval query) and the compositional probes: the true relation against the swapped one
("a blue square left of a red circle"), a group's true count against a changed one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .graph import Bbox, Description, Edge, GbcGraph, Vertex

__all__ = ["NUMBERS", "ScenePrompts", "kind_name", "scene_graph", "scene_prompts"]

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def kind_name(obj, textures: bool = False) -> str:
    """``"red circle"`` (``"red striped circle"`` with ``textures``)."""
    return f"{obj.color} {obj.texture} {obj.shape}" if textures else f"{obj.color} {obj.shape}"


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def _list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _kinds(scene, textures: bool) -> dict[str, list]:
    kinds: dict[str, list] = {}
    for obj in scene.objects:
        kinds.setdefault(kind_name(obj, textures), []).append(obj)
    return kinds


def _box(box: Sequence[float], confidence: float | None = None) -> Bbox:
    clip = [min(1.0, max(0.0, float(x))) for x in box]
    return Bbox(*clip, confidence=confidence)


def _union(boxes: Sequence[Sequence[float]]) -> list[float]:
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def _link(parent: Vertex, child: Vertex, text: str) -> None:
    edge = Edge(parent.vertex_id, text, child.vertex_id)
    parent.out_edges.append(edge)
    child.in_edges.append(Edge(parent.vertex_id, text, child.vertex_id))


def scene_graph(scene, textures: bool = False, max_relations: int = 3, img_path: str | None = None) -> GbcGraph:
    """The GBC graph of a synthetic scene (see the module notes)."""
    kinds = _kinds(scene, textures)
    shapes = list(dict.fromkeys(o.shape for o in scene.objects))
    short = "a scene with " + _list([f"a {s}" for s in shapes])
    image = Vertex("", Bbox(0.0, 0.0, 1.0, 1.0), "image", [Description(short, "short")])
    vertices = [image]
    entity_of: dict[int, Vertex] = {}
    for name, objs in kinds.items():
        shape = objs[0].shape
        if len(objs) == 1:
            v = Vertex(name, _box(objs[0].box, 1.0), "entity", [Description(f"a {name}", "detail")])
            _link(image, v, shape)
            vertices.append(v)
            entity_of[objs[0].id] = v
            continue
        ordered = sorted(objs, key=lambda o: o.center[0])
        parts = [f"{shape} {i + 1} on the {'left' if i == 0 else 'right'}" for i in range(min(2, len(objs)))]
        parts += [f"{shape} {i + 1} further right" for i in range(2, len(objs))]
        text = f"{NUMBERS[len(objs)]} {_plural(name)}, {_list(parts)}"
        group = Vertex(
            _plural(name), _box(_union([o.box for o in objs])), "composition", [Description(text, "composition")]
        )
        _link(image, group, shape)
        vertices.append(group)
        for i, obj in enumerate(ordered):
            v = Vertex(f"{_plural(name)}_{i}", _box(obj.box, 1.0), "entity", [Description(f"a {name}", "detail")])
            _link(group, v, f"{shape} {i + 1}")
            vertices.append(v)
            entity_of[obj.id] = v
    count = 0
    for rel in scene.relations:
        if count >= max_relations or rel.predicate != "left of":
            continue
        a, b = scene.objects[rel.subject], scene.objects[rel.object]
        name_a, name_b = kind_name(a, textures), kind_name(b, textures)
        if name_a == name_b:
            continue
        va, vb = entity_of[a.id], entity_of[b.id]
        rid = f"[{va.vertex_id}|{vb.vertex_id}]"
        relation = Vertex(
            rid, _box(_union([a.box, b.box])), "relation", [Description(f"a {name_a} left of a {name_b}", "relation")]
        )
        for shape in dict.fromkeys((a.shape, b.shape)):
            _link(image, relation, shape)
        _link(relation, va, name_a)
        _link(relation, vb, name_b)
        vertices.append(relation)
        count += 1
    return GbcGraph(vertices, img_path=img_path, short_caption=short)


@dataclass
class ScenePrompts:
    """Held-out texts of one scene: its description and the probes.

    ``relation`` is ``(true, swapped)`` for the scene's first horizontal relation between different kinds (``None``
    without one). ``count`` lists ``(true, changed, key)`` for the first group of two or more objects: its count
    against each neighbouring count in ``[2, max_count]``; ``key`` names the comparison and its direction
    (``"2<3"``: the true count is the smaller), so that the probe can average over keys and a text tower that always
    prefers one number word scores 50, not the share of groups of two. ``largest`` is the kind of the largest object,
    the label of a zero-shot classification.
    """

    description: str
    relation: tuple[str, str] | None
    count: list[tuple[str, str, str]]
    largest: str = ""  # the kind of the largest object: the zero-shot label


def scene_prompts(scene, textures: bool = False, max_count: int = 4) -> ScenePrompts:
    """The scene's description and probe texts (see :class:`ScenePrompts`); deterministic in the scene."""
    kinds = _kinds(scene, textures)
    items = [f"a {n}" if len(o) == 1 else f"{NUMBERS[len(o)]} {_plural(n)}" for n, o in kinds.items()]
    relation = None
    for rel in scene.relations:
        a, b = scene.objects[rel.subject], scene.objects[rel.object]
        if rel.predicate == "left of" and kind_name(a, textures) != kind_name(b, textures):
            na, nb = kind_name(a, textures), kind_name(b, textures)
            relation = (f"a {na} left of a {nb}", f"a {nb} left of a {na}")
            break
    count = []
    for name, objs in kinds.items():
        n = len(objs)
        if n >= 2:
            for wrong in (n - 1, n + 1):
                if 2 <= wrong <= max_count:
                    key = f"{n}<{wrong}" if n < wrong else f"{wrong}>{n}"
                    count.append((f"{NUMBERS[n]} {_plural(name)}", f"{NUMBERS[wrong]} {_plural(name)}", key))
            break
    largest = kind_name(max(scene.objects, key=lambda o: o.area), textures)
    return ScenePrompts(_list(items), relation, count, largest)
