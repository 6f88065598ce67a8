"""Orders, text forms, subgraph filters and statistics on the fixture graph (tests/data/sample_graphs.jsonl, graph
0: an image with a dog, a composition of two cups, a table, a lamp and a dog-table relation)."""

from pathlib import Path

import numpy as np
import pytest

from bramley.core.errors import ConfigError
from bramley.gbc.io import read_graphs
from bramley.gbc.validate import validate_graph
from bramley.gbc.views import (
    GraphStats,
    captions,
    drop_vertices_by_type,
    filter_by_clip_score,
    graph_text,
    node_depths,
    order,
    subgraph_by_depth,
    tree_view,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def graphs():
    return list(read_graphs(DATA / "sample_graphs.jsonl"))


def test_orders_follow_the_official_definitions(graphs):
    g = graphs[0]
    # BFS: the image, its children in out_edges order (the relation once), then the cups' children
    assert order(g, "bfs") == ["", "dog", "cups", "table", "lamp", "[dog|table]", "cups_0", "cups_1"]
    # DFS preorder: children in out_edges order, a vertex at its first visit
    assert order(g, "dfs") == ["", "dog", "cups", "cups_0", "cups_1", "table", "lamp", "[dog|table]"]
    # topological: reverse DFS finishing order, so every parent precedes its children
    topo = order(g, "topological")
    assert topo == ["", "[dog|table]", "lamp", "table", "cups", "cups_1", "cups_0", "dog"]
    position = {v: i for i, v in enumerate(topo)}
    assert all(position[e.source] < position[e.target] for e in g.edges())
    random = order(g, "random", np.random.default_rng(0))
    assert sorted(random) == sorted(order(g, "bfs")) and random == order(g, "random", np.random.default_rng(0))
    assert node_depths(g) == {
        "": 0,
        "dog": 1,
        "cups": 1,
        "table": 1,
        "lamp": 1,
        "[dog|table]": 1,
        "cups_0": 2,
        "cups_1": 2,
    }
    with pytest.raises(ConfigError, match="unknown graph order 'sideways'"):
        order(g, "sideways")


def test_text_forms(graphs):
    g = graphs[0]
    texts = graph_text(g, "set")
    assert len(texts) == g.n_captions and texts[0].startswith("The photo shows") and texts[2].startswith("A brown dog")
    with_box = graph_text(g, "set_bbox")
    assert with_box[2] == (texts[2], (0.1, 0.35, 0.55, 0.8))
    assert graph_text(g, "concat", separator=" | ") == " | ".join(texts)
    structured = graph_text(g, "structured")
    block = structured.split("\n\n")[5]
    assert block.splitlines() == [
        "Node #5 [dog|table]",
        "type: relation",
        "is_leaf: False",
        "desc: The dog is lying on top of the table.",
        "parents: #0(image: dog) #0(image: table)",
        "bbox: left: 0.0000000, top: 0.3500000, right: 1.0000000, bottom: 1.0000000",
    ]
    assert "parents: #2(cups: cup 1)" in structured
    assert captions(g, "dfs")[3] == "Cup 1 stands on the left and cup 2 to its right."
    with pytest.raises(ConfigError, match="unknown graph text form"):
        graph_text(g, "yaml")


def test_tree_view(graphs):
    tree = tree_view(graphs[0]).splitlines()
    assert tree[0] == "image <image> (0.00, 0.00, 1.00, 1.00)"
    assert "|   |-- [cup 1] cups_0 <entity> (0.60, 0.50, 0.70, 0.65)" in tree
    assert "`-- [dog, table] [dog|table] <relation> (0.00, 0.35, 1.00, 1.00)" in tree
    assert "    |-- [dog] dog (see above)" in tree


def test_drop_vertex_types_links_parents_to_children(graphs):
    g = graphs[0]
    no_comp = drop_vertices_by_type(g, ["composition"])
    ids = [v.vertex_id for v in no_comp.vertices]
    assert "cups" not in ids and "cups_0" in ids
    cup = no_comp.vertex_dict()["cups_0"]
    assert [e.key() for e in cup.in_edges] == [("", "cups", "cups_0")]  # the parent's phrase, on both ends
    assert ("", "cups", "cups_0") in [e.key() for e in no_comp.vertex_dict()[""].out_edges]
    assert [p for p in validate_graph(no_comp) if p.level == "error"] == []
    no_rel = drop_vertices_by_type(g, ["relation"])
    assert "[dog|table]" not in [v.vertex_id for v in no_rel.vertices]
    assert [e.source for e in no_rel.vertex_dict()["dog"].in_edges] == [""]  # relations leave no shortcut
    assert validate_graph(no_rel) == [] and g.n_vertices == 8  # the original is untouched


def test_depth_and_clip_score_filters():
    g = next(iter(read_graphs(DATA / "sample_graphs_with_clip.jsonl")))
    shallow = subgraph_by_depth(g, 1)
    assert sorted(v.vertex_id for v in shallow.vertices) == sorted(["", "dog", "cups", "table", "lamp", "[dog|table]"])
    assert validate_graph(shallow) == [] and shallow.vertex_dict()["cups"].out_edges == []
    kept = filter_by_clip_score(g, "dfn5b-h-patch14-378", 0.26)
    # captions under 0.26 go; vertices left without captions go with them (cups, both cups, the lamp stays at 0.26)
    assert sorted(v.vertex_id for v in kept.vertices) == sorted(["", "dog", "table", "lamp", "[dog|table]"])
    assert [d.label for d in kept.vertex_dict()[""].descs] == ["detail", "short"]
    assert [p for p in validate_graph(kept) if p.level == "error"] == []


def test_statistics(graphs):
    stats = GraphStats()
    for g in graphs:
        stats.update(g)
    s = stats.summary()
    assert (s["graphs"], s["vertices"], s["edges"], s["captions"]) == (3, 12, 12, 15)
    assert s["vertices_by_label"] == {"composition": 1, "entity": 7, "image": 3, "relation": 1}
    assert s["captions_by_label"]["hardcode"] == 1 and s["max_depth"] == 2 and s["max_vertices"] == 8
