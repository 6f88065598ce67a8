"""Every method package's smoke recipe, as a user checks an install: `bramley-<method> train --recipe smoke --out DIR`.

It must write the standard run folder (weights, the resolved recipe with its seed, metrics), and the seed must
reproduce the run: the same `train.seed` twice gives bit-identical weights and metrics on CPU, another seed other
weights. (A package that trains a chain of models writes one run folder per stage below DIR: all are compared.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bramley.core.cli import discover_methods
from bramley.core.config import load_config

METHODS = discover_methods()
TIMING_KEYS = ("steps_per_s",)  # metrics that measure the machine, not the run


def _weights(out: Path) -> dict[str, bytes]:
    """Every weights file of a run folder (its stages' included), by path below the folder."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.safetensors"))}


def _metrics(out: Path) -> dict[str, list[dict]]:
    records = {}
    for path in sorted(out.rglob("metrics.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        records[str(path.relative_to(out))] = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in lines]
    return records


@pytest.mark.parametrize("method", sorted(METHODS))
def test_smoke_recipe_runs_and_its_seed_reproduces_it(method, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAMLEY_PROGRESS", "0")
    main = METHODS[method].load()
    runs = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        out = tmp_path / name
        assert main(["train", "--recipe", "smoke", "--out", str(out), f"train.seed={seed}"]) == 0, name
        runs[name] = (_weights(out), _metrics(out))
        assert load_config(out / "recipe.yaml")["train"]["seed"] == seed, "the seed is in the resolved recipe"
        assert (out / "results.json").is_file()
    weights, metrics = runs["first"]
    assert weights and metrics, f"{method}'s smoke run wrote no weights or no metrics"
    assert runs["again"][0] == weights, "the same seed gave other weights"
    assert runs["again"][1] == metrics, "the same seed gave other metrics"
    other = runs["other"][0]
    assert set(other) == set(weights) and all(other[k] != weights[k] for k in weights), "another seed, same weights"
