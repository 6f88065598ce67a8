"""Benchmark bramley.core.packing.best_fit_decreasing against a plain Python first-fit decreasing (CPU).

The peer is the FFD a user writes in plain Python when a list scan over the open bins is too slow (that scan is
O(items x bins) and does not finish on 1M items): longest first, each item into the first bin it fits, found in
O(log bins) with a max segment tree over the bins' free room. It fills as well as BFD on these workloads (the table
shows both fill ratios). With ``--compare-rev REV`` the ``best_fit_decreasing`` of that git revision runs too, and
the table says whether it returned the same bins.

Every contender runs once per round on the same lengths, in a rotating order so that each sees the same load; the
speed-up is the median over rounds of (peer CPU time / bramley CPU time), with the range over rounds. CPU time of
this process (one thread: all contenders are single-threaded) is robust to other jobs on a shared machine; wall
times are recorded too.

    python tools/bench_packing.py --compare-rev a38f7fb   # writes the table into packages/core/BENCHMARKS.md
    python tools/bench_packing.py --smoke                 # tiny sizes, prints JSON, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bramley.core.packing import best_fit_decreasing
from bramley.core.report import environment, format_table, replace_marked

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "packages" / "core" / "BENCHMARKS.md"
MARKER = "bench_packing:bfd"  # the table's block in BENCHMARKS.md (core.report.replace_marked)
# name -> (distribution, low, high, budget): log-uniform lengths as in bench_attention, short documents, and many
# distinct lengths (bramley's work grows with distinct lengths, the peer's with items)
WORKLOADS = {
    "log-uniform [128, 8192] -> 65,536": ("log", 128, 8192, 65_536),
    "uniform [1, 2048] -> 8,192": ("uniform", 1, 2048, 8192),
    "log-uniform [1, 131072] -> 131,072": ("log", 1, 131_072, 131_072),
}


def first_fit_decreasing(lengths: list[int], budget: int) -> list[list[int]]:
    """Plain Python FFD: longest first, each item into the first (oldest) bin it fits, or a new bin."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    size = 1
    while size < len(lengths):
        size *= 2
    room = [0] * (2 * size)  # room[size + b]: free tokens of bin b; room[node]: the larger of its two children
    bins: list[list[int]] = []
    for item in order:
        length = lengths[item]
        if room[1] >= length:
            node = 1
            while node < size:
                node = 2 * node if room[2 * node] >= length else 2 * node + 1
            bins[node - size].append(item)
        else:
            node = size + len(bins)
            bins.append([item])
            room[node] = budget
        room[node] -= length
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return bins


def best_fit_at_revision(rev: str) -> Callable[[np.ndarray, int], Any]:
    """``best_fit_decreasing`` as packing.py was at git revision ``rev`` (imported beside the current one)."""
    path = "packages/core/src/bramley/core/packing.py"
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True)
    module = types.ModuleType(f"bramley.core._packing_{rev}")
    module.__package__ = "bramley.core"
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source.stdout, f"{rev}:{path}", "exec"), module.__dict__)
    return module.best_fit_decreasing


def make_lengths(kind: str, low: int, high: int, items: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "log":
        return np.exp(rng.uniform(np.log(low), np.log(high + 1), items)).astype(np.int64).clip(low, high)
    return rng.integers(low, high + 1, items)


def fill(bins: list[list[int]], lengths: np.ndarray, budget: int) -> float:
    return float(lengths.sum()) / (len(bins) * budget)


def bench_workload(name: str, args: argparse.Namespace, old: Callable | None) -> dict[str, Any]:
    kind, low, high, budget = WORKLOADS[name]
    lengths = make_lengths(kind, low, high, args.items, args.seed)
    as_list = lengths.tolist()
    contenders: dict[str, Callable[[], list[list[int]]]] = {
        "bramley": lambda: best_fit_decreasing(lengths, budget).bins,
        "peer": lambda: first_fit_decreasing(as_list, budget),
    }
    if old is not None:
        contenders["before"] = lambda: old(lengths, budget).bins
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    wall: dict[str, list[float]] = {k: [] for k in contenders}
    results: dict[str, list[list[int]]] = {}
    names = list(contenders)
    for step in range(args.rounds):
        for key in names[step % len(names) :] + names[: step % len(names)]:
            w0, c0 = time.perf_counter(), time.process_time()
            results[key] = contenders[key]()
            cpu[key].append(time.process_time() - c0)
            wall[key].append(time.perf_counter() - w0)
    speedup = [p / b for p, b in zip(cpu["peer"], cpu["bramley"])]
    row: dict[str, Any] = {
        "workload": name,
        "items": args.items,
        "distinct lengths": len(np.unique(lengths)),
        "bins BFD / FFD": f"{len(results['bramley'])} / {len(results['peer'])}",
        "fill BFD / FFD": " / ".join(f"{fill(results[k], lengths, budget):.5f}" for k in ("bramley", "peer")),
        "bramley docs/s": f"{args.items / statistics.median(cpu['bramley']):,.0f}",
        "peer docs/s": f"{args.items / statistics.median(cpu['peer']):,.0f}",
        "bramley / peer speed": f"**{statistics.median(speedup):.1f}x** ({min(speedup):.1f}-{max(speedup):.1f})",
        "wall s bramley / peer": f"{statistics.median(wall['bramley']):.3f} / {statistics.median(wall['peer']):.2f}",
    }
    if old is not None:
        gain = [b / n for b, n in zip(cpu["before"], cpu["bramley"])]
        row[f"vs {args.compare_rev}: speed"] = f"{statistics.median(gain):.1f}x ({min(gain):.1f}-{max(gain):.1f})"
        row[f"same bins as {args.compare_rev}"] = "yes" if results["before"] == results["bramley"] else "NO"
    print(json.dumps(row), flush=True)
    return {**row, "cpu_s": cpu, "wall_s": wall}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-rev", default=None, help="also time best_fit_decreasing of this git revision")
    parser.add_argument("--smoke", action="store_true", help="2,000 items, 1 round, no markdown unless asked")
    parser.add_argument("--markdown", type=Path, default=None, help=f"default {BENCHMARKS_MD} (not with --smoke)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.items, args.rounds = 2000, 1
    old = best_fit_at_revision(args.compare_rev) if args.compare_rev else None
    env = environment()
    load_before = os.getloadavg()
    rows = [bench_workload(name, args, old) for name in WORKLOADS]
    load_after = os.getloadavg()
    command = " ".join(["python tools/bench_packing.py", *(argv if argv is not None else sys.argv[1:])])
    results = {"command": command, "environment": env, "load_average": [load_before, load_after], "rows": rows}
    header = (
        f"Measured {env['date']} on {env['cpu']} ({os.cpu_count()} cores; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after), numpy {np.__version__}, Python {env['python']}, one thread, {args.rounds} "
        f"rounds, `{command}`."
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    markdown = args.markdown if args.markdown is not None else (None if args.smoke else BENCHMARKS_MD)
    if markdown is not None:
        table = format_table([{k: v for k, v in row.items() if not k.endswith("_s")} for row in rows])
        replace_marked(markdown, MARKER, header + "\n\n" + table)
    return results


if __name__ == "__main__":
    main()
