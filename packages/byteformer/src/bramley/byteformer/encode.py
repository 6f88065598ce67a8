"""``bramley byteformer encode``: image / audio files or a bundled dataset -> a folder of byte files + manifest.json.

Inputs are files or folders. A folder's layout is mirrored under ``--out`` (``train/<class>/x.JPEG`` stays
``train/<class>/x.tif``), so encoding an ImageFolder / Speech Commands tree gives a :class:`ByteFolder` tree.
``--dataset digits`` / ``--dataset audio`` write the bundled sets as ``<out>/<split>/<class>/<index>.<ext>``.
Files keep their format's extension (``.tif .png .jpg .wav``, ``.bin`` for raw pixels); once a byte transform
alters the bytes they are no longer valid files of that format and get ``.bin``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bramley.core.cli import positive_int
from bramley.core.data import sample_seed
from bramley.core.data.splits import SPLITS
from bramley.core.errors import ConfigError

from .audio import clip_pcm_floor, read_wav
from .encodings import AUDIO_FORMATS, IMAGE_FORMATS, TRANSFORMS, Encoding, describe, encode, parse_encoding

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
AUDIO_EXTENSIONS = (".wav",)
DATASETS = ("digits", "audio")


def add_encode_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``encode`` options to ``parser`` (run with :func:`run_encode`)."""
    parser.add_argument(
        "inputs", nargs="*", type=Path, help="image / .wav files or folders (folder layouts are mirrored)"
    )
    parser.add_argument("--dataset", choices=DATASETS, help="encode a bundled dataset instead of files")
    parser.add_argument(
        "--spec",
        "-e",
        required=True,
        help=f"encoding spec, e.g. tiff, png:level=9, jpeg:quality=60, wav:int16, tiff+permute:seed=3, "
        f"fhwc+mask:keep=0.1. Formats: {', '.join(IMAGE_FORMATS + AUDIO_FORMATS)}; transforms: {', '.join(TRANSFORMS)}",
    )
    parser.add_argument("--out", "-o", type=Path, required=True, help="output folder (must be empty or absent)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out")
    parser.add_argument("--seed", type=int, default=0, help="seed of per-sample random transforms and dataset splits")
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="digits: side length (default 24); image files: resize the shorter side and center-crop to this",
    )
    parser.add_argument("--channels", type=int, choices=(1, 3), default=3, help="digits: 1 = gray, 3 = RGB")
    parser.add_argument("--split", choices=(*SPLITS, "all"), default="all", help="dataset split(s) to write")
    parser.add_argument(
        "--clips-per-class", type=positive_int, default=None, help="audio dataset: clips per class and split"
    )
    parser.add_argument("--sample-rate", type=positive_int, default=8000, help="audio dataset: samples per second")
    return parser


def run_encode(args: argparse.Namespace) -> int:
    """Run ``encode`` with parsed arguments; writes the files and ``<out>/manifest.json``. Returns 0."""
    try:
        encoding = parse_encoding(args.spec)
    except ValueError as err:
        raise ConfigError(f"--spec: {err}") from None
    if bool(args.inputs) == bool(args.dataset):
        raise ConfigError("give input files/folders or --dataset, not both and not neither")
    if args.dataset and encoding.modality != ("audio" if args.dataset == "audio" else "image"):
        raise ConfigError(f"--dataset {args.dataset} cannot be encoded as {encoding.format.name!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ConfigError(f"--out {out} is not empty (pass --overwrite to write into it)")

    items = _dataset_items(args) if args.dataset else _file_items(args, encoding)
    records, skipped = [], []
    start = time.perf_counter()
    for index, item in enumerate(items):
        if item.get("skipped"):
            skipped.append(item["source"])
            continue
        rng = np.random.default_rng(sample_seed(args.seed, 0, index)) if encoding.needs_rng else None
        try:
            data = encode(item.pop("x"), encoding, rng=rng, sample_rate=item.pop("sample_rate", None))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{item['source']}: {err}") from None
        target = out / Path(item.pop("path")).with_suffix(encoding.file_extension)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.tobytes())
        records.append({"path": target.relative_to(out).as_posix(), "bytes": int(data.size), **item})
    kind = ".wav" if encoding.modality == "audio" else "image"
    if not records:
        raise ConfigError(f"nothing to encode: no {kind} files in the inputs (spec {str(encoding)!r})")
    manifest = _manifest(args, encoding, records, skipped, time.perf_counter() - start)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    stats = manifest["bytes"]
    note = f"; skipped {len(skipped)} files that are not {kind} files (listed in manifest.json)" if skipped else ""
    print(
        f"encoded {len(records)} files as {encoding} into {out}: "
        f"bytes mean {stats['mean']:.1f}, min {stats['min']}, max {stats['max']}{note}"
    )
    return 0


def _dataset_items(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    from .datasets import DigitsImages, SyntheticAudio

    for split in SPLITS if args.split == "all" else (args.split,):
        if args.dataset == "digits":
            source = DigitsImages(split, image_size=args.image_size or 24, channels=args.channels, seed=args.seed)
        else:
            source = SyntheticAudio(
                split, clips_per_class=args.clips_per_class, sample_rate=args.sample_rate, seed=args.seed
            )
        for i in range(len(source)):
            x, label = source[i]
            name = source.classes[label]
            yield {
                "x": x,
                "sample_rate": getattr(source, "sample_rate", None),
                "path": f"{split}/{name}/{i:05d}",
                "source": f"{args.dataset}/{split}/{i}",
                "split": split,
                "label": name,
            }


def _file_items(args: argparse.Namespace, encoding: Encoding) -> Iterator[dict[str, Any]]:
    wanted = AUDIO_EXTENSIONS if encoding.modality == "audio" else IMAGE_EXTENSIONS
    for root in args.inputs:
        root = Path(root)
        if root.is_file():
            if root.suffix.lower() not in wanted:
                kind = "audio (.wav)" if encoding.modality == "audio" else "image"
                raise ConfigError(f"{root}: spec {encoding.format.name!r} needs {kind} files")
            pairs = [(root, Path(root.stem))]
        elif root.is_dir():
            pairs = [(p, p.relative_to(root).with_suffix("")) for p in sorted(root.rglob("*")) if p.is_file()]
        else:
            raise ConfigError(f"input {root} does not exist")
        for path, rel in pairs:
            if path.suffix.lower() not in wanted:
                yield {"skipped": True, "source": str(path)}
                continue
            item = {"path": rel.as_posix(), "source": str(path)}
            if len(rel.parts) > 1:
                item["label"] = rel.parts[-2]
            try:
                if encoding.modality == "audio":
                    waveform, rate, dtype = read_wav(path.read_bytes())
                    item.update(x=clip_pcm_floor(waveform, dtype), sample_rate=rate)
                else:
                    item["x"] = _load_image(path, args.image_size)
            except (OSError, ValueError) as err:
                raise ConfigError(f"cannot read {path}: {err}") from None
            yield item


def _load_image(path: Path, size: int | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        if size is not None:
            scale = size / min(image.size)
            resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
            image = image.resize(resized, Image.Resampling.BICUBIC)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        return np.asarray(image).copy()


def _manifest(
    args: argparse.Namespace, encoding: Encoding, records: list[dict], skipped: list[str], seconds: float
) -> dict[str, Any]:
    from . import __version__

    sizes = np.array([r["bytes"] for r in records])
    source: dict[str, Any] = {"inputs": [str(p) for p in args.inputs]} if args.inputs else {"dataset": args.dataset}
    if args.dataset:
        source |= {"split": args.split, "seed": args.seed}
        if args.dataset == "digits":
            source |= {"image_size": args.image_size or 24, "channels": args.channels}
        else:
            source |= {"clips_per_class": args.clips_per_class, "sample_rate": args.sample_rate}
    elif args.image_size:
        source["image_size"] = args.image_size
    return {
        "encoding": describe(encoding),
        "source": source,
        "seed": args.seed,
        "count": len(records),
        "bytes": {"mean": float(sizes.mean()), "min": int(sizes.min()), "max": int(sizes.max())},
        "classes": sorted({r["label"] for r in records if "label" in r}),
        "seconds": round(seconds, 3),
        "bramley_byteformer_version": __version__,
        "skipped": skipped,
        "files": records,
    }
