"""WAV files as bytes: waveforms in [-1, 1] written with float32 / int32 / int16 / uint8 samples, and read back.

Integer PCM is written by the standard library's :mod:`wave`. ``wave`` cannot write IEEE-float samples, so float32
files get their RIFF header written here (``WAVE_FORMAT_IEEE_FLOAT`` with the ``fact`` chunk the format requires).
:func:`read_wav` parses all four back (the header is parsed here; ``wave`` in Python 3.11 rejects float files).
"""

from __future__ import annotations

import io
import struct
import wave

import numpy as np

WAV_DTYPES = ("float32", "int32", "int16", "uint8")

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_SAMPLE_WIDTH = {"float32": 4, "int32": 4, "int16": 2, "uint8": 1}
_INT_SCALE = {"int32": 2**31 - 1, "int16": 2**15 - 1}


def _check_waveform(waveform: np.ndarray) -> np.ndarray:
    """``(samples,)`` or ``(channels, samples)`` float in [-1, 1] -> float64 ``(channels, samples)``."""
    x = np.asarray(waveform)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"waveform must be a float array with values in [-1, 1], got dtype {x.dtype}")
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"waveform must be (samples,) or (channels, samples), got shape {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"waveform is empty: shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("waveform contains NaN or infinite values")
    peak = float(np.abs(x).max())
    if peak > 1.0:
        raise ValueError(f"waveform values must lie in [-1, 1] (no silent clipping), got peak {peak:.4g}")
    return x.astype(np.float64)


def quantize(waveform: np.ndarray, dtype: str) -> np.ndarray:
    """Samples of a float waveform in [-1, 1] as ``dtype``, shape ``(channels, samples)``.

    int16 / int32 scale by ``2**(bits-1) - 1`` and uint8 maps [-1, 1] to [0, 255] (the scalings corenet uses), but
    values are rounded to the nearest level where corenet truncates toward zero.
    """
    if dtype not in WAV_DTYPES:
        raise ValueError(f"unknown WAV sample type {dtype!r}; choose one of {', '.join(WAV_DTYPES)}")
    x = _check_waveform(waveform)
    if dtype == "float32":
        return x.astype(np.float32)
    if dtype == "uint8":
        return np.rint((x + 1.0) * 127.5).astype(np.uint8)
    return np.rint(x * _INT_SCALE[dtype]).astype(dtype)


def encode_wav(waveform: np.ndarray, sample_rate: int, dtype: str = "float32") -> np.ndarray:
    """A WAV file holding ``waveform`` as a uint8 byte array.

    Args:
        waveform: float array in [-1, 1], ``(samples,)`` or ``(channels, samples)``.
        sample_rate: samples per second per channel.
        dtype: sample type in the file: ``"float32"`` (IEEE float), ``"int32"``, ``"int16"`` or ``"uint8"`` (PCM).
    """
    if int(sample_rate) != sample_rate or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    samples = quantize(waveform, dtype)
    channels, frames = samples.shape
    interleaved = np.ascontiguousarray(samples.T).astype(samples.dtype.newbyteorder("<"), copy=False).tobytes()
    if dtype == "float32":
        return np.frombuffer(_float_wav(interleaved, channels, frames, int(sample_rate)), dtype=np.uint8).copy()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(_SAMPLE_WIDTH[dtype])
        writer.setframerate(int(sample_rate))
        writer.writeframes(interleaved)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8).copy()


def _float_wav(data: bytes, channels: int, frames: int, sample_rate: int) -> bytes:
    block_align = 4 * channels
    fmt = struct.pack(
        "<HHIIHHH", _WAVE_FORMAT_IEEE_FLOAT, channels, sample_rate, sample_rate * block_align, block_align, 32, 0
    )
    chunks = [
        b"fmt " + struct.pack("<I", len(fmt)) + fmt,
        b"fact" + struct.pack("<II", 4, frames),
        b"data" + struct.pack("<I", len(data)) + data + (b"\0" if len(data) % 2 else b""),
    ]
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def read_wav(data: bytes | np.ndarray) -> tuple[np.ndarray, int, str]:
    """Parse a PCM (8/16/32-bit) or IEEE-float (32-bit) WAV file.

    Returns:
        ``(waveform, sample_rate, dtype)``: ``waveform`` float64 ``(channels, samples)`` scaled back to [-1, 1] with
        the inverse of :func:`quantize`, ``dtype`` one of :data:`WAV_DTYPES`.
    """
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError("not a WAV file: missing RIFF/WAVE header")
    fmt = payload = None
    pos = 12
    while pos + 8 <= len(raw):
        chunk_id, size = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        body = raw[pos + 8 : pos + 8 + size]
        if len(body) < size:
            raise ValueError(f"truncated WAV file: chunk {chunk_id!r} declares {size} bytes, {len(body)} present")
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            payload = body
        pos += 8 + size + (size % 2)
    if fmt is None or payload is None or len(fmt) < 16:
        raise ValueError("corrupt WAV file: no valid 'fmt ' and 'data' chunks")
    tag, channels, sample_rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # first two bytes of the sub-format GUID
    kinds = {(_WAVE_FORMAT_IEEE_FLOAT, 32): "float32", (_WAVE_FORMAT_PCM, 32): "int32"}
    kinds |= {(_WAVE_FORMAT_PCM, 16): "int16", (_WAVE_FORMAT_PCM, 8): "uint8"}
    dtype = kinds.get((tag, bits))
    if dtype is None:
        raise ValueError(f"unsupported WAV sample format: format tag {tag}, {bits} bits per sample")
    if channels < 1 or block_align != channels * bits // 8 or len(payload) % block_align:
        raise ValueError(f"corrupt WAV file: {len(payload)} data bytes for {channels} channels of {bits} bits")
    samples = np.frombuffer(payload, dtype=np.dtype(dtype).newbyteorder("<")).reshape(-1, channels).T
    if dtype == "float32":
        waveform = samples.astype(np.float64)
    elif dtype == "uint8":
        waveform = samples.astype(np.float64) / 127.5 - 1.0
    else:
        waveform = samples.astype(np.float64) / _INT_SCALE[dtype]
    return waveform, int(sample_rate), dtype


def clip_pcm_floor(waveform: np.ndarray, dtype: str) -> np.ndarray:
    """A waveform from :func:`read_wav` in [-1, 1], ready for :func:`quantize`; never clips real signal.

    int16 / int32 PCM can hold one level below ``-(2**(bits-1) - 1)``, which reads back as slightly under -1: only
    that level is moved onto -1. Float WAV samples outside [-1, 1] raise (they would be clipped otherwise).
    """
    if dtype == "float32":
        peak = float(np.abs(waveform).max()) if waveform.size else 0.0
        if peak > 1.0:
            raise ValueError(f"float WAV samples must lie in [-1, 1] (no silent clipping), got peak {peak:.4g}")
        return waveform
    return np.clip(waveform, -1.0, 1.0)
