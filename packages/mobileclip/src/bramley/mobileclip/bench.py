"""``bramley mobileclip bench``: what MobileCLIP exists for, as ratios against peers measured in the same run.

- ``latency``: image + text encoding of one image and one caption on CPU, the fused (reparameterized) model vs the
  unfused one vs open_clip's ``MobileCLIP-S1/-S2/-B`` holding the same weights; interleaved rounds (the order rotates
  every round), median per-round ratio with its range. S0 has no open_clip twin.
- ``step``: one student training step on reinforced data (stored teacher embeddings) vs online distillation with the
  teacher ensemble run in the loop on the same batch (the mini reproduction's models); median ratio over rounds.

Timings measure this machine; nothing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bramley.core.bench import interleaved_rounds, ratio_spread

OPEN_CLIP_NAMES = {"mobileclip_s1": "MobileCLIP-S1", "mobileclip_s2": "MobileCLIP-S2", "mobileclip_b": "MobileCLIP-B"}


def _summary(times: dict[str, list[float]], baseline: str) -> list[dict[str, Any]]:
    rows = []
    for name, values in times.items():
        median, low, high = ratio_spread(times[baseline], values)
        rows.append(
            {
                "candidate": name,
                "median_ms": 1000 * statistics.median(values),
                f"speedup_vs_{baseline}": median,
                "range": f"{low:.2f}-{high:.2f}",
            }
        )
    return rows


def latency(model_name: str, image_size: int | None, rounds: int, repeats: int) -> list[dict[str, Any]]:
    import open_clip

    from bramley.core.layers import reparameterize_model
    from bramley.core.registry import create_model

    from .convert import bramley_to_open_clip
    from .model import IMAGE_SIZES, example_inputs

    torch.manual_seed(0)
    model = create_model(model_name).eval()
    fused = reparameterize_model(model)
    (images, tokens), _ = example_inputs(image_size or IMAGE_SIZES[model_name], batch=1)
    candidates: dict[str, Callable[[], Any]] = {
        "unfused": lambda: model(images, tokens),
        "fused": lambda: fused(images, tokens),
    }
    if model_name in OPEN_CLIP_NAMES:
        cfg = {k: v for k, v in open_clip.get_model_config(OPEN_CLIP_NAMES[model_name]).items() if k != "custom_text"}
        with torch.device("meta"):
            ref = open_clip.CustomTextCLIP(**cfg)
        ref.load_state_dict(bramley_to_open_clip(model.state_dict()), assign=True)
        if ref.text.attn_mask is not None:
            ref.text.attn_mask = ref.text.build_causal_mask()
        ref.eval()
        candidates["open_clip"] = lambda: ref(images, tokens)
    with torch.inference_mode():
        times = interleaved_rounds(candidates, rounds, repeats=repeats, warmup=1)
    return _summary(times, "unfused")


def step_time(rounds: int, repeats: int, batch_size: int = 64) -> list[dict[str, Any]]:
    from bramley.core.clip_eval import ClipTokenizer
    from bramley.core.registry import create_model

    from .reproduce import CONTEXT, STUDENT, TEACHER
    from .train import (
        ClipTrainLoss,
        ImageTextData,
        ReinforcedImageText,
        ReinforcedLossSection,
        TemplateCaptioner,
        reinforce,
        synthetic_image_text,
    )

    torch.manual_seed(0)
    data = ImageTextData(train_size=batch_size, textures=("solid",), counts=(1,), clutter=2)
    split = synthetic_image_text(data, "train")
    tokenizer, augment = ClipTokenizer(context_length=CONTEXT), data.augment()
    teacher = create_model("mobileclip_s0", **TEACHER).eval()
    samples = reinforce(
        split.images,
        split.captions,
        [teacher],
        TemplateCaptioner(split.attributes),
        tokenizer,
        augment,
        num_augmentations=2,
        num_synthetic=2,
    )
    dataset = ReinforcedImageText(samples, augment, tokenizer, seed=0)
    batch = {k: torch.stack([dataset[i][k] for i in range(len(dataset))]) for k in dataset[0]}
    student = create_model("mobileclip_s0", **STUDENT)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    dims = [TEACHER["embed_dim"]]
    stored = ClipTrainLoss(ReinforcedLossSection(mode="reinforced", teacher_dims=dims))
    online = ClipTrainLoss(ReinforcedLossSection(mode="online", teacher_dims=dims), [teacher])

    def step(loss_fn) -> Callable[[], None]:
        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(student, batch)[0].backward()
            optimizer.step()

        return run

    times = interleaved_rounds(
        {"online_teacher": step(online), "reinforced": step(stored)}, rounds, repeats=repeats, warmup=1
    )
    return _summary(times, "online_teacher")


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.cli import add_threads_argument, torch_threads

    parser = argparse.ArgumentParser(prog="bramley mobileclip bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["latency", "step", "all"], nargs="?", default="all")
    parser.add_argument("--model", default="mobileclip_s1", help="latency: the model (mobileclip_s0/s1/s2/b)")
    parser.add_argument("--image-size", type=int, default=None, help="latency: image size (default: the model's)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per candidate and round (mean)")
    add_threads_argument(parser, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables and environment to this JSON")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from bramley.core.report import format_table

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} interleaved rounds")
    results: dict[str, Any] = {"model": args.model, "rounds": args.rounds, "threads": torch.get_num_threads()}
    if args.what in ("latency", "all"):
        print(f"\n## {args.model}: image + text latency, batch 1\n")
        results["latency"] = latency(args.model, args.image_size, args.rounds, args.repeats)
        print(format_table(results["latency"], digits=2))
    if args.what in ("step", "all"):
        print("\n## training step: reinforced (stored teacher outputs) vs teacher in the loop, batch 64\n")
        results["step"] = step_time(args.rounds, args.repeats)
        print(format_table(results["step"], digits=2))
    if args.out is not None:
        from bramley.core.cli import write_json
        from bramley.core.report import environment

        write_json(args.out, {**results, "environment": environment()}, echo=False)
    return 0
