"""Text documents from local files, the running Python's stdlib as a ready corpus, and a byte-level tokenizer."""

from __future__ import annotations

import sysconfig
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PathLike = str | Path


@dataclass
class ReadStats:
    """What the last full pass over a :class:`TextDocuments` read and skipped."""

    files: int = 0
    documents: int = 0
    undecodable: list[tuple[Path, str]] = field(default_factory=list)
    too_short: int = 0
    too_long: int = 0


class TextDocuments:
    """Iterable of documents (``str``), one per file, in a deterministic order.

    ``source`` is a file, a directory, or a sequence of them. Directories are searched with ``pattern`` (a
    ``Path.glob`` pattern, recursive with ``**``) and their files sorted by relative POSIX path; explicit files keep
    the order given. Nothing is changed or cut silently:

    - files that do not decode with ``encoding`` are skipped, listed in :attr:`stats` ``.undecodable`` and reported
      with one ``UserWarning`` per pass;
    - documents shorter than ``min_chars`` or longer than ``max_chars`` are skipped and counted in :attr:`stats`.

    Args:
        source: file(s) and/or directory(ies).
        pattern: glob for directories.
        encoding: text encoding (strict decoding).
        min_chars: minimum document length in characters (1 skips empty files).
        max_chars: maximum document length, or ``None``.
        exclude_dirs: directory names whose files are ignored anywhere below a searched directory.
    """

    def __init__(
        self,
        source: PathLike | Sequence[PathLike],
        *,
        pattern: str = "**/*.txt",
        encoding: str = "utf-8",
        min_chars: int = 1,
        max_chars: int | None = None,
        exclude_dirs: Sequence[str] = (),
    ) -> None:
        if min_chars < 0 or (max_chars is not None and max_chars < min_chars):
            raise ValueError(f"need 0 <= min_chars <= max_chars, got {min_chars=} {max_chars=}")
        "x".encode(encoding)  # LookupError naming the codec if it does not exist
        self.encoding = encoding
        self.min_chars = min_chars
        self.max_chars = max_chars
        sources = [source] if isinstance(source, (str, Path)) else list(source)
        if not sources:
            raise ValueError("TextDocuments needs at least one file or directory")
        excluded = set(exclude_dirs)
        self.paths: list[Path] = []
        for src in map(Path, sources):
            if src.is_dir():
                found = sorted(
                    (p for p in src.glob(pattern) if p.is_file() and not excluded & set(p.relative_to(src).parts[:-1])),
                    key=lambda p: p.relative_to(src).as_posix(),
                )
                if not found:
                    raise FileNotFoundError(f"no files matching {pattern!r} under {src}")
                self.paths.extend(found)
            elif src.is_file():
                self.paths.append(src)
            else:
                raise FileNotFoundError(f"text source {src} does not exist")
        self.stats = ReadStats()

    def items(self) -> Iterator[tuple[Path, str]]:
        """Yield ``(path, document)`` pairs; updates :attr:`stats` and warns about undecodable files at the end."""
        stats = ReadStats(files=len(self.paths))
        for path in self.paths:
            try:
                text = path.read_bytes().decode(self.encoding)
            except UnicodeDecodeError as err:
                stats.undecodable.append((path, str(err)))
                continue
            if len(text) < self.min_chars:
                stats.too_short += 1
            elif self.max_chars is not None and len(text) > self.max_chars:
                stats.too_long += 1
            else:
                stats.documents += 1
                yield path, text
        self.stats = stats
        if stats.undecodable:
            names = ", ".join(str(p) for p, _ in stats.undecodable[:3])
            more = "" if len(stats.undecodable) <= 3 else f" and {len(stats.undecodable) - 3} more"
            warnings.warn(
                f"TextDocuments skipped {len(stats.undecodable)} file(s) not decodable as {self.encoding}: "
                f"{names}{more}",
                stacklevel=2,
            )

    def __iter__(self) -> Iterator[str]:
        for _, text in self.items():
            yield text

    def documents(self) -> list[str]:
        """All documents as a list (one full pass)."""
        return list(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.paths)} files, encoding={self.encoding!r})"


def python_stdlib_documents(
    *, include_tests: bool = False, min_chars: int = 1, max_chars: int | None = None
) -> TextDocuments:
    """The running interpreter's standard-library ``.py`` sources (found with ``sysconfig``) as documents.

    ``site-packages`` / ``dist-packages`` are never included; test suites (``test``, ``tests``, ``idle_test``
    directories) only with ``include_tests``. CPython's test suite holds deliberately mis-encoded files, which are
    skipped and reported like any other undecodable file.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    excluded = ["site-packages", "dist-packages", "__pycache__"]
    if not include_tests:
        excluded += ["test", "tests", "idle_test"]
    return TextDocuments(stdlib, pattern="**/*.py", min_chars=min_chars, max_chars=max_chars, exclude_dirs=excluded)


class ByteTokenizer:
    """Byte-level tokenizer: UTF-8 bytes are ids 0..255 and the end-of-text id is 256 (vocabulary of 257)."""

    vocab_size = 257
    eot_id = 256

    def encode(self, text: str, *, add_eot: bool = True) -> torch.Tensor:
        """``int64`` ids of the UTF-8 bytes of ``text``, followed by :attr:`eot_id` when ``add_eot``."""
        ids = torch.from_numpy(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64))
        return torch.cat([ids, torch.tensor([self.eot_id])]) if add_eot else ids

    def encode_documents(self, documents: Sequence[str] | Iterator[str]) -> torch.Tensor:
        """Concatenate documents into one id stream, each followed by :attr:`eot_id`."""
        parts = [self.encode(doc) for doc in documents]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)

    def decode_documents(self, ids: torch.Tensor | Sequence[int], *, errors: str = "strict") -> list[str]:
        """Split an id stream at :attr:`eot_id` and decode each piece; a trailing piece without EOT is kept too."""
        ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > self.eot_id):
            raise ValueError(f"byte token ids must lie in [0, {self.eot_id}], got range [{ids.min()}, {ids.max()}]")
        ends = torch.nonzero(ids == self.eot_id).flatten().tolist()
        docs, start = [], 0
        for end in [*ends, ids.numel()]:
            if end > start or end in ends:
                docs.append(bytes(ids[start:end].to(torch.uint8).tolist()).decode("utf-8", errors=errors))
            start = end + 1
        return docs

    def decode(self, ids: torch.Tensor | Sequence[int], *, errors: str = "strict") -> str:
        """Decode one document; a single trailing :attr:`eot_id` is allowed, any other EOT raises ``ValueError``."""
        docs = self.decode_documents(ids, errors=errors)
        if len(docs) > 1:
            raise ValueError(f"ids hold {len(docs)} documents separated by eot_id; use decode_documents")
        return docs[0] if docs else ""
