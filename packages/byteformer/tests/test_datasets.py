import io

import numpy as np
import pytest
import torch
from PIL import Image

from bramley.byteformer.audio import encode_wav, read_wav
from bramley.byteformer.datasets import (
    SYNTHETIC_AUDIO_CLASSES,
    AudioFolder,
    ByteFolder,
    DigitsImages,
    EncodedDataset,
    RandomTranslate,
    SyntheticAudio,
    audio_bytes,
    digits_bytes,
    image_folder_bytes,
    synthesize_clip,
)
from bramley.byteformer.encodings import apply_transforms, encode, invert_transforms
from bramley.core.data import DigitsDataset, sample_seed
from bramley.core.errors import DataError


def _check_item(item):
    tokens, label = item
    assert isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int64 and tokens.ndim == 1
    assert len(tokens) > 0 and int(tokens.min()) >= 0 and int(tokens.max()) <= 255
    assert isinstance(label, int)
    return tokens, label


def test_digits_images_match_core_digits_and_splits():
    sizes = {split: len(DigitsImages(split, image_size=12)) for split in ("train", "val", "test")}
    assert sizes == {"train": 1259, "val": 179, "test": 359}
    rgb, gray = DigitsImages("val", image_size=12), DigitsImages("val", image_size=12, channels=1)
    x, y = DigitsDataset("val", image_size=12, normalize=False).tensors()
    np.testing.assert_array_equal(gray.images, np.rint(x[:, 0].numpy().astype(np.float64) * 255))
    assert rgb.images.shape == (179, 12, 12, 3) and rgb.images.dtype == np.uint8
    np.testing.assert_array_equal(rgb.images[..., 2], gray.images)
    assert rgb.targets.tolist() == y.tolist()
    with pytest.raises(ValueError, match="channels"):
        DigitsImages(channels=2)


def test_digits_bytes_decode_to_the_images():
    images = DigitsImages("val", image_size=16)
    for spec in ("tiff", "png:9"):
        ds = digits_bytes(spec, "val", image_size=16)
        assert len(ds) == len(images) and ds.classes == images.classes
        for i in (0, 57, len(ds) - 1):
            tokens, label = _check_item(ds[i])
            decoded = np.asarray(Image.open(io.BytesIO(tokens.numpy().astype(np.uint8).tobytes())))
            np.testing.assert_array_equal(decoded, images[i][0])
            assert label == images[i][1]
        assert ds.lengths().tolist() == [len(ds[i][0]) for i in range(len(ds))]
    jpeg = digits_bytes("jpeg:60", "val", image_size=16).lengths()
    assert jpeg.min() < jpeg.max()  # compressed formats give variable lengths


def test_cached_and_uncached_encodings_agree_and_random_steps_follow_the_epoch():
    images = DigitsImages("val", image_size=8)
    spec = "fhwc+permute:2+noise:10+reverse"
    cached, lazy = EncodedDataset(images, spec, seed=1, cache=True), EncodedDataset(images, spec, seed=1)
    for i in (0, 5):
        assert torch.equal(cached[i][0], lazy[i][0])
    first = cached[3][0]
    assert torch.equal(first, cached[3][0])  # same epoch, same draw
    cached.set_epoch(1)
    assert not torch.equal(first, cached[3][0])
    other_seed = EncodedDataset(images, spec, seed=2, cache=True)
    assert not torch.equal(first, other_seed[3][0])
    # cached prefix + random rest == the whole spec with the documented per-sample generator
    rng = np.random.default_rng(sample_seed(1, 1, 3))
    np.testing.assert_array_equal(cached[3][0].numpy(), encode(images[3][0], spec, rng=rng))
    assert cached.targets == [int(t) for t in images.targets]


def test_encoded_dataset_accepts_tensor_images_and_reports_bad_items():
    core = DigitsDataset("val", image_size=8, in_chans=3, normalize=False)
    ds = EncodedDataset(core, "tiff")
    tokens, _ = _check_item(ds[0])
    decoded = np.asarray(Image.open(io.BytesIO(tokens.numpy().astype(np.uint8).tobytes())))
    np.testing.assert_array_equal(decoded, np.rint(core[0][0].permute(1, 2, 0).numpy().astype(np.float64) * 255))
    normalized = EncodedDataset(DigitsDataset("val", normalize=True), "tiff")
    with pytest.raises(ValueError, match=r"item 0: .*\[0, 1\]"):
        normalized[0]
    with pytest.raises(ValueError, match="sample_rate"):
        EncodedDataset(DigitsImages("val"), "wav")


def test_synthetic_audio_is_deterministic_balanced_and_leak_free():
    train, val = SyntheticAudio("train", clips_per_class=5), SyntheticAudio("val", clips_per_class=5)
    again = SyntheticAudio("train", clips_per_class=5)
    assert len(train) == 5 * len(SYNTHETIC_AUDIO_CLASSES)
    assert np.bincount(train.targets).tolist() == [5] * len(SYNTHETIC_AUDIO_CLASSES)
    for (a, la), (b, lb) in zip((train[i] for i in range(len(train))), (again[i] for i in range(len(train)))):
        np.testing.assert_array_equal(a, b)
        assert la == lb
    train_clips = {train[i][0].tobytes() for i in range(len(train))}
    assert not train_clips & {val[i][0].tobytes() for i in range(len(val))}
    other = SyntheticAudio("train", clips_per_class=5, seed=1)
    assert not np.array_equal(train[0][0], other[0][0])
    for i in range(len(train)):
        wave_, _ = train[i]
        assert wave_.dtype == np.float32 and np.abs(wave_).max() <= 0.95 + 1e-6
        assert round(0.06 * 8000) <= len(wave_) <= round(0.12 * 8000)
    with pytest.raises(ValueError, match="label"):
        synthesize_clip(len(SYNTHETIC_AUDIO_CLASSES), np.random.default_rng(0))


def test_synthetic_audio_classes_are_separable():
    """A nearest-centroid classifier on log spectra separates the classes: the labels mean something."""

    def features(ds):
        rows = []
        for i in range(len(ds)):
            wave_ = ds[i][0]
            spectrum = np.abs(np.fft.rfft(wave_, n=1024))
            halves = [np.abs(np.fft.rfft(h, n=512)) for h in np.array_split(wave_, 2)]
            rows.append(np.concatenate([np.log1p(spectrum), np.log1p(halves[0]) - np.log1p(halves[1])]))
        return np.array(rows), np.asarray(ds.targets)

    (xtr, ytr), (xte, yte) = features(SyntheticAudio("train", clips_per_class=30)), features(SyntheticAudio("val"))
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    centroids = np.stack([xtr[ytr == c].mean(0) for c in range(len(SYNTHETIC_AUDIO_CLASSES))])
    predictions = np.argmin(((xte[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predictions == yte).mean() > 0.8


@pytest.mark.parametrize("dtype", ["float32", "int32", "int16", "uint8"])
def test_audio_bytes_decode_to_the_clips(dtype):
    source = SyntheticAudio("val", clips_per_class=2)
    ds = audio_bytes(f"wav:{dtype}", "val", clips_per_class=2)
    tol = {"float32": 1e-7, "int32": 1e-9, "int16": 2e-5, "uint8": 4e-3}[dtype]
    for i in range(len(ds)):
        tokens, label = _check_item(ds[i])
        waveform, rate, read_dtype = read_wav(tokens.numpy().astype(np.uint8))
        assert (rate, read_dtype, label) == (8000, dtype, source[i][1])
        assert np.abs(waveform[0] - source[i][0]).max() <= tol
    lengths = ds.lengths()
    assert lengths.min() < lengths.max()


def test_audio_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("no", "yes"):
        (tmp_path / name).mkdir()
        for i in range(2):
            wav = encode_wav(rng.uniform(-1, 1, (2, 50 + i)), 16000, "int16")
            (tmp_path / name / f"{i}.wav").write_bytes(wav.tobytes())
    (tmp_path / "yes" / "notes.txt").write_text("not audio")
    folder = AudioFolder(tmp_path)
    assert folder.classes == ["no", "yes"] and len(folder) == 4 and folder.sample_rate == 16000
    waveform, label = folder[3]
    assert waveform.shape == (51,) and waveform.dtype == np.float32 and label == 1  # mono: channels averaged
    ds = EncodedDataset(folder, "wav:uint8")
    tokens, _ = _check_item(ds[0])
    assert read_wav(tokens.numpy().astype(np.uint8))[1] == 16000
    (tmp_path / "yes" / "2.wav").write_bytes(encode_wav(np.zeros(10), 8000, "int16").tobytes())
    with pytest.raises(ValueError, match="sample rate 8000"):
        AudioFolder(tmp_path)[4]
    (tmp_path / "yes" / "3.wav").write_bytes(b"RIFF1234WAVEjunk")
    with pytest.raises(ValueError, match=r"3\.wav"):
        AudioFolder(tmp_path)[5]


def test_audio_folder_never_clips_real_signal(tmp_path):
    import struct
    import wave

    from bramley.byteformer.audio import _float_wav

    (tmp_path / "a").mkdir()
    loud = np.array([0.5, -1.5, 0.25], dtype="<f4").tobytes()  # float WAVs may exceed 1: that must raise
    (tmp_path / "a" / "0.wav").write_bytes(_float_wav(loud, 1, 3, 8000))
    with wave.open(str(tmp_path / "a" / "1.wav"), "wb") as writer:  # int16 -32768: one level below -1
        writer.setnchannels(1), writer.setsampwidth(2), writer.setframerate(8000)
        writer.writeframes(struct.pack("<3h", -32768, 0, 32767))
    folder = AudioFolder(tmp_path)
    with pytest.raises(ValueError, match=r"0\.wav: float WAV samples must lie in \[-1, 1\].*peak 1\.5"):
        folder[0]
    np.testing.assert_array_equal(folder[1][0], np.array([-1.0, 0.0, 1.0], dtype=np.float32))


def test_byte_folder(tmp_path):
    rng = np.random.default_rng(0)
    files = {}
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        for i in range(3):
            data = rng.integers(0, 256, 20 + i, dtype=np.uint8)
            (tmp_path / name / f"{i}.bin").write_bytes(data.tobytes())
            files[(name, i)] = data
    folder = ByteFolder(tmp_path)
    assert folder.classes == ["a", "b"] and len(folder) == 6
    tokens, label = _check_item(folder[4])
    np.testing.assert_array_equal(tokens.numpy(), files[("b", 1)])
    assert label == 1 and folder.lengths().tolist() == [20, 21, 22] * 2
    permuted = ByteFolder(tmp_path, transforms="permute:4+noise:3", seed=0)
    rng = np.random.default_rng(sample_seed(0, 0, 0))
    np.testing.assert_array_equal(
        permuted[0][0].numpy(), apply_transforms(files[("a", 0)], "permute:4+noise:3", rng=rng)
    )
    masked = ByteFolder(tmp_path, transforms="mask:keep=0.5")
    assert masked.lengths().tolist() == [len(masked[i][0]) for i in range(6)]
    assert len(ByteFolder(tmp_path, extensions=["txt", ".bin"])) == 6
    with pytest.raises(DataError, match="no files ending in"):
        ByteFolder(tmp_path, extensions=[".tif"])
    with pytest.raises(DataError, match="class sub-folders"):
        ByteFolder(tmp_path / "a")
    with pytest.raises(DataError, match="does not exist"):
        ByteFolder(tmp_path / "missing")


def test_folders_refuse_empty_and_unreadable_files_when_built(tmp_path, image_folder):
    root = tmp_path / "wavs"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "0.wav").write_bytes(encode_wav(np.zeros(20), 8000, "int16").tobytes())
    (root / "b" / "1.wav").write_bytes(b"")
    with pytest.raises(DataError, match=r"b/1\.wav is empty"):
        ByteFolder(root)
    with pytest.raises(DataError, match=r"b/1\.wav is empty"):
        AudioFolder(root)
    (root / "b" / "1.wav").unlink()
    (root / "b" / "1.wav").symlink_to(tmp_path / "gone.wav")
    with pytest.raises(DataError, match=r"b/1\.wav cannot be read: No such file or directory"):
        AudioFolder(root)
    (root / "b" / "1.wav").unlink()
    assert len(AudioFolder(root)) == 2
    (image_folder / "dog" / "9.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"dog/9\.png is empty"):
        image_folder_bytes(image_folder, "tiff", train=False)


def test_random_translate_shifts_with_fill():
    image = np.arange(1, 26, dtype=np.uint8).reshape(5, 5)
    shifts = set()
    for seed in range(40):
        out = RandomTranslate(2)(image, np.random.default_rng(seed))
        dy, dx = next(
            (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if _shifted(image, dy, dx, 0) == out.tolist()
        )
        shifts.add((dy, dx))
    assert len(shifts) > 10  # the shifts vary
    np.testing.assert_array_equal(RandomTranslate(0)(image, np.random.default_rng(0)), image)
    rgb = np.ones((4, 4, 3), np.uint8)
    assert RandomTranslate(1, fill=9)(rgb, np.random.default_rng(1)).shape == (4, 4, 3)


def _shifted(image, dy, dx, fill):
    out = np.full_like(image, fill)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            if 0 <= y + dy < image.shape[0] and 0 <= x + dx < image.shape[1]:
                out[y + dy, x + dx] = image[y, x]
    return out.tolist()


def test_augmented_digits_change_per_epoch_and_stay_decodable():
    plain = digits_bytes("png", "val", image_size=12)
    augmented = digits_bytes("png", "val", image_size=12, max_shift=2)
    with pytest.raises(ValueError, match="augmented"):
        EncodedDataset(DigitsImages("val"), "tiff", cache=True, augment=RandomTranslate(1))
    changed = 0
    for i in range(10):
        first = augmented[i][0]
        assert torch.equal(first, augmented[i][0])  # deterministic within an epoch
        image = np.asarray(Image.open(io.BytesIO(first.numpy().astype(np.uint8).tobytes())))
        assert image.shape == (12, 12, 3)
        changed += not torch.equal(first, plain[i][0])
    assert changed > 5
    epoch0 = [augmented[i][0] for i in range(10)]
    augmented.set_epoch(1)
    assert sum(not torch.equal(a, augmented[i][0]) for i, a in enumerate(epoch0)) > 5


def test_image_folder_bytes(image_folder):
    train = image_folder_bytes(image_folder, "png+permute:1", train=True, image_size=16)
    val = image_folder_bytes(image_folder, "tiff", train=False, image_size=16)
    assert len(train) == len(val) == 12 and val.classes == ["cat", "dog", "fox"]
    tokens, label = _check_item(val[5])
    decoded = np.asarray(Image.open(io.BytesIO(tokens.numpy().astype(np.uint8).tobytes())))
    assert decoded.shape == (16, 16, 3) and label == 1
    first = train[2][0]
    assert torch.equal(first, train[2][0])  # crops are seeded per (seed, epoch, index)
    train.set_epoch(1)
    assert not torch.equal(first, train[2][0])
    restored = invert_transforms(first.numpy().astype(np.uint8), "permute:1")
    assert np.asarray(Image.open(io.BytesIO(restored.tobytes()))).shape == (16, 16, 3)


def test_results_do_not_depend_on_dataloader_workers():
    ds = digits_bytes("png+noise:3", "val", image_size=8, max_shift=1)
    ds.set_epoch(2)
    expected = [ds[i][0] for i in range(12)]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, sampler=range(12))
    for i, (tokens, _) in enumerate(loader):
        assert torch.equal(tokens, expected[i])
