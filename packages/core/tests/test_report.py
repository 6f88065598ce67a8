"""bramley.core.report: the tables and results files every mini reproduction writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bramley.core.report import environment, figure, format_table, mean_std, replace_marked, write_results


def test_format_table():
    rows = [{"method": "MRL", "top1": 0.96871, "dims": 64}, {"method": "fixed-size", "top1": np.float32(0.9)}]
    assert format_table(rows).splitlines() == [
        "| method     | top1  | dims |",
        "|------------|-------|------|",
        "| MRL        | 0.969 | 64   |",
        "| fixed-size | 0.900 |      |",  # numpy floats are formatted too; a missing cell stays empty
    ]
    assert format_table(rows, columns=["top1"], digits=1).splitlines()[2] == "| 1.0  |"
    assert format_table([{"ok": True, "n": np.int64(3), "x": float("nan")}]).splitlines()[2] == "| True | 3 | nan |"
    assert format_table([]) == "(no rows)"


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample standard deviation
    assert mean_std([5.0]) == (5.0, 0.0)
    mean, std = mean_std([0.1, 0.2])
    assert math.isclose(mean, 0.15) and math.isclose(std, math.sqrt(0.005))
    with pytest.raises(ValueError, match="mean_std of no values"):
        mean_std([])


def test_write_results(tmp_path, capsys):
    rows = [{"method": "a", "score": 0.5}]
    path = write_results(tmp_path / "out", {"claim": "holds"}, rows, title="Digits")
    assert path == tmp_path / "out" / "results.json"
    payload = json.loads(path.read_text())
    assert payload["claim"] == "holds" and payload["table"] == rows
    assert payload["environment"]["torch"] and payload["environment"]["device"]
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.startswith("## Digits\n\n| method | score |") and "| a      | 0.500 |" in table
    assert table in capsys.readouterr().out
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json", "table.md"]

    write_results(tmp_path / "plain", {"x": 1})
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["results.json"]


def test_environment_names_versions():
    env = environment()
    assert {"python", "torch", "platform", "cpu_threads", "device", "date"} <= set(env)
    assert env["bramley-core"].startswith("0.")


def test_figure_saves_atomically_without_touching_the_session(tmp_path):
    import matplotlib
    from PIL import Image

    backend = matplotlib.get_backend()
    path = tmp_path / "plots" / "claim.png"
    with figure(path, ncols=2, figsize=(2, 1), dpi=50) as (left, right):
        left.plot([0, 1], [1, 0])
        right.bar(["a", "b"], [1, 2])
        assert not path.exists()  # written on leaving the block, not before
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (100, 50)
    assert matplotlib.get_backend() == backend
    if "matplotlib.pyplot" in __import__("sys").modules:  # no figure left open in pyplot's registry
        assert not matplotlib.pyplot.get_fignums()

    with figure(tmp_path / "one.svg", figsize=(2, 2)) as ax:
        ax.set_title("single axes")
    assert (tmp_path / "one.svg").read_text().lstrip().startswith("<?xml")

    with pytest.raises(RuntimeError, match="drawing failed"), figure(tmp_path / "broken.png"):
        raise RuntimeError("drawing failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.svg", "plots"]  # no partial or temporary file
    assert [p.name for p in path.parent.iterdir()] == ["claim.png"]


def test_replace_marked_rewrites_only_its_block(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    replace_marked(path, "bench:a", "| x |\n")
    assert path.read_text() == "<!-- bench:a:start -->\n| x |\n<!-- bench:a:end -->\n"
    path.write_text("# Title\n\nprose before\n" + path.read_text() + "prose after\n")
    replace_marked(path, "bench:a", "| y |")
    replace_marked(path, "bench:b", "| z |")
    assert path.read_text() == (
        "# Title\n\nprose before\n<!-- bench:a:start -->\n| y |\n<!-- bench:a:end -->\nprose after\n\n"
        "<!-- bench:b:start -->\n| z |\n<!-- bench:b:end -->\n"
    )
