import json

from bramley.core.cli import main as bramley_main
from bramley.fct.reproduce import CASES, check_ordering


def test_reproduce_quick(tmp_path):
    out = tmp_path / "rep"
    assert bramley_main(["reproduce", "fct", "--quick", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] and results["seeds"] == [0]
    assert [row["case"] for row in results["table"]] == [c for c, _, _ in CASES]
    for case, _, _ in CASES:
        for key in ("top1", "top5", "mAP", "mAP@R"):
            assert 0.0 <= results["summary"][case][key]["mean"] <= 100.0
    assert set(results["paper_ordering"]) == set(check_ordering(results["summary"]))
    assert (out / "fct_digits.png").stat().st_size > 1000
    assert (out / "table.md").read_text().count("\n") >= 8


def test_check_ordering_reports_failures():
    def s(values):
        return {case: {"top1": {"mean": v}, "mAP": {"mean": v}} for case, v in values.items()}

    good = s({"BCT": 1, "FCT w/o side-info": 2, "FCT w/ side-info": 3, "new/new": 4})
    assert all(check_ordering(good).values())
    bad = s({"BCT": 1, "FCT w/o side-info": 3, "FCT w/ side-info": 2, "new/new": 4})
    assert check_ordering(bad)["FCT w/o side-info < FCT w/ side-info (top1)"] is False
