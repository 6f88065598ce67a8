"""Command line of bramley-fastvit (also available as `bramley fastvit`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from bramley.core.cli import add_config_arguments, config_from_args, run_method_cli

RECIPES = Path(__file__).parent / "recipes"


def _load(args: argparse.Namespace):
    """The model of ``--checkpoint DIR`` (a save_pretrained folder) or a fresh ``--model NAME``."""
    from bramley.core.checkpoint import from_pretrained
    from bramley.core.registry import create_model

    from . import model as _  # noqa: F401  (registers the variants)

    if getattr(args, "checkpoint", None):
        return from_pretrained(args.checkpoint)
    return create_model(args.model)


def _cmd_info(args: argparse.Namespace) -> int:
    from bramley.core.registry import create_model, list_models

    from .model import FASTVIT_CONFIGS

    names = [args.model] if args.model else list_models(package="fastvit")
    rows = []
    for name in names:
        model = create_model(name)
        fused = create_model(name, inference_mode=True)
        cfg = FASTVIT_CONFIGS[name]
        rows.append(
            {
                "model": name,
                "layers": "-".join(map(str, cfg["layers"])),
                "widths": "-".join(map(str, cfg["embed_dims"])),
                "mlp": "-".join(str(r) for r in cfg["mlp_ratios"]),
                "mixers": "".join("A" if t == "attention" else "R" for t in cfg.get("token_mixers", ("repmixer",) * 4)),
                "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "fused_params_M": round(sum(p.numel() for p in fused.parameters()) / 1e6, 2),
            }
        )
    from bramley.core.report import format_table

    print(format_table(rows))
    print("mixers: R = RepMixer stage, A = RepCPE + attention stage; 256 px default input")
    return 0


def _cmd_reparam(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.checkpoint import from_pretrained, save_pretrained

    from .model import reparameterize

    model = from_pretrained(args.checkpoint).eval()
    fused = reparameterize(model)
    x = torch.randn(1, model.in_chans, args.image_size, args.image_size)
    with torch.no_grad():
        diff = float((fused(x) - model(x)).abs().max())
    save_pretrained(fused, args.out)
    print(f"fused {args.checkpoint} -> {args.out}; max |fused - unfused| on a random input: {diff:.3g}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from bramley.core.checkpoint import check_state_dict, save_pretrained
    from bramley.core.registry import create_model

    from .convert import convert_official, load_official_file

    converted = convert_official(load_official_file(args.source), model_name=args.model)
    model = create_model(converted.model_name, **converted.model_kwargs)
    check_state_dict(model, converted.state_dict, source=f"converted {args.source}")
    model.load_state_dict(converted.state_dict)
    if args.fuse:
        from .model import reparameterize

        model = reparameterize(model)
    save_pretrained(model, args.out)
    print(
        f"converted {converted.source} checkpoint {args.source} -> {args.out} as {converted.model_name} "
        f"{converted.model_kwargs}{' (fused)' if args.fuse else ''}"
    )
    if converted.ignored:
        print(f"ignored {len(converted.ignored)} keys outside the image tower (e.g. {converted.ignored[0]})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import copy

    from .train import DEFAULTS, run_training

    if args.config is not None and not args.config.exists() and (RECIPES / args.config.name).exists():
        args.config = RECIPES / args.config.name
    # model.kwargs are free-form factory arguments: whichever the recipe (or the command line) names
    config = config_from_args(args, copy.deepcopy(DEFAULTS), open_sections=("model.kwargs",))
    result = run_training(config, out_dir=args.out)
    print(json.dumps(result["metrics"], indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from bramley.core.data import ImageFolder

    from .model import reparameterize
    from .train import accuracy_eval

    model = _load(args).eval()
    if args.fuse:
        model = reparameterize(model)
    data = ImageFolder(args.data, image_size=args.image_size, crop_pct=args.crop_pct, interpolation="bicubic")
    if model.num_classes != len(data.classes):
        raise SystemExit(f"model has {model.num_classes} classes but {args.data} has {len(data.classes)}")
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
    print(json.dumps(accuracy_eval(model, loader), indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    model = _load(args)
    info = export_onnx(model, args.out, image_size=args.image_size, check=not args.no_check)
    print(json.dumps(info, indent=2))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .bench import bench_variant

    if args.threads:
        torch.set_num_threads(args.threads)
    result = bench_variant(args.model, args.image_size, args.batch_size, iters=args.iters, with_timm=not args.no_timm)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bramley-fastvit",
        description="FastViT: a fast hybrid vision transformer using structural reparameterization.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="variants: layers, widths, parameters (unfused and fused)")
    p.add_argument("model", nargs="?", help="one variant (default: all)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("reparam", help="fuse a save_pretrained folder into its inference form")
    p.add_argument("checkpoint", help="save_pretrained folder of an unfused model")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--image-size", type=int, default=256, help="input size of the equality check")
    p.set_defaults(func=_cmd_reparam)

    p = sub.add_parser("convert", help="official FastViT / MobileCLIP / timm checkpoint -> bramley folder")
    p.add_argument("source", help=".pth.tar / .pt / .pth file")
    p.add_argument("--out", required=True, help="output save_pretrained folder")
    p.add_argument("--model", default=None, help="expected variant (default: detected from the weights)")
    p.add_argument("--fuse", action="store_true", help="also reparameterize before saving")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("train", help="train with a recipe (recipes/*.yaml) on an ImageFolder dataset")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_train)

    for name, helptext in (("eval", "top-1/top-5 accuracy on an ImageFolder"), ("export", "ONNX export + check")):
        p = sub.add_parser(name, help=helptext)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--checkpoint", help="save_pretrained folder")
        src.add_argument("--model", help="registered variant with random weights")
        p.add_argument("--image-size", type=int, default=256)
        if name == "eval":
            p.add_argument("--data", required=True, help="ImageFolder root")
            p.add_argument("--crop-pct", type=float, default=0.9)
            p.add_argument("--batch-size", type=int, default=64)
            p.add_argument("--fuse", action="store_true", help="evaluate the reparameterized model")
            p.set_defaults(func=_cmd_eval)
        else:
            p.add_argument("--out", required=True, help="output .onnx file")
            p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
            p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="CPU latency: unfused vs fused vs timm fused")
    p.add_argument("--model", default="fastvit_t8")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--out", default=None, help="also write the result as JSON")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("reproduce", help="run the mini reproduction", add_help=False)
    p.set_defaults(func=lambda args: _reproduce(args.rest))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _reproduce(argv: list[str]) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from bramley.core.checkpoint import CheckpointError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reproduce"]:  # argparse's REMAINDER does not capture leading options such as --quick
        return _reproduce(argv[1:])
    try:
        return run_method_cli(build_parser(), argv)
    except (CheckpointError, FileNotFoundError, NotADirectoryError) as e:
        print(f"bramley-fastvit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
