"""The DataCompDR reinforced format: webdataset tar shards read and written streaming, and training datasets on it.

One sample (all members share the webdataset key) holds, as DataCompDR publishes it:

- ``url.txt``: where the image came from; ``txt``: the original caption;
- ``paug.json``: ``{"param_aug": [p_0, ..., p_{n_aug - 1}]}``, the parameters of each stored augmentation
  (here :class:`bramley.core.data.reinforced.ReplayableAugment`'s JSON dicts, which replay bit for bit);
- ``syn.json``: ``{"syn_text": [s_1, ..., s_{n_syn}]}``, synthetic captions;
- ``npz`` (or ``pth.gz``): ``{"image_emb": (n_aug, D), "text_emb": (1 + n_syn, D)}``, the teacher ensemble's
  embeddings of each augmentation and of the original then synthetic captions (``D`` = the members' widths,
  concatenated);
- optionally ``png``/``jpg``: the image itself (DataCompDR leaves it in the DataComp shards it pairs with; a local
  dataset made by ``reinforce`` keeps it beside its record, lossless PNG).

Nothing read executes code: members are decoded here (JSON, UTF-8, ``numpy.load(allow_pickle=False)``, gzip +
``torch.load(weights_only=True)``, PIL), never by webdataset's auto-decoders. Every error names the sample key.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bramley.core.errors import DataError

__all__ = ["REQUIRED_MEMBERS", "IndexedShards", "ReinforcedSample", "expand_shards", "read_shards", "write_shards"]

#: Members every sample must have (an embeddings member, ``npz`` or ``pth.gz``, too).
REQUIRED_MEMBERS = ("url.txt", "txt", "paug.json", "syn.json")
_EMBEDDING_MEMBERS = ("npz", "pth.gz")
_IMAGE_MEMBERS = ("png", "jpg", "jpeg", "webp")


@dataclass
class ReinforcedSample:
    """One reinforced image-text pair.

    Attributes:
        key: the webdataset key (unique per sample).
        url: the image's source.
        caption: the original caption.
        param_aug: one augmentation-parameter dict per stored augmentation.
        syn_text: synthetic captions.
        image_emb: ``(n_aug, D)`` float teacher embeddings of the augmentations.
        text_emb: ``(1 + n_syn, D)`` float teacher embeddings of the caption, then the synthetic captions.
        image: the uint8 ``(C, H, W)`` image, when the shard holds it.
    """

    key: str
    url: str
    caption: str
    param_aug: list[dict[str, Any]]
    syn_text: list[str]
    image_emb: torch.Tensor
    text_emb: torch.Tensor
    image: torch.Tensor | None = field(default=None, repr=False)

    def check(self, embed_dim: int | None = None) -> None:
        """Raise :class:`DataError` naming the key unless the record is consistent (and ``D == embed_dim``)."""
        where = f"sample {self.key!r}"
        if self.image_emb.dim() != 2 or self.text_emb.dim() != 2:
            raise DataError(
                f"{where}: image_emb and text_emb must be 2-d, got {tuple(self.image_emb.shape)} and "
                f"{tuple(self.text_emb.shape)}"
            )
        if self.image_emb.shape[0] != len(self.param_aug):
            raise DataError(
                f"{where}: {self.image_emb.shape[0]} image embeddings for {len(self.param_aug)} augmentations"
            )
        if self.text_emb.shape[0] != 1 + len(self.syn_text):
            raise DataError(
                f"{where}: {self.text_emb.shape[0]} text embeddings for 1 caption + "
                f"{len(self.syn_text)} synthetic captions"
            )
        if self.image_emb.shape[1] != self.text_emb.shape[1]:
            raise DataError(
                f"{where}: image embeddings are {self.image_emb.shape[1]}-d, text embeddings {self.text_emb.shape[1]}-d"
            )
        if embed_dim is not None and self.image_emb.shape[1] != embed_dim:
            raise DataError(
                f"{where}: embeddings are {self.image_emb.shape[1]}-d, expected {embed_dim} (the teachers' "
                "widths, concatenated)"
            )
        if not (torch.isfinite(self.image_emb).all() and torch.isfinite(self.text_emb).all()):
            raise DataError(f"{where}: non-finite teacher embeddings")
        if not self.param_aug:
            raise DataError(f"{where}: no stored augmentation")


# -------------------------------------------------------------------------------------------------------- writing
def _encode_image(image: torch.Tensor) -> bytes:
    from PIL import Image

    array = image.permute(1, 2, 0).numpy() if image.dim() == 3 else image.numpy()
    buffer = io.BytesIO()
    Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def _encode(sample: ReinforcedSample, embeddings: str) -> dict[str, Any]:
    record: dict[str, Any] = {
        "__key__": sample.key,
        "url.txt": sample.url.encode(),
        "txt": sample.caption.encode(),
        "paug.json": json.dumps({"param_aug": sample.param_aug}).encode(),
        "syn.json": json.dumps({"syn_text": sample.syn_text}).encode(),
    }
    arrays = {"image_emb": sample.image_emb.float().numpy(), "text_emb": sample.text_emb.float().numpy()}
    if embeddings == "npz":
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        record["npz"] = buffer.getvalue()
    else:
        buffer = io.BytesIO()
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, buffer)
        record["pth.gz"] = gzip.compress(buffer.getvalue())
    if sample.image is not None:
        record["png"] = _encode_image(sample.image)
    return record


def write_shards(
    samples: Iterable[ReinforcedSample], pattern: str | os.PathLike, maxcount: int = 1000, embeddings: str = "npz"
) -> list[Path]:
    """Write samples streaming into tar shards ``pattern % i`` (e.g. ``out/%05d.tar``), ``maxcount`` per shard.

    Returns:
        The shard paths written.
    """
    import webdataset as wds

    if embeddings not in _EMBEDDING_MEMBERS:
        raise ValueError(f"embeddings must be one of {_EMBEDDING_MEMBERS}, got {embeddings!r}")
    pattern = str(pattern)
    if "%" not in pattern:
        raise ValueError(f"the shard pattern needs a %d-style placeholder for the shard number, got {pattern!r}")
    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with wds.ShardWriter(pattern, maxcount=maxcount, encoder=False, verbose=0) as sink:
        for sample in samples:
            sample.check()
            sink.write(_encode(sample, embeddings))
        count = sink.shard
    written = [Path(pattern % i) for i in range(count)]
    return [p for p in written if p.exists()]


# -------------------------------------------------------------------------------------------------------- reading
def _decode_embeddings(record: dict[str, Any], key: str) -> tuple[torch.Tensor, torch.Tensor]:
    if "npz" in record:
        try:
            with np.load(io.BytesIO(record["npz"]), allow_pickle=False) as data:
                arrays = {name: torch.from_numpy(np.array(data[name], dtype=np.float32)) for name in data.files}
        except (ValueError, OSError, KeyError) as e:
            raise DataError(f"sample {key!r}: unreadable npz member ({e})") from None
    else:
        try:
            arrays = torch.load(io.BytesIO(gzip.decompress(record["pth.gz"])), map_location="cpu", weights_only=True)
        except Exception as e:  # gzip, zip and unpickler errors of a foreign file
            raise DataError(f"sample {key!r}: unreadable pth.gz member ({type(e).__name__})") from None
        if not isinstance(arrays, dict):
            raise DataError(f"sample {key!r}: the pth.gz member holds {type(arrays).__name__}, not a dict")
        arrays = {k: torch.as_tensor(v).float() for k, v in arrays.items()}
    missing = {"image_emb", "text_emb"} - set(arrays)
    if missing:
        raise DataError(f"sample {key!r}: the embeddings member lacks {sorted(missing)}")
    return arrays["image_emb"], arrays["text_emb"]


def _decode_image(data: bytes, key: str) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"))
    except Exception as e:  # PIL raises several types for corrupt bytes
        raise DataError(f"sample {key!r}: unreadable image ({type(e).__name__})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _json(record: dict[str, Any], member: str, field_name: str, key: str) -> list:
    try:
        value = json.loads(record[member])[field_name]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise DataError(f"sample {key!r}: {member} must be a JSON object with a {field_name!r} list") from None
    if not isinstance(value, list):
        raise DataError(f"sample {key!r}: {member}'s {field_name!r} must be a list, got {type(value).__name__}")
    return value


def decode_sample(
    record: dict[str, Any], embed_dim: int | None = None, require_image: bool = False
) -> ReinforcedSample:
    """A raw webdataset record (member name -> bytes) as a checked :class:`ReinforcedSample`."""
    key = str(record.get("__key__", "?"))
    missing = [m for m in REQUIRED_MEMBERS if m not in record]
    if not any(m in record for m in _EMBEDDING_MEMBERS):
        missing.append("npz")
    image_member = next((m for m in _IMAGE_MEMBERS if m in record), None)
    if require_image and image_member is None:
        missing.append("png")
    if missing:
        where = f" in {record['__url__']}" if "__url__" in record else ""
        raise DataError(f"sample {key!r}{where} lacks member(s) {', '.join(missing)}")
    image_emb, text_emb = _decode_embeddings(record, key)
    sample = ReinforcedSample(
        key=key,
        url=record["url.txt"].decode("utf-8", errors="replace"),
        caption=record["txt"].decode("utf-8", errors="replace"),
        param_aug=_json(record, "paug.json", "param_aug", key),
        syn_text=[str(s) for s in _json(record, "syn.json", "syn_text", key)],
        image_emb=image_emb,
        text_emb=text_emb,
        image=_decode_image(record[image_member], key) if image_member else None,
    )
    sample.check(embed_dim)
    return sample


def read_shards(
    urls: str | Sequence[str | os.PathLike], embed_dim: int | None = None, require_image: bool = False
) -> Iterator[ReinforcedSample]:
    """Stream the samples of tar shards (paths, or webdataset brace patterns ``dir/{00000..00009}.tar``), in order.

    Args:
        urls: shard paths or one brace pattern.
        embed_dim: the expected teacher width ``D`` (a mismatch is an error naming the sample).
        require_image: every sample must hold its image.
    """
    import webdataset as wds

    if isinstance(urls, (str, os.PathLike)):
        urls = [str(urls)]
    urls = [str(u) for u in urls]
    for url in urls:
        if "{" not in url and not Path(url).is_file():
            raise DataError(f"shard {url} does not exist")
    # one string goes in as is: webdataset expands its brace pattern
    dataset = wds.WebDataset(urls[0] if len(urls) == 1 else urls, shardshuffle=False, empty_check=False)
    for record in dataset:
        yield decode_sample(record, embed_dim, require_image)


# ------------------------------------------------------------------------------------------------- random access
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's rule: the key is the name up to its first dot


def expand_shards(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths from paths and webdataset brace patterns (``dir/{00000..00009}.tar``), in order."""
    from webdataset.shardlists import expand_urls

    if isinstance(urls, (str, os.PathLike)):
        urls = [urls]
    return [path for url in urls for path in expand_urls(str(url))]


class IndexedShards(Sequence[ReinforcedSample]):
    """Random access to the samples of uncompressed tar shards without loading them: what training reads.

    Building the index reads every shard's tar headers once (no member data) and keeps, per sample, its shard, the
    byte span of its members and its key: about 20 bytes a sample, so DataCompDR-12M's index is ~250 MB while its
    samples stay on disk. ``dataset[i]`` reads that span and decodes it as :func:`read_shards` does (same checks, same
    errors naming the key). File handles are opened per process, so DataLoader workers each read their own.

    Args:
        urls: shard paths or brace patterns (see :func:`expand_shards`).
        embed_dim: the expected teacher width (a mismatch is an error naming the sample, when it is read).
        require_image: every sample must hold its image (checked when it is read).
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        embed_dim: int | None = None,
        require_image: bool = False,
    ) -> None:
        self.paths = expand_shards(urls)
        self.embed_dim, self.require_image = embed_dim, require_image
        shard, start, end, keys = [], [], [], []
        for s, path in enumerate(self.paths):
            for key, first, stop in _scan_tar(path):
                shard.append(s)
                start.append(first)
                end.append(stop)
                keys.append(key.encode("utf-8"))
        self.shard = np.asarray(shard, dtype=np.int32)
        self.span = np.stack([np.asarray(start, dtype=np.int64), np.asarray(end, dtype=np.int64)], axis=1)
        self.keys = np.asarray(keys, dtype=bytes)
        self._files: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, index: int) -> ReinforcedSample:  # type: ignore[override]
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} of {len(self)}")
        index = int(index) % len(self)
        shard, (start, end) = int(self.shard[index]), self.span[index]
        handle = self._file(shard)
        handle.seek(int(start))
        span = handle.read(int(end - start))
        record: dict[str, Any] = {"__key__": self.keys[index].decode("utf-8"), "__url__": self.paths[shard]}
        with tarfile.open(fileobj=io.BytesIO(span), mode="r:") as tar:
            for member in tar:
                match = _KEY.match(member.name)
                if member.isfile() and match:
                    record[match.group(2)] = tar.extractfile(member).read()  # type: ignore[union-attr]
        return decode_sample(record, self.embed_dim, self.require_image)

    def _file(self, shard: int) -> Any:
        if self._pid != os.getpid():  # a forked DataLoader worker: never share the parent's file offsets
            self._files, self._pid = {}, os.getpid()
        if shard not in self._files:
            self._files[shard] = open(self.paths[shard], "rb")  # noqa: SIM115 (kept open for the next read)
        return self._files[shard]

    def __getstate__(self) -> dict[str, Any]:  # spawn-started workers get the index, not the open files
        return {**self.__dict__, "_files": {}}

    def __del__(self) -> None:
        for handle in getattr(self, "_files", {}).values():
            handle.close()


def _scan_tar(path: str) -> Iterator[tuple[str, int, int]]:
    """``(key, first byte, end byte)`` of each sample of one tar shard: consecutive members sharing a key."""
    if not Path(path).is_file():
        raise DataError(f"shard {path} does not exist")
    key, first, stop = None, 0, 0
    try:
        with tarfile.open(path, mode="r:") as tar:  # "r:" refuses compressed shards, which cannot be read at random
            for member in tar:
                match = _KEY.match(member.name)
                if not member.isfile() or match is None:
                    continue
                if match.group(1) != key:
                    if key is not None:
                        yield key, first, stop
                    key, first = match.group(1), member.offset
                stop = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    except tarfile.ReadError as e:
        raise DataError(f"shard {path}: not an uncompressed tar file ({e}); random access needs plain .tar") from None
    if key is not None:
        yield key, first, stop
