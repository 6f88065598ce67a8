"""Command line of bramley-dataset-reinforcement (also ``bramley dataset-reinforcement``).

``reinforce`` (a teacher ensemble labels NS augmentations per image into a sharded store; resumable), ``inspect``
(a sample's stored augmentations and targets; ``--verify`` checks every shard), ``train`` (a recipe: reinforced,
plain or online distillation), ``eval`` (accuracy, NLL, ECE and accuracy under corruptions), ``bench`` (student step
time reinforced vs plain vs online KD; reinforce throughput and bytes per image), ``reproduce``, ``info``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bramley.core.cli import (
    MethodCLI,
    add_threads_argument,
    check_writable,
    non_negative_int,
    positive_int,
    unit_float,
    write_json,
)
from bramley.core.errors import ConfigError, DataError

from .train import RECIPES, train

DESCRIPTION = "Dataset Reinforcement: reinforce a dataset once, train any model better."

cli = MethodCLI("dataset-reinforcement", DESCRIPTION)
cli.add_info()


# ------------------------------------------------------------------------------------------------- reinforce
def _reinforce(args: argparse.Namespace) -> int:
    from bramley.core.recipe import load_recipe

    from .data import raw_images
    from .train import teacher_ensemble

    recipe = load_recipe(RECIPES, args.recipe, args.overrides)
    data = recipe.data
    images = raw_images(
        data.source, "train", root=data.train, image_size=data.image_size, seed=data.seed, synthetic=data.synthetic
    )
    teacher = teacher_ensemble(data.reinforce.teachers, images.num_classes, args.device)
    settings = data.reinforce
    from .reinforce import reinforce

    stats = reinforce(
        images,
        teacher,
        args.out,
        data.augment_config(),
        num_augmentations=settings.num_augmentations,
        topk=settings.topk,
        seed=settings.seed,
        shard_size=settings.shard_size,
        batch_size=settings.batch_size,
        device=args.device,
        meta={"teachers": list(settings.teachers)},
        progress=lambda done, total: print(f"shard {done}/{total}", file=sys.stderr),
    )
    write_json(None, stats)
    return 0


def _reinforce_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="bundled recipe name or YAML file (its data section)")
    p.add_argument("--out", type=Path, required=True, help="the store's folder (a partial one is resumed)")
    p.add_argument("--device", default="cpu", help="where the teachers run (cpu, cuda, cuda:N)")
    p.add_argument("overrides", nargs="*", default=[], help="key=value recipe overrides (data.reinforce.topk=5)")


cli.add_command(
    "reinforce", _reinforce, "label NS augmentations per image with a teacher ensemble", _reinforce_arguments
)


# --------------------------------------------------------------------------------------------------- inspect
def _inspect(args: argparse.Namespace) -> int:
    from bramley.core.data.reinforced import RAND_AUGMENT_OPS, ReinforcedStore

    store = ReinforcedStore(args.store)
    meta = store.meta
    classes = meta.get("classes")
    print(
        f"{store.root}: {len(store)} samples x {store.num_augmentations} augmentations, top-{meta.get('topk')} of "
        f"{meta.get('num_classes')} classes, {store.num_shards} shards; teachers {meta.get('teachers')}"
    )
    if args.verify:
        problems = store.verify()
        for shard, error in problems.items():
            print(f"  bad shard {shard}: {error}")
        print(f"verified {store.num_shards - len(problems)}/{store.num_shards} shards")
        if problems:
            raise DataError(f"{len(problems)} of {store.num_shards} shards are missing or unreadable (listed above)")
        return 0
    if not 0 <= args.index < len(store):
        raise ConfigError(f"--index {args.index} is out of range: the store holds samples 0..{len(store) - 1}")
    record = store[args.index]
    print(
        f"sample {args.index}, label {int(record['label'])}"
        + (f" ({classes[int(record['label'])]})" if classes else "")
    )
    for j, params in enumerate(record["params"][: args.augmentations]):
        ops = ", ".join(f"{RAND_AUGMENT_OPS[op]}{'-' if level < 0 else ''}{abs(level)}" for op, level in params["ops"])
        erase = params.get("erase")
        top = ", ".join(
            f"{classes[i] if classes else i}: {float(v):.3f}" for v, i in zip(record["probs"][j], record["ids"][j])
        )
        print(
            f"  [{j}] crop {params['crop']} flip {params['flip']} ops [{ops}] "
            f"erase {erase[:4] if erase else '-'} -> {top}"
        )
    return 0


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, required=True, help="a reinforced dataset folder (from reinforce)")
    p.add_argument("--index", type=non_negative_int, default=0, help="the sample to show")
    p.add_argument("--augmentations", type=positive_int, default=10, help="how many of its augmentations to print")
    p.add_argument("--verify", action="store_true", help="load every shard and report the bad ones instead")


cli.add_command("inspect", _inspect, "print a sample's stored augmentations and teacher targets", _inspect_arguments)

# ----------------------------------------------------------------------------------------------------- train
cli.add_train(RECIPES, train)


# ------------------------------------------------------------------------------------------------------ eval
def _evaluate(model: Any, args: argparse.Namespace) -> dict[str, Any]:
    from bramley.core.config import load_config

    from .data import EvalImages, raw_images
    from .metrics import evaluate
    from .train import ReinforcedData

    recipe_file = Path(args.checkpoint) / "recipe.yaml"
    saved = load_config(recipe_file)["data"] if recipe_file.is_file() else {}
    data = ReinforcedData(**{k: v for k, v in saved.items() if k != "reinforce"})
    source = args.source or data.source
    image_size = args.image_size or data.image_size
    root = args.data or data.val
    augment = data.augment_config()
    images = raw_images(source, "val", root=root, image_size=image_size, seed=data.seed, synthetic=data.synthetic)
    num_classes = getattr(model, "num_classes", images.num_classes)
    if num_classes != images.num_classes:
        raise DataError(f"the evaluation data has {images.num_classes} classes but the model predicts {num_classes}")
    eval_data = EvalImages(images, image_size, augment.mean, augment.std, args.crop_pct or data.crop_pct)
    metrics = evaluate(model, eval_data, augment.mean, augment.std, args.batch_size)
    return {"data": images.description, "images": len(images), "metrics": metrics}


def _eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", choices=["folder", "synthetic", "digits"], default=None, help="default: the run's")
    p.add_argument("--data", type=Path, default=None, help="ImageFolder root (source folder; default: the run's val)")
    p.add_argument("--image-size", type=positive_int, default=None, help="default: the run's")
    p.add_argument("--crop-pct", type=unit_float, default=None, help="default: the run's")
    p.add_argument("--batch-size", type=positive_int, default=256)


cli.add_eval(_evaluate, "top-1, NLL, ECE and accuracy under corruptions on validation images", _eval_arguments)


# ----------------------------------------------------------------------------------------------------- bench
def _bench(args: argparse.Namespace) -> int:
    from .bench import format_bench, run_bench

    check_writable(args.out)
    result = run_bench(
        rounds=args.rounds, steps=args.steps, batch_size=args.batch_size, threads=args.threads, num_images=args.images
    )
    print(format_bench(result))
    write_json(args.out, result, echo=False)
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=positive_int, default=7, help="interleaved rounds (median ratio reported)")
    p.add_argument("--steps", type=positive_int, default=5, help="timed student steps per method per round")
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_threads_argument(p, default=None)
    p.add_argument("--images", type=positive_int, default=512, help="training images reinforced and sampled")
    p.add_argument("--out", type=Path, default=None, help="also write the results to this JSON file")


cli.add_command(
    "bench", _bench, "student step time reinforced vs plain vs online KD; reinforce throughput", _bench_arguments
)

# ------------------------------------------------------------------------------------------------- reproduce
cli.add_reproduce("bramley.dataset_reinforcement.reproduce")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `bramley-dataset-reinforcement` and of `bramley dataset-reinforcement`."""
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
