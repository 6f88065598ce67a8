import io
import struct
import wave

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from scipy.io import wavfile

from bramley.byteformer.audio import WAV_DTYPES, encode_wav, quantize, read_wav
from bramley.byteformer.encodings import (
    INVERTIBLE_TRANSFORMS,
    TRANSFORMS,
    apply_transforms,
    as_uint8_image,
    byte_permutation,
    encode,
    invert_transforms,
    mask_indices,
    parse_encoding,
    parse_transforms,
    to_tokens,
)
from bramley.core.data._bundled import load_sample_photo

FAST = settings(max_examples=25, deadline=None)


def _decode(data: np.ndarray) -> np.ndarray:
    with Image.open(io.BytesIO(data.tobytes())) as image:
        return np.asarray(image).copy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2))


images = st.tuples(st.integers(1, 17), st.integers(1, 17), st.sampled_from([None, 3, 4])).flatmap(
    lambda s: hnp.arrays(np.uint8, s[:2] if s[2] is None else (*s[:2], s[2]))
)
byte_arrays = hnp.arrays(np.uint8, st.integers(1, 300))


# ------------------------------------------------------------------------------------------------------- images


@FAST
@given(image=images, fmt=st.sampled_from(["tiff", "png", "png:level=6", "png:level=9"]))
def test_lossless_formats_decode_to_the_source(image, fmt):
    data = encode(image, fmt)
    assert data.dtype == np.uint8 and data.ndim == 1
    np.testing.assert_array_equal(_decode(data), image)
    np.testing.assert_array_equal(encode(image, fmt), data)  # deterministic


@FAST
@given(image=images)
def test_raw_pixel_formats(image):
    np.testing.assert_array_equal(encode(image, "fhwc"), image.reshape(-1))
    chw = image.transpose(2, 0, 1) if image.ndim == 3 else image
    np.testing.assert_array_equal(encode(image, "fchw"), chw.reshape(-1))


def test_tiff_is_uncompressed_and_png_level_compresses():
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = 200
    tiff, png0, png9 = (len(encode(image, s)) for s in ("tiff", "png", "png:9"))
    assert tiff >= image.size and png0 >= image.size  # raw pixels plus headers
    assert png9 < image.size // 10


def test_jpeg_quality_bounds_the_error():
    photo = load_sample_photo("china")[100:164, 200:264]
    decoded = {q: _decode(encode(photo, f"jpeg:quality={q}")) for q in (100, 60)}
    assert _psnr(photo, decoded[100]) > 30  # 4:2:0 chroma subsampling caps RGB PSNR near 34 dB
    assert 22 < _psnr(photo, decoded[60]) < _psnr(photo, decoded[100])
    assert len(encode(photo, "jpeg:60")) < len(encode(photo, "jpeg:100"))
    gray = photo.mean(-1).astype(np.uint8)
    assert _psnr(gray, _decode(encode(gray, "jpeg"))) > 45


def test_image_input_kinds_agree():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = encode(rgb, "tiff")
    np.testing.assert_array_equal(encode(Image.fromarray(rgb), "tiff"), expected)
    np.testing.assert_array_equal(encode(torch.from_numpy(rgb).permute(2, 0, 1), "tiff"), expected)
    np.testing.assert_array_equal(encode(torch.from_numpy(rgb).permute(2, 0, 1) / 255.0, "tiff"), expected)
    np.testing.assert_array_equal(encode(rgb[..., :1], "fhwc"), rgb[..., 0].reshape(-1))
    # floats are rounded, not truncated: 0.499/255 -> 0 but 0.501/255 -> 1
    assert as_uint8_image(np.array([[0.499, 0.501]]) / 255).tolist() == [[0, 1]]
    palette = Image.fromarray(rgb).convert("P")
    assert as_uint8_image(palette).shape == (5, 7, 3)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((4, 4, 2), np.uint8), "C in 1, 3, 4"),
        (np.zeros((4,), np.uint8), "H, W"),
        (np.zeros((0, 4), np.uint8), "empty"),
        (np.full((4, 4), 1.5), r"\[0, 1\]"),
        (np.zeros((4, 4), np.int32), "uint8 or float"),
    ],
)
def test_bad_images_are_rejected(image, match):
    with pytest.raises((ValueError, TypeError), match=match):
        encode(image, "tiff")


def test_jpeg_rejects_alpha():
    with pytest.raises(ValueError, match="alpha"):
        encode(np.zeros((4, 4, 4), np.uint8), "jpeg")


# -------------------------------------------------------------------------------------------------------- audio

waveforms = st.tuples(st.integers(1, 2), st.integers(1, 200)).flatmap(
    lambda s: hnp.arrays(np.float64, s, elements=st.floats(-1, 1, width=32))
)


@FAST
@given(waveform=waveforms, dtype=st.sampled_from(WAV_DTYPES), rate=st.sampled_from([8000, 16000, 44100]))
def test_wav_round_trip(waveform, dtype, rate):
    data = encode(waveform, f"wav:{dtype}", sample_rate=rate)
    samples = quantize(waveform, dtype)  # (channels, frames)
    # an independent decoder (scipy) reads the same samples and rate
    rate_read, read = wavfile.read(io.BytesIO(data.tobytes()))
    assert rate_read == rate
    np.testing.assert_array_equal(read.reshape(len(read), -1).T, samples)
    # our reader inverts the quantization to within half a level
    back, rate_back, dtype_back = read_wav(data)
    assert (rate_back, dtype_back, back.shape) == (rate, dtype, waveform.shape)
    step = {"float32": 1e-7, "int32": 2**-31, "int16": 2**-15, "uint8": 1 / 127.5}[dtype]
    assert np.abs(back - waveform).max() <= step * 0.5 + 1e-7


@pytest.mark.parametrize("dtype", ["int32", "int16", "uint8"])
def test_integer_wav_reads_with_stdlib_wave(dtype):
    waveform = np.sin(np.linspace(0, 20, 101))
    data = encode(waveform, f"wav:{dtype}", sample_rate=8000)
    with wave.open(io.BytesIO(data.tobytes())) as reader:
        assert (reader.getnchannels(), reader.getframerate(), reader.getnframes()) == (1, 8000, 101)
        frames = reader.readframes(101)
    np.testing.assert_array_equal(
        np.frombuffer(frames, np.dtype(dtype).newbyteorder("<")), quantize(waveform, dtype)[0]
    )


def test_float32_wav_header_by_hand():
    waveform = np.linspace(-1, 1, 7)
    raw = encode_wav(waveform, 16000, "float32").tobytes()
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WAVE"
    assert struct.unpack("<I", raw[4:8])[0] == len(raw) - 8
    assert raw[12:16] == b"fmt " and struct.unpack("<I", raw[16:20])[0] == 18
    tag, channels, rate, byte_rate, align, bits, extra = struct.unpack("<HHIIHHH", raw[20:38])
    assert (tag, channels, rate, byte_rate, align, bits, extra) == (3, 1, 16000, 64000, 4, 32, 0)
    assert raw[38:42] == b"fact" and struct.unpack("<II", raw[42:50]) == (4, 7)
    assert raw[50:54] == b"data" and struct.unpack("<I", raw[54:58])[0] == 28
    np.testing.assert_array_equal(np.frombuffer(raw[58:], "<f4"), waveform.astype(np.float32))


def test_wav_errors():
    with pytest.raises(ValueError, match="no silent clipping"):
        encode(np.array([0.5, 1.2]), "wav", sample_rate=8000)
    with pytest.raises(TypeError, match="float"):
        encode(np.array([0, 1]), "wav", sample_rate=8000)
    with pytest.raises(ValueError, match="sample_rate"):
        encode(np.zeros(4), "wav")
    with pytest.raises(ValueError, match="empty"):
        encode(np.zeros(0), "wav", sample_rate=8000)
    with pytest.raises(ValueError, match="RIFF"):
        read_wav(b"not a wav file")
    good = encode(np.zeros(8), "wav:int16", sample_rate=8000)
    with pytest.raises(ValueError, match="truncated"):
        read_wav(good[:-3])


# ----------------------------------------------------------------------------------------------------- specs

SPECS = [
    "tiff",
    "png:level=9",
    "jpeg:quality=60",
    "fchw",
    "wav:dtype=int16",
    "tiff+permute:seed=3",
    "fhwc+noise:low=-20,high=20+permute",
    "fhwc+mask:keep=0.1",
    "jpeg+reverse+random_shuffle+cyclic_half_length+stride:stride=64+window_shuffle:window=32,seed=2",
    "tiff+mask:keep=0.25,seed=1,fill=0+noise:p=0.5",
]


@pytest.mark.parametrize("spec", SPECS)
def test_canonical_spelling_round_trips(spec):
    parsed = parse_encoding(spec)
    assert str(parsed) == spec
    assert parse_encoding(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("short", "long"),
    [
        ("png:9", "png:level=9"),
        ("JPEG:60", "jpeg:quality=60"),
        ("wav:int16", "wav:dtype=int16"),
        ("tiff+noise:5", "tiff+noise:low=-5,high=5"),
        ("tiff+noise:width=5", "tiff+noise"),
        ("tiff + permute:7", "tiff+permute:seed=7"),
        ("jpeg:quality=100", "jpeg"),
        ("fhwc+mask:0.25", "fhwc+mask:keep=0.25"),
    ],
)
def test_shorthands(short, long):
    assert parse_encoding(short) == parse_encoding(long)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("tif", "valid choices: tiff, png, jpeg, fchw, fhwc, wav"),
        ("permute", "starts with a file format"),
        ("tiff+rev", "valid choices: reverse, random_shuffle"),
        ("png:level=10", "level must be 0..9"),
        ("png:quality=5", "valid options: level"),
        ("jpeg:quality=0", "1..100"),
        ("jpeg:high", "must be int"),
        ("wav:int8", "float32, int32, int16, uint8"),
        ("tiff:3", "takes no options"),
        ("tiff+stride:0", "stride must be >= 1"),
        ("tiff+noise:low=3,high=1", "low <= high"),
        ("tiff+mask:keep=0", r"\(0, 1\]"),
        ("tiff+mask:fill=300", "0..255"),
        ("tiff+permute:seed=-1", "seed must be >= 0"),
        ("", "non-empty"),
    ],
)
def test_invalid_specs_name_the_problem(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_encoding(spec)


def test_spec_properties():
    enc = parse_encoding("tiff+permute+noise:5+reverse")
    assert enc.modality == "image" and enc.needs_rng and enc.file_extension == ".bin"
    prefix, rest = enc.split_random()
    assert str(prefix) == "tiff+permute" and [s.name for s in rest] == ["noise", "reverse"]
    assert parse_encoding("wav").modality == "audio" and parse_encoding("jpeg").file_extension == ".jpg"
    assert set(TRANSFORMS) >= set(INVERTIBLE_TRANSFORMS)


# ------------------------------------------------------------------------------------------------ transforms

REORDERINGS = ["reverse", "random_shuffle", "cyclic_half_length", "stride:7", "window_shuffle:5", "stride:1024"]


@FAST
@given(data=byte_arrays, step=st.sampled_from(REORDERINGS), seed=st.integers(0, 3))
def test_reorderings_preserve_the_multiset_of_bytes(data, step, seed):
    before = data.copy()
    out = apply_transforms(data, step, rng=seed)
    np.testing.assert_array_equal(data, before)  # input untouched
    assert out.dtype == np.uint8 and len(out) == len(data)
    np.testing.assert_array_equal(np.sort(out), np.sort(data))


@FAST
@given(data=byte_arrays)
def test_reorderings_match_their_definitions(data):
    n = len(data)
    np.testing.assert_array_equal(apply_transforms(data, "reverse"), data[::-1])
    np.testing.assert_array_equal(apply_transforms(data, "cyclic_half_length"), np.roll(data, n // 2))
    np.testing.assert_array_equal(apply_transforms(data, "stride:4"), np.concatenate([data[i::4] for i in range(4)]))
    w = 6
    order = np.random.default_rng(0).permutation(w)
    out = apply_transforms(data, f"window_shuffle:window={w}")
    full = n // w * w
    for start in range(0, full, w):
        np.testing.assert_array_equal(out[start : start + w], data[start : start + w][order])
    np.testing.assert_array_equal(out[full:], data[full:])  # the tail outside full windows stays in place


INVERTIBLE_STEPS = ["reverse", "cyclic_half_length", "stride:5", "window_shuffle:4", "permute:9"]


@FAST
@given(
    data=byte_arrays,
    steps=st.lists(st.sampled_from(INVERTIBLE_STEPS), min_size=1, max_size=4),
)
def test_invertible_transforms_invert(data, steps):
    spec = "+".join(steps)
    np.testing.assert_array_equal(invert_transforms(apply_transforms(data, spec), spec), data)


def test_non_invertible_transforms_refuse():
    for step in ("random_shuffle", "noise", "mask"):
        with pytest.raises(ValueError, match="cannot be inverted"):
            invert_transforms(np.zeros(4, np.uint8), step)


def test_byte_permutation_is_a_seeded_bijection():
    table = byte_permutation(3)
    assert sorted(table.tolist()) == list(range(256))
    np.testing.assert_array_equal(table, byte_permutation(3))
    assert not np.array_equal(table, byte_permutation(4))
    assert (table != np.arange(256)).mean() > 0.9
    data = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8)
    out = apply_transforms(data, "permute:3")
    np.testing.assert_array_equal(out, table[data])
    # the histogram is relabelled, not changed: value v occurs as often as table[v] does afterwards
    np.testing.assert_array_equal(np.bincount(out, minlength=256)[table], np.bincount(data, minlength=256))


def test_random_transforms_are_seeded_per_call():
    data = np.arange(200, dtype=np.uint8)
    for step in ("random_shuffle", "noise:20"):
        same = apply_transforms(data, step, rng=5), apply_transforms(data, step, rng=np.random.default_rng(5))
        np.testing.assert_array_equal(*same)
        assert not np.array_equal(same[0], apply_transforms(data, step, rng=6))
        with pytest.raises(ValueError, match="pass rng="):
            apply_transforms(data, step)
        with pytest.raises(ValueError, match="pass rng="):
            encode(np.zeros((4, 4), np.uint8), f"fhwc+{step}")


@FAST
@given(data=byte_arrays, low=st.integers(-30, 0), high=st.integers(0, 30), p=st.sampled_from([1.0, 0.5, 0.1]))
def test_uniform_noise_mod_256(data, low, high, p):
    out = apply_transforms(data, f"noise:low={low},high={high},p={p}", rng=0)
    delta = (out.astype(np.int64) - data) % 256
    signed = np.where(delta > 128, delta - 256, delta)
    assert signed.min() >= low and signed.max() <= high
    assert np.count_nonzero(signed) <= round(p * len(data))
    np.testing.assert_array_equal(apply_transforms(data, "noise:0", rng=0), data)


def test_noise_wraps_around():
    out = apply_transforms(np.array([255, 0], np.uint8), "noise:low=1,high=1", rng=0)
    assert out.tolist() == [0, 1]


@FAST
@given(n=st.integers(1, 400), keep=st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.75, 1.0]), seed=st.integers(0, 2))
def test_mask_keeps_the_requested_fraction_consistently(n, keep, seed):
    if round(keep * n) < 1:
        with pytest.raises(ValueError, match="keeps no byte"):
            apply_transforms(np.zeros(n, np.uint8), f"mask:keep={keep}")
        return
    spec = f"mask:keep={keep},seed={seed}"
    kept = mask_indices(n, keep, seed)
    assert len(kept) == round(keep * n) and np.all(np.diff(kept) > 0)
    a, b = (np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8) for i in (10, 11))
    np.testing.assert_array_equal(apply_transforms(a, spec), a[kept])  # order kept, same positions for every input
    np.testing.assert_array_equal(apply_transforms(b, spec), b[kept])
    filled = apply_transforms(a, spec + ",fill=7")
    assert len(filled) == n and np.all(np.delete(filled, kept) == 7)
    np.testing.assert_array_equal(filled[kept], a[kept])


def test_mask_depends_on_seed_and_privacy_camera_on_pixels():
    assert not np.array_equal(mask_indices(1000, 0.1, 0), mask_indices(1000, 0.1, 1))
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    camera = encode(image, "fhwc+mask:keep=0.1")
    assert len(camera) == round(0.1 * image.size)
    np.testing.assert_array_equal(camera, image.reshape(-1)[mask_indices(image.size, 0.1)])


def test_transform_inputs_and_tokens():
    for data in (b"\x00\x01\xff", bytearray(b"\x00\x01\xff"), [0, 1, 255], torch.tensor([0, 1, 255])):
        np.testing.assert_array_equal(apply_transforms(data, "reverse"), [255, 1, 0])
    tokens = to_tokens(encode(np.zeros((3, 3), np.uint8), "png"))
    assert tokens.dtype == torch.int64 and tokens.ndim == 1 and int(tokens.min()) >= 0 and int(tokens.max()) <= 255
    with pytest.raises(ValueError, match=r"0\.\.255"):
        apply_transforms(np.array([0, 256]), "reverse")
    with pytest.raises(ValueError, match="1-D"):
        apply_transforms(np.zeros((2, 2), np.uint8), "reverse")
    assert parse_transforms("") == ()


def test_one_random_stream_across_steps():
    data = np.zeros(64, np.uint8)
    for seed in (3, np.int64(3)):
        out = apply_transforms(data, "noise:50+noise:50", rng=seed)
        gen = np.random.default_rng(3)
        np.testing.assert_array_equal(
            out, apply_transforms(apply_transforms(data, "noise:50", rng=gen), "noise:50", rng=gen)
        )
