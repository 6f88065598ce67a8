"""Command line of bramley-byteformer (also available as `bramley byteformer`).

Subcommands: ``encode`` (files or bundled sets -> byte files), ``train`` (a recipe on packed batches), ``eval``
(accuracy of a saved model on byte files or an encoded image / audio folder), ``bench`` (packed vs padded training
throughput), ``info`` (variants and parameters), ``reproduce`` (the mini reproduction).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bramley.core.cli import add_config_arguments, config_from_args, run_method_cli

RECIPES = Path(__file__).parent / "recipes"


def _cmd_info(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.registry import create_model, list_models
    from bramley.core.report import format_table

    from .model import BYTEFORMER_CONFIGS

    rows = []
    for name in [args.model] if args.model else list_models(package="byteformer"):
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = create_model(name, num_classes=1000)
        params = sum(p.numel() for p in model.parameters())
        rows.append(
            {
                "model": name,
                **BYTEFORMER_CONFIGS[name],
                "params_M": round(params / 1e6, 2),
                "params_M_without_pos_table": round((params - model.pos_embed.numel()) / 1e6, 2),
            }
        )
    print(format_table(rows))
    print("1000 classes, k=32, windows 128, max_num_tokens=50000 (the corenet ImageNet configs)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import DEFAULTS, run_training

    if args.config is not None and not args.config.exists() and (RECIPES / args.config.name).exists():
        args.config = RECIPES / args.config.name
    # model.kwargs are free-form factory arguments: whichever the recipe or the command line names
    config = config_from_args(args, copy.deepcopy(DEFAULTS), open_sections=("model.kwargs",))
    config["model"]["kwargs"] = {k: v for k, v in config["model"]["kwargs"].items() if v is not None}
    result = run_training(config, out_dir=args.out)
    print(json.dumps(result["metrics"], indent=2))
    return 0


def _eval_dataset(args: argparse.Namespace):
    from . import datasets as ds

    if args.bytes:
        return ds.ByteFolder(args.bytes, transforms=args.spec)
    if not args.spec:
        raise SystemExit("--images / --audio need --spec (e.g. tiff, jpeg:quality=60, wav:float32)")
    if args.images:
        return ds.image_folder_bytes(args.images, args.spec, train=False, image_size=args.image_size)
    return ds.EncodedDataset(ds.AudioFolder(args.audio), args.spec)


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.checkpoint import from_pretrained

    from .batching import collate_packed
    from .train import accuracy_eval

    model = from_pretrained(args.checkpoint).eval()
    data = _eval_dataset(args)
    classes = getattr(data, "classes", None)
    if classes is not None and model.num_classes != len(classes):
        raise SystemExit(f"model has {model.num_classes} classes but the data has {len(classes)}")
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, collate_fn=collate_packed)
    print(json.dumps(accuracy_eval(model, loader), indent=2))
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from .encode import run_encode

    return run_encode(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bramley-byteformer", description="Bytes Are All You Need: Transformers Operating Directly On File Bytes."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from .encode import add_encode_arguments

    p = sub.add_parser("encode", help="images / WAV files or a bundled set -> byte files (any encoding spec)")
    add_encode_arguments(p)
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("info", help="variants: sizes and parameters")
    p.add_argument("model", nargs="?", help="one variant (default: all)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="train with a recipe (recipes/*.yaml) on packed byte batches")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 accuracy of a saved model")
    p.add_argument("--checkpoint", required=True, help="save_pretrained folder (train writes <out>/model)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bytes", help="folder of byte files <root>/<class>/<file> (what encode writes)")
    src.add_argument("--images", help="ImageFolder root, encoded with --spec after resize + center crop")
    src.add_argument("--audio", help="folder of .wav files <root>/<class>/<file>.wav, encoded with --spec")
    p.add_argument("--spec", default=None, help="encoding spec (images/audio) or byte transforms (--bytes)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=48)
    p.set_defaults(func=_cmd_eval)

    from .bench import add_bench_arguments

    p = sub.add_parser("bench", help="training throughput: packed vs padded batches (same process)")
    add_bench_arguments(p)
    p.set_defaults(func=_cmd_bench)

    sub.add_parser("reproduce", help="run the mini reproduction (options: reproduce --help)", add_help=False)
    return parser


def _reproduce(argv: list[str]) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.checkpoint import CheckpointError

    try:
        return run_method_cli(build_parser(), argv, passthrough={"reproduce": _reproduce})
    except (CheckpointError, FileNotFoundError, NotADirectoryError) as e:
        print(f"bramley-byteformer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
