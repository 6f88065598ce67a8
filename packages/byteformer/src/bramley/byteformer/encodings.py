"""File encodings and byte-level transforms studied in ByteFormer, named by short spec strings.

An *encoding spec* is a file format followed by any number of byte transforms, joined by ``+``::

    tiff                          uncompressed TIFF (the paper's "TIFF")
    png:level=9                   PNG, zlib level 0..9 (default 0, as corenet saves PNGs)
    jpeg:quality=60               JPEG, quality 1..100 (default 100)
    fchw / fhwc                   raw pixel bytes, channel-major / channel-last (the paper's fCHW / fHWC)
    wav:int16                     WAV with float32 (default) / int32 / int16 / uint8 samples
    tiff+permute:seed=3           + fixed byte-value permutation (obfuscation)
    fhwc+noise:low=-5,high=5+permute   + uniform integer noise mod 256, then the permutation (corenet's order)
    fhwc+mask:keep=0.1            privacy camera: a fixed 10% of pixel channels kept, the rest removed
    jpeg+reverse / +random_shuffle / +cyclic_half_length / +stride:1024 / +window_shuffle:window=1024

Options are ``key=value`` pairs separated by commas; each step with options also takes one bare value for its main
option (``png:9``, ``jpeg:60``, ``wav:int16``, ``stride:64``, ``window_shuffle:64``, ``permute:3``, ``noise:5`` meaning
``low=-5,high=5``, ``mask:0.1``). ``str(parse_encoding(spec))`` is the canonical spelling (defaults left out).

Transforms that are fixed functions of the bytes (``permute``, ``window_shuffle``, ``mask``) take their seed from the
spec, so every sample sees the same permutation or mask. Transforms that draw per sample (``random_shuffle``,
``noise``) need a NumPy generator or int seed passed as ``rng``; they refuse to run without one.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .audio import WAV_DTYPES, encode_wav

IMAGE_FORMATS = ("tiff", "png", "jpeg", "fchw", "fhwc")
AUDIO_FORMATS = ("wav",)
TRANSFORMS = (
    "reverse",
    "random_shuffle",
    "cyclic_half_length",
    "stride",
    "window_shuffle",
    "permute",
    "noise",
    "mask",
)
RANDOM_TRANSFORMS = ("random_shuffle", "noise")  # draw new randomness for every sample
INVERTIBLE_TRANSFORMS = ("reverse", "cyclic_half_length", "stride", "window_shuffle", "permute")

# Options of every step: name -> (type, default). Order here is the order in canonical spec strings.
_OPTIONS: dict[str, dict[str, tuple[type, Any]]] = {
    "tiff": {},
    "png": {"level": (int, 0)},
    "jpeg": {"quality": (int, 100)},
    "fchw": {},
    "fhwc": {},
    "wav": {"dtype": (str, "float32")},
    "reverse": {},
    "random_shuffle": {},
    "cyclic_half_length": {},
    "stride": {"stride": (int, 1024)},
    "window_shuffle": {"window": (int, 1024), "seed": (int, 0)},
    "permute": {"seed": (int, 0)},
    "noise": {"low": (int, -5), "high": (int, 5), "p": (float, 1.0)},
    "mask": {"keep": (float, 0.5), "seed": (int, 0), "fill": (int, None)},
}
_MAIN_OPTION = {
    "png": "level",
    "jpeg": "quality",
    "wav": "dtype",
    "stride": "stride",
    "window_shuffle": "window",
    "permute": "seed",
    "noise": "width",
    "mask": "keep",
}
FILE_EXTENSIONS = {"tiff": ".tif", "png": ".png", "jpeg": ".jpg", "fchw": ".bin", "fhwc": ".bin", "wav": ".wav"}


# ---------------------------------------------------------------------------------------------------------------------
# Spec parsing


@dataclass(frozen=True)
class Step:
    """One step of an encoding: a file format or a byte transform, with all its options resolved."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def __getitem__(self, key: str) -> Any:
        return dict(self.options)[key]

    def __str__(self) -> str:
        defaults = _OPTIONS[self.name]
        changed = [f"{k}={v}" for k, v in self.options if v != defaults[k][1]]
        return self.name + (":" + ",".join(changed) if changed else "")


@dataclass(frozen=True)
class Encoding:
    """A parsed encoding spec: ``format`` (a :class:`Step` naming a file format) then byte ``transforms``."""

    format: Step
    transforms: tuple[Step, ...] = ()

    @property
    def modality(self) -> str:
        """``"image"`` or ``"audio"``: what :func:`encode` expects as input."""
        return "audio" if self.format.name in AUDIO_FORMATS else "image"

    @property
    def needs_rng(self) -> bool:
        """True when a transform draws new randomness per sample (``rng`` must be given to :func:`encode`)."""
        return any(t.name in RANDOM_TRANSFORMS for t in self.transforms)

    @property
    def file_extension(self) -> str:
        """Extension for files holding this encoding: the format's own, or ``.bin`` once transforms alter the bytes."""
        return ".bin" if self.transforms else FILE_EXTENSIONS[self.format.name]

    def split_random(self) -> tuple[Encoding, tuple[Step, ...]]:
        """``(deterministic prefix, rest)``: the prefix can be computed once and cached; the rest runs per sample."""
        for i, t in enumerate(self.transforms):
            if t.name in RANDOM_TRANSFORMS:
                return Encoding(self.format, self.transforms[:i]), self.transforms[i:]
        return self, ()

    def __str__(self) -> str:
        return "+".join(str(s) for s in (self.format, *self.transforms))


def _convert(step: str, key: str, kind: type, text: str) -> Any:
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise ValueError(f"option {key!r} of {step!r} must be {kind.__name__}, got {text!r}") from None


def _check_options(name: str, opts: dict[str, Any]) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{name}: {what}")

    if name == "png":
        need(0 <= opts["level"] <= 9, f"level must be 0..9, got {opts['level']}")
    elif name == "jpeg":
        need(1 <= opts["quality"] <= 100, f"quality must be 1..100, got {opts['quality']}")
    elif name == "wav":
        need(opts["dtype"] in WAV_DTYPES, f"dtype must be one of {', '.join(WAV_DTYPES)}, got {opts['dtype']!r}")
    elif name == "stride":
        need(opts["stride"] >= 1, f"stride must be >= 1, got {opts['stride']}")
    elif name == "window_shuffle":
        need(opts["window"] >= 1, f"window must be >= 1, got {opts['window']}")
    elif name == "noise":
        need(-255 <= opts["low"] <= opts["high"] <= 255, f"need -255 <= low <= high <= 255, got {opts}")
        need(0.0 < opts["p"] <= 1.0, f"p (fraction of bytes receiving noise) must be in (0, 1], got {opts['p']}")
    elif name == "mask":
        need(0.0 < opts["keep"] <= 1.0, f"keep (fraction of bytes kept) must be in (0, 1], got {opts['keep']}")
        need(opts["fill"] is None or 0 <= opts["fill"] <= 255, f"fill must be a byte value 0..255, got {opts['fill']}")
    if "seed" in opts:
        need(opts["seed"] >= 0, f"seed must be >= 0, got {opts['seed']}")


def parse_step(text: str, allowed: Sequence[str], kind: str = "step") -> Step:
    """Parse ``"name[:value | :key=value,...]"`` into a :class:`Step` whose name must be in ``allowed``."""
    name, _, rest = text.strip().partition(":")
    name = name.strip().lower()
    if name not in allowed:
        hint = " (a spec starts with a file format, transforms follow after '+')" if name in _OPTIONS else ""
        raise ValueError(f"unknown {kind} {name!r}{hint}; valid choices: {', '.join(allowed)}")
    schema = _OPTIONS[name]
    opts = {key: default for key, (_, default) in schema.items()}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:  # a bare value sets the main option
            key, value = _MAIN_OPTION.get(name, ""), item
            if not key:
                raise ValueError(f"{name!r} takes no options, got {item!r}")
        key = key.strip()
        if name == "noise" and key == "width":
            width = _convert(name, key, int, value)
            opts["low"], opts["high"] = -width, width
            continue
        if key not in schema:
            valid = ", ".join(schema) + (", width" if name == "noise" else "")
            raise ValueError(f"unknown option {key!r} for {name!r}; valid options: {valid or '(none)'}")
        opts[key] = _convert(name, key, schema[key][0], value.strip())
    _check_options(name, opts)
    return Step(name, tuple(opts.items()))


def parse_transforms(spec: str | Sequence[Step]) -> tuple[Step, ...]:
    """Parse ``"permute:3+noise:5"`` (transforms only, no format) into steps."""
    if not isinstance(spec, str):
        return tuple(spec)
    return tuple(parse_step(part, TRANSFORMS, "transform") for part in spec.split("+") if part.strip())


def parse_encoding(spec: str | Encoding) -> Encoding:
    """Parse an encoding spec string (see the module docstring); an :class:`Encoding` is returned unchanged.

    Raises:
        ValueError: unknown format, transform or option (the message lists the valid choices), bad option value.
    """
    if isinstance(spec, Encoding):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"encoding spec must be a non-empty string, got {spec!r}")
    first, *rest = spec.split("+")
    fmt = parse_step(first, IMAGE_FORMATS + AUDIO_FORMATS, "format")
    return Encoding(fmt, parse_transforms("+".join(rest)))


# ---------------------------------------------------------------------------------------------------------------------
# Images -> bytes


def as_uint8_image(image: Any) -> np.ndarray:
    """Any supported image as a uint8 array ``(H, W)`` (gray) or ``(H, W, C)`` with C in {3, 4}.

    Accepts PIL images (modes other than L / RGB / RGBA are converted to RGB), NumPy arrays laid out ``(H, W)`` or
    ``(H, W, C)``, and torch tensors laid out ``(H, W)`` or ``(C, H, W)``. Float inputs must lie in [0, 1] and are
    rounded to the nearest of 256 levels (corenet truncates ``x * 255``: the same for exact multiples of 1/255
    such as ``ToTensor`` output, one level low for values just below a level).
    """
    if hasattr(image, "mode") and hasattr(image, "getbands"):  # PIL image, without importing PIL for the check
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("RGB")
        array = np.asarray(image)
    elif isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
        if array.ndim == 3:
            array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(
            f"image must be (H, W) or (H, W, C) with C in 1, 3, 4 (torch: (C, H, W)), got shape {array.shape}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"image is empty: shape {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
            raise ValueError("float images must hold finite values in [0, 1]")
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise TypeError(f"image must be uint8 or float in [0, 1], got dtype {array.dtype}")


def encode_image(image: Any, format: str = "tiff", *, level: int = 0, quality: int = 100) -> np.ndarray:
    """Encode one image as the bytes of a file (uint8 1-D array).

    Args:
        image: PIL image, uint8/float NumPy ``(H, W[, C])`` or torch ``(C, H, W)`` (see :func:`as_uint8_image`).
        format: ``"tiff"`` (uncompressed), ``"png"``, ``"jpeg"``, ``"fchw"`` or ``"fhwc"`` (raw pixel bytes).
        level: PNG zlib compression level 0..9.
        quality: JPEG quality 1..100 (Pillow's default 4:2:0 chroma subsampling, as corenet).
    """
    pixels = as_uint8_image(image)
    if format == "fhwc":
        return pixels.reshape(-1).copy()
    if format == "fchw":
        return (pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels).reshape(-1).copy()
    from PIL import Image

    buffer = io.BytesIO()
    pil = Image.fromarray(pixels)
    if format == "tiff":
        pil.save(buffer, format="TIFF", compression="raw")
    elif format == "png":
        pil.save(buffer, format="PNG", compress_level=int(level))
    elif format == "jpeg":
        if pixels.ndim == 3 and pixels.shape[-1] == 4:
            raise ValueError("JPEG cannot store an alpha channel: pass an RGB or grayscale image")
        pil.save(buffer, format="JPEG", quality=int(quality))
    else:
        raise ValueError(f"unknown image format {format!r}; valid choices: {', '.join(IMAGE_FORMATS)}")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


# ---------------------------------------------------------------------------------------------------------------------
# Byte transforms. All take and return uint8 1-D arrays and never modify their input.


def _as_bytes(data: Any) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(data), dtype=np.uint8)
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    array = np.asarray(data)
    if array.ndim != 1:
        raise ValueError(f"byte transforms take a 1-D byte sequence, got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or (array.size and (array.min() < 0 or array.max() > 255)):
            raise ValueError(f"byte values must be integers in 0..255, got dtype {array.dtype}")
        array = array.astype(np.uint8)
    return array


def _generator(rng: np.random.Generator | int | None, name: str) -> np.random.Generator:
    if rng is None:
        raise ValueError(
            f"transform {name!r} draws new randomness for every sample: pass rng= (a numpy Generator or an int seed)"
        )
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def reorder_indices(step: Step, n: int) -> np.ndarray:
    """Positions read by a deterministic reordering transform: ``out = data[reorder_indices(step, len(data))]``."""
    index = np.arange(n)
    if step.name == "reverse":
        return index[::-1].copy()
    if step.name == "cyclic_half_length":
        return np.roll(index, n // 2)  # out[i] = data[i - n // 2]: the sequence rotated right by half its length
    if step.name == "stride":
        s = step["stride"]
        return np.concatenate([index[i::s] for i in range(min(s, n))]) if n else index
    if step.name == "window_shuffle":
        w = step["window"]
        order = np.random.default_rng(step["seed"]).permutation(w)
        full = (n // w) * w
        return np.concatenate([(index[:full].reshape(-1, w)[:, order]).reshape(-1), index[full:]])
    raise ValueError(f"{step.name!r} is not a reordering transform")


def byte_permutation(seed: int = 0) -> np.ndarray:
    """The obfuscation table: a permutation of the 256 byte values drawn from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).permutation(256).astype(np.uint8)


def mask_indices(n: int, keep: float, seed: int = 0) -> np.ndarray:
    """Sorted positions kept by the privacy-camera mask for sequences of length ``n``.

    The same ``(n, keep, seed)`` always gives the same positions, so all inputs of one length share one mask (the
    paper's "consistently masking" pixel channels). ``round(keep * n)`` positions are kept.
    """
    count = round(keep * n)
    if count < 1:
        raise ValueError(f"mask keep={keep} keeps no byte of a {n}-byte input")
    return np.sort(np.random.default_rng([seed, n]).permutation(n)[:count])


def apply_step(data: np.ndarray, step: Step, rng: np.random.Generator | None = None) -> np.ndarray:
    """Apply one byte transform to a uint8 1-D array."""
    if step.name in ("reverse", "cyclic_half_length", "stride", "window_shuffle"):
        return data[reorder_indices(step, len(data))]
    if step.name == "random_shuffle":
        return data[_generator(rng, step.name).permutation(len(data))]
    if step.name == "permute":
        return byte_permutation(step["seed"])[data]
    if step.name == "noise":
        gen = _generator(rng, step.name)
        out = data.astype(np.int64)
        if step["p"] >= 1.0:
            out += gen.integers(step["low"], step["high"] + 1, size=len(data))
        else:
            where = gen.choice(len(data), size=round(step["p"] * len(data)), replace=False)
            out[where] += gen.integers(step["low"], step["high"] + 1, size=len(where))
        return np.mod(out, 256).astype(np.uint8)
    if step.name == "mask":
        kept = mask_indices(len(data), step["keep"], step["seed"])
        if step["fill"] is None:
            return data[kept]
        out = np.full_like(data, step["fill"])
        out[kept] = data[kept]
        return out
    raise ValueError(f"unknown transform {step.name!r}; valid choices: {', '.join(TRANSFORMS)}")


def apply_transforms(
    data: Any, transforms: str | Sequence[Step] | Encoding, *, rng: np.random.Generator | int | None = None
) -> np.ndarray:
    """Apply byte transforms in order to a byte sequence (bytes, uint8 array or integer tensor) -> uint8 array.

    Args:
        data: the bytes.
        transforms: ``"permute:3+noise:5"``, parsed steps, or an :class:`Encoding` (its transforms are used).
        rng: generator or seed for the per-sample random transforms (``random_shuffle``, ``noise``).
    """
    steps = transforms.transforms if isinstance(transforms, Encoding) else parse_transforms(transforms)
    out = _as_bytes(data)
    if rng is not None and not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)  # one stream for all steps, whatever kind of seed was given
    for step in steps:
        out = apply_step(out, step, rng)
    return out if out is not data else out.copy()


def invert_transforms(data: Any, transforms: str | Sequence[Step] | Encoding) -> np.ndarray:
    """Undo invertible transforms (reorderings and the byte permutation), last first.

    Raises:
        ValueError: a transform that loses information or is random per sample (``random_shuffle``, ``noise``,
            ``mask``) is in the list.
    """
    steps = transforms.transforms if isinstance(transforms, Encoding) else parse_transforms(transforms)
    out = _as_bytes(data).copy()
    for step in reversed(steps):
        if step.name not in INVERTIBLE_TRANSFORMS:
            raise ValueError(f"{step.name!r} cannot be inverted; invertible: {', '.join(INVERTIBLE_TRANSFORMS)}")
        if step.name == "permute":
            out = np.argsort(byte_permutation(step["seed"])).astype(np.uint8)[out]
        else:
            restored = np.empty_like(out)
            restored[reorder_indices(step, len(out))] = out
            out = restored
    return out


# ---------------------------------------------------------------------------------------------------------------------
# One entry point


def encode(
    x: Any,
    spec: str | Encoding,
    *,
    rng: np.random.Generator | int | None = None,
    sample_rate: int | None = None,
) -> np.ndarray:
    """Encode an image or a waveform as file bytes and apply the spec's byte transforms.

    Args:
        x: an image (see :func:`as_uint8_image`) for image formats; a float waveform in [-1, 1], ``(samples,)`` or
            ``(channels, samples)``, for ``wav``.
        spec: encoding spec string (see the module docstring) or a parsed :class:`Encoding`.
        rng: generator or seed; required when the spec has per-sample random transforms.
        sample_rate: samples per second; required for audio.

    Returns:
        uint8 1-D array of byte values (use :func:`to_tokens` for the model's int64 tensor).
    """
    enc = parse_encoding(spec)
    fmt = enc.format
    if fmt.name == "wav":
        if sample_rate is None:
            raise ValueError("sample_rate is required to encode audio as WAV")
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        data = encode_wav(x, sample_rate, fmt["dtype"])
    else:
        data = encode_image(x, fmt.name, **dict(fmt.options))
    if enc.needs_rng:
        rng = _generator(rng, next(t.name for t in enc.transforms if t.name in RANDOM_TRANSFORMS))
    return apply_transforms(data, enc.transforms, rng=rng) if enc.transforms else data


def to_tokens(data: Any) -> torch.Tensor:
    """Byte values as the model's input: an int64 1-D tensor with values in 0..255."""
    return torch.from_numpy(_as_bytes(data).astype(np.int64))


def describe(spec: str | Encoding) -> Mapping[str, Any]:
    """A JSON-ready description of a spec (canonical string, format and options, transforms) for manifests."""
    enc = parse_encoding(spec)
    return {
        "spec": str(enc),
        "modality": enc.modality,
        "format": {"name": enc.format.name, **dict(enc.format.options)},
        "transforms": [{"name": t.name, **dict(t.options)} for t in enc.transforms],
    }
