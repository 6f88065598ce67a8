"""Mini reproduction of FastViT (``bramley reproduce fastvit``, ``python -m bramley.fastvit.reproduce``).

Two claims of the paper, at laptop scale on scikit-learn's bundled digits (``--data digits``, the default: 10
classes upsampled to 64x64 RGB) or on core's procedural images (``--data synthetic``: the calibrated defaults of
:class:`bramley.core.data.SyntheticDataset`, 64 classes of shape x color x texture x count drawn at 32x32 and
upsampled to 64x64 the same way, where digits saturate):

1. **Accuracy vs latency.** A small FastViT (RepMixer stages + an attention stage, reparameterized for inference) is
   trained side by side with a same-budget plain ViT and a MobileOne-style reparameterized CNN, with the same
   recipe; we report test accuracy, parameters and batch-1 CPU latency (all three measured in this process).
2. **RepMixer removes the skip connection.** A stack of RepMixers is evaluated three ways: as trained (branches +
   skip), with only the conv branches fused (MobileOne-style reparameterization, skip kept: ``x + conv(x)``) and
   fully fused (the skip folded into the kernel: ``conv'(x)``). All three give the same outputs; the latency ratio
   skip-kept / fused is the memory-access saving the paper attributes to RepMixer.

Prints which model trains (the trainer reports its progress: a bar on a terminal, a line every few seconds in
logs), the tables, and at the end each claim with the verdict the
measured numbers give (:func:`verdicts`). Writes ``results.json``, ``table.md`` and ``fastvit_reproduction.png`` to
``--out``. With several seeds (``--seeds N``), accuracies are mean +- std over the seeds and latency is timed on the
first seed's models (the architecture, not the weights, sets it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.cli import add_threads_argument, positive_int, torch_threads
from bramley.core.layers import MobileOneBlock, reparameterize_model

from .bench import _interleaved
from .model import FastVit, RepMixer

IMAGE_SIZE = 64
NUM_CLASSES = 10  # digits; the synthetic data has 64
DATA = ("digits", "synthetic")
# Per data set: epochs and seeds. Synthetic: 6400 training images per epoch (5x digits) through three 64-px models,
# 5 epochs (~16 min of CPU for both seeds; at 1 epoch every model sat at 7-13 %, too early to compare them). README:
# measured CPU and wall time, load, and why these sizes. `--seeds` / `--epochs` give more.
DEFAULT_EPOCHS = {"digits": 25, "synthetic": 5}
DEFAULT_SEEDS = {"digits": 1, "synthetic": 2}
DATA_SEED = 0  # the synthetic images are drawn from this seed; the training seeds vary, the data stays the same
#: Largest output difference (absolute) that still counts as "the same function" for 8 stacked fp32 RepMixers.
FUSION_ATOL = 1e-4


# ------------------------------------------------------------------------------------------------------ the models


def small_fastvit(num_classes: int = NUM_CLASSES) -> FastVit:
    """FastViT-SA at toy scale: RepMixer stages 1-3, RepCPE + attention in stage 4 (widths 12-96, ~185k params)."""
    return FastVit(
        layers=(2, 2, 2, 1),
        embed_dims=(12, 24, 48, 96),
        mlp_ratios=(3, 3, 3, 3),
        token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
        pos_embs=(False, False, False, True),
        num_classes=num_classes,
    )


def small_vit(num_classes: int = NUM_CLASSES) -> nn.Module:
    """A plain ViT (timm's VisionTransformer): 8x8 patches -> 64 tokens, width 64, depth 4, 2 heads (~184k)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=IMAGE_SIZE, patch_size=8, embed_dim=64, depth=4, num_heads=2, mlp_ratio=3.0, num_classes=num_classes
    )


class SmallMobileOne(nn.Module):
    """A MobileOne-style CNN: stride-2 MobileOne stem, then depthwise 3x3 + pointwise 1x1 MobileOne block pairs.

    Defaults: widths 32-256, depths 1-2-3-1, two conv branches per block (~185k train-time params).
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (1, 2, 3, 1),
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        act = nn.ReLU
        layers: list[nn.Module] = [MobileOneBlock(3, widths[0], 3, stride=2, act_layer=act, num_conv_branches=2)]
        prev = widths[0]
        for width, depth in zip(widths, depths):
            for i in range(depth):
                stride = 2 if i == 0 else 1
                layers.append(
                    MobileOneBlock(prev, prev, 3, stride=stride, groups=prev, act_layer=act, num_conv_branches=2)
                )
                layers.append(MobileOneBlock(prev, width, 1, act_layer=act, num_conv_branches=2))
                prev = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


# --------------------------------------------------------------------------------------------------------- training


def _loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, label_smoothing=0.1)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    preds = torch.cat([model(chunk).argmax(-1) for chunk in x.split(256)])
    return 100.0 * float((preds == y).float().mean())


def _train(model: nn.Module, data: dict[str, Any], epochs: int, seed: int, batch_size: int) -> dict[str, float]:
    from bramley.core.train import TrainConfig, Trainer

    torch.manual_seed(seed)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.05,
        schedule="cosine",
        warmup_epochs=1 if epochs > 2 else 0,
        seed=seed,
        device="cpu",
        log_every=10_000,
    )
    start = time.perf_counter()
    Trainer(model, cfg, train_data=data["train"], loss_fn=_loss).fit()  # reports its progress (bar or lines)
    return {"train_s": time.perf_counter() - start}


def load_data(name: str, quick: bool = False) -> dict[str, Any]:
    """Train / test tensors of ``name`` at 64x64 RGB, the training set, the class count and a description.

    ``digits``: scikit-learn digits upsampled bilinearly. ``synthetic``: core's procedural images at the calibrated
    defaults (32x32, standardised with train statistics), upsampled the same way (``align_corners=False``), so the
    models and their latency are the digits run's and only the data is harder. ``quick`` keeps 64 images per split.
    """
    if name == "digits":
        from bramley.core.data import digits_tensors

        splits = {split: digits_tensors(split, image_size=IMAGE_SIZE, in_chans=3) for split in ("train", "test")}
        num_classes, about = NUM_CLASSES, f"sklearn digits upsampled to {IMAGE_SIZE}x{IMAGE_SIZE} RGB"
    elif name == "synthetic":
        from bramley.core.data import SyntheticConfig, SyntheticDataset

        config = SyntheticConfig(**({"train_size": 64, "val_size": 0, "test_size": 64} if quick else {}))
        splits = {}
        for split in ("train", "test"):
            x, y = SyntheticDataset(split, config=config, seed=DATA_SEED, normalize=True).tensors()
            splits[split] = (F.interpolate(x, size=IMAGE_SIZE, mode="bilinear", align_corners=False), y)
        num_classes = config.num_classes
        about = (
            f"bramley.core.data.SyntheticDataset defaults ({num_classes} classes, {config.image_size}x"
            f"{config.image_size} RGB, long-tailed train split, balanced test; data seed {DATA_SEED}), standardised "
            f"with train statistics, upsampled to {IMAGE_SIZE}x{IMAGE_SIZE}"
        )
    else:
        raise ValueError(f"data must be one of {DATA}, got {name!r}")
    out: dict[str, Any] = {"name": name, "num_classes": num_classes}
    for split, (x, y) in splits.items():
        if quick:
            x, y = x[:64], y[:64]
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    out["train"] = torch.utils.data.TensorDataset(out["train_x"], out["train_y"])
    out["description"] = f"{about}; train {len(out['train_y'])} / test {len(out['test_y'])}"
    return out


# --------------------------------------------------------------------------------------------------- RepMixer claim


class _SkipKeptMixer(nn.Module):
    """A RepMixer with its conv branches fused but the skip connection kept: ``x + dwconv(x)``."""

    def __init__(self, mixer: RepMixer):
        super().__init__()
        w_mix, b_mix = mixer.mixer.get_kernel_bias()
        w_norm, b_norm = mixer.norm.get_kernel_bias()
        gamma = mixer.layer_scale.gamma.reshape(-1)
        self.conv = nn.Conv2d(mixer.dim, mixer.dim, mixer.kernel_size, padding=mixer.kernel_size // 2, groups=mixer.dim)
        with torch.no_grad():
            self.conv.weight.copy_(gamma.reshape(-1, 1, 1, 1) * (w_mix - w_norm))
            self.conv.bias.copy_(gamma * (b_mix - b_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def repmixer_claim(dim: int, size: int, depth: int, iters: int, seed: int = 0) -> dict[str, Any]:
    """Outputs and CPU latency of ``depth`` stacked RepMixers: as trained, skip kept, fully fused."""
    torch.manual_seed(seed)
    trained = nn.Sequential(*[RepMixer(dim, layer_scale_init_value=0.5) for _ in range(depth)]).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics so that the fusion has something to get wrong
        for m in trained.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    skip_kept = nn.Sequential(*[_SkipKeptMixer(m) for m in trained]).eval()
    fused = reparameterize_model(trained).eval()
    x = torch.randn(1, dim, size, size)
    with torch.no_grad():
        ref = trained(x)
        diffs = {"skip_kept": float((skip_kept(x) - ref).abs().max()), "fused": float((fused(x) - ref).abs().max())}
    lat = _interleaved({"trained": trained, "skip_kept": skip_kept, "fused": fused}, x, iters, warmup=3)
    return {
        "shape": [1, dim, size, size],
        "depth": depth,
        "latency_ms": lat,
        "speedup_fused_vs_skip_kept": lat["skip_kept"] / lat["fused"],
        "speedup_fused_vs_trained": lat["trained"] / lat["fused"],
        "max_abs_diff_vs_trained": diffs,
        "fused_has_skip": any(isinstance(m, _SkipKeptMixer) for m in fused.modules()),
    }


# ------------------------------------------------------------------------------------------------------------- main


def _plot(rows: list[dict[str, Any]], mixer: dict[str, Any], path: Path, data_name: str) -> None:
    from bramley.core.report import figure

    with figure(path, ncols=2, figsize=(10, 4)) as (ax1, ax2):
        for row in rows:
            ax1.errorbar(row["latency_ms"], row["test_acc"], yerr=row.get("test_acc_std", 0.0), fmt="o", capsize=3)
            ax1.annotate(row["model"], (row["latency_ms"], row["test_acc"]), textcoords="offset points", xytext=(5, 5))
        ax1.set_xlabel("CPU latency, batch 1, 64 px (ms)")
        ax1.set_ylabel("test accuracy (%)")
        ax1.set_title(f"{data_name}: accuracy vs latency")
        lat = mixer["latency_ms"]
        ax2.bar(list(lat), list(lat.values()), color=["tab:gray", "tab:orange", "tab:green"])
        ax2.set_ylabel("latency (ms)")
        ax2.set_title(f"{mixer['depth']} RepMixers on {tuple(mixer['shape'])}")


def run(
    out: str | Path,
    quick: bool = False,
    seed: int = 0,
    threads: int | None = 1,
    data: str = "digits",
    seeds: int | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Run both experiments with ``threads`` torch CPU threads (``None``: as they are; restored afterwards); returns
    what is written to ``out/results.json``.

    ``seeds`` training seeds ``seed, seed + 1, ...`` and ``epochs`` per model default to the data set's
    (:data:`DEFAULT_SEEDS`, :data:`DEFAULT_EPOCHS`); ``quick`` trains 1 epoch on 64 images, one seed unless given.
    One thread by default: batch-1 latency is what the paper measures (mobile), and single-thread timings stay
    meaningful on a loaded machine where multi-threaded kernels spin-wait on descheduled workers.
    """
    if data not in DATA:
        raise ValueError(f"data must be one of {DATA}, got {data!r}")
    count = seeds if seeds is not None else (1 if quick else DEFAULT_SEEDS[data])
    if count < 1 or (epochs is not None and epochs < 1):
        raise ValueError(f"need at least one seed and one epoch, got seeds={count}, epochs={epochs}")
    epochs = 1 if quick else (epochs if epochs is not None else DEFAULT_EPOCHS[data])
    with torch_threads(threads):
        return _run(Path(out), quick, list(range(seed, seed + count)), data, epochs)


def _run(out: Path, quick: bool, seeds: list[int], data_name: str, epochs: int) -> dict[str, Any]:
    from bramley.core.report import mean_std, write_results

    start, cpu_start, load_start = time.perf_counter(), time.process_time(), os.getloadavg()
    iters = 2 if quick else 50
    data = load_data(data_name, quick)
    num_classes = data["num_classes"]
    builders = {"FastViT (fused)": small_fastvit, "plain ViT": small_vit, "MobileOne CNN (fused)": SmallMobileOne}
    timed: dict[str, nn.Module] = {}  # the first seed's deployed models
    per_seed: dict[str, list[dict[str, float]]] = {name: [] for name in builders}
    params: dict[str, tuple[int, int]] = {}
    for seed in seeds:
        for name, build in builders.items():
            torch.manual_seed(seed)
            model = build(num_classes=num_classes)
            n_params = sum(p.numel() for p in model.parameters())
            print(f"training {name} ({n_params / 1e3:.0f}k parameters, {epochs} epochs, seed {seed})", flush=True)
            info = _train(model, data, epochs, seed, batch_size=32 if quick else 64)
            model.eval()
            acc_unfused = _accuracy(model, data["test_x"], data["test_y"])
            deploy = reparameterize_model(model)
            acc = _accuracy(deploy, data["test_x"], data["test_y"])
            timed.setdefault(name, deploy)
            params[name] = (n_params, sum(p.numel() for p in deploy.parameters()))
            per_seed[name].append({"test_acc": acc, "test_acc_unfused": acc_unfused, "train_s": info["train_s"]})
    rows = []
    for name, runs in per_seed.items():
        acc, acc_std = mean_std([r["test_acc"] for r in runs])
        row = {
            "model": name,
            "params_k": round(params[name][0] / 1e3, 1),
            "deploy_params_k": round(params[name][1] / 1e3, 1),
            "test_acc": acc,
            **({"test_acc_std": acc_std} if len(seeds) > 1 else {}),
            "test_acc_unfused": mean_std([r["test_acc_unfused"] for r in runs])[0],
            "train_s": round(mean_std([r["train_s"] for r in runs])[0], 1),
        }
        if len(seeds) > 1:
            row["test_acc_seeds"] = [r["test_acc"] for r in runs]
        rows.append(row)
    print(f"timing batch-1 CPU latency of the deployed models ({iters} calls each)", flush=True)
    x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    latency = _interleaved(timed, x, iters, warmup=3)
    for row in rows:
        row["latency_ms"] = latency[row["model"]]
    print("timing RepMixer: as trained, skip kept, fully fused", flush=True)
    mixer = repmixer_claim(dim=64, size=16 if quick else 64, depth=2 if quick else 8, iters=iters, seed=seeds[0])
    mixer_rows = [
        {
            "repmixer": k,
            "latency_ms": v,
            "vs_fused": v / mixer["latency_ms"]["fused"],
            "max_abs_diff": mixer["max_abs_diff_vs_trained"].get(k, 0.0),
        }
        for k, v in mixer["latency_ms"].items()
    ]
    results: dict[str, Any] = {
        "quick": quick,
        "seed": seeds[0],
        "seeds": seeds,
        "data": data_name,
        "data_description": data["description"],
        "epochs": epochs,
        "threads": torch.get_num_threads(),
        "image_size": IMAGE_SIZE,
        "models": rows,
        "repmixer": mixer,
        "repmixer_table": mixer_rows,
    }
    results["claims"] = verdicts(results)
    results["seconds"] = time.perf_counter() - start
    results["cpu_seconds"] = time.process_time() - cpu_start  # this process's CPU time: the wall time when idle
    results["load_average"] = {"start": list(load_start), "end": list(os.getloadavg())}  # 1, 5, 15 min
    columns = ["model", "params_k", "deploy_params_k", "test_acc", "test_acc_unfused", "latency_ms", "train_s"]
    if len(seeds) > 1:
        columns.insert(4, "test_acc_std")
    title = f"FastViT mini reproduction: {data_name} 64x64, CPU batch-1 latency"
    write_results(out, results, rows, columns, title=title)
    from bramley.core.report import format_table

    print(format_table(mixer_rows))
    with (out / "table.md").open("a") as f:
        f.write(f"\n## RepMixer: {mixer['depth']} layers on {tuple(mixer['shape'])}\n\n{format_table(mixer_rows)}\n")
    _plot(rows, mixer, out / "fastvit_reproduction.png", data_name)
    return results


def _accuracy_claim(fastvit: dict[str, Any], vit: dict[str, Any], seeds: list[int]) -> tuple[str, bool]:
    """What the run measured for "FastViT is more accurate than a plain ViT", and whether it supports it.

    One seed: the accuracies and whether FastViT's is higher. Several: mean +- std over the seeds, and the claim holds
    when FastViT's mean is higher by more than two standard errors of the difference of means (seeds as samples).
    """
    if len(seeds) < 2:
        measured = f"test accuracy {fastvit['test_acc']:.1f}% vs {vit['test_acc']:.1f}%"
        return measured, fastvit["test_acc"] > vit["test_acc"]
    gain = fastvit["test_acc"] - vit["test_acc"]
    n = len(seeds)
    two_se = 2 * math.sqrt((fastvit["test_acc_std"] ** 2 + vit["test_acc_std"] ** 2) / n)
    measured = (
        f"test accuracy {fastvit['test_acc']:.1f} ± {fastvit['test_acc_std']:.1f}% vs {vit['test_acc']:.1f} ± "
        f"{vit['test_acc_std']:.1f}% (mean ± std over seeds {', '.join(map(str, seeds))}; gain {gain:+.1f}, "
        f"2 SE {two_se:.1f})"
    )
    return measured, gain > two_se


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims, each with what this run measured and whether that supports it (``holds``)."""
    mixer = results["repmixer"]
    diff = mixer["max_abs_diff_vs_trained"]["fused"]
    speedup = mixer["speedup_fused_vs_skip_kept"]
    rows = {row["model"]: row for row in results["models"]}
    fastvit, vit = rows["FastViT (fused)"], rows["plain ViT"]
    accuracy, more_accurate = _accuracy_claim(fastvit, vit, results.get("seeds", [results["seed"]]))
    claims = [
        {
            "claim": "RepMixer folds its skip connection into one depthwise conv: same outputs, lower latency",
            "measured": f"max |fused - trained| {diff:.1e} (<= {FUSION_ATOL:.0e}), skip left: "
            f"{mixer['fused_has_skip']}, {speedup:.2f}x faster than with the skip kept",
            "holds": diff <= FUSION_ATOL and not mixer["fused_has_skip"] and speedup > 1.0,
        },
        {
            "claim": "FastViT is more accurate than a plain ViT of the same size",
            "measured": accuracy,
            "holds": more_accurate,
        },
        {
            "claim": "FastViT is faster than a plain ViT of the same size",
            "measured": f"batch-1 CPU latency at {results['image_size']} px {fastvit['latency_ms']:.2f} ms vs "
            f"{vit['latency_ms']:.2f} ms",
            "holds": fastvit["latency_ms"] < vit["latency_ms"],
        },
    ]
    return claims


def verdict_lines(claims: list[dict[str, Any]]) -> list[str]:
    """One line per claim: the claim, HOLDS / DOES NOT HOLD, and the measurement behind it."""
    return [f"- {c['claim']}: {'HOLDS' if c['holds'] else 'DOES NOT HOLD'} ({c['measured']})" for c in claims]


def _print_verdicts(claims: list[dict[str, Any]], quick: bool) -> None:
    print("\nFastViT's claims (Vasu et al., ICCV 2023) against this run:")
    print("\n".join(verdict_lines(claims)))
    if quick:
        print("(--quick: 1 epoch on 64 images and a few timings; the verdicts of a quick run say nothing)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bramley reproduce fastvit", description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=DATA, default="digits", help="digits, or core's procedural images")
    parser.add_argument("--out", default=None, help="output directory (runs/reproduce-fastvit[-DATA])")
    parser.add_argument("--quick", action="store_true", help="a few seconds: 1 epoch on 64 images, few timings")
    parser.add_argument("--seed", type=int, default=0, help="the first training seed")
    defaults = ", ".join(f"{n} for {d}" for d, n in DEFAULT_SEEDS.items())
    parser.add_argument("--seeds", type=positive_int, default=None, help=f"how many seeds from --seed ({defaults})")
    defaults = ", ".join(f"{n} for {d}" for d, n in DEFAULT_EPOCHS.items())
    parser.add_argument("--epochs", type=positive_int, default=None, help=f"epochs per model ({defaults})")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    out = args.out or "runs/reproduce-fastvit" + ("" if args.data == "digits" else f"-{args.data}")
    kwargs = {"seed": args.seed, "threads": args.threads, "data": args.data, "seeds": args.seeds, "epochs": args.epochs}
    results = run(out, quick=args.quick, **kwargs)
    _print_verdicts(results["claims"], args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
