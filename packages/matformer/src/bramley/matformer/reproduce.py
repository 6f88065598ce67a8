"""Mini reproduction of MatFormer (`bramley reproduce matformer`, `python -m bramley.matformer.reproduce`).

Claim (Devvrit et al., NeurIPS 2024): one jointly trained MatFormer holds nested sub-models that are as good as the
same sizes trained separately; Mix'n'Match sub-models, never trained explicitly, land on the accuracy-vs-size curve;
and the sub-models agree with the full model more than independently trained models do (consistency).

Two tasks, two seeds, on this machine's CPU:

- **MatViT** on scikit-learn's digits (8 x 8, patch 2: 16 patches + class token), width 64, 4 blocks, MLP 256
  nested {32, 64, 128, 256}: top-1 on the held-out test split.
- **MatLM** on byte tokens of this Python's standard library (every 20th file held out), width 64, 4 blocks, MLP 256
  nested {32, 64, 128, 256}, context 64: validation loss (nats per byte).

Equal total compute: the MatFormer trains ``S`` steps, each running all four granularities on one batch; each
baseline (a dense model with that FFN size) trains ``S`` steps on the same batches, so the four baselines together
cost what the MatFormer costs. Same optimizer, schedule and data order for all (core's trainer, AdamW, cosine).

Consistency: the share of test images (MatViT) or of validation tokens (MatLM, greedy next token: the acceptance
rate of greedy speculative decoding) where a sub-model's top-1 prediction equals the full model's; for the baselines
the small dense model against the full-size dense model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bramley.core.registry import create_model
from bramley.core.train import TrainConfig, Trainer
from bramley.core.train.rng import seed_everything

from .model import MatFormerModel
from .nested import granularity_specs, mix_n_match_specs, num_parameters
from .train import JointLoss

VIT = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=4, num_heads=4, mlp_hidden=256, num_classes=10)
LM = dict(dim=64, depth=4, num_heads=4, mlp_hidden=256, max_seq_len=64)
SEQ_LEN = 64
BATCH = {"vit": 32, "lm": 16}


# ---------------------------------------------------------------------------------------------------------- data
def _digits(seed: int) -> tuple[torch.utils.data.TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    from bramley.core.data import DigitsDataset

    train = DigitsDataset("train", seed=seed, image_size=8, in_chans=1).tensors()
    test = DigitsDataset("test", seed=seed, image_size=8, in_chans=1).tensors()
    return torch.utils.data.TensorDataset(*train), test


def _stdlib(train_tokens: int, val_tokens: int) -> tuple[Any, Any]:
    """Windows of the stdlib's files, every 20th file held out, read only as far as the token budgets need."""
    from .data import text_datasets

    return text_datasets("stdlib", SEQ_LEN, val_fraction=0.05, max_tokens=train_tokens, max_val_tokens=val_tokens)


# --------------------------------------------------------------------------------------------------------- train
def _train(model: torch.nn.Module, data: Any, steps: int, batch_size: int, lr: float, seed: int) -> float:
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        optimizer="adamw",
        lr=lr,
        betas=(0.9, 0.95),
        weight_decay=0.05,
        schedule="cosine",
        warmup_steps=max(1, steps // 20),
        clip_grad_norm=1.0,
        device="cpu",
        progress=False,
        log_every=10**9,
        seed=seed,
    )
    start = time.perf_counter()
    Trainer(model, cfg, train_data=data, loss_fn=JointLoss()).fit()
    return time.perf_counter() - start


def _build(kind: str, seed: int, **kwargs: Any) -> MatFormerModel:
    seed_everything(seed)
    if kind == "vit":
        return create_model("matvit", **{**VIT, **kwargs})
    return create_model("matlm", **{**LM, **kwargs})


@torch.no_grad()
def _predict(model: MatFormerModel, inputs: torch.Tensor, spec: Any = None) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk, ffn=spec) for chunk in inputs.split(256)])


def _score(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> float:
    if kind == "vit":
        return 100.0 * float((logits.argmax(-1) == targets).float().mean())
    return float(F.cross_entropy(logits.flatten(0, 1), targets.flatten()))


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return 100.0 * float((a.argmax(-1) == b.argmax(-1)).float().mean())


def run_task(kind: str, seed: int, steps: int, batch_size: int, quick: bool) -> dict[str, Any]:
    """Train the MatFormer and the four baselines of one task and seed; measure every sub-model."""
    if kind == "vit":
        train, (inputs, targets) = _digits(seed)
        lr = 2e-3
    else:
        train, val = _stdlib(20_000 if quick else batch_size * steps * (SEQ_LEN + 1), 4_000 if quick else 60_000)
        inputs, targets = val.inputs_and_targets()
        lr = 2e-3
    matformer = _build(kind, seed)
    seconds = {"matformer": _train(matformer, train, steps, batch_size, lr, seed)}
    grans = granularity_specs(matformer)
    full_logits = _predict(matformer, inputs)
    rows: dict[str, list[dict[str, Any]]] = {"matformer": [], "baseline": [], "mix_n_match": []}
    baseline_logits = {}
    for spec in grans:
        logits = _predict(matformer, inputs, list(spec))
        rows["matformer"].append(
            {
                "ffn": spec[0],
                "params": num_parameters(matformer, list(spec)),
                "score": _score(kind, logits, targets),
                "agreement": _agreement(logits, full_logits),
            }
        )
        baseline = _build(kind, seed, mlp_hidden=spec[0], granularities=[1])
        seconds[f"baseline_{spec[0]}"] = _train(baseline, train, steps, batch_size, lr, seed)
        baseline_logits[spec[0]] = _predict(baseline, inputs)
        rows["baseline"].append(
            {
                "ffn": spec[0],
                "params": num_parameters(baseline),
                "score": _score(kind, baseline_logits[spec[0]], targets),
            }
        )
    largest = baseline_logits[grans[-1][0]]
    for row in rows["baseline"]:
        row["agreement"] = _agreement(baseline_logits[row["ffn"]], largest)
    for spec in mix_n_match_specs(matformer):
        logits = _predict(matformer, inputs, list(spec))
        rows["mix_n_match"].append(
            {
                "ffn": list(spec),
                "params": num_parameters(matformer, list(spec)),
                "score": _score(kind, logits, targets),
                "agreement": _agreement(logits, full_logits),
            }
        )
    return {"kind": kind, "seed": seed, "steps": steps, "batch_size": batch_size, "rows": rows, "seconds": seconds}


# -------------------------------------------------------------------------------------------------------- claims
def _interpolate(params: float, curve: list[tuple[float, float]]) -> float:
    xs, ys = zip(*sorted(curve))
    return float(np.interp(params, xs, ys))


def summarize(runs: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The table (mean over seeds) and the claims, per task."""
    table, claims = [], {}
    for kind in ("vit", "lm"):
        mine = [r for r in runs if r["kind"] == kind]
        if not mine:
            continue
        higher_better = kind == "vit"
        metric = "top-1 %" if kind == "vit" else "val loss (nats/byte)"
        sizes = [row["ffn"] for row in mine[0]["rows"]["matformer"]]
        deltas, consistency = [], []
        for i, size in enumerate(sizes):
            mat = [r["rows"]["matformer"][i] for r in mine]
            base = [r["rows"]["baseline"][i] for r in mine]
            mat_score, base_score = (statistics.mean(x["score"] for x in rows) for rows in (mat, base))
            mat_agree, base_agree = (statistics.mean(x["agreement"] for x in rows) for rows in (mat, base))
            delta = mat_score - base_score if higher_better else base_score - mat_score  # > 0: MatFormer better
            deltas.append(delta)
            if i < len(sizes) - 1:
                consistency.append(mat_agree - base_agree)
            table.append(
                {
                    "task": "MatViT digits" if kind == "vit" else "MatLM stdlib",
                    "metric": metric,
                    "FFN": size,
                    "params": mat[0]["params"],
                    "MatFormer": mat_score,
                    "separate": base_score,
                    "MatFormer agreement %": mat_agree,
                    "separate agreement %": base_agree,
                }
            )
        # Mix'n'Match on the curve: distance to the piecewise-linear MatFormer curve, per seed, in the metric's units
        gaps = []
        for r in mine:
            curve = [(row["params"], row["score"]) for row in r["rows"]["matformer"]]
            for row in r["rows"]["mix_n_match"]:
                gap = row["score"] - _interpolate(row["params"], curve)
                gaps.append(gap if higher_better else -gap)  # > 0: above the curve (better)
        seed_spread = statistics.mean(
            abs(mine[0]["rows"]["matformer"][i]["score"] - mine[-1]["rows"]["matformer"][i]["score"])
            for i in range(len(sizes))
        )
        tolerance = max(seed_spread, 0.5 if kind == "vit" else 0.01)
        claims[kind] = {
            "metric": metric,
            "matformer_minus_separate": deltas,
            "nested_matches_separate": all(d >= -tolerance for d in deltas),
            "mix_n_match_gap_mean": statistics.mean(gaps),
            "mix_n_match_gap_worst": min(gaps),
            "mix_n_match_on_curve": min(gaps) >= -tolerance,
            "agreement_gain": consistency,
            "more_consistent": all(c > 0 for c in consistency),
            "tolerance": tolerance,
        }
    return table, claims


def plot(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Score vs parameters (MatFormer granularities, separate models, Mix'n'Match) and agreement, per task."""
    from bramley.core.report import figure

    kinds = [k for k in ("vit", "lm") if any(r["kind"] == k for r in runs)]
    with figure(path, nrows=len(kinds), ncols=2, figsize=(10, 4 * len(kinds)), squeeze=False) as axes:
        for row_axes, kind in zip(axes, kinds):
            score_ax, agree_ax = row_axes
            for r in (r for r in runs if r["kind"] == kind):
                tag = f"seed {r['seed']}"
                for name, style in (("matformer", "o-"), ("baseline", "s--"), ("mix_n_match", "x")):
                    rows = sorted(r["rows"][name], key=lambda x: x["params"])
                    label = {"matformer": "MatFormer", "baseline": "separate", "mix_n_match": "Mix'n'Match"}[name]
                    score_ax.plot(
                        [x["params"] / 1e3 for x in rows], [x["score"] for x in rows], style, label=f"{label} {tag}"
                    )
                    if name != "mix_n_match":
                        agree_ax.plot(
                            [x["ffn"] for x in rows], [x["agreement"] for x in rows], style, label=f"{label} {tag}"
                        )
            title = "MatViT on digits" if kind == "vit" else "MatLM on the Python stdlib"
            score_ax.set(xlabel="parameters (thousands)", ylabel="top-1 %" if kind == "vit" else "val loss (nats/byte)")
            score_ax.set_title(title)
            agree_ax.set(xlabel="FFN hidden size", ylabel="agreement with the full model %", xscale="log")
            agree_ax.set_title(f"{title}: consistency")
            score_ax.legend(fontsize=6)
            agree_ax.legend(fontsize=6)


CLAIMS = {
    "nested_matches_separate": "each nested sub-model is within the tolerance of (or better than) its separately "
    "trained twin",
    "mix_n_match_on_curve": "no Mix'n'Match model falls below the universal model's curve by more than the tolerance",
    "more_consistent": "every smaller sub-model agrees with the full model more often than the separate model of that "
    "size agrees with the separate full-size model",
}


def readme_section(results: dict[str, Any], table: str) -> str:
    """The README's reproduction section body: the measured table and each claim, holding or not."""
    env = results["environment"]
    cfg = results["config"]
    lines = [
        f"Measured {env['date']} on {env['cpu']} (torch {env['torch']}, {env['cpu_capability']}), "
        f"`bramley reproduce matformer --jobs {results['jobs']}`: {cfg['vit_steps']} MatViT and "
        f"{cfg['lm_steps']} MatLM steps per model, seeds {results['seeds']}, "
        f"{results['seconds'] / 60:.0f} min wall on a shared machine. "
        "Scores are top-1 % (higher is better) or validation loss (lower is better); agreement is the % of "
        "predictions equal to the full-size model's of the same family.",
        "",
        table.strip(),
        "",
    ]
    for kind, c in results["claims"].items():
        deltas = ", ".join(f"{d:+.3f}" for d in c["matformer_minus_separate"])
        gains = ", ".join(f"{g:+.1f}" for g in c["agreement_gain"])
        lines.append(
            f"- {'MatViT' if kind == 'vit' else 'MatLM'} (tolerance {c['tolerance']:.3f}, the mean gap between seeds):"
        )
        for claim, text in CLAIMS.items():
            word = "holds" if c[claim] else "does not hold"
            detail = {
                "nested_matches_separate": f"MatFormer better than separate by {deltas} (h/8 .. h)",
                "mix_n_match_on_curve": f"gap to the curve: mean {c['mix_n_match_gap_mean']:+.3f}, worst "
                f"{c['mix_n_match_gap_worst']:+.3f}",
                "more_consistent": f"agreement gain {gains} points (h/8, h/4, h/2)",
            }[claim]
            lines.append(f"  - `{kind}:{claim}: {word}`: {text}; {detail}.")
    return "\n".join(lines) + "\n"


def _one_thread() -> None:
    torch.set_num_threads(1)


def _run_job(job: tuple[str, int, int, int, bool]) -> dict[str, Any]:
    return run_task(*job)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the reproduction; write ``results.json``, ``table.md`` and ``matformer.png`` into ``--out``."""
    from bramley.core.report import write_results

    parser = argparse.ArgumentParser(prog="bramley reproduce matformer", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-matformer"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tasks", nargs="+", choices=["vit", "lm"], default=["vit", "lm"])
    parser.add_argument("--vit-steps", type=int, default=600, help="optimizer steps of every MatViT run")
    parser.add_argument("--lm-steps", type=int, default=450, help="optimizer steps of every MatLM run")
    parser.add_argument("--jobs", type=int, default=2, help="task/seed runs in parallel (one thread each)")
    parser.add_argument("--quick", action="store_true", help="a few steps, one seed: checks the pipeline only")
    parser.add_argument("--readme", type=Path, default=None, help="also write the section into this README")
    args = parser.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    vit_steps, lm_steps = (2, 2) if args.quick else (args.vit_steps, args.lm_steps)
    start = time.perf_counter()
    jobs = [
        (kind, seed, vit_steps if kind == "vit" else lm_steps, BATCH[kind], args.quick)
        for seed in seeds
        for kind in args.tasks
    ]
    if args.jobs > 1 and len(jobs) > 1 and not args.quick:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no inherited thread pools
        with ProcessPoolExecutor(min(args.jobs, len(jobs)), mp_context=context, initializer=_one_thread) as pool:
            runs = list(pool.map(_run_job, jobs))
    else:
        runs = [_run_job(job) for job in jobs]
    for run in runs:
        print(f"{run['kind']} seed {run['seed']}: {sum(run['seconds'].values()):.0f} s of training")
    table, claims = summarize(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, args.out / "matformer.png")
    results = {
        "quick": args.quick,
        "seeds": seeds,
        "config": {
            "vit": VIT,
            "lm": {**LM, "seq_len": SEQ_LEN},
            "vit_steps": vit_steps,
            "lm_steps": lm_steps,
            "batch": BATCH,
        },
        "jobs": args.jobs,
        "claims": claims,
        "runs": runs,
        "seconds": time.perf_counter() - start,
    }
    path = write_results(args.out, results, table, title="MatFormer mini reproduction (mean of seeds)")
    if args.readme is not None:
        import json

        from bramley.core.report import replace_marked

        text = (args.out / "table.md").read_text().split("\n\n", 1)[1]
        replace_marked(args.readme, "reproduction", readme_section(json.loads(path.read_text()), text))
    for kind, c in claims.items():
        print(
            f"{kind}: nested matches separate: {c['nested_matches_separate']} (MatFormer - separate "
            f"{', '.join(f'{d:+.3f}' for d in c['matformer_minus_separate'])}); Mix'n'Match on the curve: "
            f"{c['mix_n_match_on_curve']} (worst gap {c['mix_n_match_gap_worst']:+.3f}); more consistent: "
            f"{c['more_consistent']} (agreement gain {', '.join(f'{g:+.1f}' for g in c['agreement_gain'])} points)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
