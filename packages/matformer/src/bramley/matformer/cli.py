"""Command line of bramley-matformer (also ``bramley matformer``).

Shared verbs (core's argument shapes): ``info``, ``train`` (joint training from a recipe), ``eval`` (every granularity,
or one sub-model, of a trained model on an ImageFolder or on text), ``bench``, ``reproduce``. MatFormer's own:
``extract`` (a standalone sub-model for an FFN spec or a parameter / FLOP budget, saved with ``save_pretrained``).

A sub-model on the command line (``--ffn``) is one FFN hidden size for every layer (``--ffn 64``) or one per layer,
comma-separated (``--ffn 64,64,128,256``: Mix'n'Match).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bramley.core.cli import MethodCLI, check_writable, model_source_arguments, positive_int, write_json
from bramley.core.errors import ConfigError

from .train import RECIPES, train

DESCRIPTION = "MatFormer: nested transformers with Mix'n'Match sub-models."

cli = MethodCLI("matformer", DESCRIPTION)


def parse_ffn(text: str) -> int | list[int]:
    """``"64"`` -> 64 (every layer), ``"64,64,128"`` -> one size per layer."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FFN sizes like 64 or 64,64,128,256, got {text!r}") from None
    return sizes[0] if len(sizes) == 1 else sizes


# ------------------------------------------------------------------------------------------------------ info
def _info_columns(name: str) -> dict[str, Any]:
    import torch

    from bramley.core.registry import create_model

    with torch.device("meta"):
        model = create_model(name)
    return {"depth": model.depth, "granularities": "/".join(str(g[0]) for g in model.granularity_sizes())}


cli.add_info(columns=_info_columns)
cli.add_train(RECIPES, train)


# --------------------------------------------------------------------------------------------------- extract
def _extract(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.checkpoint import load_model, save_pretrained
    from bramley.core.cli import example_inputs

    from .nested import extract, flops, matformer_model, num_parameters, select_for_budget

    if (args.ffn is None) == (args.budget is None):
        raise ConfigError("give the sub-model as --ffn SIZES or as --budget N (with --metric params|flops)")
    source = args.model or args.checkpoint
    model = matformer_model(load_model(source), source)
    spec = args.ffn if args.ffn is not None else list(select_for_budget(model, args.budget, args.metric, args.tokens))
    small = extract(model, spec)
    inputs, kwargs = example_inputs(model)
    with torch.no_grad():
        diff = float((model(*inputs, ffn=spec, **kwargs) - small(*inputs, **kwargs)).abs().max())
    save_pretrained(small, args.out)
    sizes = list(small.mlp_hidden)
    print(
        f"extracted FFN sizes {sizes} of {source} -> {args.out}: {num_parameters(model, spec):,} of "
        f"{num_parameters(model):,} parameters, {flops(model, spec, args.tokens) / 1e6:,.1f} of "
        f"{flops(model, None, args.tokens) / 1e6:,.1f} MFLOPs per sample; max difference to the sliced forward "
        f"{diff:.2e}"
    )
    return 0


def _extract_arguments(p: argparse.ArgumentParser) -> None:
    model_source_arguments(p)
    p.add_argument("--ffn", type=parse_ffn, default=None, help="FFN size(s): 64, or one per layer 64,64,128,256")
    p.add_argument("--budget", type=float, default=None, help="pick the sub-model for this many params / FLOPs")
    p.add_argument("--metric", choices=["params", "flops"], default="params", help="what --budget counts")
    p.add_argument("--tokens", type=positive_int, default=None, help="FLOPs: image size (MatViT) or seq length")
    p.add_argument("--out", type=Path, required=True, help="output save_pretrained folder")


cli.add_command(
    "extract", _extract, "a standalone sub-model (FFN spec or budget) as a save_pretrained folder", _extract_arguments
)


# ------------------------------------------------------------------------------------------------------ eval
def _evaluate(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from bramley.core.errors import DataError
    from bramley.core.progress import track
    from bramley.core.train.data import move_to_device

    from .model import MatLM
    from .nested import matformer_model, num_parameters
    from .train import granularity_eval

    model = matformer_model(model, args.checkpoint)
    device = next(model.parameters()).device
    if isinstance(model, MatLM):
        from .data import TokenWindows, text_datasets

        if args.data == "stdlib":
            data = text_datasets("stdlib", args.seq_len)[1]
        else:
            from bramley.core.data import ByteTokenizer, TextDocuments

            documents = TextDocuments(args.data, pattern=args.pattern).documents()
            data = TokenWindows(ByteTokenizer().encode_documents(documents), args.seq_len)
    else:
        from bramley.core.data import ImageFolder

        data = ImageFolder(args.data, image_size=args.image_size or model.img_size, crop_pct=args.crop_pct)
        if len(data.classes) != model.num_classes:
            raise DataError(f"{args.data} has {len(data.classes)} classes but the model predicts {model.num_classes}")
    batches = [move_to_device(b, device) for b in track(DataLoader(data, batch_size=args.batch_size), desc="eval")]
    if args.ffn is None:
        metrics = granularity_eval(model, batches)
    else:
        from .nested import extract

        sub = extract(model, args.ffn).eval()
        with torch.no_grad():
            metrics = _single_eval(sub, batches)
        metrics["ffn"] = list(sub.mlp_hidden)
        metrics["params"] = num_parameters(model, args.ffn)
    return {"data": str(args.data), "samples": len(data), "metrics": metrics}


def _single_eval(model: Any, batches: list) -> dict[str, float]:
    import math

    import torch.nn.functional as F

    from bramley.core.metrics import ClassificationMeter

    if batches and not isinstance(batches[0], (tuple, list)):
        total, count = 0.0, 0
        for batch in batches:
            logits = model(batch[:, :-1])
            total += float(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum"))
            count += batch[:, 1:].numel()
        return {"loss": total / count, "ppl": math.exp(min(total / count, 50.0))}
    meter = ClassificationMeter()
    for images, labels in batches:
        meter.update(model(images), labels)
    return meter.compute()


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="MatViT: ImageFolder root; MatLM: text file/folder, or 'stdlib'")
    p.add_argument("--ffn", type=parse_ffn, default=None, help="one sub-model (default: every granularity)")
    p.add_argument("--image-size", type=positive_int, default=None, help="MatViT (default: the model's)")
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("--seq-len", type=positive_int, default=256, help="MatLM window length")
    p.add_argument("--pattern", default="**/*.txt", help="MatLM: glob of text files in a folder")
    p.add_argument("--batch-size", type=positive_int, default=64)


cli.add_eval(_evaluate, "accuracy (MatViT) or loss (MatLM) of every granularity or of one sub-model", _eval_arguments)


# ----------------------------------------------------------------------------------------------------- bench
def _bench(args: argparse.Namespace) -> int:
    from bramley.core.report import environment

    from .bench import run_benchmark

    check_writable(args.out)
    result = run_benchmark(
        args.model,
        batch_size=args.batch_size,
        image_size=args.image_size,
        seq_len=args.seq_len,
        spec=args.ffn,
        rounds=args.rounds,
        repeats=args.repeats,
        train_batch_size=args.train_batch_size,
    )
    result["environment"] = environment()
    lat, r = result["latency_ms"], result
    print(
        f"{r['model']} batch {r['batch_size']}, FFN {r['spec']}, {r['rounds']} rounds, {r['threads']} threads:\n"
        f"  latency ms (median): full {lat['full']['median']:.2f}, sliced {lat['sliced']['median']:.2f}, "
        f"extracted {lat['extracted']['median']:.2f}\n"
        f"  sliced / extracted {r['sliced_over_extracted']['median']:.2f}x "
        f"(IQR {r['sliced_over_extracted']['q1']:.2f}-{r['sliced_over_extracted']['q3']:.2f}); "
        f"full / extracted {r['full_over_extracted']['median']:.2f}x (FLOP ratio {r['flop_ratio_full_over_sub']:.2f})\n"
        f"  training step: joint / one granularity {r['joint_over_one']['median']:.2f}x "
        f"(IQR {r['joint_over_one']['q1']:.2f}-{r['joint_over_one']['q3']:.2f}; "
        f"FLOP ratio {r['flop_ratio_joint_over_one']:.2f})"
    )
    write_json(args.out, result, echo=False)
    if args.out is not None:
        print(f"wrote {args.out}")
    if args.readme is not None:
        from bramley.core.report import replace_marked

        from .bench import bench_section

        command = (
            f"bramley matformer bench --model {args.model} --batch-size {args.batch_size} --image-size "
            f"{args.image_size} --train-batch-size {args.train_batch_size} --rounds {args.rounds} "
            f"--repeats {args.repeats}"
        )
        replace_marked(args.readme, "bench", bench_section(result, command))
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="matvit_s16", help="a registered MatViT / MatLM")
    p.add_argument("--ffn", type=parse_ffn, default=None, help="the sub-model (default: the smallest granularity)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--train-batch-size", type=positive_int, default=16)
    p.add_argument("--rounds", type=positive_int, default=11)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--out", type=Path, default=None, help="write the results to this JSON file")
    p.add_argument("--readme", type=Path, default=None, help="also write the paragraph into this README")


cli.add_command(
    "bench", _bench, "sliced vs extracted vs full latency; joint vs one-granularity step time", _bench_arguments
)
cli.add_reproduce("bramley.matformer.reproduce")

main = cli.main

if __name__ == "__main__":
    sys.exit(main())
