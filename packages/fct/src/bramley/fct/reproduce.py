"""Mini reproduction of Forward Compatible Training on bundled digits (`bramley reproduce fct`).

Old model: a small CNN trained on digits 0-4. New model: a larger CNN trained on 0-9. Side information: a SimCLR
encoder trained without labels on the old data (0-4). The evaluation split (all ten classes) is both gallery and
query set (leave-one-out). Cases, as in the paper's tables:

- old/old and new/new: independently trained models, each against its own gallery (lower / upper bound);
- BCT: the new model trained with the old classifier's influence loss, queries against the old gallery;
- FCT without / with side information: new-model queries against the old gallery backfilled by the transformation
  (run through the safetensors backfilling utility, as a deployed system would).

Every seed trains the chain of the bundled ``digits`` recipe (:func:`bramley.fct.pipeline.train_chain`, the ``train``
command) with every case of the table. Writes ``results.json`` (every seed's numbers, the claim and the verdict),
``table.md`` and ``fct_digits.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The paper's headline ordering of cross-model retrieval: BCT < FCT w/o side-info < FCT w/ side-info <= new/new.
ORDERING = [("BCT", "FCT w/o side-info"), ("FCT w/o side-info", "FCT w/ side-info"), ("FCT w/ side-info", "new/new")]
CLAIM = (
    "cross-model retrieval ranks BCT < FCT without side-info < FCT with side-info <= new/new "
    "(Ramanujan et al., CVPR 2022: FCT beats BCT, side information helps, close to a full backfill)"
)
QUICK = ["train.epochs=1", "train.steps=3", "optim.warmup_epochs=0", "loss.transformation.inner_dim=64"]


def mini_recipe(quick: bool = False, objective: str = "simclr"):
    """The bundled ``digits`` recipe with every case of the table; ``quick``: three steps per stage."""
    from bramley.core.recipe import load_recipe

    from .recipe import CASES, SCHEMA

    overrides = [f"loss.side_info.objective={objective}", "train.progress=false", f"eval.cases=[{','.join(CASES)}]"]
    return load_recipe(SCHEMA, "digits", [*overrides, *(QUICK if quick else [])])


def run_seed(recipe, seed: int, work: Path) -> dict[str, dict[str, float]]:
    """Train the chain for one seed (into ``work/seed<seed>``) and evaluate every case; returns ``{row: metrics}``."""
    from .pipeline import train_chain
    from .recipe import CASES

    recipe = copy.deepcopy(recipe)
    recipe.train.seed = seed
    results = train_chain(recipe, work / f"seed{seed}")
    return {CASES[case][0]: metrics for case, metrics in results["cases"].items()}


def summarize(per_seed: list[dict[str, dict[str, float]]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Table rows (mean ± std over seeds) and the summary statistics."""
    from bramley.core.report import mean_std

    from .pipeline import METRIC_KEYS
    from .recipe import CASES

    rows, summary = [], {}
    for case, query, gallery, _ in CASES.values():
        row: dict[str, Any] = {"case": case, "query": query, "gallery": gallery}
        summary[case] = {}
        for key in METRIC_KEYS:
            mean, std = mean_std([run[case][key] for run in per_seed])
            summary[case][key] = {"mean": mean, "std": std}
            row[key] = f"{mean:.1f} ± {std:.1f}"
        rows.append(row)
    return rows, summary


def verdict(ordering: dict[str, bool]) -> str:
    """One line: whether the claim holds on every mean, or which comparisons fail."""
    failed = [claim for claim, holds in ordering.items() if not holds]
    if not failed:
        return "HOLDS on every mean (CMC top-1 and mAP)"
    return f"DOES NOT HOLD: {'; '.join(failed)} fail{'s' if len(failed) == 1 else ''}"


def check_ordering(summary: dict[str, Any]) -> dict[str, bool]:
    """Whether each pair of the paper's ordering holds on the mean CMC top-1 and on the mean mAP."""
    out = {}
    for lower, higher in ORDERING:
        for key in ("top1", "mAP"):
            out[f"{lower} < {higher} ({key})"] = summary[lower][key]["mean"] < summary[higher][key]["mean"]
    return out


def plot(summary: dict[str, Any], path: Path, title: str) -> Path:
    """Grouped bars of CMC top-1 and mAP per case, with the seed std as error bars."""
    from bramley.core.report import figure

    from .recipe import CASES

    cases = [row[0] for row in CASES.values()]
    with figure(path, figsize=(9, 4)) as ax:
        width = 0.38
        for i, key in enumerate(("top1", "mAP")):
            means = [summary[c][key]["mean"] for c in cases]
            stds = [summary[c][key]["std"] for c in cases]
            xs = [j + (i - 0.5) * width for j in range(len(cases))]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label="CMC top-1" if key == "top1" else "mAP")
        ax.set_xticks(range(len(cases)), cases, rotation=15)
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_title(title)
        ax.legend(loc="lower right")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.cli import add_threads_argument, torch_threads

    parser = argparse.ArgumentParser(prog="bramley reproduce fct", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-fct"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one seed, one epoch per stage (a smoke test)")
    parser.add_argument("--side-objective", choices=["simclr", "autoencoder"], default="simclr")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import tempfile

    from bramley.core.report import write_results

    seeds = args.seeds[:1] if args.quick else args.seeds
    recipe = mini_recipe(args.quick, args.side_objective)
    start = time.perf_counter()
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="reproduce-fct-") as work:  # the stages' run folders
        for seed in seeds:
            t = time.perf_counter()
            per_seed.append(run_seed(recipe, seed, Path(work)))
            print(f"seed {seed}: {time.perf_counter() - t:.1f} s", flush=True)
    rows, summary = summarize(per_seed)
    ordering = check_ordering(summary)
    title = f"FCT mini reproduction: digits, old 0-4 / new 0-9, {len(seeds)} seed(s), {recipe.eval.metric} distance"
    results = {
        "title": title,
        "seeds": seeds,
        "quick": args.quick,
        "side_objective": args.side_objective,
        "seconds": time.perf_counter() - start,
        "summary": summary,
        "per_seed": per_seed,
        "claim": CLAIM,
        "paper_ordering": ordering,
        "verdict": verdict(ordering),
        "recipe": recipe.to_dict(),
    }
    write_results(args.out, results, rows, title=title)
    plot(summary, args.out / "fct_digits.png", title)
    print("paper's ordering (mean over seeds):")
    for claim, holds in ordering.items():
        print(f"  {'holds ' if holds else 'FAILS '} {claim}")
    print(f"total {results['seconds']:.1f} s; plot: {args.out / 'fct_digits.png'}")
    print(f"claim: {CLAIM}")
    print(f"verdict: {results['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
