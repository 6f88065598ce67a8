"""Datasets whose items are file bytes: ``(int64 1-D tensor of byte values 0..255, label)``.

- :class:`DigitsImages`: scikit-learn's digits upsampled to small uint8 images (bundled, leak-free splits).
- :class:`SyntheticAudio`: a generated six-class audio task (tones, chirps, noise bursts, pulse trains) at 8 kHz.
- :class:`AudioFolder`: WAV files in ``root/<class>/<file>.wav`` (Speech Commands layout).
- :class:`EncodedDataset`: encodes the images / waveforms of any such dataset with a spec, cached or on the fly.
- :class:`ByteFolder`: encoded byte files in ``root/<class>/<file>`` (what ``bramley byteformer encode`` writes).
- :func:`digits_bytes`, :func:`audio_bytes`: the bundled sets encoded once and cached in memory.
- :func:`image_folder_bytes`: an ImageFolder (ImageNet) with the paper's crops, encoded on the fly.
- :class:`RandomTranslate`: a seeded image shift applied before encoding (augmentation for the small digits set).

The folder datasets refuse a missing, empty or unreadable file when they are built, before any training step
(:class:`bramley.core.errors.DataError`, one line naming the file).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bramley.core.data import DigitsDataset, SharedEpoch, sample_seed
from bramley.core.data.splits import SPLITS
from bramley.core.errors import DataError

from .audio import clip_pcm_floor, read_wav
from .encodings import Encoding, apply_transforms, encode, parse_encoding, parse_transforms, to_tokens

# ---------------------------------------------------------------------------------------------------------------------
# Sources: images and waveforms


class DigitsImages(Dataset):
    """scikit-learn's digits as uint8 images: items ``(pixels, label)``, ``pixels`` ``(S, S)`` or ``(S, S, 3)``.

    The 8x8 images (values 0..16) are upsampled bilinearly to ``image_size`` and scaled to 0..255; ``channels=3``
    repeats the gray channel, so RGB files are as long as real RGB images of that size. Splits are the stratified,
    seeded, disjoint splits of :class:`bramley.core.data.DigitsDataset` (train/val/test = 1259/179/359 by default).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        image_size: side length in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        seed: split seed.
        val_fraction: share of each class in ``val``.
        test_fraction: share of each class in ``test``.
    """

    num_classes = 10
    classes = tuple(str(i) for i in range(10))

    def __init__(
        self,
        split: str = "train",
        *,
        image_size: int = 24,
        channels: int = 3,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        x, y = DigitsDataset(
            split,
            image_size=image_size,
            in_chans=1,
            normalize=False,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        ).tensors()
        gray = np.rint(x[:, 0].clamp(0, 1).numpy().astype(np.float64) * 255.0).astype(np.uint8)
        self.images = np.repeat(gray[..., None], 3, axis=-1) if channels == 3 else gray
        self.targets = y.numpy().astype(np.int64)
        self.split = split

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index], int(self.targets[index])


SYNTHETIC_AUDIO_CLASSES = ("low_tone", "high_tone", "chirp_up", "chirp_down", "noise_burst", "pulse_train")
_DEFAULT_CLIPS = {"train": 100, "val": 20, "test": 40}


def synthesize_clip(
    label: int,
    rng: np.random.Generator,
    *,
    sample_rate: int = 8000,
    min_duration: float = 0.06,
    max_duration: float = 0.12,
) -> np.ndarray:
    """One clip of class ``label`` (index into :data:`SYNTHETIC_AUDIO_CLASSES`): float32 mono in [-1, 1].

    Random per clip: duration, frequency (or sweep range, pulse rate), phase, 5 ms fades, white noise at 5-20 dB SNR,
    and peak amplitude 0.3-0.95. Tones and chirps keep below the Nyquist frequency for any ``sample_rate`` >= 8000.
    """
    if not 0 <= label < len(SYNTHETIC_AUDIO_CLASSES):
        raise ValueError(f"label must be in 0..{len(SYNTHETIC_AUDIO_CLASSES) - 1}, got {label}")
    if not 0 < min_duration <= max_duration:
        raise ValueError(f"need 0 < min_duration <= max_duration, got {min_duration}, {max_duration}")
    n = int(rng.integers(max(2, round(min_duration * sample_rate)), max(2, round(max_duration * sample_rate)) + 1))
    t = np.arange(n) / sample_rate
    phase = rng.uniform(0, 2 * np.pi)
    name = SYNTHETIC_AUDIO_CLASSES[label]
    if name in ("low_tone", "high_tone"):
        freq = rng.uniform(150, 400) if name == "low_tone" else rng.uniform(1000, 2500)
        signal = np.sin(2 * np.pi * freq * t + phase)
    elif name in ("chirp_up", "chirp_down"):
        f_low, f_high = rng.uniform(200, 500), rng.uniform(1500, 3000)
        f0, f1 = (f_low, f_high) if name == "chirp_up" else (f_high, f_low)
        signal = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * t[-1])) + phase)
    elif name == "noise_burst":
        signal = rng.standard_normal(n)
    else:  # pulse_train: narrow rectangular pulses at 40-120 Hz
        rate = rng.uniform(40, 120)
        signal = ((t * rate + phase / (2 * np.pi)) % 1.0 < 0.1).astype(np.float64) - 0.1
    fade = min(n // 2, round(0.005 * sample_rate))
    if fade > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
        signal[:fade] *= ramp
        signal[n - fade :] *= ramp[::-1]
    power = float(np.mean(signal**2)) or 1.0
    snr_db = rng.uniform(5, 20)
    signal = signal + rng.standard_normal(n) * np.sqrt(power / 10 ** (snr_db / 10))
    signal *= rng.uniform(0.3, 0.95) / np.abs(signal).max()
    return signal.astype(np.float32)


class SyntheticAudio(Dataset):
    """A generated audio classification task: items ``(waveform float32 (samples,), label)``, variable lengths.

    Six balanced classes (:data:`SYNTHETIC_AUDIO_CLASSES`). Clip ``i`` of a split comes from its own generator seeded
    with ``(seed, split, i)``, so splits never share a clip and the data does not depend on construction order.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        clips_per_class: clips of each class (default 100 / 20 / 40 for train / val / test).
        sample_rate: samples per second.
        min_duration: shortest clip in seconds.
        max_duration: longest clip in seconds.
        seed: data seed.
    """

    classes = SYNTHETIC_AUDIO_CLASSES
    num_classes = len(SYNTHETIC_AUDIO_CLASSES)

    def __init__(
        self,
        split: str = "train",
        *,
        clips_per_class: int | None = None,
        sample_rate: int = 8000,
        min_duration: float = 0.06,
        max_duration: float = 0.12,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        per_class = _DEFAULT_CLIPS[split] if clips_per_class is None else clips_per_class
        if per_class < 1:
            raise ValueError(f"clips_per_class must be >= 1, got {per_class}")
        self.split = split
        self.sample_rate = sample_rate
        self.targets = np.arange(per_class * self.num_classes, dtype=np.int64) % self.num_classes
        split_id = SPLITS.index(split)
        self.waveforms = [
            synthesize_clip(
                int(label),
                np.random.default_rng([seed, split_id, i]),
                sample_rate=sample_rate,
                min_duration=min_duration,
                max_duration=max_duration,
            )
            for i, label in enumerate(self.targets)
        ]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.waveforms[index], int(self.targets[index])


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist or is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class sub-folders (expected {root}/<class>/<file>)")
    return folders


def check_files(paths: Iterable[Path]) -> None:
    """Refuse, before any training step, a file that cannot be read or is empty (one line naming the file).

    Costs one ``stat`` per file (no file is opened); a file whose content is invalid for its format (a corrupt image
    or WAV) is reported when it is read.
    """
    for path in paths:
        try:
            size = os.stat(path).st_size
        except OSError as err:
            raise DataError(f"{path} cannot be read: {err.strerror or err}") from None
        if not os.access(path, os.R_OK):
            raise DataError(f"{path} cannot be read: permission denied")
        if size == 0:
            raise DataError(f"{path} is empty: a byte sequence needs at least one byte")


def _scan(root: Path, extensions: Sequence[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    folders = _class_folders(root)
    wanted = None if extensions is None else {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    samples = []
    for label, folder in enumerate(folders):
        files = sorted(
            p
            for p in folder.rglob("*")
            if not p.is_dir() and not p.name.startswith(".") and (wanted is None or p.suffix.lower() in wanted)
        )
        if not files:
            suffixes = f" ending in {sorted(wanted)}" if wanted else ""
            raise DataError(f"class folder {folder} holds no files{suffixes}")
        samples += [(p, label) for p in files]
    check_files(p for p, _ in samples)
    return [f.name for f in folders], samples


class AudioFolder(Dataset):
    """WAV files in ``root/<class>/...``: items ``(waveform float32 (samples,) or (channels, samples), label)``.

    All files must share one sample rate (``sample_rate``, or the first file's when None); a file with another rate
    raises :class:`~bramley.core.errors.DataError` when read, rather than being silently resampled. Missing, empty
    and unreadable files are refused at construction (:func:`check_files`); a file that is not a valid WAV, when read.
    """

    def __init__(self, root: str | Path, *, sample_rate: int | None = None, mono: bool = True) -> None:
        self.root = Path(root)
        self.classes, self.samples = _scan(self.root, (".wav",))
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]
        self.mono = mono
        self.sample_rate = sample_rate if sample_rate is not None else _read_wav_file(self.samples[0][0], False)[1]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        waveform, rate = _read_wav_file(path, True)
        if rate != self.sample_rate:
            raise DataError(f"{path} has sample rate {rate}, the dataset uses {self.sample_rate}")
        if self.mono:
            waveform = waveform.mean(axis=0)
        return waveform.astype(np.float32), label


def _read_wav_file(path: Path, floor: bool) -> tuple[np.ndarray, int]:
    """``(waveform, sample_rate)`` of a WAV file (with ``floor``: PCM's one level below -1 moved onto -1, float
    samples outside [-1, 1] refused); errors name the file."""
    try:
        waveform, rate, dtype = read_wav(path.read_bytes())
        return (clip_pcm_floor(waveform, dtype) if floor else waveform), rate
    except ValueError as err:
        raise DataError(f"{path}: {err}") from err


# ---------------------------------------------------------------------------------------------------------------------
# Byte datasets


class EncodedDataset(Dataset):
    """Encode the items ``(image or waveform, label)`` of ``source`` with ``spec``: items ``(int64 bytes, label)``.

    With ``cache=True`` every item is encoded once, at construction, up to the spec's first per-sample random
    transform; the random rest (``random_shuffle``, ``noise``) runs in ``__getitem__`` with a generator seeded by
    ``(seed, epoch, index)`` (call :meth:`set_epoch` each epoch), so results do not depend on workers or order.
    Caching suits fixed sources (bundled sets); keep ``cache=False`` when the source augments (ImageNet crops).
    ``augment(x, rng)`` (e.g. :class:`RandomTranslate`) changes the image / waveform before encoding, with the same
    per-sample generator; encoding is then done per item (TIFF/PNG/JPEG of small images cost 0.1-0.2 ms each).

    Args:
        source: a dataset of ``(image, label)`` for image formats or ``(waveform, label)`` for ``wav``.
        spec: encoding spec (see :mod:`bramley.byteformer.encodings`).
        seed: seed of the per-sample random transforms and of ``augment``.
        cache: encode everything once up front (not with ``augment``).
        sample_rate: for audio; defaults to ``source.sample_rate``.
        augment: optional ``(x, rng) -> x`` applied before encoding.
    """

    def __init__(
        self,
        source: Dataset,
        spec: str | Encoding,
        *,
        seed: int = 0,
        cache: bool = False,
        sample_rate: int | None = None,
        augment: Callable[[Any, np.random.Generator], Any] | None = None,
    ) -> None:
        if cache and augment is not None:
            raise ValueError("cache=True stores one encoding per item; it cannot hold augmented encodings")
        self.source = source
        self.augment = augment
        self.encoding = parse_encoding(spec)
        self.seed = seed
        self.sample_rate = sample_rate if sample_rate is not None else getattr(source, "sample_rate", None)
        if self.encoding.modality == "audio" and self.sample_rate is None:
            raise ValueError("audio sources need a sample_rate (argument or source.sample_rate)")
        self.classes = getattr(source, "classes", None)
        self._prefix, self._random = self.encoding.split_random()
        self._epoch = SharedEpoch()
        self._cache: list[np.ndarray] | None = None
        self._labels: list[int] | None = None
        if cache:
            self._cache, self._labels = [], []
            for index in range(len(source)):
                data, label = self._encode_prefix(index, None)
                self._cache.append(data)
                self._labels.append(label)

    def _encode_prefix(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        x, label = self.source[index]
        if self.augment is not None and rng is not None:
            x = self.augment(x, rng)
        try:
            data = encode(x, self._prefix, sample_rate=self.sample_rate)
        except (TypeError, ValueError) as err:
            raise type(err)(f"item {index}: {err}") from err
        return data, int(label)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` uses (shared with DataLoader workers and the source)."""
        self._epoch.set(epoch)
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = None
        if self._random or self.augment is not None:
            rng = np.random.default_rng(sample_seed(self.seed, self._epoch.get(), index))
        if self._cache is not None:
            data, label = self._cache[index], self._labels[index]
        else:
            data, label = self._encode_prefix(index, rng)
        if self._random:
            data = apply_transforms(data, self._random, rng=rng)
        return to_tokens(data), label

    @property
    def targets(self) -> list[int]:
        """Labels of all items (reads the source when not cached)."""
        return list(self._labels) if self._labels is not None else [int(self.source[i][1]) for i in range(len(self))]

    def lengths(self) -> np.ndarray:
        """Byte length of every item; encodes everything if not cached.

        Random byte transforms never change lengths; ``augment`` is left out here, and can change the lengths of
        compressed formats from epoch to epoch.
        """
        if self._cache is not None:
            return np.array([len(d) for d in self._cache], dtype=np.int64)
        return np.array([len(self._encode_prefix(i, None)[0]) for i in range(len(self))], dtype=np.int64)


class RandomTranslate:
    """Augmentation for :class:`EncodedDataset`: shift an image by up to ``max_shift`` pixels along each axis.

    Uncovered pixels take ``fill`` (0 is the digits' background). Picklable, so it works in DataLoader workers.
    """

    def __init__(self, max_shift: int, fill: int = 0) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.fill = fill

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        image = np.asarray(image)
        dy, dx = (int(v) for v in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
        out = np.full_like(image, self.fill)
        height, width = image.shape[:2]
        out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
            max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
        ]
        return out


class ByteFolder(Dataset):
    """Byte files in ``root/<class>/<file>`` (any content, read raw): items ``(int64 bytes, label)``.

    Classes are the sorted sub-folder names. Optional byte ``transforms`` (e.g. ``"permute:3"`` or ``"noise:5"``)
    are applied on read, per-sample random ones seeded by ``(seed, epoch, index)``. Missing, empty and unreadable
    files are refused at construction (:func:`check_files`), with a :class:`~bramley.core.errors.DataError` naming the
    file.

    Args:
        root: the folder.
        transforms: byte transform spec (no format), applied in order.
        extensions: only files ending in these (e.g. ``[".tif"]``); all files when None.
        seed: seed of the per-sample random transforms.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        transforms: str | None = None,
        extensions: Sequence[str] | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.classes, self.samples = _scan(self.root, extensions)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]
        self.transforms = parse_transforms(transforms or "")
        self.seed = seed
        self._epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        data = np.fromfile(path, dtype=np.uint8)
        if data.size == 0:
            raise DataError(f"{path} is empty: a byte sequence needs at least one byte")
        if self.transforms:
            rng = np.random.default_rng(sample_seed(self.seed, self._epoch.get(), index))
            data = apply_transforms(data, self.transforms, rng=rng)
        return to_tokens(data), label

    def lengths(self) -> np.ndarray:
        """Byte length of every item from the file sizes (transforms here never change lengths except ``mask``)."""
        sizes = np.array([p.stat().st_size for p, _ in self.samples], dtype=np.int64)
        for step in self.transforms:
            if step.name == "mask" and step["fill"] is None:
                sizes = np.rint(sizes * step["keep"]).astype(np.int64)
        return sizes


# ---------------------------------------------------------------------------------------------------------------------
# The bundled sets, encoded once


def digits_bytes(
    spec: str | Encoding = "tiff",
    split: str = "train",
    *,
    image_size: int = 24,
    channels: int = 3,
    seed: int = 0,
    max_shift: int = 0,
    **split_kwargs: Any,
) -> EncodedDataset:
    """Digits images encoded with ``spec``: e.g. ``digits_bytes("jpeg:quality=60", "val")``.

    Cached unless ``max_shift > 0``, which adds a :class:`RandomTranslate` augmentation (training splits). ``seed``
    seeds the split, the augmentation and the per-sample random transforms; ``split_kwargs`` go to
    :class:`DigitsImages`.
    """
    images = DigitsImages(split, image_size=image_size, channels=channels, seed=seed, **split_kwargs)
    if max_shift > 0:
        return EncodedDataset(images, spec, seed=seed, augment=RandomTranslate(max_shift))
    return EncodedDataset(images, spec, seed=seed, cache=True)


def audio_bytes(
    spec: str | Encoding = "wav:dtype=int16", split: str = "train", *, seed: int = 0, **audio_kwargs: Any
) -> EncodedDataset:
    """Synthetic audio clips encoded with ``spec``, cached: e.g. ``audio_bytes("wav:uint8", "train")``.

    ``audio_kwargs`` go to :class:`SyntheticAudio` (``clips_per_class``, ``sample_rate``, durations).
    """
    return EncodedDataset(SyntheticAudio(split, seed=seed, **audio_kwargs), spec, seed=seed, cache=True)


def _identity(x: Any) -> Any:
    return x


def image_folder_bytes(
    root: str | Path,
    spec: str | Encoding,
    *,
    train: bool,
    image_size: int = 224,
    crop_pct: float = 0.875,
    rand_augment: bool = False,
    seed: int = 0,
) -> EncodedDataset:
    """An ImageFolder (``root/<class>/<image>``, e.g. ImageNet) encoded on the fly, as in the paper's recipes.

    Training: RandomResizedCrop(``image_size``, bicubic), horizontal flip, optional torchvision RandAugment; eval:
    bicubic resize of the shorter side to ``image_size / crop_pct`` (256 for 224) and a center crop. The PIL crop is
    then encoded with ``spec``. The image augmentations run under :func:`bramley.core.data.seeded_rng` and the byte
    transforms with the same ``(seed, epoch, index)`` seeding, so data do not depend on DataLoader workers; call
    ``set_epoch`` every epoch. Empty and unreadable files are refused here (:func:`check_files`); a corrupt image
    when it is read. (corenet also applies random erasing on the decoded tensor; that is left out here.)
    """
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    from bramley.core.data import ImageFolder, SeededTransformDataset

    bicubic = InterpolationMode.BICUBIC
    if train:
        steps = [T.RandomResizedCrop(image_size, interpolation=bicubic), T.RandomHorizontalFlip()]
        steps += [T.RandAugment(interpolation=bicubic)] if rand_augment else []
    else:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        steps = [T.Resize(int(image_size / crop_pct), interpolation=bicubic), T.CenterCrop(image_size)]
    folder = ImageFolder(root, transform=_identity)
    check_files(Path(path) for path, _ in folder.samples)
    images = SeededTransformDataset(folder, T.Compose(steps), seed=seed)
    images.classes = folder.classes
    return EncodedDataset(images, spec, seed=seed)
