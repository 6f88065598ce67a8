"""Mini reproduction of MobileCLIP's multi-modal reinforced training (``bramley reproduce mobileclip``).

A teacher CLIP (a larger MobileCLIP-S0-shaped model) is trained first on a separate, clean set of procedural images
with full captions. It then reinforces the student's training set: per image 4 stored augmentations with the
teacher's image embeddings, 3 synthetic captions from :class:`~bramley.mobileclip.train.TemplateCaptioner` (the
CoCa stand-in) and the teacher's text embeddings, written to and read back from DataCompDR-format tar shards. A small
student is trained at equal epochs on the noisy web-style captions alone (plain CLIP loss) and on the reinforced
shards (distillation, no teacher in the loop). Zero-shot top-1 on class-name prompts and image<->text R@1 on the test
split are measured every epoch, for two seeds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bramley.core.clip_eval import ClipTokenizer
from bramley.core.registry import create_model
from bramley.core.train import Trainer

from .data import read_shards, write_shards
from .train import (
    ClipTrainLoss,
    ImageTextData,
    PlainImageText,
    ReinforcedImageText,
    ReinforcedLossSection,
    TemplateCaptioner,
    clamp_logit_scale,
    evaluate_image_text,
    reinforce,
    synthetic_image_text,
)

CONTEXT = 16
TEACHER = dict(
    embed_dim=64,
    image_kwargs={"layers": [1, 1, 2, 1], "embed_dims": [16, 32, 64, 128]},
    text_kwargs={"layers": 2, "width": 64, "heads": 4, "context_length": CONTEXT},
)
STUDENT = dict(
    embed_dim=32,
    image_kwargs={"layers": [1, 1, 1, 1], "embed_dims": [8, 16, 32, 64]},
    text_kwargs={"layers": 1, "width": 32, "heads": 2, "context_length": CONTEXT},
)
METRICS = ("zero_shot_top1", "image_to_text_R@1", "text_to_image_R@1")


def _train(model, dataset, loss_fn, epochs: int, seed: int, batch_size: int, evaluate) -> tuple[list[dict], float]:
    """Core's trainer, AdamW (beta2 0.95, wd 0.2 as the paper's recipe), cosine; per-epoch evaluation."""
    curve: list[dict[str, float]] = []

    def eval_fn(m, loader) -> dict[str, float]:
        metrics = evaluate(m)
        curve.append(metrics)
        return metrics

    cfg = dict(
        epochs=epochs,
        batch_size=batch_size,
        optimizer="adamw",
        lr=2e-3,
        betas=(0.9, 0.95),
        weight_decay=0.2,
        warmup_epochs=1,
        schedule="cosine",
        device="cpu",
        seed=seed,
        progress=False,
        log_every=10**9,
    )
    trainer = Trainer(model, cfg, dataset, loss_fn, eval_data=dataset, eval_fn=eval_fn, callbacks=[clamp_logit_scale])
    start = time.perf_counter()
    trainer.fit()
    return curve, (time.perf_counter() - start) / max(trainer.step, 1)


def run(seeds: Sequence[int], epochs: int, teacher_epochs: int, sizes: dict[str, int], out: Path) -> dict[str, Any]:
    tokenizer = ClipTokenizer(context_length=CONTEXT)
    easy = dict(textures=("solid",), counts=(1,), clutter=2)  # 16 classes: shape x color
    student_data = ImageTextData(train_size=sizes["train"], test_size=sizes["test"], caption_noise=0.5, **easy)
    teacher_data = ImageTextData(train_size=sizes["teacher"], test_size=sizes["test"], data_seed=1, **easy)
    augment = student_data.augment()
    test = synthetic_image_text(student_data, "test", full_captions=True)

    def evaluate(model) -> dict[str, float]:
        metrics = evaluate_image_text(getattr(model, "module", model), test, tokenizer, augment)
        return {k: metrics[k] for k in METRICS}

    # 1. the teacher: clean, full captions, its own images
    torch.manual_seed(100)
    teacher = create_model("mobileclip_s0", **TEACHER)
    clean = synthetic_image_text(teacher_data, "train", full_captions=True)
    captioner = TemplateCaptioner(clean.attributes, seed=1)
    captions = [captioner(i, None, c, 1)[0] for i, c in enumerate(clean.captions)]  # varied full phrasings
    t0 = time.perf_counter()
    teacher_curve, _ = _train(
        teacher,
        PlainImageText(clean.images, captions, augment, tokenizer, 100),
        ClipTrainLoss(ReinforcedLossSection()),
        teacher_epochs,
        100,
        64,
        evaluate,
    )
    teacher_seconds = time.perf_counter() - t0
    teacher.eval()

    # 2. reinforce the student's training set (DataCompDR format, written and read back)
    train = synthetic_image_text(student_data, "train")
    t0 = time.perf_counter()
    samples = reinforce(
        train.images,
        train.captions,
        [teacher],
        TemplateCaptioner(train.attributes, 0),
        tokenizer,
        augment,
        num_augmentations=4,
        num_synthetic=3,
        seed=0,
    )
    shards = write_shards(samples, out / "reinforced" / "%05d.tar", maxcount=1000)
    samples = list(read_shards([str(p) for p in shards], embed_dim=TEACHER["embed_dim"], require_image=True))
    reinforce_seconds = time.perf_counter() - t0

    # 3. students, plain vs reinforced, equal epochs
    section = ReinforcedLossSection(
        mode="reinforced", weights=(0.0, 1.0), teacher_scales=[100.0], teacher_dims=[TEACHER["embed_dim"]]
    )
    runs: dict[str, dict[str, Any]] = {"plain": {}, "reinforced": {}}
    for seed in seeds:
        torch.manual_seed(seed)
        curve, step_s = _train(
            create_model("mobileclip_s0", **STUDENT),
            PlainImageText(train.images, train.captions, augment, tokenizer, seed),
            ClipTrainLoss(ReinforcedLossSection()),
            epochs,
            seed,
            64,
            evaluate,
        )
        runs["plain"][str(seed)] = {"curve": curve, "step_seconds": step_s}
        torch.manual_seed(seed)
        curve, step_s = _train(
            create_model("mobileclip_s0", **STUDENT),
            ReinforcedImageText(samples, augment, tokenizer, seed),
            ClipTrainLoss(section),
            epochs,
            seed,
            64,
            evaluate,
        )
        runs["reinforced"][str(seed)] = {"curve": curve, "step_seconds": step_s}
    return {
        "seeds": list(seeds),
        "epochs": epochs,
        "teacher_epochs": teacher_epochs,
        "sizes": sizes,
        "teacher": {"curve": teacher_curve, "seconds": teacher_seconds},
        "reinforce_seconds": reinforce_seconds,
        "shards": len(shards),
        "runs": runs,
    }


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def summarize(results: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The table rows (final metrics, mean ± std over seeds) and the claims checked."""
    from bramley.core.report import mean_std

    rows = []
    finals = {}
    for method, runs in results["runs"].items():
        row: dict[str, Any] = {"student": method}
        for metric in METRICS:
            mean, std = mean_std([r["curve"][-1][metric] for r in runs.values()])
            row[metric] = f"{mean:.1f} ± {std:.1f}"
            finals[(method, metric)] = mean
        row["s/step"] = f"{_mean([r['step_seconds'] for r in runs.values()]):.3f}"
        rows.append(row)
    teacher_final = results["teacher"]["curve"][-1]
    rows.append({"student": "teacher (reference)", **{m: f"{teacher_final[m]:.1f}" for m in METRICS}, "s/step": ""})
    # learning efficiency: the first epoch where reinforced (mean over seeds) reaches plain's final zero-shot top-1
    epochs = results["epochs"]
    reinforced_curve = [
        _mean([r["curve"][e]["zero_shot_top1"] for r in results["runs"]["reinforced"].values()]) for e in range(epochs)
    ]
    target = finals[("plain", "zero_shot_top1")]
    reached = next((e + 1 for e, v in enumerate(reinforced_curve) if v >= target), None)
    claims = {
        "reinforced_more_accurate": all(finals[("reinforced", m)] > finals[("plain", m)] for m in METRICS),
        "epochs_to_plain_final": reached,
        "fraction_of_plain_epochs": None if reached is None else reached / epochs,
        "step_time_ratio_reinforced_over_plain": _mean(
            [r["step_seconds"] for r in results["runs"]["reinforced"].values()]
        )
        / _mean([r["step_seconds"] for r in results["runs"]["plain"].values()]),
    }
    return rows, claims


def readme_table(results: dict[str, Any]) -> str:
    """The README's reproduction table (regenerated from ``results.json`` and checked against it by a test)."""
    from bramley.core.report import format_table

    rows, claims = summarize(results)
    reached = claims["epochs_to_plain_final"]
    efficiency = "never" if reached is None else f"after {reached} of {results['epochs']} epochs"
    return (
        format_table(rows)
        + f"\n\nReinforced reaches plain's final zero-shot top-1 {efficiency}; reinforced / plain step time "
        f"{claims['step_time_ratio_reinforced_over_plain']:.2f}; total {results['seconds'] / 60:.1f} min."
    )


def plot(results: dict[str, Any], path: Path) -> None:
    from bramley.core.report import figure

    with figure(path, ncols=2, figsize=(11, 4.2)) as axes:
        for ax, metric in zip(axes, ("zero_shot_top1", "image_to_text_R@1"), strict=True):
            for method, color in (("plain", "tab:gray"), ("reinforced", "tab:blue")):
                runs = list(results["runs"][method].values())
                xs = range(1, results["epochs"] + 1)
                ax.plot(
                    xs,
                    [_mean([r["curve"][e][metric] for r in runs]) for e in range(len(xs))],
                    color=color,
                    marker="o",
                    label=f"{method} student (mean of {len(runs)} seeds)",
                )
            ax.axhline(results["teacher"]["curve"][-1][metric], color="tab:green", ls="--", label="teacher")
            ax.set_xlabel("epoch")
            ax.set_ylabel(f"{metric} (%)")
            ax.legend()
        axes[0].set_title("zero-shot top-1 on class-name prompts")
        axes[1].set_title("image->text R@1 (test split, full captions)")


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.cli import add_threads_argument, torch_threads
    from bramley.core.report import write_results

    parser = argparse.ArgumentParser(prog="bramley reproduce mobileclip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-mobileclip"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=16, help="student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="one seed, 2 epochs, tiny sets (for tests)")
    parser.add_argument("--readme", type=Path, default=None, help="also put the table into this README's markers")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    sizes = {"train": 512, "test": 256, "teacher": 2048}
    seeds, epochs, teacher_epochs = args.seeds, args.epochs, args.teacher_epochs
    if args.quick:
        seeds, epochs, teacher_epochs, sizes = seeds[:1], 2, 1, {"train": 128, "test": 64, "teacher": 128}
    if epochs < 1 or teacher_epochs < 1 or not seeds:
        parser.error("need --epochs >= 1, --teacher-epochs >= 1 and at least one seed")
    t0 = time.perf_counter()
    with torch_threads(args.threads):  # write_results records the count in the environment
        results = run(seeds, epochs, teacher_epochs, sizes, args.out)
        rows, claims = summarize(results)
        results.update({"claims": claims, "seconds": time.perf_counter() - t0, "quick": args.quick})
        title = f"MobileCLIP mini reproduction: plain vs reinforced student, {epochs} epochs, seeds {list(seeds)}"
        write_results(args.out, results, rows, title=title)
    plot(results, args.out / "mobileclip.png")
    if args.readme is not None:
        from bramley.core.report import replace_marked

        replace_marked(args.readme, "reproduction", readme_table(results))
    print(
        f"reinforced more accurate on every metric: {claims['reinforced_more_accurate']}; reaches plain's final "
        f"zero-shot top-1 after {claims['epochs_to_plain_final']} of {epochs} epochs; step time reinforced / plain "
        f"{claims['step_time_ratio_reinforced_over_plain']:.2f}; total {results['seconds']:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
