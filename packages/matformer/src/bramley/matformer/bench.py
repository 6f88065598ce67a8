"""Benchmark (not a test): what elastic inference and joint training cost, measured in interleaved rounds.

Inference: the forward latency of one sub-model three ways, the full model as the peer: the nested model run sliced
(``model(x, ffn=spec)``: views of the full weights), the same sub-model extracted (:func:`~bramley.matformer.nested.
extract`: dense copies), and the full model. Training: the step time (forward, backward, AdamW step) of joint training
(every granularity's loss) against training one granularity (the full model), on the same batch.

After one untimed round, each round times every variant once (the mean of ``repeats`` calls), in an order that rotates
from round to round, and the ratios are taken within a round; the report gives the median ratio over the rounds with
its interquartile range, next to the FLOP ratio the counts predict.
"""

from __future__ import annotations

from typing import Any

import torch

from bramley.core.bench import interleaved_rounds, summary
from bramley.core.registry import create_model

from .model import MatLM
from .nested import extract, flops, granularity_specs, select_for_budget
from .train import JointLoss

__all__ = ["bench_section", "run_benchmark"]


def run_benchmark(
    model_name: str = "matvit_s16",
    *,
    batch_size: int = 8,
    image_size: int = 224,
    seq_len: int = 256,
    spec: int | list[int] | None = None,
    rounds: int = 11,
    repeats: int = 3,
    train_batch_size: int = 16,
    seed: int = 0,
) -> dict[str, Any]:
    """Measure sliced vs extracted vs full inference and joint vs one-granularity training steps.

    Args:
        model_name: a registered MatViT / MatLM.
        batch_size: inference batch.
        image_size: MatViT input size.
        seq_len: MatLM sequence length.
        spec: the sub-model (default: the smallest granularity).
        rounds: interleaved rounds.
        repeats: calls per variant per round (their mean is the round's time).
        train_batch_size: training batch.
        seed: inputs and weights.
    """
    torch.manual_seed(seed)
    model = create_model(model_name).eval()
    lm = isinstance(model, MatLM)
    tokens = seq_len if lm else image_size
    sizes = model.resolve_ffn(granularity_specs(model)[0] if spec is None else spec)
    spec = list(sizes)
    small = extract(model, spec).eval()

    def batch(n: int) -> torch.Tensor:
        if lm:
            return torch.randint(0, model.vocab_size, (n, seq_len + 1))
        return torch.randn(n, model.in_chans, image_size, image_size)

    x = batch(batch_size)
    x = x[:, :-1] if lm else x
    with torch.inference_mode():
        max_diff = float((model(x, ffn=spec) - small(x)).abs().max())
    infer = {
        "full": lambda: model(x),
        "sliced": lambda: model(x, ffn=spec),
        "extracted": lambda: small(x),
    }
    with torch.inference_mode():
        latency = interleaved_rounds(infer, rounds, repeats=repeats, warmup=1)

    train_model = create_model(model_name).train()
    optimizer = torch.optim.AdamW(train_model.parameters(), lr=1e-4)
    data = batch(train_batch_size)
    labels = torch.randint(0, max(1, getattr(train_model, "num_classes", 1)), (train_batch_size,))
    joint_loss, sample = JointLoss(), data if lm else (data, labels)

    def joint_step() -> None:
        loss, _ = joint_loss(train_model, sample)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def one_step() -> None:  # the full model alone (a loss weight of 0 would still run the other forwards)
        if lm:
            logits = train_model(data[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        else:
            loss = torch.nn.functional.cross_entropy(train_model(data), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    steps = interleaved_rounds({"joint": joint_step, "one": one_step}, rounds, warmup=1)

    full_flops, spec_flops = flops(model, None, tokens), flops(model, spec, tokens)
    joint_flops = sum(flops(model, list(g), tokens) for g in granularity_specs(model))
    return {
        "model": model_name,
        "spec": list(sizes),
        "batch_size": batch_size,
        "tokens": tokens,
        "rounds": rounds,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "extracted_vs_sliced_max_abs_diff": max_diff,
        "latency_ms": {k: summary([t * 1e3 for t in latency[k]]) for k in infer},
        "sliced_over_extracted": summary([s / e for s, e in zip(latency["sliced"], latency["extracted"])]),
        "full_over_extracted": summary([f / e for f, e in zip(latency["full"], latency["extracted"])]),
        "flop_ratio_full_over_sub": full_flops / spec_flops,
        "step_ms": {k: summary([t * 1e3 for t in steps[k]]) for k in ("joint", "one")},
        "joint_over_one": summary([j / o for j, o in zip(steps["joint"], steps["one"])]),
        "flop_ratio_joint_over_one": joint_flops / full_flops,
        "budget_example": list(select_for_budget(model, (full_flops + spec_flops) / 2, "flops", tokens)),
    }


def bench_section(result: dict[str, Any], command: str) -> str:
    """The README's benchmark paragraph for one result of :func:`run_benchmark` (with ``environment``)."""
    env, lat = result["environment"], result["latency_ms"]

    def ratio(key: str) -> str:
        q = result[key]
        return f"{q['median']:.2f}x (IQR {q['q1']:.2f}-{q['q3']:.2f})"

    return (
        f"`{command}` on {env['cpu']} ({result['threads']} threads, torch {env['torch']}, {env['date']}), "
        f"{result['rounds']} interleaved rounds, medians; {result['model']} at batch {result['batch_size']}, the "
        f"sub-model FFN {result['spec'][0]} in every layer. Inference: the sliced forward takes "
        f"{ratio('sliced_over_extracted')} the extracted model's time ({lat['sliced']['median']:.1f} vs "
        f"{lat['extracted']['median']:.1f} ms), the full model {ratio('full_over_extracted')} (FLOP ratio "
        f"{result['flop_ratio_full_over_sub']:.2f}); outputs equal (max difference "
        f"{result['extracted_vs_sliced_max_abs_diff']:.1e}). Training: a joint step (all four granularities) takes "
        f"{ratio('joint_over_one')} a full-model-only step (FLOP ratio {result['flop_ratio_joint_over_one']:.2f}). "
        f"Load average {env.get('load_average', 'unknown')} when it was recorded: read the ratios, not the "
        "milliseconds.\n"
    )
