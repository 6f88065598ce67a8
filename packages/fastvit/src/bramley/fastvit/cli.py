"""Command line of bramley-fastvit (also available as ``bramley fastvit``): core's shared verbs plus ``bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bramley.core.cli import MethodCLI, add_threads_argument, positive_int, torch_threads, write_json

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


def _bench(args: argparse.Namespace) -> int:
    from bramley.core.errors import ConfigError
    from bramley.core.registry import list_models

    from .bench import bench_variant

    names = list_models(package="fastvit")
    if args.model not in names:
        raise ConfigError(f"unknown FastViT model {args.model!r} (known: {', '.join(names)})")
    with torch_threads(args.threads):  # the result records the count used
        result = bench_variant(
            args.model, args.image_size, args.batch_size, iters=args.iters, with_timm=not args.no_timm
        )
    write_json(args.out, result)
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="fastvit_t8", help="a registered FastViT model (default: fastvit_t8)")
    p.add_argument("--image-size", type=positive_int, default=256)
    p.add_argument("--batch-size", type=positive_int, default=1)
    p.add_argument("--iters", type=positive_int, default=20, help="timed calls per model (median reported)")
    add_threads_argument(p, default=None)
    p.add_argument("--no-timm", action="store_true", help="skip timm's fused model")
    p.add_argument("--out", type=Path, default=None, help="also write the result to this JSON file")


cli.add_info(columns=_columns, note="mixers: R = RepMixer stage, A = RepCPE + attention stage; 256 px default input")
cli.add_reparam()
cli.add_convert(convert_official, "official FastViT / MobileCLIP / timm / open_clip checkpoint -> bramley folder")
cli.add_export()
cli.add_train(SCHEMA, run_training)
cli.add_image_eval("top-1 / top-5 accuracy on an ImageFolder", image_size=256, crop_pct=0.9, interpolation="bicubic")
cli.add_command("bench", _bench, "CPU latency: unfused vs fused vs timm's fused model", _bench_arguments)
cli.add_reproduce("bramley.fastvit.reproduce")
main = cli.main


if __name__ == "__main__":
    sys.exit(main())
