"""Command line of bramley-mobileclip (also available as ``bramley mobileclip``).

Shared verbs (core's argument shapes): ``info``, ``reparam``, ``convert`` (official and open_clip checkpoints),
``export``, ``train``, ``eval`` (zero-shot classification and image-text retrieval on an ImageFolder with class-name
prompts, or on the procedural test split), ``reproduce``. MobileCLIP's own: ``reinforce`` (a reinforced dataset in
the DataCompDR format from image-text pairs and teacher checkpoints) and ``bench``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bramley.core.cli import MethodCLI, check_writable, positive_int, write_json
from bramley.core.errors import CheckpointError

from .convert import convert_official
from .train import RECIPES, train

DESCRIPTION = "MobileCLIP: fast image-text models through multi-modal reinforced training."

cli = MethodCLI("mobileclip", DESCRIPTION)
cli.add_info()
cli.add_reparam()
cli.add_convert(convert_official, "convert an official apple/ml-mobileclip or open_clip MobileCLIP checkpoint")
cli.add_export()
cli.add_train(RECIPES, train)


def _clip_model(model: Any, source: str) -> Any:
    if not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
        name = getattr(model, "model_config", {}).get("name", type(model).__name__)
        raise CheckpointError(f"{source} holds a {name} model, not an image-text model")
    return model


# ------------------------------------------------------------------------------------------------------ eval
def _evaluate(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    from bramley.core.clip_eval import ClipTokenizer, encode_images, zero_shot_accuracy, zero_shot_classifier
    from bramley.core.layers import reparameterize_model

    from .train import TEMPLATES, ImageTextData, evaluate_image_text, synthetic_image_text

    model = _clip_model(model, args.checkpoint).eval()
    if args.fuse:
        model = reparameterize_model(model)
    tokenizer = ClipTokenizer(context_length=model.text.context_length)
    if args.data is None:  # the procedural test split: zero-shot and retrieval
        data = ImageTextData(image_size=args.image_size, test_size=args.test_size)
        return evaluate_image_text(
            model, synthetic_image_text(data, "test", full_captions=True), tokenizer, data.augment()
        )
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from bramley.core.data import ImageFolder

    # MobileCLIP's eval transform: resize, center crop, [0, 1] pixels without normalization
    size = args.image_size
    to_input = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor()])
    folder = ImageFolder(args.data, image_size=size, transform=to_input)
    head = zero_shot_classifier(model, [c.replace("_", " ") for c in folder.classes], TEMPLATES, tokenizer)
    features, labels = encode_images(model, DataLoader(folder, batch_size=args.batch_size))
    return {"data": str(args.data), "images": len(folder), **zero_shot_accuracy(features, labels, head.cpu())}


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="ImageFolder for zero-shot (default: the procedural split)")
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--test-size", type=positive_int, default=640, help="procedural test images")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--fuse", action="store_true", help="evaluate the reparameterized model")


cli.add_eval(_evaluate, "zero-shot classification and image-text retrieval (percent)", _eval_arguments)


# ------------------------------------------------------------------------------------------------- reinforce
def _reinforce(args: argparse.Namespace) -> int:
    from bramley.core.checkpoint import load_model
    from bramley.core.clip_eval import ClipTokenizer

    from .data import write_shards
    from .train import ImageTextData, TemplateCaptioner, reinforce, synthetic_image_text

    check_writable(args.out / "00000.tar")
    teachers = [_clip_model(load_model(t), t).eval() for t in args.teacher]
    data = ImageTextData(image_size=args.image_size, train_size=args.size, data_seed=args.data_seed)
    split = synthetic_image_text(data, "train")
    context = min(t.text.context_length for t in teachers if hasattr(t, "text")) if teachers else 77
    samples = reinforce(
        split.images,
        split.captions,
        teachers,
        TemplateCaptioner(split.attributes, args.data_seed),
        ClipTokenizer(context_length=context),
        data.augment(),
        num_augmentations=args.augmentations,
        num_synthetic=args.synthetic,
        seed=args.seed,
    )
    paths = write_shards(samples, args.out / "%05d.tar", maxcount=args.per_shard)
    write_json(None, {"samples": len(samples), "shards": [str(p) for p in paths]})
    return 0


def _reinforce_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", action="append", required=True, help="teacher checkpoint (repeat for an ensemble)")
    p.add_argument("--out", type=Path, required=True, help="folder of the tar shards")
    p.add_argument("--size", type=positive_int, default=2000, help="procedural image-text pairs")
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--augmentations", type=positive_int, default=5)
    p.add_argument("--synthetic", type=positive_int, default=3, help="synthetic captions per image")
    p.add_argument("--per-shard", type=positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="augmentation seed")
    p.add_argument("--data-seed", type=int, default=0)


cli.add_command(
    "reinforce",
    _reinforce,
    "build a reinforced dataset (DataCompDR format) with a teacher ensemble",
    _reinforce_arguments,
)


# ----------------------------------------------------------------------------------------------------- bench
def _bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.rest)


cli.add_command(
    "bench",
    _bench,
    "latency (fused / unfused / open_clip) and reinforced vs teacher-in-the-loop step time (bench --help)",
    lambda p: p.add_argument("rest", nargs=argparse.REMAINDER),
)
cli.add_reproduce("bramley.mobileclip.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bramley-mobileclip` and of `bramley mobileclip`."""
    return cli.main(argv)
