"""Benchmarks of bramley-gbc (``bramley gbc bench``): what the package exists for, against the baseline a user writes.

1. **Streaming graphs.** A generated file of ``graphs`` GBC graphs (.jsonl and .parquet): graphs/s of
   :func:`~bramley.gbc.io.read_graphs` (parse + validate, and parse only) against ``json.loads`` per line into plain
   nested dataclasses (no validation: the floor a hand-written loader reaches); for .parquet, also against its own
   peer (``to_pylist`` per record batch into the same dataclasses); and the peak Python + Arrow memory while
   streaming a quarter of the file and the whole file (flat memory: the two peaks are about equal).
2. **SIA packed vs padded.** Forward + backward of a CLIP text tower under the SIA masks, real (non-padding) tokens/s
   with graphs packed in rows (best-fit decreasing) against every caption padded to its graph's longest caption.

Rounds rotate the sides' order (:func:`bramley.core.bench.interleaved_rounds`; SIA after one untimed round);
``ratio_to_peer`` is the median (and range) over rounds of each side over its format's peer measured in the same
round; ``ratio_to_baseline`` divides medians by the .jsonl peer's.
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bramley.core.bench import interleaved_rounds

from .graph import GbcGraph
from .io import parquet_schema, read_graphs, write_graphs

__all__ = ["generate_graphs", "run_benchmark"]


# ------------------------------------------------------------------------------------------- the generated file
def generate_graphs(n: int, seed: int = 0):
    """``n`` graphs in the official layout from synthetic scenes' graph shapes (no rendering): 1-4 object kinds,
    groups, relations, the official optional fields (full_label, statistics, clip_scores, masks)."""
    rng = np.random.default_rng(seed)
    shapes = ["circle", "square", "triangle", "star", "ring", "cross"]
    colors = ["red", "green", "blue", "yellow", "magenta", "cyan"]
    for i in range(n):
        kinds = [(str(rng.choice(colors)), s) for s in rng.choice(shapes, int(rng.integers(1, 5)), replace=False)]
        counts = [int(rng.integers(1, 4)) for _ in kinds]
        short = "a scene with " + ", ".join(f"a {s}" for _, s in kinds)
        image = _vertex("", [0, 0, 1, 1], "image", [(short, "short")])
        vertices = [image]
        for (color, shape), count in zip(kinds, counts):
            box = sorted(rng.random(2).tolist())
            if count == 1:
                v = _vertex(
                    f"{color} {shape}", [box[0], box[0], box[1], box[1]], "entity", [(f"a {color} {shape}", "detail")]
                )
                _link(image, v, shape)
                vertices.append(v)
                continue
            group = _vertex(
                f"{color} {shape}s",
                [box[0], box[0], box[1], box[1]],
                "composition",
                [(f"{count} {color} {shape}s, " + ", ".join(f"{shape} {k + 1}" for k in range(count)), "composition")],
            )
            _link(image, group, shape)
            vertices.append(group)
            for k in range(count):
                v = _vertex(
                    f"{color} {shape}s_{k}",
                    [box[0], box[0], box[1], box[1]],
                    "entity",
                    [(f"a {color} {shape}", "detail")],
                )
                _link(group, v, f"{shape} {k + 1}")
                vertices.append(v)
        if len(kinds) > 1:
            (ca, sa), (cb, sb) = kinds[0], kinds[1]
            a, b = vertices[1], vertices[1 + (counts[0] if counts[0] == 1 else counts[0] + 1)]
            rel = _vertex(
                f"[{a['vertex_id']}|{b['vertex_id']}]",
                [0, 0, 1, 1],
                "relation",
                [(f"a {ca} {sa} left of a {cb} {sb}", "relation")],
            )
            _link(image, rel, sa)
            _link(image, rel, sb)
            _link(rel, a, f"{ca} {sa}")
            _link(rel, b, f"{cb} {sb}")
            vertices.append(rel)
        yield {
            "vertices": vertices,
            "img_url": None,
            "img_path": f"images/{i:08d}.jpg",
            "original_caption": None,
            "short_caption": short,
            "detail_caption": None,
            "img_size": [512, 512],
            "mask_inside_threshold": 0.85,
        }


def _vertex(vid: str, box: list[float], label: str, descs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "vertex_id": vid,
        "bbox": {"left": box[0], "top": box[1], "right": box[2], "bottom": box[3], "confidence": None},
        "label": label,
        "descs": [
            {
                "text": t,
                "label": d,
                "full_label": f"{d}-{label}",
                "statistics": {"n_words": len(t.split()), "n_tokens": 0},
                "clip_scores": {"scores": {"openai-l-patch14-336": 0.25}, "truncation": False},
                "toxicity_scores": None,
            }
            for t, d in descs
        ],
        "in_edges": [],
        "out_edges": [],
        "sub_masks": [],
        "super_masks": [],
    }


def _link(parent: dict[str, Any], child: dict[str, Any], text: str) -> None:
    edge = {"source": parent["vertex_id"], "text": text, "target": child["vertex_id"]}
    parent["out_edges"].append(edge)
    child["in_edges"].append(dict(edge))


# ------------------------------------------------------------------------------------------------- the baseline
@dataclass
class _Box:
    left: float
    top: float
    right: float
    bottom: float
    confidence: float | None


@dataclass
class _Desc:
    text: str
    label: str


@dataclass
class _Edge:
    source: str
    text: str
    target: str


@dataclass
class _Vertex:
    vertex_id: str
    bbox: _Box
    label: str
    descs: list[_Desc]
    in_edges: list[_Edge]
    out_edges: list[_Edge]


@dataclass
class _Graph:
    vertices: list[_Vertex]
    img_path: str | None


def _baseline_graph(d: dict[str, Any]) -> _Graph:
    """One graph object into the nested dataclasses (known fields only, no checks)."""
    return _Graph(
        [
            _Vertex(
                v["vertex_id"],
                _Box(**v["bbox"]),
                v["label"],
                [_Desc(x["text"], x["label"]) for x in v["descs"]],
                [_Edge(e["source"], e["text"], e["target"]) for e in v["in_edges"]],
                [_Edge(e["source"], e["text"], e["target"]) for e in v["out_edges"]],
            )
            for v in d["vertices"]
        ],
        d.get("img_path"),
    )


def _baseline(path: Path, limit: int) -> int:
    """``json.loads`` per line into nested dataclasses (known fields only, no checks)."""
    count = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            _baseline_graph(json.loads(line))
            count += 1
            if count == limit:
                break
    return count


def _baseline_parquet(path: Path, limit: int) -> int:
    """The parquet peer: record batches of the same size as ours, ``to_pylist`` per batch, the same dataclasses."""
    import pyarrow.parquet as pq

    from .io import PARQUET_BATCH

    count = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH):
        for d in batch.to_pylist():
            _baseline_graph(d)
            count += 1
            if count == limit:
                return count
    return count


def _ours(path: Path, limit: int, validate: bool) -> int:
    count = 0
    for _ in read_graphs(path, validate=validate):
        count += 1
        if count == limit:
            break
    return count


def _measure(fn, *args) -> tuple[float, float]:
    """(seconds, peak MiB of Python + Arrow allocations) of one call."""
    import pyarrow as pa

    gc.collect()
    default = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(default)  # this call's Arrow peak (the default pool's max_memory is a lifetime one)
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        fn(*args)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(default)
    return seconds, (peak + pool.max_memory()) / 2**20


def streaming_benchmark(graphs: int, rounds: int, workdir: Path) -> dict[str, Any]:
    jsonl, parquet = workdir / "graphs.jsonl", workdir / "graphs.parquet"
    write_graphs((GbcGraph.from_dict(d) for d in generate_graphs(graphs)), jsonl)
    write_graphs(read_graphs(jsonl, validate=False), parquet, schema=parquet_schema(read_graphs(jsonl, validate=False)))
    sides = {
        "baseline_jsonl": lambda n: _baseline(jsonl, n),
        "ours_jsonl": lambda n: _ours(jsonl, n, True),
        "ours_jsonl_no_validate": lambda n: _ours(jsonl, n, False),
        "ours_parquet": lambda n: _ours(parquet, n, True),
        "ours_parquet_no_validate": lambda n: _ours(parquet, n, False),
        "baseline_parquet": lambda n: _baseline_parquet(parquet, n),
    }
    seconds = interleaved_rounds({name: partial(read, graphs) for name, read in sides.items()}, rounds)
    rates = {name: [graphs / t for t in times] for name, times in seconds.items()}
    memory = {}
    for name in ("ours_jsonl", "baseline_jsonl", "ours_parquet", "baseline_parquet"):
        quarter = _measure(sides[name], max(1, graphs // 4))[1]
        whole = _measure(sides[name], graphs)[1]
        memory[name] = {"peak_mib_quarter_file": quarter, "peak_mib_whole_file": whole}
    ratios = {  # per round, each side over its format's peer measured in the same round
        k: [a / b for a, b in zip(v, rates["baseline_parquet" if "parquet" in k else "baseline_jsonl"])]
        for k, v in rates.items()
    }
    base = statistics.median(rates["baseline_jsonl"])
    return {
        "graphs": graphs,
        "rounds": rounds,
        "file_mib": {"jsonl": jsonl.stat().st_size / 2**20, "parquet": parquet.stat().st_size / 2**20},
        "graphs_per_s_median": {k: statistics.median(v) for k, v in rates.items()},
        "graphs_per_s_per_round": rates,
        "ratio_to_baseline_median": {k: statistics.median(v) / base for k, v in rates.items()},
        "ratio_to_peer_median": {k: statistics.median(v) for k, v in ratios.items()},
        "ratio_to_peer_range": {k: [min(v), max(v)] for k, v in ratios.items()},
        "peak_memory": memory,
    }


# ------------------------------------------------------------------------------------------------------- SIA
def sia_benchmark(num_graphs: int, rounds: int, width: int = 256, layers: int = 4, seed: int = 0) -> dict[str, Any]:
    from bramley.core.clip_eval import ClipTokenizer
    from bramley.core.layers.clip import TextTransformer

    from .sia import collate_packed, collate_padded, pack_graph, sia_encode

    tokenizer = ClipTokenizer(77)
    graphs = [GbcGraph.from_dict(d) for d in generate_graphs(num_graphs, seed)]
    packed = [pack_graph(g, tokenizer) for g in graphs]
    torch.manual_seed(seed)
    tower = TextTransformer(context_length=77, width=width, heads=width // 64, layers=layers, output_dim=width)
    budget = max(128, max(p.length for p in packed))
    batches = {"packed": collate_packed(packed, budget=budget), "padded": collate_padded(packed)}
    check = [sia_encode(tower, b).detach() for b in batches.values()]
    torch.testing.assert_close(check[0], check[1], atol=1e-4, rtol=1e-4)  # the same function

    def step(batch) -> None:
        sia_encode(tower, batch).square().mean().backward()
        tower.zero_grad(set_to_none=True)

    seconds = interleaved_rounds({name: partial(step, b) for name, b in batches.items()}, rounds, warmup=1)
    rates = {name: [batches[name].real_tokens / t for t in times] for name, times in seconds.items()}
    ratios = [packed / padded for packed, padded in zip(rates["packed"], rates["padded"])]
    shape = {k: list(b.tokens.shape) for k, b in batches.items()}
    padding = {k: 1 - b.real_tokens / b.tokens.numel() for k, b in batches.items()}
    return {
        "graphs": num_graphs,
        "real_tokens": batches["packed"].real_tokens,
        "layout": shape,
        "padding_fraction": padding,
        "tokens_per_s_median": {k: statistics.median(v) for k, v in rates.items()},
        "packed_over_padded_median": statistics.median(ratios),
        "packed_over_padded_range": [min(ratios), max(ratios)],
        "tower": {"width": width, "layers": layers, "heads": width // 64},
    }


def run_benchmark(
    graphs: int = 200_000, rounds: int = 5, sia_graphs: int = 64, workdir: Path | None = None
) -> dict[str, Any]:
    """Both benchmarks (see the module notes) with the environment; the generated files are deleted after."""
    from bramley.core.report import environment

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        streaming = streaming_benchmark(graphs, rounds, Path(tmp))
    return {
        "environment": environment(),
        "torch_threads": torch.get_num_threads(),
        "streaming": streaming,
        "sia": sia_benchmark(sia_graphs, rounds),
    }
