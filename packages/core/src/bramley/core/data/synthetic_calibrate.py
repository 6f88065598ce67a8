"""How hard is a dataset? Three pixel baselines on the procedural images and on the bundled digits, same run.

``python -m bramley.core.data.synthetic_calibrate --out DIR`` trains, for each seed, on the train split and scores
top-1 (%) on the test split:

- ``ridge``: a closed-form linear classifier (ridge regression onto one-hot labels, standardised pixels, the ridge
  strength picked on the val split from a fixed grid);
- ``ncm``: nearest class mean of the standardised pixels (Euclidean);
- ``cnn@<E>ep``: a three-layer CNN (16-32-64 channels, BatchNorm, global pooling) trained for E epochs of AdamW
  (one-cycle lr up to 3e-3, batch 64, one CPU thread by default), for each E of ``--cnn-epochs``; with its training
  seconds.

The digits (8x8 gray, 10 classes, ``bundled`` extra) are scored by the same code, so the two rows compare.
Writes ``results.json`` (every seed, every score, the configs, the environment) and ``table.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .synthetic import SyntheticConfig, SyntheticDataset, with_knobs

RIDGE_GRID = (1e-1, 1e1, 1e3, 1e5, 1e7)


def _standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    flat = train.flatten(1).double()
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    return [(x.flatten(1).double() - mean) / std for x in (train, *others)]


def ridge_top1(data: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> tuple[float, float]:
    """Test top-1 (%) of ridge regression onto one-hot labels, and the ridge strength the val split chose."""
    (xtr, ytr), (xva, yva), (xte, yte) = data["train"], data["val"], data["test"]
    ztr, zva, zte = (torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype)], 1) for z in _standardise(xtr, xva, xte))
    gram, rhs = ztr.T @ ztr, ztr.T @ F.one_hot(ytr, num_classes).double()
    eye = torch.eye(len(gram), dtype=gram.dtype)
    weights = {lam: torch.linalg.solve(gram + lam * eye, rhs) for lam in RIDGE_GRID}
    best = max(RIDGE_GRID, key=lambda lam: ((zva @ weights[lam]).argmax(1) == yva).double().mean().item())
    return 100.0 * ((zte @ weights[best]).argmax(1) == yte).double().mean().item(), best


def ncm_top1(data: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int) -> float:
    """Test top-1 (%) of the nearest class mean on standardised pixels."""
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    ztr, zte = _standardise(xtr, xte)
    means = torch.zeros(num_classes, ztr.shape[1], dtype=ztr.dtype).index_add_(0, ytr, ztr)
    means /= torch.bincount(ytr, minlength=num_classes).clamp_min(1)[:, None]
    return 100.0 * (torch.cdist(zte, means).argmin(1) == yte).double().mean().item()


def tiny_cnn(in_chans: int, num_classes: int) -> nn.Sequential:
    """Conv-BN-ReLU x3 (16, 32, 64 channels; max-pool after the first two), global average pool, linear."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(zip((in_chans, 16, 32), (16, 32, 64))):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.MaxPool2d(2)] if i < 2 else []
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def cnn_top1(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int, epochs: int, seed: int
) -> tuple[float, float]:
    """Test top-1 (%) of :func:`tiny_cnn` after ``epochs`` epochs of AdamW, and its training seconds."""
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    mean, std = xtr.mean(dim=(0, 2, 3), keepdim=True), xtr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = tiny_cnn(xtr.shape[1], num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * -(-len(xtr) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(xtr), generator=generator).split(64):
            loss = F.cross_entropy(model(xtr[batch]), ytr[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in xte.split(512)])
    return 100.0 * (predictions == yte).double().mean().item(), seconds


def score(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int, cnn_epochs: Sequence[int], seed: int
) -> dict[str, float]:
    """Every baseline on one dataset: ``ridge``, ``ridge_lambda``, ``ncm``, ``cnn@<E>ep`` and its ``seconds``."""
    ridge, lam = ridge_top1(data, num_classes)
    scores = {"ridge": ridge, "ridge_lambda": lam, "ncm": ncm_top1(data, num_classes)}
    for epochs in cnn_epochs:
        scores[f"cnn@{epochs}ep"], scores[f"cnn@{epochs}ep seconds"] = cnn_top1(data, num_classes, epochs, seed)
    return scores


def baselines(cnn_epochs: Sequence[int]) -> list[str]:
    """The score columns, in table order."""
    return ["ridge", "ncm", *(f"cnn@{e}ep" for e in cnn_epochs)]


def synthetic_data(config: SyntheticConfig, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {split: SyntheticDataset(split, config=config, seed=seed).tensors() for split in ("train", "val", "test")}


def digits_data(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from .digits import DigitsDataset

    return {split: DigitsDataset(split, seed=seed, normalize=False).tensors() for split in ("train", "val", "test")}


def calibrate(
    seeds: Sequence[int], config: SyntheticConfig, cnn_epochs: Sequence[int], digits: bool = True
) -> dict[str, Any]:
    """Scores of every baseline on the synthetic ``config`` (and on digits) for each seed (data and training seed)."""
    datasets: dict[str, Any] = {"synthetic": {"config": dataclasses.asdict(config), "num_classes": config.num_classes}}
    if digits:
        datasets["digits"] = {"config": "DigitsDataset defaults, 8x8 gray, pixels in [0, 1]", "num_classes": 10}
    for name, info in datasets.items():
        info["per_seed"] = []
        for seed in seeds:
            t0 = time.perf_counter()
            data = synthetic_data(config, seed) if name == "synthetic" else digits_data(seed)
            rendered = time.perf_counter() - t0
            scores = score(data, info["num_classes"], cnn_epochs, seed)
            sizes = {split: len(y) for split, (_, y) in data.items()}
            info["per_seed"].append({"seed": seed, **scores, "data_seconds": rendered, "sizes": sizes})
            print(
                f"{name} seed {seed}: " + ", ".join(f"{k} {scores[k]:.1f}" for k in baselines(cnn_epochs)), flush=True
            )
    return {"seeds": list(seeds), "cnn_epochs": list(cnn_epochs), "ridge_grid": list(RIDGE_GRID), "datasets": datasets}


def table_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per dataset: chance and each baseline as mean ± std over seeds (top-1 %)."""
    from ..report import mean_std

    rows = []
    for name, info in results["datasets"].items():
        row = {"data": name, "classes": str(info["num_classes"]), "chance": f"{100 / info['num_classes']:.1f}"}
        columns = baselines(results["cnn_epochs"])
        for key in columns + [f"{c} seconds" for c in columns if c.startswith("cnn")]:
            mean, std = mean_std([s[key] for s in info["per_seed"]])
            row[key] = f"{mean:.1f} ± {std:.1f}"
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    from ..cli import add_threads_argument, positive_int, torch_threads
    from ..report import write_results

    parser = argparse.ArgumentParser(
        prog="python -m bramley.core.data.synthetic_calibrate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("runs/synthetic-calibration"), help="output directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data and training seeds")
    parser.add_argument("--cnn-epochs", type=positive_int, nargs="+", default=[3, 15], help="tiny CNN budgets")
    add_threads_argument(parser)
    parser.add_argument("--no-digits", action="store_true", help="score the synthetic data only")
    parser.add_argument("--set", nargs="*", default=[], metavar="KNOB=VALUE", help="SyntheticConfig fields (JSON)")
    args = parser.parse_args(argv)
    config = with_knobs(SyntheticConfig(), _parse_knobs(parser, args.set))
    t0 = time.perf_counter()
    with torch_threads(args.threads):  # write_results records the count in the environment
        results = calibrate(args.seeds, config, args.cnn_epochs, digits=not args.no_digits)
        results.update({"seconds": time.perf_counter() - t0, "threads": args.threads})
        title = f"Pixel baselines, test top-1 (%), mean ± std over seeds {args.seeds}"
        write_results(args.out, results, table_rows(results), title=title)
    return 0


def _parse_knobs(parser: argparse.ArgumentParser, pairs: Sequence[str]) -> dict[str, Any]:
    import json

    knobs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            parser.error(f"--set takes KNOB=VALUE, got {pair!r}")
        try:
            knobs[key] = json.loads(value)
        except json.JSONDecodeError:
            knobs[key] = value
    return knobs


if __name__ == "__main__":
    sys.exit(main())
