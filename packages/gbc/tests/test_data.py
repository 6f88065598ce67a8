"""The GBC data library on fixtures written here in the official format (tests/data/*.jsonl): parsing, exact round
trips through every format, validation and bad input."""

import json
from pathlib import Path

import pytest

from bramley.core.errors import DataError
from bramley.gbc import graph as gbc_graph
from bramley.gbc import io as gbc_io
from bramley.gbc.graph import GbcGraph, GraphFormatError
from bramley.gbc.io import iter_records, load_hf_dataset, parquet_schema, read_graphs, write_graphs
from bramley.gbc.validate import validate_graph

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "sample_graphs.jsonl"
WITH_CLIP = DATA / "sample_graphs_with_clip.jsonl"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def graph_dict(**changes) -> dict:
    d = json.loads(lines(SAMPLE)[0])
    d.update(changes)
    return d


def test_official_fields_and_counts():
    graphs = list(read_graphs(SAMPLE))
    assert [(g.n_vertices, g.n_edges, g.n_captions) for g in graphs] == [(8, 10, 10), (3, 2, 4), (1, 0, 1)]
    g = graphs[0]
    image = g.vertex_dict()[""]
    assert image.label == "image" and [d.label for d in image.descs] == ["detail", "short"]
    assert g.vertex_dict()["[dog|table]"].label == "relation"
    assert g.vertex_dict()["cups"].out_edges[0].text == "cup 1"
    assert g.vertex_dict()["dog"].bbox.confidence == 0.91
    assert image.descs[0].extra["full_label"] == "detail-image" and image.extra["sub_masks"][0] == "[dog|table]"
    assert g.extra == {"img_size": [640, 480], "mask_inside_threshold": 0.85}
    assert g.image_caption("short") == g.short_caption
    clip = next(iter(read_graphs(WITH_CLIP)))
    assert clip.vertices[0].descs[0].clip_score("openai-l-patch14-336") == 0.31


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
@pytest.mark.parametrize("source", [SAMPLE, WITH_CLIP])
def test_round_trip_is_exact_in_every_format(tmp_path, fmt, source):
    graphs = list(read_graphs(source))
    path = tmp_path / f"graphs.{fmt}"
    assert write_graphs(graphs, path, schema=parquet_schema(graphs) if fmt == "parquet" else None) == len(graphs)
    back = [g.to_dict() for g in read_graphs(path)]
    original = [json.loads(line) for line in lines(source)]
    assert back == original
    assert [json.dumps(d) for d in back] == lines(source)  # key order too: the same bytes as the file


def test_unknown_fields_key_order_and_missing_optionals_survive():
    d = graph_dict(future_field={"x": [1, 2]})
    d["vertices"][1]["bbox"] = {"bottom": 0.8, "left": 0.1, "top": 0.35, "right": 0.55, "note": "hand-drawn"}
    d["vertices"][1]["descs"][0]["rating"] = 5
    del d["vertices"][2]["in_edges"], d["img_url"]
    d["vertices"][0]["out_edges"][0]["weight"] = 0.5
    g = GbcGraph.from_dict(json.loads(json.dumps(d)))
    out = g.to_dict()
    assert json.dumps(out) == json.dumps(d)
    assert g.vertices[1].bbox.left == 0.1 and g.vertices[1].bbox.extra == {"note": "hand-drawn"}


def test_structure_errors_name_the_field():
    d = graph_dict()
    del d["vertices"][2]["bbox"]["left"]
    with pytest.raises(GraphFormatError, match=r"vertices\[2\]\.bbox: missing required field 'left'"):
        GbcGraph.from_dict(d)
    d = graph_dict()
    d["vertices"][1]["descs"][0]["text"] = 7
    with pytest.raises(GraphFormatError, match=r"vertices\[1\]\.descs\[0\]\.text: expected a string, got int 7"):
        GbcGraph.from_dict(d)
    with pytest.raises(GraphFormatError, match="missing required field 'vertices'"):
        GbcGraph.from_dict({"img_path": "x.jpg"})


def problems(d: dict, **kw) -> list[str]:
    return [str(p) for p in validate_graph(GbcGraph.from_dict(d), **kw)]


def test_validation_finds_each_problem():
    assert problems(graph_dict()) == []
    d = graph_dict()
    d["vertices"][0]["out_edges"].append({"source": "", "text": "lamp", "target": "ghost"})
    assert problems(d) == ["error: vertex '': dangling edge 'lamp' to missing vertex 'ghost'"]
    d = graph_dict()
    d["vertices"][4]["vertex_id"] = "dog"
    assert "error: duplicate vertex id 'dog'" in problems(d)
    d = graph_dict()
    d["vertices"][1]["bbox"]["right"] = 1.2
    assert problems(d) == ["error: vertex 'dog': bbox outside [0, 1] (right=1.2)"]
    d = graph_dict()
    d["vertices"][1]["label"] = "animal"
    assert problems(d)[0].startswith("error: vertex 'dog': unknown label 'animal'")
    d = graph_dict()
    d["vertices"][1]["descs"][0]["label"] = "long"
    assert problems(d)[0].startswith("error: vertex 'dog': descs[0] has unknown label 'long'")
    d = graph_dict()
    d["vertices"][6]["in_edges"] = []  # table: the image lists the edge, table does not
    assert "error: vertex '': edge 'table' -> 'table' is missing from 'table''s in_edges" in problems(d)
    assert problems({"vertices": []}) == ["error: empty graph: no vertices"]


def test_edge_text_missing_from_caption_is_a_warning_or_an_error():
    d = graph_dict()
    for edges in (d["vertices"][0]["out_edges"], d["vertices"][4]["in_edges"]):
        for e in edges:
            if e["target"] == "lamp":
                e["text"] = "chandelier"
    message = "vertex '': edge text 'chandelier' (to 'lamp') is in none of its captions"
    assert problems(d) == [f"warning: {message}"]
    assert problems(d, strict_edge_text=True) == [f"error: {message}"]
    # case does not matter: the official files write "tree 1" for a caption's "Tree 1"
    assert GbcGraph.from_dict(graph_dict()).vertex_dict()["cups"].descs[0].text.startswith("Cup 1")


def broken_file(tmp_path: Path) -> Path:
    rows = lines(SAMPLE)
    bad = rows[0][:50]  # cut mid-object
    dangling = json.loads(rows[1])
    dangling["vertices"][0]["out_edges"].append({"source": "", "text": "kite", "target": "nowhere"})
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join([rows[0], bad, json.dumps(dangling), "", rows[2]]) + "\n")
    return path


def test_malformed_line_names_its_line_and_skip_invalid_counts(tmp_path):
    path = broken_file(tmp_path)
    with pytest.raises(DataError, match=r"broken.jsonl:line 2: malformed JSON"):
        list(read_graphs(path))
    reader = read_graphs(path, skip_invalid=True)
    assert [g.n_vertices for g in reader] == [8, 1]  # the other lines are kept
    assert (reader.read, reader.skipped) == (2, 2)
    assert "line 3: vertex '': dangling edge 'kite' to missing vertex 'nowhere'" in reader.problems[1]


def test_json_array_streams_in_small_chunks(tmp_path, monkeypatch):
    graphs = list(read_graphs(SAMPLE))
    path = tmp_path / "graphs.json"
    write_graphs(graphs, path)
    monkeypatch.setattr(gbc_io, "CHUNK", 97)  # every graph spans many chunks
    records = list(iter_records(path))
    assert [r.where for r in records] == ["line 2", "line 3", "line 4"]
    assert [r.value for r in records] == [g.to_dict() for g in graphs]
    path.write_text(path.read_text().replace("},\n{", "}\n{", 1))  # a missing comma between graphs
    bad = list(iter_records(path))
    assert bad[-1].error.startswith("malformed JSON array") and bad[-1].where == "line 3"
    single = tmp_path / "one.json"
    single.write_text(json.dumps(graphs[2].to_dict(), indent=2))
    assert [g.to_dict() for g in read_graphs(single)] == [graphs[2].to_dict()]


def test_parquet_writer_refuses_fields_its_schema_lacks(tmp_path, monkeypatch):
    graphs = list(read_graphs(SAMPLE))
    graphs[2].extra["new_field"] = "x"
    monkeypatch.setattr(gbc_io, "PARQUET_ROW_GROUP", 2)
    with pytest.raises(
        DataError, match=r"graphs 3..3 have fields or types the parquet schema lacks \(columns new_field"
    ):
        write_graphs(graphs, tmp_path / "g.parquet")
    assert not (tmp_path / "g.parquet").exists()  # no half file
    assert write_graphs(graphs, tmp_path / "g.parquet", schema=parquet_schema(graphs)) == 3


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"unknown graph file format 'csv'"):
        list(read_graphs(tmp_path / "g.csv"))
    with pytest.raises(DataError, match="no such graph file"):
        list(read_graphs(tmp_path / "g.jsonl"))
    (tmp_path / "g.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        list(read_graphs(tmp_path / "g.parquet"))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_hugging_face_datasets_path(tmp_path, fmt):
    graphs = list(read_graphs(SAMPLE))
    path = tmp_path / f"shard-00000.{fmt}"
    write_graphs(graphs, path, schema=parquet_schema(graphs) if fmt == "parquet" else None)
    rows = list(load_hf_dataset([path], streaming=True))
    assert [GbcGraph.from_dict(r).to_dict() for r in rows] == [g.to_dict() for g in graphs]


# ------------------------------------------------------------------------------------ fast paths vs checked paths
def checked_and_fast(d: object) -> tuple[str, str]:
    return json.dumps(GbcGraph._checked(d, "graph").to_dict()), json.dumps(GbcGraph.from_dict(d).to_dict())


def test_fast_parse_equals_checked_parse_on_unusual_graphs():
    """``from_dict`` takes a fast path for plain JSON objects; every object it builds must equal the checked
    path's (extras, key order, missing optionals), byte for byte once written."""
    d = graph_dict(future_field={"x": [1, 2]})
    image, dog = d["vertices"][0], d["vertices"][1]
    dog["bbox"] = {"confidence": None, "bottom": 0.8, "left": 0, "top": 0.35, "right": 1, "note": "hand-drawn"}
    dog["descs"][0] = {"label": dog["descs"][0]["label"], "rating": 5, "text": dog["descs"][0]["text"]}
    image["out_edges"][0] = {"target": image["out_edges"][0]["target"], "weight": 0.5, **image["out_edges"][0]}
    image["vertex_id"], image["label"] = image.pop("vertex_id"), image.pop("label")  # known fields after extras
    del d["vertices"][2]["in_edges"], d["vertices"][3]["out_edges"], d["img_url"]
    d = {"img_path": d.pop("img_path"), **d}
    d["vertices"].append(
        {"vertex_id": "bare", "bbox": {"left": 0, "top": 0, "right": 1, "bottom": 1}, "label": "entity", "descs": []}
    )
    text = json.dumps(d)
    checked = json.dumps(GbcGraph._checked(json.loads(text), "graph").to_dict())
    fast = json.dumps(gbc_graph._fast_graph(json.loads(text)).to_dict())  # the fast path itself, no fallback
    assert checked == fast == text
    g = GbcGraph.from_dict(json.loads(text))
    assert g.vertices[1].bbox.extra == {"note": "hand-drawn"} and g.vertices[1].descs[0].extra == {"rating": 5}
    assert g.vertices[0].out_edges[0].extra == {"weight": 0.5} and g.extra["future_field"] == {"x": [1, 2]}


def test_fast_parse_hands_anything_unusual_to_the_checked_path():
    class Text(str):
        pass

    from types import MappingProxyType

    d = graph_dict()
    d["vertices"][1]["descs"][0]["text"] = Text("a dog")  # a str subclass is a string
    d["vertices"][0]["out_edges"][0] = MappingProxyType(d["vertices"][0]["out_edges"][0])  # a Mapping is an object
    checked, fast = checked_and_fast(d)
    assert checked == fast
    for path, value, message in [
        (("bbox", "left"), True, r"vertices\[1\]\.bbox\.left: expected a number, got bool True"),
        (("bbox", "confidence"), "high", r"vertices\[1\]\.bbox\.confidence: expected a number"),
        (("in_edges",), None, r"vertices\[1\]\.in_edges: expected a list, got NoneType"),
        (("descs",), {}, r"vertices\[1\]\.descs: expected a list, got dict"),
        (("out_edges",), (), r"vertices\[1\]\.out_edges: expected a list, got tuple"),
        (("label",), 3, r"vertices\[1\]\.label: expected a string, got int 3"),
    ]:
        d = graph_dict()
        target = d["vertices"][1]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        with pytest.raises(GraphFormatError, match=message):
            GbcGraph.from_dict(d)
    with pytest.raises(GraphFormatError, match=r"^short_caption: expected a string, got int 1"):
        GbcGraph.from_dict(graph_dict(short_caption=1))


@pytest.mark.parametrize(
    "line",
    [
        '{"a": 1}\n',
        '  {"a": 1}\n',
        '{"a": 1}  \r\n',
        '{"a": 1} x\n',
        '{"a": 1}\x0b\n',
        "\ufeff{}\n",
        "[NaN]\n",
        '{"a": \n',
    ],
)
def test_jsonl_line_decoding_is_json_loads(line):
    try:
        expected = repr(json.loads(line))
    except json.JSONDecodeError as e:
        expected = f"error {e.msg} {e.colno}"
    try:
        got = repr(gbc_io._loads(line))
    except json.JSONDecodeError as e:
        got = f"error {e.msg} {e.colno}"
    assert got == expected


def reference_problems(graph: GbcGraph, strict_edge_text: bool = False) -> list[str]:
    """The validation rules written plainly (vertex by vertex, edge by edge): the oracle of validate_graph."""
    from bramley.gbc.graph import DESC_LABELS, VERTEX_LABELS
    from bramley.gbc.validate import BBOX_TOLERANCE

    errors, warnings, seen = [], [], set()
    if not graph.vertices:
        errors.append("empty graph: no vertices")
    for v in graph.vertices:
        if v.vertex_id in seen:
            errors.append(f"duplicate vertex id {v.vertex_id!r}")
        seen.add(v.vertex_id)
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
    return [f"error: {m}" for m in errors] + [f"warning: {m}" for m in warnings]


def test_validation_matches_the_plain_rules_on_random_damage():
    """validate_graph checks edges with set lookups in one pass; on graphs damaged at random (ids renamed or
    duplicated, edges dropped, moved or retargeted, labels, boxes, texts) it reports what the plain rules report,
    in the same order."""
    import random

    rng = random.Random(0)
    base = [json.loads(line) for line in lines(SAMPLE) + lines(WITH_CLIP)]
    for trial in range(400):
        d = json.loads(json.dumps(rng.choice(base)))
        vs = d["vertices"]
        for _ in range(rng.randint(1, 3)):
            v = rng.choice(vs)
            edges = [e for w in vs for e in w.get("in_edges", []) + w.get("out_edges", [])]
            action = rng.randrange(8)
            if action == 0:
                v["vertex_id"] = rng.choice(vs)["vertex_id"]
            elif action == 1 and edges:
                rng.choice(edges)[rng.choice(["source", "target"])] = rng.choice([w["vertex_id"] for w in vs] + ["x"])
            elif action == 2 and edges:
                rng.choice(edges)["text"] = rng.choice(["zzz", "DOG", ""])
            elif action == 3:
                key = rng.choice(["in_edges", "out_edges"])
                if v.get(key):
                    v[key].pop(rng.randrange(len(v[key])))
            elif action == 4:
                v["bbox"][rng.choice(["left", "top", "right", "bottom"])] = rng.choice(
                    [-0.5, 0.0, 0.5, 1.5, float("nan")]
                )
            elif action == 5:
                v["label"] = rng.choice(["entity", "blob"])
            elif action == 6 and v["descs"]:
                v["descs"][0]["label"] = rng.choice(["short", "long"])
            elif action == 7 and edges:
                rng.choice(vs).setdefault("in_edges", []).append(dict(rng.choice(edges)))
        g = GbcGraph.from_dict(d)
        for strict in (False, True):
            assert [str(p) for p in validate_graph(g, strict)] == reference_problems(g, strict), trial
