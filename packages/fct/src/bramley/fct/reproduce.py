"""Mini reproduction of Forward Compatible Training on bundled digits (`bramley reproduce fct`).

Old model: a small CNN trained on digits 0-4. New model: a larger CNN trained on 0-9. Side information: a SimCLR
encoder trained without labels on the old data (0-4). The evaluation split (all ten classes) is both gallery and
query set (leave-one-out). Cases, as in the paper's tables:

- old/old and new/new: independently trained models, each against its own gallery (lower / upper bound);
- BCT: the new model trained with the old classifier's influence loss, queries against the old gallery;
- FCT without / with side information: new-model queries against the old gallery backfilled by the transformation
  (run through the safetensors backfilling utility, as a deployed system would).

Writes ``results.json`` (every seed's numbers), ``table.md`` and ``fct_digits.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

CASES = [
    ("old/old", "old", "old"),
    ("BCT", "new (BCT)", "old"),
    ("FCT w/o side-info", "new", "h(old)"),
    ("FCT w/ side-info", "new", "h(old, side)"),
    ("new/new", "new", "new"),
    ("BCT new/new", "new (BCT)", "new (BCT)"),
]
METRIC_KEYS = ("top1", "top5", "mAP", "mAP@R")
# The paper's headline ordering of cross-model retrieval: BCT < FCT w/o side-info < FCT w/ side-info <= new/new.
ORDERING = [("BCT", "FCT w/o side-info"), ("FCT w/o side-info", "FCT w/ side-info"), ("FCT w/ side-info", "new/new")]


def mini_config(quick: bool = False, objective: str = "simclr") -> dict[str, Any]:
    """The digits setup: :data:`bramley.fct.pipeline.DEFAULTS`, shrunk to a few steps with ``quick``."""
    from .pipeline import DEFAULTS

    cfg = copy.deepcopy(DEFAULTS)
    cfg["side_info"]["objective"] = objective
    if quick:
        for stage in ("old", "new", "side_info", "transformation"):
            cfg[stage]["train"].update(epochs=1, steps=3, warmup_epochs=0)
        cfg["transformation"]["inner_dim"] = 64
    return cfg


def run_seed(cfg: dict[str, Any], seed: int, work: Path) -> dict[str, dict[str, float]]:
    """Train every model for one seed and evaluate every case; returns ``{case: metrics}``."""
    from bramley.core.retrieval import retrieval_metrics

    from .backfill import load_gallery, save_gallery, transform_gallery
    from .data import build_dataset
    from .pipeline import run_stage
    from .train import embed_dataset

    old = run_stage(cfg, "old", seed=seed)
    new = run_stage(cfg, "new", seed=seed + 1000)
    bct = run_stage(cfg, "new", old_model=old, bct=True, seed=seed + 2000)
    side = run_stage(cfg, "side_info", seed=seed + 3000)
    h_plain = run_stage(cfg, "transformation", old_model=old, new_model=new, side_model=None, seed=seed + 4000)
    h_side = run_stage(cfg, "transformation", old_model=old, new_model=new, side_model=side, seed=seed + 5000)

    test = build_dataset(cfg["data"], "val")
    emb = {name: embed_dataset(m, test)[0] for name, m in (("old", old), ("new", new), ("bct", bct), ("side", side))}
    labels = embed_dataset(old, test)[1]
    gallery = work / f"seed{seed}-old-gallery.safetensors"  # what the old system stored: embeddings + side-info
    save_gallery(gallery, embeddings=emb["old"], side_info=emb["side"], labels=labels)
    plain_gallery = work / f"seed{seed}-old-gallery-noside.safetensors"
    save_gallery(plain_gallery, embeddings=emb["old"], labels=labels)
    for key, h, src in (("h_plain", h_plain, plain_gallery), ("h_side", h_side, gallery)):
        out = work / f"seed{seed}-{key}.safetensors"
        transform_gallery(h, src, out, batch_size=256, resume=False, progress=False)
        emb[key] = load_gallery(out)["embeddings"]

    metric = cfg["eval"]["metric"]
    pairs = {
        "old/old": ("old", "old"),
        "BCT": ("bct", "old"),
        "FCT w/o side-info": ("new", "h_plain"),
        "FCT w/ side-info": ("new", "h_side"),
        "new/new": ("new", "new"),
        "BCT new/new": ("bct", "bct"),
    }
    return {case: retrieval_metrics(emb[q], emb[g], labels, metric=metric) for case, (q, g) in pairs.items()}


def summarize(per_seed: list[dict[str, dict[str, float]]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Table rows (mean ± std over seeds) and the summary statistics."""
    from bramley.core.report import mean_std

    rows, summary = [], {}
    for case, query, gallery in CASES:
        row: dict[str, Any] = {"case": case, "query": query, "gallery": gallery}
        summary[case] = {}
        for key in METRIC_KEYS:
            mean, std = mean_std([run[case][key] for run in per_seed])
            summary[case][key] = {"mean": mean, "std": std}
            row[key] = f"{mean:.1f} ± {std:.1f}"
        rows.append(row)
    return rows, summary


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

    cases = [c for c, _, _ in CASES]
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
    parser = argparse.ArgumentParser(prog="bramley reproduce fct", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-fct"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one seed, one epoch per stage (a smoke test)")
    parser.add_argument("--side-objective", choices=["simclr", "autoencoder"], default="simclr")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these tiny nets)")
    args = parser.parse_args(argv)

    from bramley.core.report import write_results

    torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    cfg = mini_config(args.quick, args.side_objective)
    work = args.out / "galleries"
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    per_seed = []
    for seed in seeds:
        t = time.perf_counter()
        per_seed.append(run_seed(cfg, seed, work))
        print(f"seed {seed}: {time.perf_counter() - t:.1f} s", flush=True)
    rows, summary = summarize(per_seed)
    ordering = check_ordering(summary)
    title = f"FCT mini reproduction: digits, old 0-4 / new 0-9, {len(seeds)} seed(s), {cfg['eval']['metric']} distance"
    results = {
        "title": title,
        "seeds": seeds,
        "quick": args.quick,
        "side_objective": args.side_objective,
        "seconds": time.perf_counter() - start,
        "summary": summary,
        "per_seed": per_seed,
        "paper_ordering": ordering,
        "config": cfg,
    }
    write_results(args.out, results, rows, title=title)
    plot(summary, args.out / "fct_digits.png", title)
    print("paper's ordering (mean over seeds):")
    for claim, holds in ordering.items():
        print(f"  {'holds ' if holds else 'FAILS '} {claim}")
    print(f"total {results['seconds']:.1f} s; plot: {args.out / 'fct_digits.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
