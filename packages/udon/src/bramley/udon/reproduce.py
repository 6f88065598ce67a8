"""Mini reproduction of UDON (`bramley reproduce udon`, `python -m bramley.udon.reproduce`).

Four domains made here that differ in difficulty and class count (:mod:`bramley.udon.data`): ``digits`` (10
classes), ``rotated_digits`` (40: digit x turn), ``longtail`` (64 procedural classes with clutter and a 20x long
tail) and ``shapes`` (16 clean procedural classes). One small ConvNet backbone, trained from scratch with core's
trainer, for each seed:

- joint training with one head, domains sampled uniformly (``joint-uniform``) or in proportion to their size
  (``joint-size``);
- UDON with round-robin domain sampling (``udon-static``) and with dynamic sampling (``udon-dynamic``);
- the assembly of per-domain specialists (one model per domain, each domain embedded by its own specialist: an
  oracle that knows the domain of every image).

Every method takes the same number of training steps (the specialists' together). Evaluation is UnED's protocol on
each domain's test split (query = index, the query itself excluded): mMP@5 and R@1 against the merged index of all
domains (the benchmark's number) and against the domain's own index. Output: a table, ``results.json``,
``udon.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bramley.core.cli import add_threads_argument, torch_threads
from bramley.core.recipe import load_recipe
from bramley.core.report import figure, mean_std, write_results

from .data import MINI_DOMAINS, EvalImages, MultiDomainDataset, mini_domain, num_mini_classes
from .train import RECIPES, embed_parts, label_table, make_trainer
from .uned import evaluate_descriptors

METHODS = ("joint-uniform", "joint-size", "udon-static", "udon-dynamic", "specialists")
DATA_SEED = 0  # the domains stay the same; the training seeds vary


def _recipe(method: str, args: argparse.Namespace, seed: int, epochs: int, domains: Sequence[str]):
    name = "udon_joint" if method.startswith(("joint", "specialist")) else "udon"
    sampler = {"joint-uniform": "uniform", "joint-size": "size", "udon-static": "round_robin"}.get(method, "dynamic")
    widths = "[16, 32, 64]" if not args.quick else "[8, 16]"
    overrides = [
        f"model.name={name}",
        f"model.kwargs={{backbone: convnet, backbone_kwargs: {{widths: {widths}}}}}",
        "data.source=mini",
        f"data.domains=[{', '.join(domains)}]",
        f"data.image_size={args.image_size}",
        f"data.sampler={sampler}",
        f"data.update_every={args.update_every}",
        "loss.backbone_lr_scale=1.0",  # from scratch: the paper's x0.01 is for fine-tuning a pretrained ViT
        "loss.frozen_epochs=0",
        "optim.optimizer=adamw",
        f"optim.lr={args.lr}",
        "optim.weight_decay=1e-6",
        "optim.schedule=cosine",
        f"train.epochs={epochs}",
        f"train.batch_size={args.batch_size}",
        "train.device=cpu",
        f"train.seed={seed}",
        "train.progress=false",
        "train.log_every=1000",
        f"eval.every={epochs + 1}",
    ]
    if name == "udon":
        overrides.append("model.kwargs.teacher_dim=256")
        overrides.append("model.kwargs.student_dim=64")
    else:
        overrides.append("model.kwargs.embed_dim=64")
    return load_recipe(RECIPES, "smoke", overrides)


def _train(recipe, domains: Sequence[str], image_size: int) -> torch.nn.Module:
    train = MultiDomainDataset(
        [(d, mini_domain(d, "train", image_size, DATA_SEED)) for d in domains], [num_mini_classes(d) for d in domains]
    )
    trainer, model = make_trainer(recipe, None, train, None)
    trainer.fit()
    return model.eval()


def run_seed(args: argparse.Namespace, seed: int, test: EvalImages) -> dict[str, Any]:
    """Train every method with ``seed``; returns ``{method: UnED table on the test splits}``."""
    domains = list(args.domains)
    out: dict[str, Any] = {}
    for method in args.methods:
        start = time.perf_counter()
        torch.manual_seed(seed)
        if method == "specialists":
            # `epochs` passes over its own domain: together, the steps of one shared run
            descriptors = {}
            for domain in domains:
                model = _train(_recipe(method, args, seed, args.epochs, [domain]), [domain], args.image_size)
                part = EvalImages({(domain, "test"): test.parts[(domain, "test")]})
                descriptors.update(embed_parts(model, part))
        else:
            model = _train(_recipe(method, args, seed, args.epochs, domains), domains, args.image_size)
            descriptors = embed_parts(model, test)
        out[method] = evaluate_descriptors(descriptors, label_table(test), "test", 5, domains)
        out[method]["seconds"] = time.perf_counter() - start
        mean = out[method]["mean"]
        print(
            f"seed {seed} {method:14s} merged mMP@5 {100 * mean['merged_mmp@5']:.1f}  separate mMP@5 "
            f"{100 * mean['separate_mmp@5']:.1f}  ({out[method]['seconds']:.0f} s)",
            flush=True,
        )
    return out


def summarize(runs: dict[int, dict[str, Any]], methods: Sequence[str], domains: Sequence[str]) -> list[dict]:
    """Table rows: per method, merged-index mMP@5 per domain and its mean, separate-index mean, R@1 mean (percent,
    mean +- std over seeds)."""
    rows = []
    for method in methods:
        row: dict[str, Any] = {"method": method}

        def cell(values: list[float]) -> str:
            m, s = mean_std([100 * v for v in values])
            return f"{m:.1f} ± {s:.1f}"

        for d in domains:
            row[d] = cell([r[method]["merged"][d]["mmp@5"] for r in runs.values()])
        row["mean mMP@5"] = cell([r[method]["mean"]["merged_mmp@5"] for r in runs.values()])
        row["mean R@1"] = cell([r[method]["mean"]["merged_r@1"] for r in runs.values()])
        row["separate mMP@5"] = cell([r[method]["mean"]["separate_mmp@5"] for r in runs.values()])
        rows.append(row)
    return rows


def plot(path: Path, runs: dict[int, dict[str, Any]], methods: Sequence[str], domains: Sequence[str]) -> None:
    """Grouped bars: merged-index mMP@5 per domain and the mean, per method (mean over seeds, std as error bars)."""
    groups = [*domains, "mean"]
    width = 0.8 / len(methods)
    with figure(path, figsize=(9, 4)) as ax:
        for i, method in enumerate(methods):
            values = []
            for g in groups:
                if g == "mean":
                    values.append([100 * r[method]["mean"]["merged_mmp@5"] for r in runs.values()])
                else:
                    values.append([100 * r[method]["merged"][g]["mmp@5"] for r in runs.values()])
            stats = [mean_std(v) for v in values]
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(groups))]
            ax.bar(xs, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=method, capsize=2)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("mMP@5 (%), merged index, test")
        ax.set_title(f"UDON mini reproduction ({len(runs)} seeds)")
        ax.legend(fontsize=8, ncols=3)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``epochs`` resolved (default 16; ``--quick`` 1)."""
    parser = argparse.ArgumentParser(prog="bramley reproduce udon", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-udon"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=None, help="epochs per method (default 16; --quick 1)")
    parser.add_argument("--domains", nargs="+", default=list(MINI_DOMAINS), choices=MINI_DOMAINS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--image-size", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--update-every", type=int, default=20, help="dynamic sampler period (batches)")
    add_threads_argument(parser)
    parser.add_argument("--quick", action="store_true", help="one seed, one epoch, a narrower backbone (a test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
    args.epochs = args.epochs or (1 if args.quick else 16)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with torch_threads(args.threads):  # write_results records the count in the environment
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    test = EvalImages({(d, "test"): mini_domain(d, "test", args.image_size, DATA_SEED) for d in args.domains})
    runs = {seed: run_seed(args, seed, test) for seed in args.seeds}
    rows = summarize(runs, args.methods, args.domains)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(args.out / "udon.png", runs, args.methods, args.domains)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = {"quick": args.quick, "settings": settings, "runs": {str(s): r for s, r in runs.items()}}
    results["seconds"] = time.perf_counter() - start
    write_results(args.out, results, rows, title="UDON mini reproduction: mMP@5 / R@1 (%), merged index, test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
