"""On-disk dataset-decomposition buckets: one flat memory-mappable token file per bucket plus ``manifest.json``.

Format (version 1; full description in the package's ``docs/data.md``)::

    <dir>/manifest.json          what is in the folder (below); written last, so its presence means "complete"
    <dir>/bucket_<k>.bin         rows of 2^k + 1 tokens, little-endian ``dtype``, row-major, no header
    <dir>/progress.json          only while a make-buckets run is unfinished (resume state)

Row ``i`` of bucket ``k`` is the token slice ``[i * (2^k + 1), (i + 1) * (2^k + 1))`` of ``bucket_<k>.bin``: the
``2^k`` inputs followed by one more token for the shifted target. ``manifest.json`` holds ``format``
(``"bramley-dd-buckets"``), ``version``, ``dtype`` (``uint16`` or ``uint32``), ``min_log2``, ``max_log2``,
``buckets`` (``log2``, ``length``, ``row_tokens``, ``rows``, ``file``), ``tokenizer`` (``name``, ``vocab_size``,
``eot_id``, ``path``), ``seed``, ``randomize``, ``sources`` (per input file: documents, tokens, dropped tokens) and
``stats`` (totals).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bramley.core.checkpoint import atomic_write
from bramley.core.errors import DataError

from .decompose import check_bucket_range

__all__ = [
    "FORMAT",
    "VERSION",
    "BucketDataset",
    "BucketFormatError",
    "BucketWriter",
    "Buckets",
    "TokenAccount",
    "bucket_file_name",
    "token_dtype",
]

FORMAT = "bramley-dd-buckets"
VERSION = 1
MANIFEST = "manifest.json"
PROGRESS = "progress.json"
_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


class BucketFormatError(DataError):
    """A bucket folder is missing, incomplete, corrupt or does not match its manifest (a ``ValueError``)."""


def bucket_file_name(log2: int) -> str:
    """File name of bucket ``log2`` (``bucket_08.bin`` for rows of 2^8 + 1 tokens)."""
    return f"bucket_{log2:02d}.bin"


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest storage dtype for ids ``< vocab_size``: ``uint16`` up to 65536 ids, else ``uint32``."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size {vocab_size} does not fit uint32 token ids")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


@dataclass(frozen=True)
class TokenAccount:
    """Token bookkeeping of a dataset, to compare methods at equal trained tokens.

    ``tokens``: all tokens (end-of-text included); ``stored``: tokens inside rows; ``targets``: predicted tokens
    (``seq_len`` per row, ``2^k`` per bucket row); ``dropped``: tokens in no row.
    """

    documents: int
    tokens: int
    stored: int
    targets: int
    dropped: int

    @property
    def dropped_fraction(self) -> float:
        return self.dropped / self.tokens if self.tokens else 0.0


class BucketWriter:
    """Appends decomposed rows to the bucket files of a folder; buffers in memory up to ``buffer_tokens``.

    ``rows_per_bucket`` counts rows handed to :meth:`add` (written or buffered). :meth:`flush` writes the buffers
    and fsyncs, so the counts it returns are durable: a resumed run passes them back as ``resume_rows`` and the files
    are truncated to exactly those rows (anything a killed run wrote after its last checkpoint is discarded).

    Args:
        root: output folder (created).
        min_log2, max_log2: bucket range.
        dtype: token storage dtype (``uint16`` / ``uint32``).
        resume_rows: ``{log2: rows}`` of a previous run's last checkpoint; ``None`` starts fresh (the bucket files
            must not exist then).
        buffer_tokens: tokens held in memory before a write.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        min_log2: int,
        max_log2: int,
        dtype: np.dtype | str,
        *,
        resume_rows: Mapping[int, int] | None = None,
        buffer_tokens: int = 1 << 22,
    ) -> None:
        check_bucket_range(min_log2, max_log2)
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log2s = list(range(min_log2, max_log2 + 1))
        self.buffer_tokens = buffer_tokens
        self._buffers: dict[int, list[np.ndarray]] = {k: [] for k in self.log2s}
        self._buffered = 0
        self._dirty: set[int] = set()
        self.rows_per_bucket = {k: 0 for k in self.log2s}
        for k in self.log2s:
            path = self.root / bucket_file_name(k)
            if resume_rows is None:
                if path.exists():
                    raise FileExistsError(f"{path} exists: write buckets into a new folder (or resume)")
                path.touch()
                continue
            rows = int(resume_rows.get(k, 0))
            size = rows * ((1 << k) + 1) * self.dtype.itemsize
            if not path.exists() or path.stat().st_size < size:
                have = path.stat().st_size if path.exists() else "no"
                raise BucketFormatError(f"cannot resume: {path} has {have} bytes, the checkpoint needs {size}")
            with open(path, "r+b") as f:
                f.truncate(size)
            self.rows_per_bucket[k] = rows

    def add(self, rows: Mapping[int, np.ndarray]) -> None:
        """Queue ``{log2: (count, 2^log2 + 1) array}`` rows (as :func:`~.decompose.decompose` returns them)."""
        for k, block in rows.items():
            if k not in self._buffers:
                raise ValueError(f"bucket {k} is outside [{self.log2s[0]}, {self.log2s[-1]}]")
            if block.ndim != 2 or block.shape[1] != (1 << k) + 1:
                raise ValueError(f"rows of bucket {k} must be (count, {(1 << k) + 1}), got {block.shape}")
            if block.size and (block.min() < 0 or block.max() > np.iinfo(self.dtype).max):
                raise ValueError(f"token ids out of range for {self.dtype}: [{block.min()}, {block.max()}]")
            self._buffers[k].append(block.astype(self.dtype.newbyteorder("<"), copy=False))
            self.rows_per_bucket[k] += block.shape[0]
            self._buffered += block.size
        if self._buffered >= self.buffer_tokens:
            self._write()

    def _write(self) -> None:
        for k, blocks in self._buffers.items():
            if blocks:
                with open(self.root / bucket_file_name(k), "ab") as f:
                    for block in blocks:
                        f.write(np.ascontiguousarray(block).tobytes())
                blocks.clear()
                self._dirty.add(k)
        self._buffered = 0

    def flush(self) -> dict[int, int]:
        """Write everything buffered, fsync the bucket files, and return the durable ``{log2: rows}``."""
        self._write()
        for k in sorted(self._dirty):
            fd = os.open(self.root / bucket_file_name(k), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._dirty.clear()
        return dict(self.rows_per_bucket)

    def finish(self, **manifest: Any) -> Path:
        """Flush and write ``manifest.json`` (bucket entries added here; ``manifest`` supplies the rest)."""
        rows = self.flush()
        data = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": self.dtype.name,
            "min_log2": self.log2s[0],
            "max_log2": self.log2s[-1],
            "buckets": [
                {"log2": k, "length": 1 << k, "row_tokens": (1 << k) + 1, "rows": rows[k], "file": bucket_file_name(k)}
                for k in self.log2s
            ],
            **manifest,
        }
        path = self.root / MANIFEST
        _write_json(path, data)
        return path


class Buckets:
    """Reader of a bucket folder written by ``make-buckets`` (or :class:`BucketWriter`): memory-mapped, validated.

    Buckets are indexed ``0..n-1``, shortest first; :attr:`lengths` are the input tokens per row (``2^k``), each row
    holds ``length + 1`` tokens.

    Raises:
        BucketFormatError: missing or unfinished folder, unknown format/version/dtype, or a bucket file whose size does
            not match the manifest.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            if (self.path / PROGRESS).is_file():
                raise BucketFormatError(
                    f"{self.path} is an unfinished make-buckets run (progress.json, no manifest.json): run the same "
                    "make-buckets command again to resume it"
                )
            raise BucketFormatError(f"{manifest_path} not found: not a bucket folder")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BucketFormatError(f"{manifest_path} is not valid JSON: {err}") from err
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BucketFormatError(f"{manifest_path} is not a {FORMAT} manifest")
        if manifest.get("version") != VERSION:
            raise BucketFormatError(
                f"{manifest_path} has version {manifest.get('version')}; this reader knows {VERSION}"
            )
        if manifest.get("dtype") not in _DTYPES:
            raise BucketFormatError(f"{manifest_path}: unknown dtype {manifest.get('dtype')!r}")
        self.manifest = manifest
        self.dtype = np.dtype(_DTYPES[manifest["dtype"]]).newbyteorder("<")
        entries = manifest.get("buckets")
        if not isinstance(entries, list) or not entries:
            raise BucketFormatError(f"{manifest_path} lists no buckets")
        self.log2s: list[int] = []
        self.rows_per_bucket: list[int] = []
        self.files: list[Path] = []
        for entry in entries:
            try:
                k, rows, name = int(entry["log2"]), int(entry["rows"]), str(entry["file"])
                row_tokens = int(entry["row_tokens"])
            except (KeyError, TypeError, ValueError) as err:
                raise BucketFormatError(f"{manifest_path}: malformed bucket entry {entry!r}") from err
            if not 0 <= k <= 30 or row_tokens != (1 << k) + 1 or rows < 0 or Path(name).name != name:
                raise BucketFormatError(f"{manifest_path}: inconsistent bucket entry {entry!r}")
            file = self.path / name
            if not file.is_file():
                raise BucketFormatError(f"bucket file {file} is missing")
            expected = rows * row_tokens * self.dtype.itemsize
            if file.stat().st_size != expected:
                raise BucketFormatError(
                    f"bucket file {file} has {file.stat().st_size} bytes but the manifest says {rows} rows of "
                    f"{row_tokens} {self.dtype.name} tokens ({expected} bytes): corrupt or from another run"
                )
            self.log2s.append(k)
            self.rows_per_bucket.append(rows)
            self.files.append(file)
        if self.log2s != sorted(set(self.log2s)):
            raise BucketFormatError(f"{manifest_path}: buckets must be distinct and sorted, got {self.log2s}")
        self._maps: dict[int, np.ndarray] = {}

    # ------------------------------------------------------------------ description
    @property
    def lengths(self) -> list[int]:
        """Input tokens per row of each bucket (``2^k``)."""
        return [1 << k for k in self.log2s]

    @property
    def tokens_per_bucket(self) -> list[int]:
        """Input (= target) tokens of each bucket: ``rows * 2^k``."""
        return [r * n for r, n in zip(self.rows_per_bucket, self.lengths)]

    @property
    def account(self) -> TokenAccount:
        """Token bookkeeping from the manifest's totals (documents, tokens, dropped) and the bucket sizes."""
        stats = self.manifest.get("stats", {})
        stored = sum(r * (n + 1) for r, n in zip(self.rows_per_bucket, self.lengths))
        tokens = int(stats.get("tokens", stored))
        return TokenAccount(
            documents=int(stats.get("documents", 0)),
            tokens=tokens,
            stored=stored,
            targets=sum(self.tokens_per_bucket),
            dropped=tokens - stored,
        )

    @property
    def tokenizer(self) -> dict[str, Any]:
        return dict(self.manifest.get("tokenizer", {}))

    @property
    def vocab_size(self) -> int | None:
        return self.tokenizer.get("vocab_size")

    def __len__(self) -> int:
        """Number of buckets."""
        return len(self.log2s)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}x{r}" for n, r in zip(self.lengths, self.rows_per_bucket))
        return f"Buckets({str(self.path)!r}, {self.dtype.name}, length x rows: {parts})"

    # ------------------------------------------------------------------ data
    def array(self, bucket: int) -> np.ndarray:
        """Read-only ``(rows, 2^k + 1)`` memory map of bucket ``bucket`` (index, not log2)."""
        if not 0 <= bucket < len(self.log2s):
            raise IndexError(f"bucket {bucket} out of range: this folder has {len(self.log2s)} buckets")
        if bucket not in self._maps:
            rows, width = self.rows_per_bucket[bucket], self.lengths[bucket] + 1
            if rows == 0:
                self._maps[bucket] = np.zeros((0, width), dtype=self.dtype)
            else:
                self._maps[bucket] = np.memmap(self.files[bucket], dtype=self.dtype, mode="r", shape=(rows, width))
        return self._maps[bucket]

    def row(self, bucket: int, row: int) -> torch.Tensor:
        """Row ``row`` of bucket ``bucket`` as an int64 tensor of ``2^k + 1`` tokens."""
        data = self.array(bucket)
        if not 0 <= row < data.shape[0]:
            raise IndexError(f"row {row} out of range for bucket {bucket} ({data.shape[0]} rows)")
        return torch.from_numpy(data[row].astype(np.int64))

    def dataset(self) -> BucketDataset:
        """A map-style torch dataset addressed by ``(bucket, row)`` pairs (see :class:`BucketDataset`)."""
        return BucketDataset(self)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}  # memory maps are reopened in each worker process, never pickled as data
        return state


class BucketDataset(torch.utils.data.Dataset):
    """Items are ``(bucket, row)`` pairs -> int64 tensor of ``2^k + 1`` tokens (inputs ``[:-1]``, targets ``[1:]``).

    Use with :class:`~bramley.dataset_decomposition.sampling.BucketBatchSampler` as the ``batch_sampler``: every batch
    comes from one bucket, so the default collate stacks it to ``(batch, 2^k + 1)``. ``len()`` is the total number of
    rows. ``__getitems__`` reads a whole batch with one gather per bucket.
    """

    def __init__(self, buckets: Buckets) -> None:
        self.buckets = buckets

    def __len__(self) -> int:
        return sum(self.buckets.rows_per_bucket)

    def __getitem__(self, item: Sequence[int]) -> torch.Tensor:
        bucket, row = _as_pair(item)
        return self.buckets.row(bucket, row)

    def __getitems__(self, items: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        pairs = [_as_pair(item) for item in items]
        if not pairs:
            return []
        if len({b for b, _ in pairs}) != 1:
            return [self.buckets.row(b, r) for b, r in pairs]
        bucket = pairs[0][0]
        data = self.buckets.array(bucket)
        rows = np.fromiter((r for _, r in pairs), dtype=np.int64, count=len(pairs))
        if rows.min() < 0 or rows.max() >= data.shape[0]:
            raise IndexError(
                f"rows out of range for bucket {bucket} ({data.shape[0]} rows): {rows.min()}..{rows.max()}"
            )
        block = torch.from_numpy(data[rows].astype(np.int64))
        return list(block.unbind(0))


def _as_pair(item: Any) -> tuple[int, int]:
    try:
        bucket, row = item
        return int(bucket), int(row)
    except (TypeError, ValueError) as err:
        raise TypeError(f"BucketDataset items are (bucket, row) pairs, got {item!r}") from err
