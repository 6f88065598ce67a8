"""Command line of bramley-fastvit (also available as ``bramley fastvit``): core's shared verbs plus ``bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bramley.core.cli import MethodCLI, positive_int, unit_float, write_json

from .convert import convert_official
from .model import FASTVIT_CONFIGS
from .train import SCHEMA, run_training

cli = MethodCLI("fastvit", "FastViT: a fast hybrid vision transformer using structural reparameterization.")


def _columns(name: str) -> dict[str, Any]:
    cfg = FASTVIT_CONFIGS[name]
    return {
        "layers": "-".join(map(str, cfg["layers"])),
        "widths": "-".join(map(str, cfg["embed_dims"])),
        "mlp": "-".join(str(r) for r in cfg["mlp_ratios"]),
        "mixers": "".join("A" if t == "attention" else "R" for t in cfg.get("token_mixers", ("repmixer",) * 4)),
    }


def _evaluate(model, args: argparse.Namespace) -> dict[str, Any]:
    """Top-1 / top-5 accuracy of ``model`` on the ImageFolder ``--data`` (optionally fused first)."""
    import torch

    from bramley.core.classification import accuracy_eval
    from bramley.core.data import ImageFolder
    from bramley.core.errors import DataError
    from bramley.core.layers import reparameterize_model

    if args.fuse:
        model = reparameterize_model(model)
    data = ImageFolder(args.data, image_size=args.image_size, crop_pct=args.crop_pct, interpolation="bicubic")
    if model.num_classes != len(data.classes):
        raise DataError(f"the model has {model.num_classes} classes but {args.data} has {len(data.classes)}")
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    return accuracy_eval(device=next(model.parameters()).device)(model, loader)


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root (<data>/<class>/<image>)")
    p.add_argument("--image-size", type=positive_int, default=256)
    p.add_argument("--crop-pct", type=unit_float, default=0.9, help="center-crop fraction (official default 0.9)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--fuse", action="store_true", help="evaluate the reparameterized model")


def _bench(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.errors import ConfigError
    from bramley.core.registry import list_models

    from .bench import bench_variant

    names = list_models(package="fastvit")
    if args.model not in names:
        raise ConfigError(f"unknown FastViT model {args.model!r} (known: {', '.join(names)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_variant(args.model, args.image_size, args.batch_size, iters=args.iters, with_timm=not args.no_timm)
    write_json(args.out, result)
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="fastvit_t8", help="a registered FastViT model (default: fastvit_t8)")
    p.add_argument("--image-size", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--iters", type=positive_int, default=20, help="timed calls per model (median reported)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: leave as is)")
    p.add_argument("--no-timm", action="store_true", help="skip timm's fused model")
    p.add_argument("--out", type=Path, default=None, help="also write the result to this JSON file")


cli.add_info(columns=_columns, note="mixers: R = RepMixer stage, A = RepCPE + attention stage; 256 px default input")
cli.add_reparam()
cli.add_convert(convert_official, "official FastViT / MobileCLIP / timm / open_clip checkpoint -> bramley folder")
cli.add_export()
cli.add_train(SCHEMA, run_training)
cli.add_eval(_evaluate, "top-1 / top-5 accuracy on an ImageFolder", _eval_arguments)
cli.add_command("bench", _bench, "CPU latency: unfused vs fused vs timm's fused model", _bench_arguments)
cli.add_reproduce("bramley.fastvit.reproduce")
main = cli.main


if __name__ == "__main__":
    sys.exit(main())
