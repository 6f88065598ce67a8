"""Mini reproduction of SHARCS (`bramley reproduce sharcs`, also `python -m bramley.sharcs.reproduce`).

On scikit-learn's bundled digits (8x8 images as 16 patch tokens), for two seeds,
train with core's :class:`~bramley.core.train.Trainer` the same small ViT (``sharcs_vit_digits``: width 64, 4 blocks
of 4 heads, router after block 1, widths 0.25 / 0.5 / 1.0):

- SHARCS: warm-up epochs at full width, then every sample at the width of its hardness bucket (ground-truth
  probability over the last ``window`` epochs, the paper's three-bucket thresholds), task CE + router BCE;
- each fixed width ``w``, trained the same way (same warm-up at full width, then every sample at ``w``, no router);

then on the test split: top-1 against FLOPs per sample (``torch.utils.flop_counter``, router included) for each fixed
width, SHARCS (router argmax and the confidence knob), and random routing with SHARCS' own width shares (the same
average FLOPs). Output: a table, ``results.json``, ``sharcs.png`` and SHARCS' seed-0 model (``model-seed0/``, what
``bramley sharcs bench --checkpoint`` measures).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, TensorDataset

from bramley.core.registry import create_model

from .evaluate import accuracy_vs_flops, routed_outputs
from .hardness import HardnessTracker
from .train import IndexedDataset, SharcsLossSection, SharcsTrainLoss

MODEL = "sharcs_vit_digits"
THRESHOLDS = {0.25: [0.7, 1.0], 0.5: [0.4, 0.9], 1.0: [0.0, 0.5]}  # the paper's main config
KNOB = (0.5, 0.7, 0.9)
SETTINGS = {
    "full": {"epochs": 30, "warmup_epochs": 8, "window": 2, "train_size": None, "batch_size": 32, "lr": 2e-3},
    "quick": {"epochs": 3, "warmup_epochs": 1, "window": 1, "train_size": 256, "batch_size": 64, "lr": 2e-3},
}
PAPER = (
    "Paper (Table 1, RoBERTa-base on GLUE, 3 widths): SHARCS matches or beats the full model's accuracy at about "
    "2x fewer FLOPs (e.g. QQP, MNLI, SST-2 within ~1 pt at ~2x speed-up) and beats every fixed width of equal cost."
)


def load_digits(train_size: int | None) -> dict[str, Any]:
    from bramley.core.data import DigitsDataset

    train, test = DigitsDataset("train", seed=0, in_chans=3), DigitsDataset("test", seed=0, in_chans=3)
    (xtr, ytr), (xte, yte) = train.tensors(), test.tensors()
    if train_size is not None:
        xtr, ytr = xtr[:train_size], ytr[:train_size]
    return {"train": (xtr, ytr), "test": test, "test_tensors": (xte, yte)}


def train_one(data: dict[str, Any], seed: int, setting: dict[str, Any], fixed_width: float | None) -> Any:
    """One model: SHARCS (``fixed_width=None``) or a fixed-width baseline, trained the same way."""
    from bramley.core.train import TrainConfig, Trainer

    torch.manual_seed(seed)
    model = create_model(MODEL, num_classes=10)
    xtr, ytr = data["train"]
    loss = SharcsLossSection(
        thresholds=dict(THRESHOLDS),
        window=setting["window"],
        warmup_epochs=setting["warmup_epochs"],
        fixed_width=fixed_width,
    )
    tracker = HardnessTracker(len(ytr), model.widths, loss.thresholds, loss.window, loss.warmup_epochs, seed=seed)
    cfg = TrainConfig(
        epochs=setting["epochs"],
        batch_size=setting["batch_size"],
        optimizer="adamw",
        lr=setting["lr"],
        weight_decay=0.05,
        schedule="cosine",
        warmup_epochs=1,
        seed=seed,
        device="cpu",
        log_every=10_000,
        progress=False,
    )
    dataset = IndexedDataset(TensorDataset(xtr, ytr))  # no augmentation: a 1-pixel shift of an 8x8 digit is large
    trainer = Trainer(model, cfg, train_data=dataset, loss_fn=SharcsTrainLoss(tracker, loss), callbacks=[tracker])
    trainer.fit()
    return trainer.model.eval(), tracker.bucket_sizes()


def random_routing(model: Any, test: Dataset, share_index: torch.Tensor, seed: int, draws: int = 20) -> float:
    """Top-1 (%) when each test sample goes to a random width, with exactly SHARCS' width counts (so the same
    average FLOPs): the mean over ``draws`` random permutations of SHARCS' routes."""
    out = routed_outputs(model, test, ())
    correct = (out["predictions"] == out["labels"].unsqueeze(0)).float()
    gen = torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(draws):
        index = share_index[torch.randperm(len(share_index), generator=gen)]
        accs.append(100.0 * float(correct.gather(0, index.unsqueeze(0)).mean()))
    return statistics.fmean(accs)


def run(seeds: Sequence[int], quick: bool, out: Path) -> dict[str, Any]:
    setting = SETTINGS["quick" if quick else "full"]
    data = load_digits(setting["train_size"])
    test = data["test"]
    per_seed = []
    for seed in seeds:
        t0 = time.perf_counter()
        rows: dict[str, dict[str, Any]] = {}
        sharcs, buckets = train_one(data, seed, setting, None)
        table = accuracy_vs_flops(sharcs, test, KNOB)
        for row in table:
            if row["mode"].startswith("SHARCS"):
                rows[row["mode"]] = row
        argmax = next(r for r in table if r["mode"] == "SHARCS (router argmax)")
        with torch.no_grad():
            index = routed_outputs(sharcs, test, ())["router_logits"].argmax(-1)
        rows["random routing (SHARCS shares)"] = {
            "mode": "random routing (SHARCS shares)",
            "top1": random_routing(sharcs, test, index, seed),
            "mean_width": argmax["mean_width"],
            "mflops": argmax["mflops"],
            "flops_vs_full": argmax["flops_vs_full"],
        }
        for w in sharcs.widths:
            fixed, _ = train_one(data, seed, setting, w)
            row = next(r for r in accuracy_vs_flops(fixed, test) if r["mode"] == f"width {w:g}")
            rows[f"fixed width {w:g}"] = {**row, "mode": f"fixed width {w:g}"}
        if seed == seeds[0]:
            from bramley.core.checkpoint import save_pretrained

            save_pretrained(sharcs, out / f"model-seed{seed}")
        per_seed.append(
            {"seed": seed, "buckets_last_epoch": buckets, "rows": rows, "seconds": time.perf_counter() - t0}
        )
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {"setting": setting, "seeds": list(seeds), "summary": summarize(per_seed), "per_seed": per_seed}


def summarize(per_seed: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and standard deviation of top-1) over seeds of every row."""
    summary = []
    for mode in per_seed[0]["rows"]:
        values = [s["rows"][mode] for s in per_seed]
        top1 = [v["top1"] for v in values]
        summary.append(
            {
                "mode": mode,
                "top1": statistics.fmean(top1),
                "top1_std": statistics.pstdev(top1),
                "mean_width": statistics.fmean(v["mean_width"] for v in values),
                "mflops": statistics.fmean(v["mflops"] for v in values),
                "flops_vs_full": statistics.fmean(v["flops_vs_full"] for v in values),
            }
        )
    return summary


def merge(files: Sequence[Path]) -> dict[str, Any]:
    """One result from runs of single seeds (e.g. run in parallel): their per-seed rows, summarized together."""
    import json

    runs = [json.loads(Path(f).read_text()) for f in files]
    if any(r["setting"] != runs[0]["setting"] for r in runs):
        raise ValueError("the runs to merge were made with different settings")
    per_seed = [s for r in runs for s in r["per_seed"]]
    seeds = [s["seed"] for s in per_seed]
    return {
        "setting": runs[0]["setting"],
        "seeds": seeds,
        "summary": summarize(per_seed),
        "per_seed": per_seed,
        "seconds": sum(r["seconds"] for r in runs),
        "merged_from": [str(f) for f in files],
    }


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| model | top-1 (%) | mean width | MFLOPs / sample | FLOPs vs full |",
        "|---|---|---|---|---|",
    ]
    for r in summary:
        lines.append(
            f"| {r['mode']} | {r['top1']:.2f} ± {r['top1_std']:.2f} | {r['mean_width']:.3f} | {r['mflops']:.2f} | "
            f"{r['flops_vs_full']:.2f}x |"
        )
    return "\n".join(lines)


def plot(summary: Sequence[dict[str, Any]], path: Path) -> None:
    from bramley.core.report import figure

    groups = (
        ("fixed", "o", "-", "fixed width (trained the same way)"),
        ("SHARCS", "s", "--", "SHARCS (argmax, confidence knob)"),
        ("random", "x", "none", "random routing, SHARCS' shares"),
    )
    with figure(path, figsize=(6, 4)) as ax:
        for prefix, marker, style, label in groups:
            rows = [r for r in summary if r["mode"].startswith(prefix)]
            x, y, err = ([r[k] for r in rows] for k in ("mflops", "top1", "top1_std"))
            ax.errorbar(x, y, err, marker=marker, linestyle=style, label=label)
        ax.set_xlabel("MFLOPs per sample (torch.utils.flop_counter)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title("SHARCS on digits (mean of seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.cli import add_threads_argument, torch_threads

    parser = argparse.ArgumentParser(prog="bramley reproduce sharcs", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-sharcs"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--quick", action="store_true", help="a few epochs on 256 images (seconds; for tests)")
    add_threads_argument(parser)
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="merge results.json files of single seeds")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):  # the environment records the count used
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from bramley.core.cli import write_json
    from bramley.core.report import environment

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.merge:
        results = merge(args.merge)
    else:
        results = run(args.seeds, args.quick, args.out)
        results["seconds"] = time.perf_counter() - t0
    results["environment"] = environment()
    results["paper"] = PAPER
    table = markdown_table(results["summary"])
    print(table)
    write_json(args.out / "results.json", results, echo=False)
    plot(results["summary"], args.out / "sharcs.png")
    print(f"wrote {args.out / 'results.json'} and {args.out / 'sharcs.png'} ({results['seconds']:.0f} s of training)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
