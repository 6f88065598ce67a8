"""What every benchmark needs: contenders timed in interleaved rounds, per-round ratios, and a load that can be set.

A shared machine's speed drifts by more than most changes being measured, so a benchmark here runs every contender
once per round, each round starting one contender later (none always follows the same other one), and reports the
*per-round ratio* to the peer: both saw the same load; :func:`summary` gives the median, quartiles and range of such
ratios (or of the times) over rounds. :func:`busy_cores` makes that load a setting instead of the
neighbours' mood: ``count`` processes spinning for the duration of the block, so "two threads, one core taken" can be
measured again by anyone.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

__all__ = ["busy_cores", "interleaved_rounds", "ratio_spread", "spread_text", "summary"]

_SPIN = "while True: pass"


def interleaved_rounds(
    contenders: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    repeats: int = 1,
    warmup: int = 0,
    sync: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each contender in each round (``warmup`` rounds first, not kept).

    Round ``r`` starts with contender ``r mod n`` and goes on in the given order; in a round each contender is called
    ``repeats`` times back to back and its time is their mean. ``sync`` (e.g. ``torch.cuda.synchronize``) runs
    before and after each contender's calls.
    """
    if rounds < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"rounds and repeats must be >= 1 and warmup >= 0, got {rounds}, {repeats}, {warmup}")
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for step in range(warmup + rounds):
        first = step % len(names)
        for name in names[first:] + names[:first]:
            if sync is not None:
                sync()
            start = time.perf_counter()
            for _ in range(repeats):
                contenders[name]()
            if sync is not None:
                sync()
            if step >= warmup:
                times[name].append((time.perf_counter() - start) / repeats)
    return times


def summary(values: Sequence[float]) -> dict[str, float]:
    """``median``, quartiles ``q1`` / ``q3`` and range ``min`` / ``max`` of per-round times or ratios.

    The quartiles are inclusive (``statistics.quantiles(..., method="inclusive")``, numpy's default): interpolated
    between the data, so they never fall outside ``min``-``max`` however few the rounds. A single value is the value of
    every key; no values is a ``ValueError``.
    """
    data = sorted(values)
    if not data:
        raise ValueError("summary needs at least one value (one per round), got none")
    q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive") if len(data) > 1 else data * 3
    return {"median": statistics.median(data), "q1": q1, "q3": q3, "min": data[0], "max": data[-1]}


def ratio_spread(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float, float]:
    """``(median, min, max)`` over rounds of ``numerator[r] / denominator[r]`` (peer time / ours: > 1, ours faster)."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"need one time per round on both sides, got {len(numerator)} and {len(denominator)}")
    stats = summary([a / b for a, b in zip(numerator, denominator)])
    return stats["median"], stats["min"], stats["max"]


def spread_text(spread: tuple[float, float, float]) -> str:
    """``"1.23x (0.98-1.66)"``: the median and the range over rounds."""
    median, low, high = spread
    return f"{median:.2f}x ({low:.2f}-{high:.2f})"


@contextlib.contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """Keep ``count`` CPU cores busy for the block: that many processes spin (at normal priority) until it ends.

    Each is a fresh interpreter running ``while True: pass``: no memory traffic, no threads, one core's worth of
    demand that the scheduler shares with the benchmark's threads. ``count == 0`` does nothing.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    spinners = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(count)]
    try:
        time.sleep(0.2 if spinners else 0.0)  # let them start before the first timing
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()
