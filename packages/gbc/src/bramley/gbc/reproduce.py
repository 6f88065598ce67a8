"""Mini reproduction of GBC-CLIP (``bramley reproduce gbc``, ``python -m bramley.gbc.reproduce``).

Paper (Hsieh et al., 2024, "Graph-Based Captioning: Enhancing Visual Descriptions by Interconnecting Region
Captions"): CLIP trained on all the captions of GBC graphs (multi-positive) beats CLIP trained on short captions,
composition and relation nodes carry part of the gain, and structure-induced attention (SIA) adds to it.

Here: core's synthetic compositional scenes with generated GBC graphs (:mod:`bramley.gbc.scenes`), a tiny GBC-CLIP
trained at equal steps in five ways: (a) the short caption only; (b) all node captions (multi-positive); (b) without
composition nodes and (b) without relation nodes (the ablations); (c) all captions with SIA. Measured on held-out
scenes: image<->text R@1 with each scene's description (never a training caption), and the compositional probes
(the true relation / count must score above the swapped relation / changed count). Two seeds by default.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RUNS = {
    "a_short": {"mode": "short", "drop": []},
    "b_captions": {"mode": "captions", "drop": []},
    "b_no_composition": {"mode": "captions", "drop": ["composition"]},
    "b_no_relation": {"mode": "captions", "drop": ["relation"]},
    "c_sia": {"mode": "sia", "drop": []},
}
LABELS = {
    "a_short": "(a) short caption",
    "b_captions": "(b) all node captions",
    "b_no_composition": "(b) - composition nodes",
    "b_no_relation": "(b) - relation nodes",
    "c_sia": "(c) all captions + SIA",
}
METRICS = (
    "image_to_text_R@1",
    "image_to_text_R@5",
    "text_to_image_R@1",
    "text_to_image_R@5",
    "relation_probe",
    "count_probe",
)
MODEL = {
    "embed_dim": 64,
    "context_length": 32,
    "text_width": 64,
    "text_heads": 2,
    "text_layers": 2,
    "image_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 2},
}


def recipe(name: str, seed: int, steps: int, num_train: int, num_val: int, batch_size: int):
    """The recipe of one run: the tiny model, the scenes, the run's caption mode and ablation."""
    from bramley.core.recipe import Recipe

    from .train import RECIPES

    run = RUNS[name]
    config = {
        "model": {"name": "gbc_clip", "kwargs": MODEL},
        "data": {"source": "scenes", "num_train": num_train, "num_val": num_val, "drop_vertex_types": run["drop"]},
        "loss": {"mode": run["mode"]},
        "optim": {
            "optimizer": "adamw",
            "lr": 2e-3,
            "weight_decay": 0.1,
            "schedule": "cosine",
            "warmup_steps": steps // 10,
        },
        "train": {
            "steps": steps,
            "batch_size": batch_size,
            "device": "cpu",
            "seed": seed,
            "progress": False,
            "log_every": 10_000,
        },
        "eval": {"every": 10_000},
    }
    return Recipe.build(RECIPES, config)


def run(seeds: Sequence[int], steps: int, num_train: int, num_val: int, batch_size: int) -> dict[str, Any]:
    """Every run of every seed (seeds outer, runs inner: a machine slowing down hits all runs alike)."""
    from bramley.core.train.rng import seed_everything

    from .train import train

    per_seed = []
    for seed in seeds:
        scores = {}
        for name in RUNS:
            start = time.perf_counter()
            seed_everything(seed)
            metrics = train(recipe(name, seed, steps, num_train, num_val, batch_size), None)["metrics"]
            scores[name] = {m: metrics[f"eval_{m}"] for m in METRICS} | {"seconds": time.perf_counter() - start}
            print(f"seed {seed} {name}: " + ", ".join(f"{m} {scores[name][m]:.1f}" for m in METRICS), flush=True)
        per_seed.append({"seed": seed, "scores": scores})
    return {"per_seed": per_seed, "steps": steps, "batch_size": batch_size, "num_train": num_train, "num_val": num_val}


def summarize(results: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Table rows (mean ± std over seeds) and the paper's claims checked on the means."""
    from bramley.core.report import mean_std

    rows, means = [], {}
    for name in RUNS:
        row: dict[str, Any] = {"run": LABELS[name]}
        means[name] = {}
        for m in METRICS:
            mean, std = mean_std([s["scores"][name][m] for s in results["per_seed"]])
            means[name][m] = mean
            row[m] = f"{mean:.1f} ± {std:.1f}"
        rows.append(row)

    def recall(name: str, k: int = 1) -> float:
        return (means[name][f"image_to_text_R@{k}"] + means[name][f"text_to_image_R@{k}"]) / 2

    r1 = recall
    claims = {
        "b_beats_a_R@1": r1("b_captions") > r1("a_short"),
        "b_beats_a_R@5": recall("b_captions", 5) > recall("a_short", 5),
        "composition_nodes_help_count_probe": means["b_captions"]["count_probe"]
        > means["b_no_composition"]["count_probe"],
        "relation_nodes_help_relation_probe": means["b_captions"]["relation_probe"]
        > means["b_no_relation"]["relation_probe"],
        "c_beats_b_R@1": r1("c_sia") > r1("b_captions"),
        "c_beats_b_R@5": recall("c_sia", 5) > recall("b_captions", 5),
        "mean_R@1": {name: r1(name) for name in RUNS},
    }
    return rows, claims


def plot(results: dict[str, Any], path: Path) -> None:
    import numpy as np

    from bramley.core.report import figure

    names = list(RUNS)
    titles = {
        "image_to_text_R@1": "image->text R@1",
        "image_to_text_R@5": "image->text R@5",
        "text_to_image_R@1": "text->image R@1",
        "text_to_image_R@5": "text->image R@5",
        "relation_probe": "relation probe (chance 50)",
        "count_probe": "count probe (chance 50)",
    }
    with figure(path, ncols=len(METRICS), figsize=(3.2 * len(METRICS), 4.2)) as axes:
        for ax, m in zip(axes, METRICS):
            values = np.array([[s["scores"][n][m] for n in names] for s in results["per_seed"]])
            x = np.arange(len(names))
            ax.bar(x, values.mean(0), color=["#999999", "#4c72b0", "#8fa9d6", "#8fa9d6", "#dd8452"])
            for row in values:
                ax.plot(x, row, "k.", markersize=6)
            ax.set_xticks(x, [LABELS[n].replace(" ", "\n", 1) for n in names], fontsize=7)
            ax.set(title=titles[m], ylabel="%")
            if "probe" in m:
                ax.axhline(50, color="k", lw=0.8, ls=":")


def _combine(folders: Sequence[Path], out: Path) -> int:
    """Write the table, plot and results of runs made separately (the same settings, other seeds)."""
    import json

    from bramley.core.errors import DataError
    from bramley.core.report import format_table, write_results

    parts = []
    for folder in folders:
        path = Path(folder) / "results.json"
        if not path.is_file():
            raise DataError(f"{path}: no reproduction results to combine")
        parts.append(json.loads(path.read_text()))
    keys = ("steps", "batch_size", "num_train", "num_val", "quick")
    if any(tuple(p[k] for k in keys) != tuple(parts[0][k] for k in keys) for p in parts):
        raise DataError(f"the runs to combine differ in their settings ({', '.join(keys)})")
    results = {k: parts[0][k] for k in keys}
    results["per_seed"] = [s for p in parts for s in p["per_seed"]]
    results["seconds"] = sum(p["seconds"] for p in parts)
    results["combined_from"] = [str(f) for f in folders]
    rows, claims = summarize(results)
    results["claims"] = claims
    seeds = [s["seed"] for s in results["per_seed"]]
    title = (
        f"GBC-CLIP on synthetic scenes: held-out R@1/R@5 and probes (%), mean ± std over seeds {seeds}, "
        f"{results['steps']} steps of {results['batch_size']}"
    )
    write_results(out, results, rows, columns=["run", *METRICS], title=title)
    plot(results, out / "gbc.png")
    print(format_table([{"claim": k, "holds": v} for k, v in claims.items() if k != "mean_R@1"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.cli import add_threads_argument, torch_threads
    from bramley.core.report import format_table, write_results

    parser = argparse.ArgumentParser(prog="bramley reproduce gbc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-gbc"), help="output directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run (equal for every run)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-train", type=int, default=2000, help="training scenes")
    parser.add_argument("--num-val", type=int, default=300, help="held-out scenes")
    parser.add_argument("--quick", action="store_true", help="one seed, 2 steps, tiny splits (for tests)")
    add_threads_argument(parser)
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        metavar="DIR",
        help="summarize earlier runs instead of training: their results.json, seeds concatenated (e.g. one seed each)",
    )
    args = parser.parse_args(argv)
    if args.combine:
        return _combine(args.combine, args.out)
    seeds, steps, num_train, num_val, batch = args.seeds, args.steps, args.num_train, args.num_val, args.batch_size
    if args.quick:
        seeds, steps, num_train, num_val, batch = seeds[:1], 2, 32, 16, 16
    if steps < 1 or not seeds or batch < 2 or num_train < batch or num_val < 2:
        parser.error("need --steps >= 1, a seed, --batch-size >= 2, --num-train >= batch size, --num-val >= 2")
    start = time.perf_counter()
    with torch_threads(args.threads):  # write_results records the count in the environment
        results = run(seeds, steps, num_train, num_val, batch)
        rows, claims = summarize(results)
        results.update({"claims": claims, "seconds": time.perf_counter() - start, "quick": args.quick})
        title = (
            f"GBC-CLIP on synthetic scenes: held-out R@1/R@5 and probes (%), mean ± std over seeds {list(seeds)}, "
            f"{steps} steps of {batch}"
        )
        write_results(args.out, results, rows, columns=["run", *METRICS], title=title)
    plot(results, args.out / "gbc.png")
    print(format_table([{"claim": k, "holds": v} for k, v in claims.items() if k != "mean_R@1"]))
    print(f"total {results['seconds']:.0f}s; plot {args.out / 'gbc.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
