"""The mini reproduction's data option, and the README's tables traced to the committed runs."""

import json
import re
from pathlib import Path

import pytest

from bramley.mrl import reproduce
from shared.markdown import has_table_row

PACKAGE = Path(__file__).resolve().parents[1]
SYNTHETIC = PACKAGE / "results" / "reproduce-synthetic"
DIGITS = PACKAGE / "results" / "reproduce-digits"


def test_digits_stay_the_default():
    data = reproduce.load_data("digits")
    assert data["num_classes"] == 10 and data["in_features"] == 64 and len(data["train"][1]) == 1259
    assert reproduce.DEFAULT_EPOCHS["digits"] == 30


def test_quick_synthetic_run(tmp_path):
    assert reproduce.main(["--data", "synthetic", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["data"] == "synthetic" and results["num_classes"] == 64 and results["sizes"] == [4, 64]
    assert "640 train / 256 test" in results["data_description"] and (tmp_path / "mrl.png").is_file()
    scores = results["per_seed"][0]["scores"]["MRL"]["knn"]
    assert all(0 <= v <= 100 for v in scores.values())


def test_unknown_data_is_refused():
    with pytest.raises(SystemExit):
        reproduce.main(["--data", "imagenet"])
    with pytest.raises(ValueError, match="data must be one of"):
        reproduce.load_data("imagenet")


def _mean(cell: str) -> float:
    return float(cell.split(" ± ")[0])


def test_readme_synthetic_numbers_are_the_committed_run():
    """The README's synthetic-data tables, conditions and the numbers of its verdict are the committed run's."""
    results = json.loads((SYNTHETIC / "results.json").read_text())
    readme = (PACKAGE / "README.md").read_text(encoding="utf-8")
    assert results["data"] == "synthetic" and not results["quick"]
    for row in results["table"]:
        cells = [str(row["dim"]), *(v for k, v in row.items() if k != "dim")]
        assert has_table_row(readme, cells), row
    retrieval = {row["method"]: row for row in results["retrieval_table"]}
    shown = re.findall(r"^\| (MRL [^|]*?|FF-64 truncated [^|]*?) \| ([\d.]+) \| ([^|]+?) \|$", readme, flags=re.M)
    assert len(shown) >= 5
    for method, mflops, top1 in shown:
        assert (retrieval[method]["MFLOPs/query"], retrieval[method]["top-1"]) == (mflops, top1), method
    seeds = ", ".join(map(str, results["seeds"]))
    assert f"seeds {seeds}" in readme and f"{results['epochs']} epochs" in readme
    assert f"{results['seconds']:.0f} s wall" in readme
    verdict = "holds" if results["claims"]["holds"] else "does not hold"
    assert f"the claim {verdict} on the procedural images" in readme.lower()

    rows = {row["dim"]: row for row in results["table"]}
    cell = lambda dim, column: _mean(rows[dim][column])  # noqa: E731
    gaps = [cell(d, f"FF {k}") - cell(d, f"MRL {k}") for d, k in ((2, "1-NN"), (2, "linear"), (4, "1-NN"))]
    assert (
        f"by {gaps[0]:.1f} (1-NN) / {gaps[1]:.1f} (linear)" in readme and f"and {gaps[2]:.1f} (1-NN) at 4-d" in readme
    )
    trunc = " / ".join(f"{cell(d, 'FF-trunc 1-NN'):.1f}" for d in (2, 4, 8))
    mrl = " / ".join(f"{cell(d, 'MRL 1-NN'):.1f}" for d in (2, 4, 8))
    assert f"collapses to {trunc} %" in readme and f"MRL keeps {mrl} %" in readme
    ratios = [cell(d, "MRL 1-NN") / cell(d, "FF-trunc 1-NN") for d in (2, 4)]
    assert f"{ratios[0]:.0f}x better at 2-d and {ratios[1]:.1f}x at 4-d" in readme
    funnel = retrieval["MRL funnel @4 -> [8, 16, 32, 64] x [100, 50, 25, 12]"]
    full = retrieval["MRL exact @64"]
    speedup = float(full["MFLOPs/query"]) / float(funnel["MFLOPs/query"])
    assert f"({_mean(funnel['top-1'])} vs {_mean(full['top-1'])}) at {speedup:.0f}x fewer" in readme
    calibration = json.loads(
        (PACKAGE.parent / "core" / "results" / "synthetic-calibration" / "results.json").read_text()
    )
    cnn = [s["cnn@15ep"] for s in calibration["datasets"]["synthetic"]["per_seed"]]
    assert f"reaches ~{sum(cnn) / len(cnn):.0f} % on the same defaults in 15 epochs" in readme


def test_readme_digits_table_is_the_committed_run():
    """The README's digits table (the main command's output) is the committed default run's, row by row."""
    results = json.loads((DIGITS / "results.json").read_text())
    readme = (PACKAGE / "README.md").read_text(encoding="utf-8")
    assert (
        results["data"] == "digits" and not results["quick"] and results["epochs"] == reproduce.DEFAULT_EPOCHS["digits"]
    )
    for row in results["table"]:
        cells = [str(row["dim"]), *(v for k, v in row.items() if k != "dim")]
        assert has_table_row(readme, cells), row
    assert f"{results['seconds']:.0f} s wall" in readme and results["claims"]["holds"]
