"""The mini reproduction's data option and seed handling, and the README's reproduction tables traced to the
committed runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bramley.fastvit import reproduce
from shared.markdown import code_blocks, has_table_row

PACKAGE = Path(__file__).resolve().parents[1]
README = PACKAGE / "README.md"
DIGITS = PACKAGE / "results" / "reproduction.json"
SYNTHETIC = PACKAGE / "results" / "reproduce-synthetic" / "results.json"
SYNTHETIC_HEADING = "### On procedural images"


def test_digits_stay_the_default():
    assert reproduce.DEFAULT_EPOCHS["digits"] == 25 and reproduce.DEFAULT_SEEDS["digits"] == 1
    data = reproduce.load_data("digits", quick=True)
    assert data["num_classes"] == 10 and data["train_x"].shape == (64, 3, 64, 64)


def test_quick_synthetic_data():
    data = reproduce.load_data("synthetic", quick=True)
    assert data["num_classes"] == 64 and data["train_x"].shape == data["test_x"].shape == (64, 3, 64, 64)
    assert "64 classes, 32x32 RGB" in data["description"] and "upsampled to 64x64" in data["description"]


def test_bad_arguments_are_refused(capsys):
    with pytest.raises(ValueError, match="data must be one of"):
        reproduce.load_data("imagenet")
    with pytest.raises(ValueError, match="data must be one of"):
        reproduce.run("unused", data="imagenet")
    with pytest.raises(ValueError, match="at least one seed and one epoch"):
        reproduce.run("unused", seeds=0)
    with pytest.raises(SystemExit):
        reproduce.main(["--data", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def _results(fastvit: list[float], vit: list[float]) -> dict[str, Any]:
    """A results dict with the given per-seed accuracies (the other fields only need to be there)."""

    def row(name: str, accs: list[float]) -> dict[str, Any]:
        mean = sum(accs) / len(accs)
        std = (sum((a - mean) ** 2 for a in accs) / (len(accs) - 1)) ** 0.5 if len(accs) > 1 else 0.0
        return {"model": name, "test_acc": mean, "test_acc_std": std, "latency_ms": 1.0}

    mixer = {"max_abs_diff_vs_trained": {"fused": 0.0}, "speedup_fused_vs_skip_kept": 1.2, "fused_has_skip": False}
    models = [row("FastViT (fused)", fastvit), row("plain ViT", vit)]
    return {"seed": 0, "seeds": list(range(len(fastvit))), "image_size": 64, "models": models, "repmixer": mixer}


def test_accuracy_verdict_over_seeds_needs_more_than_the_spread():
    clear = reproduce.verdicts(_results([40.0, 42.0], [30.0, 31.0]))[1]
    assert clear["holds"] and "41.0 ± 1.4% vs 30.5 ± 0.7% (mean ± std over seeds 0, 1" in clear["measured"]
    noisy = reproduce.verdicts(_results([40.0, 30.0], [33.0, 34.0]))[1]  # higher mean, inside two standard errors
    assert not noisy["holds"] and "gain +1.5" in noisy["measured"]
    single = reproduce.verdicts(_results([40.0], [39.0]))[1]  # one seed: a plain comparison, as on digits
    assert single["holds"] and single["measured"] == "test accuracy 40.0% vs 39.0%"


def readme_cells(row: dict[str, Any]) -> list[str]:
    """A committed table row as the README shows it."""
    acc = f"{row['test_acc']:.1f}" + (f" ± {row['test_acc_std']:.1f}" if "test_acc_std" in row else "")
    params = f"{row['params_k']:.1f} / {row['deploy_params_k']:.1f}"
    return [row["model"], params, acc, f"{row['latency_ms']:.2f}", f"{row['train_s']:.0f}"]


def assert_rows_shown(results: dict[str, Any], text: str) -> None:
    for row in results["models"]:
        assert has_table_row(text, readme_cells(row), whole_line=True), row


def test_readme_digits_table_is_the_committed_run():
    results = json.loads(DIGITS.read_text())
    assert results["epochs"] == reproduce.DEFAULT_EPOCHS["digits"] and not results["quick"]
    assert_rows_shown(results, README.read_text(encoding="utf-8").split(SYNTHETIC_HEADING)[0])


def test_readme_synthetic_table_and_verdicts_are_the_committed_run():
    results = json.loads(SYNTHETIC.read_text())
    part = README.read_text(encoding="utf-8").split(SYNTHETIC_HEADING, 1)[1].split("\n## ", 1)[0]
    assert results["data"] == "synthetic" and not results["quick"]
    assert results["epochs"] == reproduce.DEFAULT_EPOCHS["synthetic"]
    assert results["seeds"] == list(range(reproduce.DEFAULT_SEEDS["synthetic"]))
    assert "train 6400 / test 2560" in results["data_description"]
    assert_rows_shown(results, part)
    assert f"{results['seconds']:.0f} s wall" in part and f"{results['cpu_seconds']:.0f} s of CPU time" in part
    load = results["load_average"]
    assert f"load average {load['start'][0]:.1f} at the start and {load['end'][0]:.1f} at the end" in part
    for row in results["models"]:
        seeds = " / ".join(f"{acc:.1f}" for acc in row["test_acc_seeds"])
        assert f"{row['model']}: {seeds}" in part, row["model"]
    lines = reproduce.verdict_lines(reproduce.verdicts(results))
    assert lines == reproduce.verdict_lines(results["claims"])
    assert code_blocks(README, "text")[1].strip().splitlines() == lines
