"""bramley.core.bench: interleaved rounds, per-round ratios and the set load."""

from __future__ import annotations

import os
import time

import pytest

from bramley.core.bench import busy_cores, interleaved_rounds, ratio_spread, spread_text, summary


def test_rounds_rotate_the_order_and_keep_one_time_per_round():
    calls: list[str] = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = interleaved_rounds(contenders, rounds=4, warmup=1)
    assert calls == list("abcbcacababcbca")  # warmup round first, each round one contender later
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for row in times.values() for t in row)


def test_times_follow_the_work_and_sync_brackets_each_call():
    synced: list[int] = []
    times = interleaved_rounds(
        {"slow": lambda: time.sleep(0.02), "fast": lambda: None}, rounds=3, sync=lambda: synced.append(1)
    )
    assert min(times["slow"]) > max(times["fast"])
    assert len(synced) == 2 * 2 * 3
    calls: list[int] = []
    times = interleaved_rounds({"a": lambda: calls.append(1)}, rounds=2, repeats=5)
    assert len(calls) == 10 and len(times["a"]) == 2  # the mean of 5 calls per round


def test_ratio_spread_is_per_round():
    median, low, high = ratio_spread([2.0, 6.0, 3.0], [1.0, 2.0, 3.0])  # ratios 2, 3, 1
    assert (median, low, high) == (2.0, 1.0, 3.0)
    assert spread_text((median, low, high)) == "2.00x (1.00-3.00)"
    with pytest.raises(ValueError, match="one time per round"):
        ratio_spread([1.0], [1.0, 2.0])


def test_summary_has_inclusive_quartiles_inside_the_data():
    # sorted 1, 2, 4, 8: q1 = 1 + 0.75 * (2 - 1), q3 = 4 + 0.25 * (8 - 4), as numpy.percentile's default
    assert summary([8.0, 1.0, 4.0, 2.0]) == {"median": 3.0, "q1": 1.75, "q3": 5.0, "min": 1.0, "max": 8.0}
    assert summary([1.0, 2.0]) == {"median": 1.5, "q1": 1.25, "q3": 1.75, "min": 1.0, "max": 2.0}  # exclusive: 0.75
    assert summary([2.5]) == dict.fromkeys(("median", "q1", "q3", "min", "max"), 2.5)
    with pytest.raises(ValueError, match="at least one value"):
        summary([])


def test_bad_round_counts_are_refused():
    with pytest.raises(ValueError, match="rounds and repeats must be >= 1"):
        interleaved_rounds({"a": lambda: None}, rounds=0)
    with pytest.raises(ValueError, match="count must be >= 0"), busy_cores(-1):
        pass


def _children() -> set[int]:
    path = f"/proc/{os.getpid()}/task/{os.getpid()}/children"
    with open(path) as f:
        return {int(pid) for pid in f.read().split()}


@pytest.mark.skipif(not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"), reason="needs Linux /proc")
def test_busy_cores_spins_for_the_block_and_stops():
    before = _children()
    with busy_cores(1):
        spinners = _children() - before
        assert len(spinners) == 1
        pid = spinners.pop()
        with open(f"/proc/{pid}/stat") as f:
            first = sum(int(x) for x in f.read().split()[13:15])  # utime + stime, in clock ticks
        time.sleep(0.3)
        with open(f"/proc/{pid}/stat") as f:
            assert sum(int(x) for x in f.read().split()[13:15]) > first  # it is using a CPU
    assert _children() == before  # killed and reaped
    with busy_cores(0):
        assert _children() == before
