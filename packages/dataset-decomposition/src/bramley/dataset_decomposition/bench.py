"""Training throughput at a maximum context: Dataset Decomposition vs concat-and-chunk, same model, same tokens/step.

Every method trains the same model (same initial weights, AdamW) on ``tokens_per_step`` input tokens per step:

- ``cc``: concat-and-chunk rows of ``2^max_log2`` tokens, causal attention over the whole row;
- ``cc_dm``: the same rows with document masking (packed varlen attention over synthetic document boundaries);
- ``dd``: one bucket per step, ``tokens_per_step / 2^k`` rows of ``2^k`` tokens, dense causal attention.

Token ids are random (throughput does not depend on them). DD steps cycle through the buckets in a seeded shuffled
order, every bucket equally often: equal tokens per bucket, which is what the decomposition gives long documents
(their random cuts put the same expected number of tokens into every bucket). Document lengths of ``cc_dm`` are
``2^u`` tokens with ``u`` uniform in ``[min_log2, max_log2 + 1]``. The timed ``dd`` steps start a bucket cycle,
so with ``steps`` a multiple of the number of buckets every bucket is timed equally often. Every method has its own
model and optimizer (built from the same seed) and ``warmup`` untimed steps; then the methods are interleaved round
by round (the order rotates every round), each timing ``steps`` steps (forward, backward, optimizer step; a device
synchronisation before reading the clock). The result is measured in one process: the median over rounds of the
per-round ratio of ``dd`` tokens/s over the others', with its interquartile range and range. Attention is whatever
:func:`bramley.core.ops.attention` runs on the device (on CPU: torch's fused SDPA kernels, per run of equal-length
documents for ``cc_dm``).
"""

from __future__ import annotations

import statistics
from functools import partial
from typing import Any

import numpy as np
import torch

from bramley.core.bench import interleaved_rounds, summary
from bramley.core.errors import ConfigError
from bramley.core.train.distributed import synchronize

from .decompose import check_bucket_range
from .train import attention_flops, batch_sequence_lengths, lm_loss_fn

__all__ = ["make_batches", "markdown_table", "run_benchmark"]

BENCH_METHODS = ("cc", "cc_dm", "dd")


def _check_tokens_per_step(tokens_per_step: int, max_log2: int) -> None:
    if tokens_per_step < 1 or tokens_per_step % (1 << max_log2):
        raise ConfigError(f"tokens_per_step ({tokens_per_step}) must be a multiple of the max length {1 << max_log2}")


def make_batches(
    method: str, *, min_log2: int, max_log2: int, tokens_per_step: int, steps: int, vocab_size: int, seed: int = 0
) -> list[Any]:
    """``steps`` synthetic training batches of one method (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    max_len = 1 << max_log2
    _check_tokens_per_step(tokens_per_step, max_log2)
    if method in ("cc", "cc_dm"):
        rows = tokens_per_step // max_len
        batches = []
        for _ in range(steps):
            tokens = torch.randint(0, vocab_size, (rows, max_len + 1), generator=g)
            if method == "cc":
                batches.append(tokens)
                continue
            segments = []
            for _ in range(rows):
                lengths, total = [], 0
                while total < max_len:
                    lengths.append(min(1 << int(rng.integers(min_log2, max_log2 + 2)), max_len - total))
                    total += lengths[-1]
                segments.append(np.repeat(np.arange(len(lengths)), lengths))
            batches.append({"tokens": tokens, "segments": torch.from_numpy(np.stack(segments))})
        return batches
    if method == "dd":
        log2s = np.arange(min_log2, max_log2 + 1)
        order = np.concatenate([rng.permutation(log2s) for _ in range(-(-steps // log2s.size))])[:steps]
        return [torch.randint(0, vocab_size, (tokens_per_step >> k, (1 << k) + 1), generator=g) for k in order]
    raise ConfigError(f"unknown method {method!r}; choose from {', '.join(BENCH_METHODS)}")


def _spread(numerator: list[float], denominator: list[float]) -> tuple[float, dict[str, Any]]:
    """The median over rounds of ``numerator[r] / denominator[r]``, and its interquartile range, range and rounds."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    stats = summary(ratios)
    return stats["median"], {"iqr": [stats["q1"], stats["q3"]], "range": [stats["min"], stats["max"]], "rounds": ratios}


def run_benchmark(
    model_name: str = "dd_gpt_tiny",
    *,
    model_kwargs: dict[str, Any] | None = None,
    min_log2: int = 4,
    max_log2: int = 9,
    tokens_per_step: int = 4096,
    steps: int = 6,
    rounds: int = 5,
    warmup: int = 2,
    methods: tuple[str, ...] = BENCH_METHODS,
    device: str = "auto",
    amp: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Tokens/s of each method (see the module doc); ``ratios`` hold ``dd`` over the others (median over rounds).

    Raises:
        ConfigError: an unknown model or method, model arguments or sizes that do not fit, a device that is absent.
    """
    from bramley.core.recipe import build_model
    from bramley.core.train import resolve_amp
    from bramley.core.train.distributed import resolve_device

    check_bucket_range(min_log2, max_log2)
    _check_tokens_per_step(tokens_per_step, max_log2)
    if steps < 1 or rounds < 1 or warmup < 0:
        raise ConfigError(f"need steps >= 1, rounds >= 1 and warmup >= 0, got {steps=} {rounds=} {warmup=}")
    unknown = sorted(set(methods) - set(BENCH_METHODS))
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(BENCH_METHODS)}")
    dev = resolve_device(device)
    amp_dtype, _ = resolve_amp(amp, dev)
    kwargs = {"max_seq_len": 1 << max_log2, **(model_kwargs or {})}
    loss_fn = lm_loss_fn()

    def train_steps(state: dict[str, Any], batches: list[Any]) -> None:
        for batch in batches:
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, _ = loss_fn(state["model"], batch)
            loss.backward()
            state["opt"].step()
            state["opt"].zero_grad(set_to_none=True)

    states: dict[str, dict[str, Any]] = {}
    for method in methods:
        torch.manual_seed(seed)
        model = build_model(model_name, kwargs, where="bench").to(dev).train()
        shape = {"min_log2": min_log2, "max_log2": max_log2, "tokens_per_step": tokens_per_step}
        # timed steps of their own (not the tail of the warm-up's list): dd's bucket cycle starts with them, so
        # steps = a multiple of the number of buckets times every bucket equally often
        batches = make_batches(method, **shape, steps=steps, vocab_size=model.vocab_size, seed=seed)
        if warmup:
            batches = make_batches(method, **shape, steps=warmup, vocab_size=model.vocab_size, seed=seed + 1) + batches
        attn = sum(attention_flops(batch_sequence_lengths(b), model.dim, model.depth) for b in batches[warmup:])
        batches = [{k: v.to(dev) for k, v in b.items()} if isinstance(b, dict) else b.to(dev) for b in batches]
        states[method] = {
            "model": model, "opt": torch.optim.AdamW(model.parameters(), lr=1e-4), "batches": batches, "attn": attn,
        }  # fmt: skip
        train_steps(states[method], batches[:warmup])
    timed = {method: partial(train_steps, state, state["batches"][warmup:]) for method, state in states.items()}
    seconds = interleaved_rounds(timed, rounds, sync=partial(synchronize, dev))
    results = {
        method: {
            "tokens_per_s": steps * tokens_per_step / statistics.median(seconds[method]),
            "s_per_step": statistics.median(seconds[method]) / steps,
            "round_seconds": seconds[method],
            "attention_flops_per_step": state["attn"] / steps,
            "model_flops_per_token": 6 * state["model"].num_parameters(embedding=False),
        }
        for method, state in states.items()
    }
    ratios, spread = {}, {}
    if "dd" in states:
        for m in states:
            if m != "dd":  # equal tokens per round: the ratio of tokens/s is the inverse ratio of seconds
                ratios[f"dd_over_{m}"], spread[f"dd_over_{m}"] = _spread(seconds[m], seconds["dd"])
    return {
        "model": model_name,
        "model_kwargs": kwargs,
        "min_log2": min_log2,
        "max_log2": max_log2,
        "tokens_per_step": tokens_per_step,
        "steps": steps,
        "rounds": rounds,
        "warmup": warmup,
        "device": str(dev),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "none",
        "attention": "bramley.core.ops.attention (CPU: sdpa backend)" if dev.type == "cpu" else "bramley.core.ops",
        "methods": results,
        "ratios": ratios,
        "ratio_spread": spread,
    }


def markdown_table(result: dict[str, Any], command: str, threads: int) -> str:
    """The BENCHMARKS.md block of one run: how it was measured, then one row per maximum context."""
    import os

    env, load = result["environment"], result["load_average"]
    overrides = ", ".join(f"{k}={v}" for k, v in result["model_kwargs"].items() if k != "max_seq_len")
    header = (
        f"Measured {env['date']} on {env['cpu']} ({os.cpu_count()} cores, load average {load[0]:.1f} before and "
        f"{load[1]:.1f} after), {threads} torch thread(s), Python {env['python']}, torch {env['torch']}, "
        f"bramley-core {env.get('bramley-core', '?')}, attention: {result['attention']}; {result['model']}"
        f"{f' ({overrides})' if overrides else ''}, {result['tokens_per_step']} tokens "
        f"per step, {result['rounds']} interleaved rounds of {result['steps']} steps per method (order rotating) after "
        f"{result['warmup']} warm-up steps; ratios = median over rounds [interquartile range; range]: `{command}`"
    )
    methods, spread = result["methods"], result["ratio_spread"]
    names = list(methods)
    others = [m for m in names if m != "dd"] if "dd" in names else []
    columns = ["max context", "buckets", *(f"{m} tokens/s" for m in names), *(f"dd / {m}" for m in others)]
    columns.append(f"attention GFLOP/step {' / '.join(names)}")

    def ratio(m: str) -> str:
        lo, hi = spread[f"dd_over_{m}"]["iqr"]
        mn, mx = spread[f"dd_over_{m}"]["range"]
        return f"**{result['ratios'][f'dd_over_{m}']:.2f}x** [{lo:.2f}-{hi:.2f}; {mn:.2f}-{mx:.2f}]"

    row = [
        str(1 << result["max_log2"]),
        f"{1 << result['min_log2']} ... {1 << result['max_log2']}",
        *(f"{methods[m]['tokens_per_s']:.0f}" for m in names),
        *(ratio(m) for m in others),
        " / ".join(f"{methods[m]['attention_flops_per_step'] / 1e9:.2f}" for m in names),
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), "| " + " | ".join(row) + " |"]
    return header + "\n\n" + "\n".join(lines)
