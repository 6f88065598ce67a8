"""Benchmark (a verb, not a test): what reinforced training costs per step, and what reinforcing costs.

Student step time (data loading + forward + backward + optimizer step, one process, no workers) for the three ways
to train at equal epochs: **plain** (a fresh augmentation per sample), **reinforced** (a stored augmentation
replayed, its stored top-k target densified) and **online KD** (a fresh augmentation and the teacher ensemble run on
the batch). Methods run in interleaved rounds, the order rotating each round; the reported ratios are per-round
ratios against plain, median with IQR over the rounds. Then ``reinforce`` throughput (augmented images labelled per
second, teachers included) and bytes stored per training image. Teachers and student are the mini reproduction's
architectures with random weights (time does not depend on the weights).
"""

from __future__ import annotations

import tempfile
from functools import partial
from itertools import cycle
from typing import Any

import torch

from .reproduce import AUGMENT, IMAGE_SIZE, STUDENT, TEACHER

METHODS = ("plain", "reinforced", "online_kd")


def run_bench(
    rounds: int = 7,
    steps: int = 5,
    batch_size: int = 64,
    threads: int | None = None,
    num_images: int = 512,
    num_augmentations: int = 10,
    topk: int = 3,
    num_teachers: int = 2,
) -> dict[str, Any]:
    """Time the three training modes in interleaved rounds, then ``reinforce``; returns the JSON-able results."""
    from bramley.core.bench import interleaved_rounds, summary
    from bramley.core.cli import torch_threads
    from bramley.core.data.reinforced import AugmentConfig
    from bramley.core.registry import create_model
    from bramley.core.report import environment

    from .data import ReinforcedDataset, raw_images
    from .losses import OnlineDistillationLoss, SoftTargetLoss
    from .reinforce import TeacherEnsemble, reinforce

    with torch_threads(threads):
        torch.manual_seed(0)
        synthetic = {"counts": [1], "train_size": num_images, "val_size": 0, "test_size": 0, "imbalance": 1.0}
        images = raw_images("synthetic", "train", image_size=IMAGE_SIZE, synthetic=synthetic)
        augment = AugmentConfig.from_dict({"size": IMAGE_SIZE, **AUGMENT})
        teachers = [create_model(TEACHER["name"], num_classes=images.num_classes, **TEACHER["kwargs"]).eval()]
        teachers += [
            create_model(TEACHER["name"], num_classes=images.num_classes, **TEACHER["kwargs"]).eval()
            for _ in range(num_teachers - 1)
        ]
        ensemble = TeacherEnsemble(teachers)
        with tempfile.TemporaryDirectory() as tmp:
            stats = reinforce(images, ensemble, tmp, augment, num_augmentations, topk, shard_size=256, batch_size=256)
            datasets = {
                "plain": ReinforcedDataset(images, None, 0.0, augment=augment, label_smoothing=0.1),
                "reinforced": ReinforcedDataset(images, tmp, 0.99, label_smoothing=0.1),
            }
            datasets["online_kd"] = datasets["plain"]
            losses = {
                "plain": SoftTargetLoss(),
                "reinforced": SoftTargetLoss(),
                "online_kd": OnlineDistillationLoss(ensemble),
            }
            models = {
                m: create_model(STUDENT["name"], num_classes=images.num_classes, **STUDENT["kwargs"]) for m in METHODS
            }
            optims = {m: torch.optim.SGD(models[m].parameters(), lr=0.01, momentum=0.9) for m in METHODS}
            loaders = {
                m: cycle(torch.utils.data.DataLoader(datasets[m], batch_size=batch_size, shuffle=True, drop_last=True))
                for m in METHODS
            }

            def step(method: str) -> None:
                loss, _ = losses[method](models[method], next(loaders[method]))
                optims[method].zero_grad(set_to_none=True)
                loss.backward()
                optims[method].step()

            for m in METHODS:  # warm-up: first batches, allocator, shard cache
                step(m)
            times = interleaved_rounds({m: partial(step, m) for m in METHODS}, rounds, repeats=steps)
        used_threads, env = torch.get_num_threads(), environment()  # the count the rounds ran with
    ratios = {m: summary([t / p for t, p in zip(times[m], times["plain"])]) for m in METHODS if m != "plain"}
    return {
        "config": {
            "rounds": rounds,
            "steps_per_round": steps,
            "batch_size": batch_size,
            "threads": used_threads,
            "image_size": IMAGE_SIZE,
            "student": STUDENT,
            "teacher": TEACHER,
            "teachers": num_teachers,
            "num_images": num_images,
            "num_augmentations": num_augmentations,
            "topk": topk,
        },
        "step_seconds": {m: summary(times[m]) for m in METHODS},
        "step_time_vs_plain": ratios,
        "reinforce": {k: stats[k] for k in ("augmented_images", "seconds", "images_per_s", "bytes_per_image")},
        "environment": env,
    }


def format_bench(result: dict[str, Any]) -> str:
    """The benchmark as markdown: step times and ratios, reinforce throughput."""
    from bramley.core.report import format_table

    c = result["config"]
    rows = []
    for m in METHODS:
        s = result["step_seconds"][m]
        row = {
            "method": m,
            "ms / step (median)": f"{1e3 * s['median']:.1f}",
            "IQR (ms)": f"{1e3 * s['q1']:.1f}-{1e3 * s['q3']:.1f}",
        }
        if m == "plain":
            row["vs plain (median, IQR)"] = "1.00"
        else:
            q = result["step_time_vs_plain"][m]
            row["vs plain (median, IQR)"] = f"{q['median']:.2f}x ({q['q1']:.2f}-{q['q3']:.2f})"
        rows.append(row)
    r = result["reinforce"]
    return (
        f"Student step ({STUDENT['name']}, batch {c['batch_size']}, {c['image_size']} px, {c['threads']} threads), "
        f"{c['rounds']} interleaved rounds x {c['steps_per_round']} steps:\n\n{format_table(rows)}\n\n"
        f"reinforce: {r['images_per_s']:.0f} augmented images/s ({c['teachers']} teachers {TEACHER['name']}, NS = "
        f"{c['num_augmentations']}, top-{c['topk']}); {r['bytes_per_image']:.0f} bytes stored per training image"
    )
