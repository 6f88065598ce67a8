"""Training throughput at a maximum context: Dataset Decomposition vs concat-and-chunk, same model, same tokens/step.

Every method trains the same model (same initial weights, AdamW) on ``tokens_per_step`` input tokens per step:

- ``cc``: concat-and-chunk rows of ``2^max_log2`` tokens, causal attention over the whole row;
- ``cc_dm``: the same rows with document masking (packed varlen attention over synthetic document boundaries);
- ``dd``: one bucket per step, ``tokens_per_step / 2^k`` rows of ``2^k`` tokens, dense causal attention.

Token ids are random (throughput does not depend on them). DD steps cycle through the buckets in a seeded shuffled
order, every bucket equally often: equal tokens per bucket, which is what the decomposition gives long documents
(their random cuts put the same expected number of tokens into every bucket). Document lengths of ``cc_dm`` are
``2^u`` tokens with ``u`` uniform in ``[min_log2, max_log2 + 1]``. Times cover forward, backward and the optimizer
step of ``steps`` steps after ``warmup`` untimed ones, with a device synchronisation before reading the clock.
The result is a ratio measured in one process: ``dd`` tokens/s over ``cc`` tokens/s.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bramley.core.errors import ConfigError
from bramley.core.train.distributed import synchronize

from .decompose import check_bucket_range
from .train import attention_flops, batch_sequence_lengths, lm_loss_fn

__all__ = ["make_batches", "run_benchmark"]

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


def run_benchmark(
    model_name: str = "dd_gpt_tiny",
    *,
    model_kwargs: dict[str, Any] | None = None,
    min_log2: int = 4,
    max_log2: int = 9,
    tokens_per_step: int = 4096,
    steps: int = 6,
    warmup: int = 2,
    methods: tuple[str, ...] = BENCH_METHODS,
    device: str = "auto",
    amp: str = "auto",
    seed: int = 0,
) -> dict[str, Any]:
    """Tokens/s of each method (see the module doc); ``ratios`` hold ``dd`` over the others.

    Raises:
        ConfigError: an unknown model or method, model arguments or sizes that do not fit, a device that is absent.
    """
    from bramley.core.recipe import build_model
    from bramley.core.train import resolve_amp
    from bramley.core.train.distributed import resolve_device

    check_bucket_range(min_log2, max_log2)
    _check_tokens_per_step(tokens_per_step, max_log2)
    if steps < 1 or warmup < 0:
        raise ConfigError(f"need steps >= 1 and warmup >= 0, got steps={steps} warmup={warmup}")
    unknown = sorted(set(methods) - set(BENCH_METHODS))
    if unknown:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(BENCH_METHODS)}")
    dev = resolve_device(device)
    amp_dtype, _ = resolve_amp(amp, dev)
    kwargs = {"max_seq_len": 1 << max_log2, **(model_kwargs or {})}
    loss_fn = lm_loss_fn()
    results: dict[str, Any] = {}
    for method in methods:
        torch.manual_seed(seed)
        model = build_model(model_name, kwargs, where="bench").to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batches = make_batches(
            method, min_log2=min_log2, max_log2=max_log2, tokens_per_step=tokens_per_step, steps=warmup + steps,
            vocab_size=model.vocab_size, seed=seed,
        )  # fmt: skip
        attn = sum(attention_flops(batch_sequence_lengths(b), model.dim, model.depth) for b in batches[warmup:])
        batches = [{k: v.to(dev) for k, v in b.items()} if isinstance(b, dict) else b.to(dev) for b in batches]
        for i, batch in enumerate(batches):
            if i == warmup:
                synchronize(dev)
                start = time.perf_counter()
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss, _ = loss_fn(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        synchronize(dev)
        elapsed = time.perf_counter() - start
        results[method] = {
            "tokens_per_s": steps * tokens_per_step / elapsed,
            "s_per_step": elapsed / steps,
            "attention_flops_per_step": attn / steps,
            "model_flops_per_token": 6 * model.num_parameters(embedding=False),
        }
        del model, opt, batches
    ratios = {}
    if "dd" in results:
        ratios = {
            f"dd_over_{m}": results["dd"]["tokens_per_s"] / results[m]["tokens_per_s"] for m in results if m != "dd"
        }
    return {
        "model": model_name,
        "model_kwargs": kwargs,
        "min_log2": min_log2,
        "max_log2": max_log2,
        "tokens_per_step": tokens_per_step,
        "steps": steps,
        "warmup": warmup,
        "device": str(dev),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "none",
        "methods": results,
        "ratios": ratios,
    }
