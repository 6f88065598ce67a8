"""Mini reproduction of Matryoshka Representation Learning (`bramley reproduce mrl`).

On scikit-learn's bundled digits (``--data digits``, the default) or on core's procedural images (``--data
synthetic``: 64 classes of shape x color x texture x count where digits saturate), for several seeds, train with
:class:`~bramley.core.train.Trainer`:

- one MRL model (and one MRL-E model) with a 64-d representation and nesting sizes 2, 4, ..., 64;
- independently trained fixed-feature (FF) models, one per size, each with a d-dim representation;

then evaluate every size d with 1-NN top-1 (test images retrieved against the training set, cosine on the
normalised first d features) and a logistic-regression probe, for MRL, MRL-E, FF-d and the largest FF model's
representation truncated to d ("FF-64 truncated"). Retrieval accuracy is also reported against MFLOPs per query for
exact search at each size, shortlist-then-rerank and the funnel. Output: a table, ``results.json``, ``mrl.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bramley.core.registry import create_model
from bramley.core.retrieval import ranking_metrics

from .model import MatryoshkaModel
from .nesting import default_nesting
from .retrieval import MatryoshkaIndex
from .train import MatryoshkaTrainLoss

FEATURE_DIM = 64
DATA = ("digits", "synthetic")
DEFAULT_EPOCHS = {"digits": 30, "synthetic": 10}
DATA_SEED = 0  # the split / image seed; the training seeds vary, the data stays the same (as the digits split)


def make_model(
    feature_dim: int,
    nesting: Sequence[int],
    efficient: bool = False,
    num_classes: int = 10,
    in_features: int = 64,
) -> MatryoshkaModel:
    """The registered ``mrl_mlp`` every model here shares: pixels -> MLP -> ``feature_dim`` features -> heads."""
    return create_model(
        "mrl_mlp",
        num_classes=num_classes,
        feature_dim=feature_dim,
        nesting=list(nesting),
        efficient=efficient,
        in_features=in_features,
    )


def load_data(name: str, quick: bool = False) -> dict[str, Any]:
    """Train and test tensors of ``name`` (``"digits"`` or ``"synthetic"``), the class count and a description.

    ``quick`` shrinks the synthetic splits (640 train / 256 test images) so tests take seconds; digits stay whole.
    """
    if name == "digits":
        from bramley.core.data import DigitsDataset

        train, test = DigitsDataset("train", seed=DATA_SEED), DigitsDataset("test", seed=DATA_SEED)
        about = "scikit-learn digits, 8x8 gray, standardised with train statistics"
    elif name == "synthetic":
        from bramley.core.data import SyntheticConfig, SyntheticDataset

        config = SyntheticConfig(**({"train_size": 640, "val_size": 0, "test_size": 256} if quick else {}))
        train = SyntheticDataset("train", config=config, seed=DATA_SEED, normalize=True)
        test = SyntheticDataset("test", config=config, seed=DATA_SEED, normalize=True)
        about = (
            f"bramley.core.data.SyntheticDataset defaults ({config.num_classes} classes, {config.image_size}x"
            f"{config.image_size} RGB, long-tailed train split, balanced test), standardised with train statistics"
        )
    else:
        raise ValueError(f"data must be one of {DATA}, got {name!r}")
    (xtr, ytr), (xte, yte) = train.tensors(), test.tensors()
    return {
        "name": name,
        "train": (xtr, ytr),
        "test": (xte, yte),
        "num_classes": int(train.num_classes),
        "in_features": int(xtr[0].numel()),
        "description": f"{about}; data seed {DATA_SEED}; {len(ytr)} train / {len(yte)} test images",
    }


def train_model(model: MatryoshkaModel, data, epochs: int, seed: int, label_smoothing: float) -> MatryoshkaModel:
    from bramley.core.train import TrainConfig, Trainer

    cfg = TrainConfig(
        epochs=epochs,
        batch_size=64,
        lr=0.1,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=1 if epochs > 2 else 0,
        clip_grad_norm=2.0,  # MRL-E (one head shared by 6 losses) diverges at lr 0.1 without it; same for every model
        seed=seed,
        device="cpu",
        log_every=10_000,
    )
    trainer = Trainer(model, cfg, train_data=data, loss_fn=MatryoshkaTrainLoss(label_smoothing))
    trainer.fit()
    return trainer.model.eval()


@torch.no_grad()
def features(model: MatryoshkaModel, x: torch.Tensor) -> torch.Tensor:
    return model.eval().forward_features(x).float()


def knn_top1(train: torch.Tensor, ytr: torch.Tensor, test: torch.Tensor, yte: torch.Tensor, dim: int) -> float:
    """1-NN top-1 (%) of ``test`` retrieved against ``train`` at the first ``dim`` features."""
    index = MatryoshkaIndex(train[:, :dim].contiguous())
    return ranking_metrics(index.search(test[:, :dim], 1).indices, yte, ytr)["top1"]


def linear_top1(train: torch.Tensor, ytr: torch.Tensor, test: torch.Tensor, yte: torch.Tensor, dim: int) -> float:
    """Top-1 (%) of a logistic-regression probe trained on the first ``dim`` (standardised) features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with threadpool_limits(1):  # BLAS threads only add spin-waiting on problems this small
        probe.fit(train[:, :dim].numpy(), ytr.numpy())
        return 100.0 * float(probe.score(test[:, :dim].numpy(), yte.numpy()))


def retrieval_curve(
    train: torch.Tensor, ytr: torch.Tensor, test: torch.Tensor, yte: torch.Tensor, sizes: Sequence[int]
) -> dict[str, list[dict[str, float]]]:
    """Top-1 vs MFLOPs/query of MRL embeddings: exact at each size, shortlist-then-rerank, funnel."""
    index = MatryoshkaIndex(train)
    top1 = lambda r: ranking_metrics(r.indices, yte, ytr)["top1"]  # noqa: E731
    exact = [{"dim": d, **_point(index.search(test, 1, d), top1)} for d in sizes]
    shortlist = min(50, index.size)
    rerank = [
        {"shortlist_dim": d, "rerank_dim": sizes[-1], "shortlist": shortlist, **_point(r, top1)}
        for d in sizes[:-1]
        for r in [index.shortlist_rerank(test, d, sizes[-1], shortlist, k=1)]
    ]
    funnels = []
    for start in range(min(2, len(sizes) - 1)):  # funnels from the smallest and the second-smallest size
        dims = sizes[start:]
        lengths = [max(1, min(index.size, 100 >> i)) for i in range(len(dims) - 1)]
        point = _point(index.funnel(test, dims[0], dims[1:], lengths), top1)
        funnels.append({"retrieval_dim": dims[0], "rerank_dims": dims[1:], "shortlists": lengths, **point})
    return {"exact": exact, "shortlist_rerank": rerank, "funnel": funnels}


def _point(result, top1) -> dict[str, float]:
    return {"mflops": result.mflops_per_query, "top1": top1(result)}


def run(
    seeds: Sequence[int],
    epochs: int,
    sizes: Sequence[int],
    label_smoothing: float = 0.1,
    data_name: str = "digits",
    quick: bool = False,
) -> dict[str, Any]:
    from torch.utils.data import TensorDataset

    dataset = load_data(data_name, quick)
    (xtr, ytr), (xte, yte) = dataset["train"], dataset["test"]
    data = TensorDataset(xtr, ytr)
    shape = {"num_classes": dataset["num_classes"], "in_features": dataset["in_features"]}
    methods = ("MRL", "MRL-E", "FF", "FF-trunc")
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        t0 = time.perf_counter()
        torch.manual_seed(seed)
        embeddings: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {m: {} for m in methods}
        for name, efficient in (("MRL", False), ("MRL-E", True)):
            model = make_model(FEATURE_DIM, sizes, efficient, **shape)
            model = train_model(model, data, epochs, seed, label_smoothing)
            ftr, fte = features(model, xtr), features(model, xte)
            embeddings[name] = {d: (ftr, fte) for d in sizes}
        for d in sizes:
            model = train_model(make_model(d, [d], **shape), data, epochs, seed, label_smoothing)
            embeddings["FF"][d] = (features(model, xtr), features(model, xte))
        largest = embeddings["FF"][sizes[-1]]
        embeddings["FF-trunc"] = {d: largest for d in sizes}
        scores = {m: {"knn": {}, "linear": {}} for m in methods}
        for m in methods:
            for d in sizes:
                ftr, fte = embeddings[m][d]
                scores[m]["knn"][d] = knn_top1(ftr, ytr, fte, yte, d)
                scores[m]["linear"][d] = linear_top1(ftr, ytr, fte, yte, d)
        mrl_tr, mrl_te = embeddings["MRL"][sizes[-1]]
        curve = retrieval_curve(mrl_tr, ytr, mrl_te, yte, sizes)
        curve["ff_exact"] = [{"dim": d, "mflops": len(ytr) * d / 1e6, "top1": scores["FF"]["knn"][d]} for d in sizes]
        curve["ff_trunc_exact"] = [
            {"dim": d, "mflops": len(ytr) * d / 1e6, "top1": scores["FF-trunc"]["knn"][d]} for d in sizes
        ]
        per_seed.append({"seed": seed, "scores": scores, "retrieval": curve, "seconds": time.perf_counter() - t0})
        print(f"seed {seed}: {time.perf_counter() - t0:.1f}s", flush=True)
    about = {"data": data_name, "data_description": dataset["description"], "num_classes": dataset["num_classes"]}
    return {"sizes": list(sizes), "seeds": list(seeds), "epochs": epochs, **about, "per_seed": per_seed}


def summarize(results: dict[str, Any], tolerance: float = 1.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mean +- std table rows and the claim checks (MRL within ``tolerance`` points of FF; MRL above truncated FF)."""
    from bramley.core.report import mean_std

    rows, claims = [], {"mrl_matches_ff": {}, "mrl_beats_truncation": {}}
    methods = ("MRL", "MRL-E", "FF", "FF-trunc")
    for d in results["sizes"]:
        row: dict[str, Any] = {"dim": d}
        means = {}
        for kind in ("knn", "linear"):
            for m in methods:
                values = [s["scores"][m][kind][d] for s in results["per_seed"]]
                mean, std = mean_std(values)
                means[(m, kind)] = mean
                row[f"{m} {'1-NN' if kind == 'knn' else 'linear'}"] = f"{mean:.1f} ± {std:.1f}"
        rows.append(row)
        claims["mrl_matches_ff"][d] = all(means[("MRL", k)] >= means[("FF", k)] - tolerance for k in ("knn", "linear"))
        claims["mrl_beats_truncation"][d] = all(means[("MRL", k)] > means[("FF-trunc", k)] for k in ("knn", "linear"))
    small = [d for d in results["sizes"] if d <= results["sizes"][-1] // 8]
    claims["tolerance"] = tolerance
    claims["small_sizes"] = small
    claims["holds"] = all(claims["mrl_matches_ff"].values()) and all(claims["mrl_beats_truncation"][d] for d in small)
    return rows, claims


def retrieval_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Retrieval top-1 vs MFLOPs/query, mean over seeds, one row per configuration."""
    from bramley.core.report import mean_std

    rows = []
    labels = {
        "exact": lambda p: f"MRL exact @{p['dim']}",
        "ff_exact": lambda p: f"FF-{p['dim']} exact",
        "ff_trunc_exact": lambda p: f"FF-{results['sizes'][-1]} truncated exact @{p['dim']}",
        "shortlist_rerank": lambda p: (
            f"MRL shortlist {p['shortlist']} @{p['shortlist_dim']} -> rerank @{p['rerank_dim']}"
        ),
        "funnel": lambda p: f"MRL funnel @{p['retrieval_dim']} -> {p['rerank_dims']} x {p['shortlists']}",
    }
    first = results["per_seed"][0]["retrieval"]
    for key, label in labels.items():
        for i, point in enumerate(first[key]):
            mean, std = mean_std([s["retrieval"][key][i]["top1"] for s in results["per_seed"]])
            rows.append(
                {
                    "method": label(point),
                    "MFLOPs/query": f"{point['mflops']:.4f}",
                    "top-1": f"{mean:.1f} ± {std:.1f}",
                }
            )
    return rows


def plot(results: dict[str, Any], path: Path) -> None:
    import numpy as np

    from bramley.core.report import figure

    sizes = results["sizes"]
    with figure(path, ncols=2, figsize=(11, 4.2)) as axes:
        for m, style in (("MRL", "o-"), ("MRL-E", "s--"), ("FF", "^-"), ("FF-trunc", "x:")):
            values = np.array([[s["scores"][m]["knn"][d] for d in sizes] for s in results["per_seed"]])
            axes[0].errorbar(sizes, values.mean(0), yerr=values.std(0), fmt=style, capsize=3, label=m)
        axes[0].set_xscale("log", base=2)
        title = f"{results.get('data', 'digits')}: 1-NN top-1 (mean ± std)"
        axes[0].set(xlabel="representation size", ylabel="1-NN top-1 (%)", title=title)
        axes[0].set_xticks(sizes, [str(d) for d in sizes])
        axes[0].minorticks_off()
        axes[0].legend()

        def mean_curve(key):
            points = [s["retrieval"][key] for s in results["per_seed"]]
            return np.array([[p["mflops"] for p in points[0]]]), np.array([[p["top1"] for p in run] for run in points])

        for key, style, label in (
            ("exact", "o-", "MRL exact"),
            ("ff_exact", "^-", "FF exact"),
            ("ff_trunc_exact", "x:", "FF-64 truncated exact"),
            ("shortlist_rerank", "D", f"MRL shortlist + rerank@{sizes[-1]}"),
            ("funnel", "*", "MRL funnel"),
        ):
            x, y = mean_curve(key)
            axes[1].plot(x[0], y.mean(0), style, label=label, markersize=9 if key == "funnel" else 6)
        axes[1].set_xscale("log")
        axes[1].minorticks_off()
        axes[1].set(xlabel="MFLOPs / query", ylabel="retrieval top-1 (%)", title="adaptive retrieval (mean over seeds)")
        axes[1].legend(fontsize=8)


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.cli import add_threads_argument, torch_threads
    from bramley.core.report import write_results

    parser = argparse.ArgumentParser(prog="bramley reproduce mrl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=DATA, default="digits", help="digits, or core's procedural images")
    parser.add_argument("--out", type=Path, default=None, help="output directory (runs/reproduce-mrl[-synthetic])")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs per model (default: " + ", ".join(f"{n} for {d}" for d, n in DEFAULT_EPOCHS.items()) + ")",
    )
    parser.add_argument("--quick", action="store_true", help="one seed, 2 epochs, sizes 4 and 64 (for tests)")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path("runs/reproduce-mrl" + ("" if args.data == "digits" else f"-{args.data}"))
    sizes = default_nesting(FEATURE_DIM, start=2)
    seeds, epochs = args.seeds, args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.data]
    if args.quick:
        seeds, epochs, sizes = seeds[:1], 2, [4, 64]
    if epochs < 1 or not seeds:
        parser.error("need --epochs >= 1 and at least one seed")
    t0 = time.perf_counter()
    with torch_threads(args.threads):  # write_results records the count in the environment
        results = run(seeds, epochs, sizes, data_name=args.data, quick=args.quick)
        rows, claims = summarize(results)
        results.update({"claims": claims, "seconds": time.perf_counter() - t0, "quick": args.quick})
        title = f"MRL vs FF on {args.data}: top-1 (%) by representation size, mean ± std over seeds {list(seeds)}"
        retrieval = retrieval_rows(results)
        results["retrieval_table"] = retrieval
        write_results(args.out, results, rows, title=title)
    from bramley.core.report import format_table

    print(f"## Retrieval on {args.data} (database = train split, queries = test split)\n")
    print(format_table(retrieval) + "\n")
    plot(results, args.out / "mrl.png")
    verdict = "HOLDS" if claims["holds"] else "DOES NOT HOLD"
    print(
        f"claim (MRL within {claims['tolerance']:.0f} pt of FF at every size, above FF-64 truncated at sizes "
        f"{claims['small_sizes']}): {verdict}; total {results['seconds']:.0f}s; plot {args.out / 'mrl.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
