"""Mini reproduction of Dataset Reinforcement (`bramley reproduce dataset-reinforcement`).

On core's procedural images (16 classes of shape x color, 16 px, with clutter, occlusion and noise; 800 training
and 640 test images), with core's trainer throughout:

1. a teacher ensemble (``--teachers`` wide CNNs, trained first on plain augmentations);
2. ``reinforce``: the ensemble labels NS = 10 augmentations (RandomResizedCrop + flip + RandAugment +
   RandomErasing) of every training image, top-3 probabilities stored;
3. for each seed, the same small student CNN trained at equal epochs and batch: **plain** (fresh augmentations,
   label-smoothed one-hot targets), **online KD** (the ensemble run on every batch, KL to its probabilities) and
   **reinforced** (p = 0.99 replayed stored augmentations, KL to the densified top-3 targets);
4. test top-1, NLL, ECE (15 bins) and accuracy under corruptions (noise, blur, contrast), and seconds per training
   step. Output: a table, ``results.json``, ``dataset_reinforcement.png``.

The claims checked: reinforced beats plain, is within 2 points of online KD, costs about what plain costs per step
(online KD pays for the teachers), and is better calibrated (lower ECE) than plain.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bramley.core.cli import add_threads_argument, torch_threads
from bramley.core.data.reinforced import AugmentConfig

MODES = ("plain", "online_kd", "reinforced")
LABELS = {"plain": "plain", "online_kd": "online KD", "reinforced": "reinforced (DR)"}
SYNTHETIC = {"textures": ["solid"], "counts": [1], "train_size": 800, "val_size": 0, "test_size": 640, "imbalance": 1.0}
QUICK_SYNTHETIC = {**SYNTHETIC, "train_size": 64, "test_size": 32}
IMAGE_SIZE = 16
STUDENT = {"name": "dr_convnet", "kwargs": {"widths": [8, 16, 32]}}
TEACHER = {"name": "dr_convnet_wide", "kwargs": {"widths": [16, 32, 64]}}
AUGMENT = {"scale": [0.35, 1.0], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def recipe_for(mode: str, model: dict, epochs: int, seed: int, synthetic: dict, store: str | None, p: float = 0.99):
    """The recipe of one run (core's schema): same data, optimizer and budget for every mode."""
    from bramley.core.recipe import Recipe

    from .train import RECIPES

    config = {
        "model": model,
        "data": {
            "source": "synthetic",
            "image_size": IMAGE_SIZE,
            "synthetic": synthetic,
            "reinforced": store,
            "p": p,
            "augment": AUGMENT,
        },
        "loss": {"mode": mode, "label_smoothing": 0.1},
        "optim": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1},
        "train": {"epochs": epochs, "batch_size": 64, "seed": seed, "device": "cpu", "log_every": 10**6},
        "eval": {"every": 10**6},
    }
    return Recipe.build(RECIPES, config)


def run_student(recipe: Any, out: Path, teacher: Any = None) -> dict[str, Any]:
    """Train one run into ``out`` (core's trainer) and evaluate it on the test split; seconds per step included."""
    from bramley.core.checkpoint import load_model
    from bramley.core.classification import train_classifier

    from .data import EvalImages, ReinforcedDataset, raw_images
    from .losses import OnlineDistillationLoss, SoftTargetLoss
    from .metrics import evaluate

    data = recipe.data
    images = raw_images("synthetic", "train", image_size=IMAGE_SIZE, seed=data.seed, synthetic=data.synthetic)
    augment = data.augment_config()
    store = data.reinforced if recipe.loss.mode == "reinforced" else None
    p = data.p if store else 0.0
    train = ReinforcedDataset(
        images, store, p, data.densify, None if store else augment, recipe.loss.label_smoothing, recipe.train.seed
    )
    loss = OnlineDistillationLoss(teacher) if recipe.loss.mode == "online_kd" else SoftTargetLoss()
    if out.exists():  # a run folder of an earlier reproduction: this one replaces it
        shutil.rmtree(out)
    torch.manual_seed(recipe.train.seed)
    start = time.perf_counter()
    fit = train_classifier(recipe, out, train, None, loss_fn=loss)
    seconds = time.perf_counter() - start
    test = raw_images("synthetic", "test", image_size=IMAGE_SIZE, seed=data.seed, synthetic=data.synthetic)
    model = load_model(out)
    metrics = evaluate(model, EvalImages(test, IMAGE_SIZE, augment.mean, augment.std), augment.mean, augment.std)
    steps = int(fit["metrics"]["step"]) + 1
    return {**metrics, "train_seconds": seconds, "steps": steps, "s_per_step": seconds / steps}


def summarize(results: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Table rows (mean ± std over seeds per mode) and the claims."""
    from bramley.core.report import mean_std

    def stat(mode: str, key: str) -> tuple[float, float]:
        return mean_std([run[key] for run in results["students"][mode]])

    rows = []
    teacher = results["teacher_ensemble"]
    rows.append(
        {
            "method": f"teacher ensemble ({results['config']['teachers']}x {TEACHER['name']})",
            "top-1 (%)": f"{teacher['top1']:.2f}",
            "ECE (%)": f"{teacher['ece']:.2f}",
            "NLL": f"{teacher['nll']:.3f}",
            "corrupted top-1 (%)": f"{teacher['robust_top1']:.2f}",
            "s / step": "-",
        }
    )
    for mode in MODES:
        row = {"method": f"student, {LABELS[mode]}"}
        for key, column, digits in [
            ("top1", "top-1 (%)", 2),
            ("ece", "ECE (%)", 2),
            ("nll", "NLL", 3),
            ("robust_top1", "corrupted top-1 (%)", 2),
            ("s_per_step", "s / step", 3),
        ]:
            mean, std = stat(mode, key)
            row[column] = f"{mean:.{digits}f} ± {std:.{digits}f}"
        rows.append(row)
    top1 = {m: stat(m, "top1")[0] for m in MODES}
    ece = {m: stat(m, "ece")[0] for m in MODES}
    step = {m: stat(m, "s_per_step")[0] for m in MODES}
    claims = {
        "reinforced_minus_plain_top1": top1["reinforced"] - top1["plain"],
        "reinforced_minus_online_kd_top1": top1["reinforced"] - top1["online_kd"],
        "reinforced_over_plain_step_time": step["reinforced"] / step["plain"],
        "online_kd_over_plain_step_time": step["online_kd"] / step["plain"],
        "reinforced_minus_plain_ece": ece["reinforced"] - ece["plain"],
    }
    claims["beats_plain"] = claims["reinforced_minus_plain_top1"] > 0
    claims["close_to_online_kd"] = claims["reinforced_minus_online_kd_top1"] > -2.0
    claims["better_calibrated"] = claims["reinforced_minus_plain_ece"] < 0
    return rows, claims


def _cached(folder: Path, recipe: Any, run) -> dict[str, Any]:
    """``run()``'s result, or the one saved in ``folder/run.json`` by an earlier run of the same recipe (so seeds can
    run in separate processes on one ``--out`` and a final call with every seed collects them)."""
    import json

    saved = folder / "run.json"
    if saved.is_file():
        previous = json.loads(saved.read_text())
        if previous.get("recipe") == recipe.to_dict():
            return previous["result"]
    result = run()
    saved.write_text(json.dumps({"recipe": recipe.to_dict(), "result": result}, indent=1) + "\n")
    return result


def readme_table(results: dict[str, Any]) -> str:
    """The README's reproduction table: the summary rows of ``results`` as markdown."""
    from bramley.core.report import format_table

    return format_table(summarize(results)[0])


def plot(results: dict[str, Any], path: Path) -> None:
    """Top-1 and ECE per mode, one dot per seed, the teacher ensemble as a line."""
    from bramley.core.report import figure

    with figure(path, ncols=2, figsize=(10, 3.8)) as (ax1, ax2):
        for ax, key, title in [(ax1, "top1", "test top-1 (%)"), (ax2, "ece", "test ECE (%, lower is better)")]:
            for x, mode in enumerate(MODES):
                values = [run[key] for run in results["students"][mode]]
                ax.bar(x, sum(values) / len(values), color=["#999999", "#4c72b0", "#dd8452"][x], alpha=0.8)
                ax.scatter([x] * len(values), values, color="black", zorder=3, s=12)
            ax.axhline(results["teacher_ensemble"][key], color="green", linestyle="--", label="teacher ensemble")
            ax.set_xticks(range(len(MODES)), [LABELS[m] for m in MODES])
            ax.set_title(title)
            ax.legend(loc="lower right" if key == "top1" else "upper right")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bramley reproduce dataset-reinforcement",
        description="Mini reproduction: students trained plain, with online KD and on reinforced data.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-dataset-reinforcement"))
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke version (tiny data, one seed)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="student seeds (default 0 1)")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default 6)")
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default 15")
    parser.add_argument("--teachers", type=int, default=None, help="ensemble size (default 2)")
    parser.add_argument("--num-augmentations", type=int, default=10, help="NS (default 10)")
    parser.add_argument("--topk", type=int, default=3)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    seeds = args.seeds or ([0] if quick else [0, 1])
    epochs = args.epochs or (2 if quick else 6)
    teacher_epochs = args.teacher_epochs or (2 if quick else 15)
    num_teachers = args.teachers or (1 if quick else 2)
    num_augmentations = 2 if quick else args.num_augmentations
    synthetic = QUICK_SYNTHETIC if quick else SYNTHETIC
    if min(epochs, teacher_epochs, num_teachers, num_augmentations, args.topk) < 1:
        parser.error("epochs, teachers, augmentations and top-k must be >= 1")
    from bramley.core.report import write_results

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with torch_threads(args.threads):  # write_results records the count in the environment
        results = _run(args, seeds, epochs, teacher_epochs, num_teachers, num_augmentations, synthetic)
        rows, claims = summarize(results)
        results.update({"claims": claims, "seconds": time.perf_counter() - t0, "quick": quick})
        title = (
            f"Dataset Reinforcement on synthetic {IMAGE_SIZE} px images ({results['config']['num_classes']} classes, "
            f"{synthetic['train_size']} training images), NS={num_augmentations}, top-{args.topk}, {epochs} student "
            f"epochs; mean ± std over seeds {seeds}"
        )
        write_results(args.out, results, rows, title=title)
    plot(results, args.out / "dataset_reinforcement.png")
    print(
        f"reinforced - plain: {claims['reinforced_minus_plain_top1']:+.2f} pt top-1 "
        f"({'beats' if claims['beats_plain'] else 'DOES NOT beat'} plain); reinforced - online KD: "
        f"{claims['reinforced_minus_online_kd_top1']:+.2f} pt; step time vs plain: reinforced "
        f"{claims['reinforced_over_plain_step_time']:.2f}x, online KD {claims['online_kd_over_plain_step_time']:.2f}x; "
        f"ECE reinforced - plain: {claims['reinforced_minus_plain_ece']:+.2f} pt; total {results['seconds']:.0f}s"
    )
    return 0


def _run(args, seeds, epochs, teacher_epochs, num_teachers, num_augmentations, synthetic) -> dict[str, Any]:
    from bramley.core.checkpoint import load_model

    from .data import EvalImages, raw_images
    from .metrics import evaluate
    from .reinforce import TeacherEnsemble, reinforce

    out: Path = args.out
    augment = AugmentConfig.from_dict({"size": IMAGE_SIZE, **AUGMENT})
    # 1. the teacher ensemble, trained on plain augmentations (one seed per teacher)
    teachers = []
    for t in range(num_teachers):
        folder = out / f"teacher-{t}"
        recipe = recipe_for("plain", TEACHER, teacher_epochs, 100 + t, synthetic, None)
        if not (folder / "model.safetensors").is_file():  # kept from an earlier call on the same --out
            run_student(recipe, folder)
        teachers.append(load_model(folder))
    ensemble = TeacherEnsemble(teachers)
    test = raw_images("synthetic", "test", image_size=IMAGE_SIZE, seed=0, synthetic=synthetic)
    teacher_metrics = evaluate(
        ensemble, EvalImages(test, IMAGE_SIZE, augment.mean, augment.std), augment.mean, augment.std
    )
    # 2. reinforce once
    images = raw_images("synthetic", "train", image_size=IMAGE_SIZE, seed=0, synthetic=synthetic)
    store = out / "reinforced"
    stats = reinforce(
        images, ensemble, store, augment, num_augmentations, args.topk, seed=0, shard_size=512, batch_size=512,
        meta={"teachers": [str(out / f"teacher-{t}") for t in range(num_teachers)]},
    )  # fmt: skip
    # 3. students
    students: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for seed in seeds:
        for mode in ("plain", "reinforced", "online_kd"):  # online KD, the slowest, last
            recipe = recipe_for(mode, STUDENT, epochs, seed, synthetic, str(store) if mode == "reinforced" else None)
            folder = out / f"{mode}-seed{seed}"
            teacher = ensemble if mode == "online_kd" else None
            result = _cached(folder, recipe, lambda r=recipe, f=folder, t=teacher: run_student(r, f, t))
            students[mode].append({"seed": seed, **result})
            print(f"seed {seed} {mode}: top-1 {result['top1']:.2f}  ECE {result['ece']:.2f}", file=sys.stderr)
    return {
        "config": {
            "image_size": IMAGE_SIZE,
            "num_classes": images.num_classes,
            "synthetic": synthetic,
            "student": STUDENT,
            "teacher": TEACHER,
            "teachers": num_teachers,
            "teacher_epochs": teacher_epochs,
            "epochs": epochs,
            "seeds": seeds,
            "num_augmentations": num_augmentations,
            "topk": args.topk,
            "p": 0.99,
            "augment": augment.to_dict(),
            "threads": args.threads,
        },
        "teacher_ensemble": teacher_metrics,
        "reinforce": stats,
        "students": students,
    }


if __name__ == "__main__":
    sys.exit(main())
