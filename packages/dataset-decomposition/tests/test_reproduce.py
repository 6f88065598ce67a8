"""The mini reproduction's DD run is one whole pass over its (budget-scaled) buckets, at equal tokens."""

import numpy as np
import pytest
import torch


def assert_whole_dd_pass(results: dict) -> None:
    """Every method trained ``config.steps`` steps of ``tokens_per_step`` tokens, and the DD run was exactly one pass
    over the rows it used, so all its curriculum cycles ran complete (it did not stop inside a pass or a cycle)."""
    from bramley.dataset_decomposition.sampling import BucketBatchSampler, cycle_quotas

    config, runs = results["config"], results["runs"]
    tokens = config["steps"] * config["tokens_per_step"]
    for name, run in runs.items():
        assert run["totals"]["steps"] == config["steps"] and run["totals"]["tokens"] == tokens, name
    dd_pass = runs["dd"]["dd_pass"]
    available = list(results["data"]["buckets"].values())
    lengths = [int(n) for n in results["data"]["buckets"]]
    assert all(0 <= u <= a for u, a in zip(dd_pass["rows_per_bucket"], available))
    sampler = BucketBatchSampler(
        dd_pass["rows_per_bucket"], lengths, config["tokens_per_step"], num_cycles=config["cycles"]
    )
    assert sampler.unused_rows_per_bucket == [0] * len(lengths)  # the used rows make whole batches
    assert len(sampler) == dd_pass["steps"] == runs["dd"]["totals"]["steps"]
    cycle_ends = cycle_quotas(sampler.batches_per_bucket, config["cycles"]).sum(1).cumsum()
    assert cycle_ends[-1] == runs["dd"]["totals"]["steps"]  # the last cycle ends on the last step


def test_budget_rows_scale_buckets_to_the_step_budget():
    from bramley.dataset_decomposition.reproduce import budget_rows
    from bramley.dataset_decomposition.sampling import BucketBatchSampler

    rows, lengths, tps = [3214, 1660, 837, 427, 216, 144], [16, 32, 64, 128, 256, 512], 2048
    full = BucketBatchSampler(rows, lengths, tps)
    for steps in (1, 7, 150, len(full)):
        used = budget_rows(rows, lengths, tps, steps)
        assert all(u <= r for u, r in zip(used, rows))
        sampler = BucketBatchSampler(used, lengths, tps, num_cycles=8 if steps >= 8 else 1)
        assert len(sampler) == steps and sampler.unused_rows_per_bucket == [0] * 6
    used = budget_rows(rows, lengths, tps, 150)  # the token mix of the buckets is kept (within one batch)
    share = np.asarray(used) * lengths / (150 * tps)
    want = np.asarray(full.batches_per_bucket) / len(full)
    assert np.abs(share - want).max() <= 1 / 150
    with pytest.raises(ValueError, match="fewer than"):
        budget_rows(rows, lengths, tps, len(full) + 1)


def test_row_subset_maps_to_distinct_bucket_rows():
    from bramley.dataset_decomposition.reproduce import _RowSubset

    class Base:
        def __getitem__(self, item):
            return torch.tensor(item)

        def __getitems__(self, items):
            return [torch.tensor(i) for i in items]

    subset = _RowSubset(Base(), [10, 4], [5, 2], seed=0)
    assert len(subset) == 7
    picked = [tuple(subset[(0, i)].tolist()) for i in range(5)]
    assert len(set(picked)) == 5 and all(b == 0 and 0 <= r < 10 for b, r in picked)
    assert [tuple(t.tolist()) for t in subset.__getitems__([(0, i) for i in range(5)])] == picked
    assert subset.picks[1].tolist() == _RowSubset(Base(), [10, 4], [5, 2], seed=0).picks[1].tolist()


def test_quick_reproduction_is_one_whole_dd_pass(tmp_path, capsys):
    import json

    from bramley.dataset_decomposition.reproduce import CLAIM, main

    assert main(["--quick", "--out", str(tmp_path), "--steps", "8"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert_whole_dd_pass(results)
    verdict = "HOLDS" if results["claims"]["holds"] else "DOES NOT HOLD"
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == f"claim ({CLAIM}): {verdict}"  # the last line


@pytest.mark.parametrize("name", ["reproduce_results.json", "reproduce_results_seed1.json"])
def test_committed_reproduction_is_one_whole_dd_pass(name):
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / name
    assert_whole_dd_pass(json.loads(path.read_text()))
