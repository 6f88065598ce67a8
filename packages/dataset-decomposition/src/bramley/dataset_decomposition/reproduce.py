"""Mini reproduction of Dataset Decomposition (`bramley reproduce dataset-decomposition`).

Paper: Pouransari et al., "Dataset Decomposition: Faster LLM Training with Variable Sequence Length Curriculum"
(NeurIPS 2024). Claim: training on buckets of single-document sequences with a variable sequence length curriculum
(Grow-P2) reaches the same or better loss than concat-and-chunk at a fixed maximum length, for less attention cost
and less time.

Setup (all on CPU, real text): the running Python's standard-library sources are the documents, byte tokens
(vocabulary 257 with end-of-text). Documents are split into training and held-out sets by a seeded shuffle. The
training documents are decomposed into buckets ``2^min_log2 .. 2^max_log2`` (``make-buckets``' code) and, for the
baselines, concatenated in random order and chunked at ``2^max_log2`` (the maximum bucket length). The same tiny
GPT (same initial weights) is trained by the core trainer with:

- ``cc``: concat-and-chunk, causal attention over whole rows (cross-document attention);
- ``cc_dm``: concat-and-chunk with document masking (varlen attention, RoPE positions restart per document);
- ``dd``: Dataset Decomposition, Grow-P2 curriculum with ``--cycles`` cycles, one bucket per step.

The DD run is exactly one whole pass over its buckets, so every curriculum cycle runs complete: like the official
``get_dd_params``, the buckets are scaled to the token budget (``steps * tokens_per_step``): each bucket keeps a
share of its rows proportional to its size (:func:`budget_rows`), so that the sampler's pass is ``steps`` steps.
Every step holds the same number of tokens and all runs take the same number of steps (equal tokens). Wall-clock
excludes evaluation. Validation: held-out documents cut into consecutive windows of ``2^max_log2 + 1`` tokens
(each window inside one document, evaluated at the maximum length); loss by context position uses the first
window of every long held-out document (context from the document's start).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

METHODS = ("cc", "cc_dm", "dd")
LABELS = {
    "cc": "concat-and-chunk",
    "cc_dm": "concat-and-chunk + doc mask",
    "dd": "Dataset Decomposition (Grow-P2)",
}

# Published numbers quoted in the README and results.json (source named with each).
PAPER = {
    "source": "Pouransari et al., NeurIPS 2024 (arXiv:2405.13226), abstract and Figure 1",
    "claims": [
        "OpenLM-410M on RefinedWeb up to ~1.1T tokens: DD reaches the baseline's accuracy more than 6x faster and "
        "with more than 4x data efficiency, +2.4 regular-average accuracy at the end (Figure 1)",
        "an 8k-context 1B model trained with DD costs the same as a 2k-context 1B model trained with concat-and-chunk "
        "(abstract)",
    ],
}

#: The paper's claim as this reproduction checks it (``results["claims"]``).
CLAIM = (
    "at equal tokens DD does less attention work and trains faster than concat-and-chunk, with a held-out loss "
    "within 1% of it or better, and a better loss at equal training time"
)

FULL = dict(
    dim=96, depth=4, num_heads=4, min_log2=4, max_log2=9, tokens_per_step=2048, steps=150, cycles=8,
    eval_every=25, val_windows=32, lr=3e-3,
)  # fmt: skip
QUICK = dict(
    dim=32, depth=2, num_heads=2, min_log2=3, max_log2=6, tokens_per_step=256, steps=12, cycles=2,
    eval_every=4, val_windows=6, lr=3e-3,
)  # fmt: skip


# ------------------------------------------------------------------------------------------------------------ data
def _split_documents(seed: int, quick: bool) -> tuple[list[str], list[str]]:
    """Stdlib sources shuffled with ``seed``; 15% held out (at most 200 documents, 8 in quick mode)."""
    from bramley.core.data import python_stdlib_documents

    docs = python_stdlib_documents(min_chars=64, max_chars=200_000).documents()
    order = np.random.default_rng(seed).permutation(len(docs))
    docs = [docs[i] for i in order]
    n_val = 8 if quick else min(200, int(0.15 * len(docs)))
    return docs[n_val:], docs[:n_val]


def _take_tokens(docs: list[str], tokens: int) -> list[str]:
    """The first documents whose UTF-8 bytes (+1 end-of-text each) reach ``tokens``."""
    taken, count = [], 0
    for doc in docs:
        if count >= tokens:
            break
        taken.append(doc)
        count += len(doc.encode("utf-8")) + 1
    if count < tokens:
        raise ValueError(f"the corpus holds {count} tokens, fewer than the {tokens} requested")
    return taken


def _val_windows(docs: list[str], width: int, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(windows, first)``: consecutive in-document windows of ``width`` tokens (at most ``limit``, spread over the
    documents round-robin) and the first window of every long document."""
    from bramley.core.data import ByteTokenizer

    tok = ByteTokenizer()
    per_doc = []
    for doc in docs:
        ids = tok.encode(doc)
        n = ids.numel() // width
        if n:
            per_doc.append(ids[: n * width].view(n, width))
    if not per_doc:
        raise ValueError(f"no held-out document has {width} tokens")
    first = torch.stack([w[0] for w in per_doc])[:limit]
    windows, depth = [], 0
    while len(windows) < limit and any(depth < w.shape[0] for w in per_doc):
        windows += [w[depth] for w in per_doc if depth < w.shape[0]]
        depth += 1
    return torch.stack(windows[:limit]), first


def budget_rows(rows_per_bucket: Sequence[int], lengths: Sequence[int], tokens_per_step: int, steps: int) -> list[int]:
    """Rows of each bucket to use so that one pass over the buckets is exactly ``steps`` steps.

    Bucket ``b`` holds ``N_b`` whole batches of ``tokens_per_step // lengths[b]`` rows; the ``steps`` batches are
    apportioned over the buckets in proportion to ``N_b`` (largest remainder), which keeps the data's token mix.

    Raises:
        ValueError: the buckets hold fewer than ``steps`` batches.
    """
    from .sampling import apportion

    sizes = [tokens_per_step // n for n in lengths]
    batches = np.asarray([r // b for r, b in zip(rows_per_bucket, sizes)], dtype=np.int64)
    if batches.sum() < steps:
        raise ValueError(f"the buckets hold {int(batches.sum())} batches, fewer than {steps} steps: take more data")
    used = apportion(steps, batches)
    assert (used <= batches).all() and used.sum() == steps
    return [int(u) * b for u, b in zip(used, sizes)]


class _RowSubset(torch.utils.data.Dataset):
    """``(bucket, i)`` -> row ``picks[bucket][i]`` of a bucket dataset: a seeded random subset of each bucket's rows."""

    def __init__(self, base: Any, rows_per_bucket: Sequence[int], used: Sequence[int], seed: int) -> None:
        self.base = base
        self.picks = [
            np.sort(np.random.default_rng([seed, 7, b]).choice(total, size=n, replace=False))
            for b, (total, n) in enumerate(zip(rows_per_bucket, used))
        ]

    def __len__(self) -> int:
        return sum(len(p) for p in self.picks)

    def __getitem__(self, item: Sequence[int]) -> torch.Tensor:
        return self.base[(int(item[0]), int(self.picks[item[0]][item[1]]))]

    def __getitems__(self, items: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        return self.base.__getitems__([(int(b), int(self.picks[b][i])) for b, i in items])


# ------------------------------------------------------------------------------------------------------------- runs
class _EvalCurve:
    """Callback: every ``every`` steps (and at the end) evaluate on the held-out windows, clock paused."""

    def __init__(self, meter, windows: torch.Tensor, every: int, total_steps: int) -> None:
        self.meter, self.windows, self.every, self.total_steps = meter, windows, every, total_steps
        self.curve: list[dict[str, float]] = []

    def evaluate(self, model: torch.nn.Module) -> None:
        from .train import evaluate_lm

        self.meter.pause()
        loss = evaluate_lm(model, self.windows.split(16))["loss"]
        self.curve.append({**self.meter.totals(), "val_loss": loss})

    def __call__(self, trainer: Any) -> None:
        if trainer.step % self.every == 0 or trainer.step == self.total_steps:
            self.evaluate(trainer.model)


def run_method(
    method: str, cfg: dict[str, Any], train_docs: list[str], buckets_dir: Path, windows: torch.Tensor, seed: int
) -> dict[str, Any]:
    """Train one method for ``cfg['steps']`` steps; returns its curve, totals and final metrics."""
    from bramley.core.train import TrainConfig, Trainer

    from .baseline import ConcatChunkDataset
    from .buckets import Buckets
    from .model import dd_gpt_tiny
    from .sampling import BucketBatchSampler
    from .train import TrainingMeter, lm_loss_fn

    max_len = 1 << cfg["max_log2"]
    torch.manual_seed(seed)
    model = dd_gpt_tiny(dim=cfg["dim"], depth=cfg["depth"], num_heads=cfg["num_heads"], max_seq_len=max_len)
    meter = TrainingMeter.for_model(model)
    curve = _EvalCurve(meter, windows, cfg["eval_every"], cfg["steps"])
    sampler = None
    if method == "dd":
        buckets = Buckets(buckets_dir)
        rows = budget_rows(buckets.rows_per_bucket, buckets.lengths, cfg["tokens_per_step"], cfg["steps"])
        data = _RowSubset(buckets.dataset(), buckets.rows_per_bucket, rows, seed)
        sampler = BucketBatchSampler(
            rows, buckets.lengths, cfg["tokens_per_step"], curriculum="grow_p2", num_cycles=cfg["cycles"], seed=seed
        )
        if len(sampler) != cfg["steps"]:  # one whole pass: every curriculum cycle runs complete
            raise RuntimeError(f"the DD pass has {len(sampler)} steps, not {cfg['steps']}")
        batch_size = 1  # unused: the sampler makes the batches
    else:
        data = ConcatChunkDataset.from_documents(train_docs, max_len, seed=seed, return_segments=method == "cc_dm")
        batch_size = cfg["tokens_per_step"] // max_len
        if len(data) < cfg["steps"] * batch_size:  # no second epoch: every token is seen once, as in DD
            raise RuntimeError(f"{len(data)} concat-and-chunk rows, fewer than {cfg['steps'] * batch_size}")
    train_cfg = TrainConfig(
        steps=cfg["steps"], batch_size=batch_size, optimizer="adamw", lr=cfg["lr"], betas=(0.9, 0.95),
        weight_decay=0.033, schedule="cosine", warmup_steps=max(1, cfg["steps"] // 10), clip_grad_norm=1.0,
        log_every=10_000, seed=seed, device="cpu",
    )  # fmt: skip
    trainer = Trainer(
        model, train_cfg, train_data=data, loss_fn=lm_loss_fn(meter=meter), batch_sampler=sampler,
        callbacks=[meter, curve],
    )  # fmt: skip
    curve.evaluate(model)  # step 0: the initial loss, shared by all methods (same weights)
    start = time.perf_counter()
    trainer.fit()
    total_s = time.perf_counter() - start
    if not curve.curve or curve.curve[-1]["steps"] != cfg["steps"]:
        curve.evaluate(trainer.model)
    return {
        "method": method,
        "label": LABELS[method],
        "curve": curve.curve,
        "totals": meter.totals(),
        "final_val_loss": curve.curve[-1]["val_loss"],
        "seq_len_tokens": {str(k): v for k, v in sorted(meter.seq_len_tokens.items())},
        "run_s_including_eval": total_s,
        "dd_pass": None if sampler is None else {"rows_per_bucket": sampler.rows_per_bucket, "steps": len(sampler)},
        "model": trainer.model,
    }


def _loss_at_time(curve: list[dict[str, float]], wall_s: float) -> float:
    """Validation loss at wall-clock ``wall_s``, linear between evaluations (the last value if the run ended before)."""
    times = [c["wall_s"] for c in curve]
    losses = [c["val_loss"] for c in curve]
    if wall_s >= times[-1]:
        return losses[-1]
    return float(np.interp(wall_s, times, losses))


def _position_bands(max_len: int) -> list[tuple[int, int]]:
    """Context-position ranges for the table: [0, 16), [16, 64), [64, L/2), [L/2, L) (clipped to the length)."""
    edges = sorted({0, min(16, max_len // 8), min(64, max_len // 4), max_len // 2, max_len})
    return list(itertools.pairwise(edges))


# ---------------------------------------------------------------------------------------------------------- report
def _plot(results: dict[str, Any], path: Path) -> None:
    from bramley.core.report import figure

    with figure(path, ncols=3, figsize=(15, 4.2), dpi=110) as axes:
        for run in results["runs"].values():
            tokens = [c["tokens"] for c in run["curve"]]
            axes[0].plot(tokens, [c["val_loss"] for c in run["curve"]], marker="o", ms=3, label=run["label"])
            axes[1].plot([c["wall_s"] for c in run["curve"]], [c["val_loss"] for c in run["curve"]], marker="o", ms=3,
                         label=run["label"])  # fmt: skip
            pos = np.asarray(run["loss_by_position"])
            window = max(1, pos.size // 32)
            smooth = np.convolve(pos, np.ones(window) / window, mode="valid")
            axes[2].plot(np.arange(smooth.size) + window // 2, smooth, label=run["label"])
        axes[0].set(xlabel="training tokens", ylabel="held-out loss (nats/byte)", title="equal tokens")
        axes[1].set(xlabel="training wall-clock (s, eval excluded)", ylabel="held-out loss", title="equal time")
        axes[2].set(xlabel="context position", ylabel="held-out loss", title="loss by position (first windows)")
        axes[2].set_xscale("symlog", linthresh=16)
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)


def _table(results: dict[str, Any]) -> str:
    from bramley.core.report import format_table

    runs = results["runs"]
    ref = runs.get("cc")
    rows = []
    for run in runs.values():
        t = run["totals"]
        row = {
            "method": run["label"],
            "tokens": t["tokens"],
            "train s": round(t["wall_s"], 1),
            "attn GFLOP": round(t["attention_flops"] / 1e9, 2),
            "attn vs C&C": round(t["attention_flops"] / ref["totals"]["attention_flops"], 3) if ref else None,
            "time vs C&C": round(t["wall_s"] / ref["totals"]["wall_s"], 3) if ref else None,
            "val loss (equal tokens)": round(run["final_val_loss"], 4),
            f"val loss @ {results['equal_time_s']:.0f}s": round(run["val_loss_at_equal_time"], 4),
        }
        for (lo, hi), value in zip(results["position_bands"], run["loss_by_band"]):
            row[f"pos {lo}-{hi - 1}"] = round(value, 4)
        rows.append(row)
    return format_table(rows, list(rows[0]))


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.cli import add_threads_argument, positive_int, torch_threads

    parser = argparse.ArgumentParser(prog="bramley reproduce dataset-decomposition", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce-dataset-decomposition"))
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke version (tests)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="training steps per method (equal tokens; one whole DD pass)"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from bramley.core.report import environment

    from .make_buckets import write_buckets
    from .train import loss_by_position

    cfg = dict(QUICK if args.quick else FULL)
    if args.steps is not None:
        cfg["steps"] = args.steps
    max_len = 1 << cfg["max_log2"]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_pool, val_docs = _split_documents(args.seed, args.quick)
    # a little more than one epoch's worth of tokens, so that both data sets cover `steps` steps (DD drops the short
    # tails of documents and the rows left over per bucket)
    train_docs = _take_tokens(train_pool, int(cfg["steps"] * cfg["tokens_per_step"] * 1.12) + 4 * max_len)
    windows, first = _val_windows(val_docs, max_len + 1, cfg["val_windows"])
    buckets_dir = args.out / "buckets"
    if buckets_dir.exists():
        import shutil

        shutil.rmtree(buckets_dir)
    buckets = write_buckets(
        train_docs, buckets_dir, min_log2=cfg["min_log2"], max_log2=cfg["max_log2"], seed=args.seed,
        source="python stdlib (train split)",
    )  # fmt: skip
    budget_rows(buckets.rows_per_bucket, buckets.lengths, cfg["tokens_per_step"], cfg["steps"])  # enough data?
    prep_s = time.perf_counter() - t0
    print(f"data: {len(train_docs)} train documents, {len(val_docs)} held out; buckets {buckets}; {prep_s:.1f} s")

    bands = _position_bands(max_len)
    runs: dict[str, Any] = {}
    for method in args.methods:
        run = run_method(method, cfg, train_docs, buckets_dir, windows, args.seed)
        model = run.pop("model")
        per_pos = loss_by_position(model, first)
        run["loss_by_position"] = per_pos.tolist()
        run["loss_by_band"] = [float(per_pos[lo:hi].mean()) for lo, hi in bands]
        runs[method] = run
        t = run["totals"]
        print(f"{method}: {t['tokens']} tokens, {t['wall_s']:.1f} s, val loss {run['final_val_loss']:.4f}")
    equal_time = min(r["totals"]["wall_s"] for r in runs.values())
    for run in runs.values():
        run["val_loss_at_equal_time"] = _loss_at_time(run["curve"], equal_time)

    results: dict[str, Any] = {
        "quick": args.quick,
        "config": cfg,
        "seed": args.seed,
        "threads": args.threads,
        "data": {
            "train_documents": len(train_docs),
            "val_documents": len(val_docs),
            "val_windows": int(windows.shape[0]),
            "position_windows": int(first.shape[0]),
            "buckets": {str(n): r for n, r in zip(buckets.lengths, buckets.rows_per_bucket)},
        },
        "equal_time_s": equal_time,
        "position_bands": bands,
        "runs": runs,
        "paper": PAPER,
        "environment": environment(),
    }
    claims: dict[str, bool] = {}
    if "cc" in runs and "dd" in runs:
        cc, dd = runs["cc"], runs["dd"]
        claims["dd_less_attention_flops"] = dd["totals"]["attention_flops"] < cc["totals"]["attention_flops"]
        claims["dd_faster"] = dd["totals"]["wall_s"] < cc["totals"]["wall_s"]
        # "same or better": within 1% of the baseline's loss at equal tokens
        claims["dd_loss_same_or_better_equal_tokens"] = dd["final_val_loss"] <= cc["final_val_loss"] * 1.01
        claims["dd_better_at_equal_time"] = dd["val_loss_at_equal_time"] <= cc["val_loss_at_equal_time"]
        claims["holds"] = all(claims.values())
    results["claims"] = claims
    results["prep_s"] = prep_s
    results["total_s"] = time.perf_counter() - t0
    table = _table(results)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / "table.md").write_text(table + "\n")
    _plot(results, args.out / "dataset_decomposition.png")
    print(table)
    print("claims:", json.dumps(claims))
    print(f"total {results['total_s']:.0f} s; wrote {args.out / 'results.json'}")
    verdict = ("HOLDS" if claims["holds"] else "DOES NOT HOLD") if claims else "not checked (needs cc and dd runs)"
    print(f"claim ({CLAIM}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
