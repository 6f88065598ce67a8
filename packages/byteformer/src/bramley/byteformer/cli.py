"""Command line of bramley-byteformer (also available as ``bramley byteformer``).

Core's shared verbs (``info``, ``convert``, ``train``, ``eval``, ``reproduce``; see :class:`bramley.core.cli.MethodCLI`)
and the package's own: ``encode`` (image / audio files or a bundled set -> byte files) and ``bench`` (packed vs
padded training throughput).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bramley.core.cli import MethodCLI, positive_int, unit_float

from .bench import add_bench_arguments
from .bench import main as run_bench
from .convert import convert_official
from .encode import add_encode_arguments, run_encode
from .train import SCHEMA, run_training

cli = MethodCLI("byteformer", "Bytes Are All You Need: Transformers Operating Directly On File Bytes.")


def _info_columns(name: str) -> Mapping[str, Any]:
    """Width, depth and heads, and the parameters without the 50000-row position table (what the paper counts)."""
    import torch

    from bramley.core.registry import create_model

    from .model import BYTEFORMER_CONFIGS

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = create_model(name, num_classes=1000)
    params = sum(p.numel() for p in model.parameters())
    return {**BYTEFORMER_CONFIGS[name], "params_M_without_pos_table": (params - model.pos_embed.numel()) / 1e6}


cli.add_info(
    columns=_info_columns,
    kwargs={"num_classes": 1000},
    note="1000 classes, k=32, windows 128, max_num_tokens=50000 (the corenet ImageNet configs)",
)


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--window-size",
        type=positive_int,
        default=128,
        help="the corenet config's window_sizes (not stored in the weights): 128, or 32 for the w=32 configs",
    )


cli.add_convert(convert_official, "a corenet ByteFormer checkpoint -> a save_pretrained folder", _convert_arguments)
cli.add_train(SCHEMA, run_training)


def _eval_dataset(args: argparse.Namespace):
    from bramley.core.errors import ConfigError

    from . import datasets as ds
    from .encodings import parse_encoding, parse_transforms

    try:
        if args.bytes:
            parse_transforms(args.spec or "")
        elif args.spec:
            parse_encoding(args.spec)
    except ValueError as err:
        raise ConfigError(f"--spec {args.spec!r}: {err}") from None
    if args.bytes:
        return ds.ByteFolder(args.bytes, transforms=args.spec)
    if not args.spec:
        raise ConfigError("--images / --audio need --spec (e.g. tiff, jpeg:quality=60, wav:float32)")
    if args.images:
        return ds.image_folder_bytes(
            args.images, args.spec, train=False, image_size=args.image_size, crop_pct=args.crop_pct
        )
    return ds.EncodedDataset(ds.AudioFolder(args.audio), args.spec)


def _evaluate(model, args: argparse.Namespace) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of a ByteFormer on byte files or an encoded folder."""
    import torch

    from bramley.core.classification import accuracy_eval
    from bramley.core.errors import CheckpointError, DataError

    from .batching import collate_packed
    from .model import ByteFormer
    from .train import packed_forward

    if not isinstance(model, ByteFormer):
        raise CheckpointError(f"{args.checkpoint} holds a {type(model).__name__}, not a ByteFormer")
    data = _eval_dataset(args)
    classes = getattr(data, "classes", None)
    if classes is not None and model.num_classes != len(classes):
        raise DataError(f"the model has {model.num_classes} classes but the data has {len(classes)}")
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, collate_fn=collate_packed)
    return accuracy_eval(packed_forward, device=next(model.parameters()).device)(model, loader)


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bytes", type=Path, help="folder of byte files <root>/<class>/<file> (what encode writes)")
    source.add_argument("--images", type=Path, help="ImageFolder root, encoded with --spec after resize + center crop")
    source.add_argument("--audio", type=Path, help="WAV folder <root>/<class>/<file>.wav, encoded with --spec")
    parser.add_argument("--spec", default=None, help="encoding spec (--images / --audio) or byte transforms (--bytes)")
    parser.add_argument("--image-size", type=positive_int, default=224, help="--images: center-crop size")
    parser.add_argument("--crop-pct", type=unit_float, default=0.875, help="--images: crop / resized shorter side")
    parser.add_argument("--batch-size", type=positive_int, default=48)


cli.add_eval(_evaluate, "top-1 / top-5 accuracy of a trained ByteFormer", _eval_arguments)
cli.add_command(
    "encode", run_encode, "images / WAV files or a bundled set -> byte files (any encoding spec)", add_encode_arguments
)
cli.add_command("bench", run_bench, "training throughput: packed vs padded batches (same process)", add_bench_arguments)
cli.add_reproduce("bramley.byteformer.reproduce")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bramley-byteformer`` and ``bramley byteformer``."""
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
