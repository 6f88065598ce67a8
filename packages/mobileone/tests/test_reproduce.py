"""The mini reproduction's data option, and the README's reproduction tables traced to the committed runs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from bramley.mobileone import reproduce
from shared.markdown import has_table_row

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
DIGITS = PACKAGE / "results" / "reproduce" / "results.json"
SYNTHETIC = PACKAGE / "results" / "reproduce-synthetic" / "results.json"
SYNTHETIC_HEADING = "### On procedural images"


def test_digits_stay_the_default():
    data = reproduce.load_data("digits")
    assert (data["num_classes"], data["in_chans"], len(data["train"])) == (10, 1, 1259)
    assert data["test"][0].shape == (359, 1, 32, 32)
    assert reproduce.DEFAULT_EPOCHS["digits"] == [4, 15] and reproduce.DEFAULT_SEEDS["digits"] == 5


def test_quick_synthetic_data():
    data = reproduce.load_data("synthetic", quick=True)
    x, y = data["test"]
    assert (data["num_classes"], data["in_chans"], len(data["train"])) == (64, 3, 640)
    assert x.shape == (256, 3, 32, 32) and int(y.max()) < 64
    assert "train 640 / test 256" in data["description"]
    assert abs(float(data["train"].tensors[0].mean())) < 0.2  # standardised with train statistics


def test_unknown_data_is_refused(capsys):
    with pytest.raises(ValueError, match="data must be one of"):
        reproduce.load_data("imagenet")
    with pytest.raises(SystemExit):
        reproduce.main(["--data", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def readme_cells(row: dict[str, Any]) -> list[str]:
    """A committed table row as the README shows it."""
    return [
        str(row["epochs"]),
        row["arm"],
        f"{row['test_top1_mean']:.2f}",
        f"{row['test_top1_std']:.2f}",
        "yes" if row["fused_equal_acc"] else "no",
        row["max_abs_logit_diff"],
        f"{row['params_train']:,}",
        f"{row['params_fused']:,}",
    ]


def assert_rows_shown(results: dict[str, Any], text: str) -> None:
    for row in results["table"]:
        assert has_table_row(text, readme_cells(row), whole_line=True), row


def test_readme_digits_table_is_the_committed_run():
    results = json.loads(DIGITS.read_text())
    digits_part = README.read_text(encoding="utf-8").split(SYNTHETIC_HEADING)[0]
    assert results["setup"]["epoch_budgets"] == reproduce.DEFAULT_EPOCHS["digits"]
    assert len(results["setup"]["seeds"]) == reproduce.DEFAULT_SEEDS["digits"]
    assert_rows_shown(results, digits_part)


def test_readme_synthetic_table_and_verdicts_are_the_committed_run():
    results = json.loads(SYNTHETIC.read_text())
    readme = README.read_text(encoding="utf-8")
    part = readme.split(SYNTHETIC_HEADING, 1)[1].split("\n## ", 1)[0]
    assert results["data"] == "synthetic" and not results["quick"] and results["setup"]["num_classes"] == 64
    assert results["setup"]["epoch_budgets"] == reproduce.DEFAULT_EPOCHS["synthetic"]
    assert "train 6400 / test 2560" in results["setup"]["data"]
    seeds = results["setup"]["seeds"]
    command = f"bramley reproduce mobileone --data synthetic --seeds {len(seeds)}`"
    assert seeds == list(range(len(seeds))) and command in part
    assert len(seeds) == reproduce.DEFAULT_SEEDS["synthetic"]
    assert_rows_shown(results, part)
    assert f"{results['seconds']:.0f} s wall" in part
    load = results["load_average"]
    assert f"load average {load['start'][0]:.1f} at the start and {load['end'][0]:.1f} at the end" in part
    committed = reproduce.verdicts(results)
    quoted = re.search(r"claim 1 \*\*([A-Z ]+)\*\*, claim 2 \*\*([A-Z ]+)\*\*", part)
    assert quoted is not None, "the README quotes the verdicts of the committed synthetic run"
    assert (
        list(quoted.groups())
        == [v["verdict"] for v in committed.values()]
        == [v["verdict"] for v in results["verdicts"].values()]
    )
    gains = results["summary"]["claim1_top1_gain_over_plain"]
    for budget, arms in gains.items():
        for arm, gain in arms.items():
            assert f"{arm} {gain:+.1f} at {budget.split('_')[0]} epochs" in part, (arm, budget)
    for name, latency in results["latency"].items():
        ratio = latency["fused_vs_unfused"]
        shown = rf"\| {ratio:.3f} +\||\| {ratio:.2f} +\|"  # the fused / unfused column
        assert f"| {latency['unfused_ms']:.1f} " in part and re.search(shown, part), name
