"""``make-buckets``: text files -> tokenized, decomposed, on-disk buckets (streaming, resumable, with progress).

Inputs are files or directories. ``.jsonl`` / ``.jsonl.gz`` files hold one document per line in a string field
(``--text-field``, default ``text``); any other file is one document (``--txt-mode file``) or one document per
non-empty line (``--txt-mode line``). Directories are searched with ``--pattern`` and their files sorted by path.
Every document is tokenized, gets the end-of-text token appended, and is decomposed
(:func:`~bramley.dataset_decomposition.decompose.decompose`) straight into the bucket files: the corpus is never
held in memory (one document and a bounded write buffer at a time).

Resuming: after every completed input file the bucket files are fsynced and ``progress.json`` records how many files
are done and how many rows each bucket holds. A killed run, started again with the same command, truncates the
bucket files to those rows and continues with the next file, so nothing is duplicated or lost. The random cuts of
long documents use a generator seeded with ``(seed, file index)``, so a resumed run writes exactly the bytes an
uninterrupted one would. ``manifest.json`` is written last.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import gzip
import io
import json
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bramley.core.data import ByteTokenizer, TextDocuments
from bramley.core.errors import ConfigError, DataError

from .buckets import (
    MANIFEST,
    PROGRESS,
    BucketFormatError,
    Buckets,
    BucketWriter,
    _write_json,
    bucket_file_name,
    token_dtype,
)
from .decompose import check_bucket_range, decompose

__all__ = [
    "ByteLevelTokenizer",
    "HFTokenizer",
    "add_make_buckets_arguments",
    "list_input_files",
    "load_tokenizer",
    "make_buckets",
    "read_documents",
    "run_make_buckets",
    "write_buckets",
]

_EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>")


# ----------------------------------------------------------------------------------------------- tokenizers
class ByteLevelTokenizer:
    """UTF-8 bytes as ids 0..255, end-of-text 256 (:class:`bramley.core.data.ByteTokenizer`), numpy output."""

    def __init__(self) -> None:
        self._tok = ByteTokenizer()
        self.vocab_size, self.eot_id = self._tok.vocab_size, self._tok.eot_id

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` followed by the end-of-text id."""
        return self._tok.encode(text, add_eot=True).numpy()

    def describe(self) -> dict[str, Any]:
        return {"name": "byte", "path": None, "vocab_size": self.vocab_size, "eot_id": self.eot_id}


class HFTokenizer:
    """A local Hugging Face tokenizer (``tokenizer.json`` file, or a folder with one or with transformers files).

    Uses the ``tokenizers`` library when it is installed, else ``transformers`` (``local_files_only``: never
    downloads). No special tokens are added; the end-of-text id is appended to every document, as the official
    decomposition script does. The end-of-text token is ``eot_token`` if given, else the tokenizer's EOS token or the
    first of ``<|endoftext|>``, ``<|end_of_text|>``, ``</s>``, ``<eos>``, ``<|eot_id|>`` it knows.
    """

    def __init__(self, path: str | os.PathLike, eot_token: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"tokenizer {self.path} does not exist (give 'byte' or a local tokenizer path)")
        tokenizer_json = self.path if self.path.is_file() else self.path / "tokenizer.json"
        try:
            import tokenizers
        except ImportError:
            tokenizers = None
        if tokenizers is not None and tokenizer_json.is_file():
            try:
                tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
            except Exception as err:  # the tokenizers library raises a bare Exception for a malformed file
                raise DataError(f"tokenizer {tokenizer_json} could not be read: {err}") from None
            self._encode = lambda text: tok.encode(text, add_special_tokens=False).ids
            self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
            lookup, default_eot = tok.token_to_id, None
        else:
            try:
                import transformers
            except ImportError as err:
                raise ModuleNotFoundError(
                    f"loading the tokenizer at {self.path} needs the 'tokenizers' package (for a tokenizer.json) or "
                    "'transformers'; neither is installed: pip install tokenizers (bramley-dataset-decomposition[hf]) "
                    "or transformers (bramley-dataset-decomposition[transformers]), or use the byte-level tokenizer"
                ) from err
            folder = self.path.parent if self.path.is_file() else self.path
            tok = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self._encode = lambda text: tok(text, add_special_tokens=False)["input_ids"]
            self.vocab_size = len(tok)
            lookup = tok.convert_tokens_to_ids
            default_eot = tok.eos_token
        unknown = getattr(tok, "unk_token_id", None)  # transformers maps unknown tokens to it instead of None
        names = [eot_token] if eot_token is not None else [n for n in (default_eot, *_EOT_CANDIDATES) if n]
        self.eot_token, self.eot_id = None, None
        for name in names:
            token_id = lookup(name)
            if token_id is not None and token_id != unknown:
                self.eot_token, self.eot_id = name, int(token_id)
                break
        if self.eot_id is None:
            raise ConfigError(f"tokenizer {self.path} has no end-of-text token among {names}: pass --eot-token")

    def encode(self, text: str) -> np.ndarray:
        ids = np.asarray(self._encode(text), dtype=np.int64)
        return np.concatenate([ids, np.array([self.eot_id], dtype=np.int64)])

    def describe(self) -> dict[str, Any]:
        return {
            "name": "hf",
            "path": str(self.path.resolve()),
            "vocab_size": self.vocab_size,
            "eot_id": self.eot_id,
            "eot_token": self.eot_token,
        }


def load_tokenizer(spec: str = "byte", eot_token: str | None = None) -> ByteLevelTokenizer | HFTokenizer:
    """``"byte"`` -> :class:`ByteLevelTokenizer`; anything else is a local HF tokenizer path (:class:`HFTokenizer`)."""
    if spec == "byte":
        if eot_token is not None:
            raise ConfigError("--eot-token applies to HF tokenizers; the byte tokenizer's end-of-text id is 256")
        return ByteLevelTokenizer()
    return HFTokenizer(spec, eot_token=eot_token)


# ----------------------------------------------------------------------------------------------- inputs
def list_input_files(inputs: Sequence[str | os.PathLike], pattern: str = "**/*.txt") -> list[Path]:
    """Expand files and directories (searched with ``pattern``, sorted by relative POSIX path) into a file list.

    The listing of :class:`bramley.core.data.TextDocuments`: a missing input or a directory without matches raises
    ``FileNotFoundError``.
    """
    if not inputs:
        raise ValueError("no input files or directories given")
    return TextDocuments(list(inputs), pattern=pattern).paths


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _read_documents(path: Path, *, text_field: str, txt_mode: str, encoding: str) -> Iterator[str]:
    """Documents of one input file, streamed (jsonl line by line). Raises ``UnicodeDecodeError`` / ``ValueError``."""
    if _is_jsonl(path):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding=encoding) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid JSON ({err})") from err
                if not isinstance(record, dict) or text_field not in record:
                    raise DataError(f"{path}:{number}: no {text_field!r} field (set --text-field)")
                text = record[text_field]
                if not isinstance(text, str):
                    raise DataError(f"{path}:{number}: field {text_field!r} is {type(text).__name__}, not a string")
                yield text
        return
    text = path.read_bytes().decode(encoding)
    if txt_mode == "file":
        yield text
    elif txt_mode == "line":
        yield from (line for line in text.splitlines() if line.strip())
    else:
        raise ConfigError(f"txt_mode must be 'file' or 'line', got {txt_mode!r}")


def read_documents(
    inputs: Sequence[str | os.PathLike],
    *,
    pattern: str = "**/*.txt",
    text_field: str = "text",
    txt_mode: str = "file",
    encoding: str = "utf-8",
) -> Iterator[str]:
    """Every document of the inputs, read exactly as ``make-buckets`` reads them (same files, order and rules).

    The concat-and-chunk baseline uses this, so both methods train on the same documents. Files that do not decode
    with ``encoding`` are skipped whole and reported in one warning at the end, as in ``make-buckets``.
    """
    skipped = []
    for path in list_input_files(inputs, pattern):
        try:
            documents = list(_read_documents(path, text_field=text_field, txt_mode=txt_mode, encoding=encoding))
        except UnicodeDecodeError:
            skipped.append(str(path))
            continue
        yield from documents
    if skipped:
        names = ", ".join(skipped[:3])
        warnings.warn(f"skipped {len(skipped)} file(s) not decodable as {encoding}: {names}", stacklevel=2)


# ----------------------------------------------------------------------------------------------- core loop
def _new_stats(log2s: Iterable[int]) -> dict[str, Any]:
    return {"documents": 0, "tokens": 0, "kept_tokens": 0, "dropped_tokens": 0, "rows": {str(k): 0 for k in log2s}}


def _decompose_documents(
    texts: Iterable[str],
    tokenizer: Any,
    writer: BucketWriter,
    rng: np.random.Generator,
    *,
    min_log2: int,
    max_log2: int,
    randomize: bool,
    stats: dict[str, Any],
) -> None:
    for text in texts:
        ids = tokenizer.encode(text)
        rows, dropped = decompose(ids, min_log2, max_log2, rng=rng, randomize=randomize)
        writer.add(rows)
        stats["documents"] += 1
        stats["tokens"] += int(ids.size)
        stats["dropped_tokens"] += dropped
        stats["kept_tokens"] += int(ids.size) - dropped
        for k, block in rows.items():
            stats["rows"][str(k)] += block.shape[0]


def _merge(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key in ("documents", "tokens", "kept_tokens", "dropped_tokens"):
        total[key] += part[key]
    for k, n in part["rows"].items():
        total["rows"][k] += n


def _check_kept(
    stats: dict[str, Any], where: str, min_log2: int, skipped: Sequence[str] = (), encoding: str = ""
) -> None:
    """``DataError`` when the documents give no row at all: empty buckets would train nothing."""
    if stats["kept_tokens"]:
        return
    if skipped and not stats["documents"]:
        names = ", ".join(skipped[:3])
        raise DataError(
            f"no decodable text in {where}: {len(skipped)} file(s) are not valid {encoding} ({names}); "
            "set the encoding (--encoding)"
        )
    if not stats["documents"]:
        raise DataError(f"{where} hold no documents")
    raise DataError(
        f"the {stats['documents']} document(s) of {where} ({stats['tokens']} tokens) are all too short for the "
        f"shortest bucket ({(1 << min_log2) + 1} tokens a row): lower min_log2"
    )


def _file_id(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def make_buckets(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    tokenizer: str = "byte",
    eot_token: str | None = None,
    text_field: str = "text",
    pattern: str = "**/*.txt",
    txt_mode: str = "file",
    encoding: str = "utf-8",
    min_log2: int = 8,
    max_log2: int = 13,
    seed: int = 0,
    randomize: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    buffer_tokens: int = 1 << 22,
    checkpoint_seconds: float = 1.0,
) -> Buckets:
    """Build (or resume building) a bucket folder from text files; see the module docstring.

    A checkpoint (fsync + ``progress.json``) follows a completed input file once ``checkpoint_seconds`` have passed
    since the previous one (0: after every file), so many small files do not cost one fsync round each.

    Undecodable files are skipped, counted in the manifest (``skipped_files``) and reported with a warning; a jsonl
    line without the text field raises :class:`~bramley.core.errors.DataError` naming the file and line. Inputs that
    give no row at all (no decodable text, or only documents shorter than the shortest bucket) raise ``DataError``
    and leave no bucket files behind.

    Returns:
        The finished folder, opened as :class:`~bramley.dataset_decomposition.buckets.Buckets`.

    Raises:
        FileExistsError: ``out`` already holds finished buckets (pass ``overwrite=True``) or unrelated bucket files.
        ConfigError: ``out`` holds an unfinished run made with other settings.
        DataError: input files that the unfinished run already decomposed have changed since; or no row at all.
    """
    check_bucket_range(min_log2, max_log2)
    if not checkpoint_seconds >= 0:  # also refuses nan
        raise ConfigError(f"checkpoint_seconds must be >= 0, got {checkpoint_seconds}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ConfigError(f"unknown text encoding {encoding!r}") from None
    root = Path(out)
    files = list_input_files(inputs, pattern)
    tok = load_tokenizer(tokenizer, eot_token)
    dtype = token_dtype(tok.vocab_size)
    config = {
        "tokenizer": tok.describe(),
        "text_field": text_field,
        "txt_mode": txt_mode,
        "encoding": encoding,
        "min_log2": min_log2,
        "max_log2": max_log2,
        "seed": seed,
        "randomize": randomize,
        "dtype": dtype.name,
        "inputs": [str(p.resolve()) for p in files],
    }
    file_ids = [_file_id(p) for p in files]
    log2s = list(range(min_log2, max_log2 + 1))
    if (root / MANIFEST).exists():
        if not overwrite:
            raise FileExistsError(f"{root} already holds finished buckets; pass --overwrite to rebuild them")
        _remove_outputs(root)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"--out {root} is a file, not a folder")
    progress_path = root / PROGRESS
    if progress_path.exists():
        state = _read_progress(progress_path)
        if state["config"] != config:
            changed = sorted(k for k in config if state["config"].get(k) != config[k])
            raise ConfigError(
                f"{root} holds an unfinished run with different settings or inputs ({', '.join(changed)}); "
                "rerun with the same ones to resume, or remove the folder"
            )
        done = state["files_done"]
        if state["file_ids"][:done] != file_ids[:done]:
            raise DataError(f"{root}: input files that the unfinished run already decomposed have changed since")
        writer = BucketWriter(
            root, min_log2, max_log2, dtype, resume_rows={int(k): v for k, v in state["rows"].items()},
            buffer_tokens=buffer_tokens,
        )  # fmt: skip
        created = False
    else:
        if any((root / bucket_file_name(k)).exists() for k in log2s):
            raise FileExistsError(f"{root} holds bucket files but no progress.json: use an empty folder")
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        state = {
            "config": config,
            "file_ids": file_ids,
            "files_done": 0,
            "rows": {str(k): 0 for k in log2s},
            "sources": [],
            "skipped": [],
        }
        _write_json(progress_path, state)
        writer = BucketWriter(root, min_log2, max_log2, dtype, buffer_tokens=buffer_tokens)

    bar = _progress_bar(len(files), state["files_done"], enabled=progress)
    last_checkpoint = time.monotonic()
    for index in range(state["files_done"], len(files)):
        path = files[index]
        stats = _new_stats(log2s)
        rng = np.random.default_rng([seed, index])
        texts = _read_documents(path, text_field=text_field, txt_mode=txt_mode, encoding=encoding)
        rows_before = dict(writer.rows_per_bucket)
        try:
            _decompose_documents(
                texts, tok, writer, rng, min_log2=min_log2, max_log2=max_log2, randomize=randomize, stats=stats
            )
        except UnicodeDecodeError as err:
            # Nothing of this file may stay: cut the buckets back to where they were before it, then skip it.
            writer.flush()
            writer = BucketWriter(root, min_log2, max_log2, dtype, resume_rows=rows_before, buffer_tokens=buffer_tokens)
            state["skipped"].append({"path": str(path), "error": str(err)})
        else:
            state["sources"].append({"path": str(path), **stats})
        state["file_ids"][index] = _file_id(path)
        if time.monotonic() - last_checkpoint >= checkpoint_seconds or index == len(files) - 1:
            state["rows"] = {str(k): v for k, v in writer.flush().items()}
            state["files_done"] = index + 1
            _write_json(progress_path, state)
            last_checkpoint = time.monotonic()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(docs=sum(s["documents"] for s in state["sources"]))
    if bar is not None:
        bar.close()
    totals = _new_stats(log2s)
    for source in state["sources"]:
        _merge(totals, source)
    skipped = [s["path"] for s in state["skipped"]]
    if not totals["kept_tokens"]:  # nothing to keep: a rerun (another --encoding or --min-log2) starts afresh
        _remove_outputs(root)
        if created:
            with contextlib.suppress(OSError):
                root.rmdir()
        _check_kept(totals, f"the {len(files)} input file(s)", min_log2, skipped, encoding)
    if skipped:
        warnings.warn(
            f"make-buckets skipped {len(skipped)} file(s) not decodable as {encoding}: {', '.join(skipped[:3])}",
            stacklevel=2,
        )
    writer.finish(
        tokenizer=config["tokenizer"],
        seed=seed,
        randomize=randomize,
        text_field=text_field,
        txt_mode=txt_mode,
        sources=state["sources"],
        skipped_files=state["skipped"],
        stats=totals,
    )
    progress_path.unlink()
    return Buckets(root)


def write_buckets(
    documents: Iterable[str],
    out: str | os.PathLike,
    *,
    tokenizer: str = "byte",
    eot_token: str | None = None,
    min_log2: int = 8,
    max_log2: int = 13,
    seed: int = 0,
    randomize: bool = True,
    source: str = "<documents>",
) -> Buckets:
    """Decompose an in-process iterable of documents (e.g. ``python_stdlib_documents()``) into a new bucket folder.

    Streaming like :func:`make_buckets` but not resumable (there are no input files to count); the cuts use the
    generator ``(seed, 0)``. ``out`` must not hold buckets yet. Documents that give no row at all raise
    :class:`~bramley.core.errors.DataError` (and leave no bucket files behind).
    """
    check_bucket_range(min_log2, max_log2)
    root = Path(out)
    if (root / MANIFEST).exists() or (root / PROGRESS).exists():
        raise FileExistsError(f"{root} already holds buckets")
    tok = load_tokenizer(tokenizer, eot_token)
    writer = BucketWriter(root, min_log2, max_log2, token_dtype(tok.vocab_size))
    stats = _new_stats(writer.log2s)
    _decompose_documents(
        documents, tok, writer, np.random.default_rng([seed, 0]), min_log2=min_log2, max_log2=max_log2,
        randomize=randomize, stats=stats,
    )  # fmt: skip
    if not stats["kept_tokens"]:
        writer.flush()
        _remove_outputs(root)
        _check_kept(stats, source, min_log2)
    writer.finish(
        tokenizer=tok.describe(),
        seed=seed,
        randomize=randomize,
        sources=[{"path": source, **stats}],
        skipped_files=[],
        stats=stats,
    )
    return Buckets(root)


def _read_progress(path: Path) -> dict[str, Any]:
    """The resume state of an unfinished run; ``BucketFormatError`` naming the file if it is not one."""
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BucketFormatError(f"{path} is not valid JSON ({err}): remove the folder and start again") from err
    keys = ("config", "file_ids", "files_done", "rows", "sources", "skipped")
    if not isinstance(state, dict) or not all(k in state for k in keys) or not isinstance(state["config"], dict):
        raise BucketFormatError(f"{path} is not a make-buckets progress file: remove the folder and start again")
    return state


def _remove_outputs(root: Path) -> None:
    for name in (MANIFEST, PROGRESS):
        (root / name).unlink(missing_ok=True)
    for path in root.glob("bucket_*.bin"):
        path.unlink()


def _progress_bar(total: int, done: int, *, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="file", desc="make-buckets", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- CLI
def add_make_buckets_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``make-buckets`` options to ``parser``."""
    parser.add_argument("inputs", nargs="+", help="jsonl / text files or directories of them")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the buckets")
    parser.add_argument(
        "--tokenizer",
        default="byte",
        help="'byte' (default: UTF-8 bytes + end-of-text 256) or a local HF tokenizer path",
    )
    parser.add_argument("--eot-token", default=None, help="end-of-text token of an HF tokenizer (default: its EOS)")
    parser.add_argument("--text-field", default="text", help="jsonl field holding the document text")
    parser.add_argument("--pattern", default="**/*.txt", help="glob for files inside input directories")
    parser.add_argument(
        "--txt-mode", choices=("file", "line"), default="file", help="non-jsonl files: one document per file or line"
    )
    parser.add_argument("--encoding", default="utf-8")
    parser.add_argument("--min-log2", type=int, default=8, help="shortest bucket: 2^min_log2 tokens (+1 target)")
    parser.add_argument("--max-log2", type=int, default=13, help="longest bucket: 2^max_log2 tokens (+1 target)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random cuts of long documents")
    parser.add_argument(
        "--no-randomize", action="store_true", help="cut long documents at 2^max_log2 + 1 instead of random lengths"
    )
    parser.add_argument("--overwrite", action="store_true", help="rebuild a folder that already holds buckets")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--checkpoint-seconds", type=float, default=1.0, help="least time between resume checkpoints (0: every file)"
    )
    return parser


def run_make_buckets(args: argparse.Namespace) -> int:
    """Run ``make-buckets`` from parsed arguments and print a per-bucket summary (errors: see :func:`make_buckets`)."""
    buckets = make_buckets(
        args.inputs,
        args.out,
        tokenizer=args.tokenizer,
        eot_token=args.eot_token,
        text_field=args.text_field,
        pattern=args.pattern,
        txt_mode=args.txt_mode,
        encoding=args.encoding,
        min_log2=args.min_log2,
        max_log2=args.max_log2,
        seed=args.seed,
        randomize=not args.no_randomize,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        checkpoint_seconds=args.checkpoint_seconds,
    )
    print(summary_table(buckets))
    return 0


def summary_table(buckets: Buckets) -> str:
    """Markdown table of rows and tokens per bucket, with the dropped-token fraction."""
    from bramley.core.report import format_table

    stats = buckets.manifest.get("stats", {})
    kept = sum(r * (n + 1) for r, n in zip(buckets.rows_per_bucket, buckets.lengths))
    rows = [
        {"bucket": n, "rows": r, "tokens": r * (n + 1), "share": (r * (n + 1) / kept) if kept else 0.0}
        for n, r in zip(buckets.lengths, buckets.rows_per_bucket)
    ]
    total = stats.get("tokens", 0)
    footer = (
        f"\n{stats.get('documents', 0)} documents, {total} tokens, {stats.get('dropped_tokens', 0)} dropped "
        f"({stats.get('dropped_tokens', 0) / total:.2%})"
        if total
        else "\nno tokens"
    )
    return format_table(rows, ["bucket", "rows", "tokens", "share"]) + footer


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bramley.dataset_decomposition.make_buckets ...`` (the CLI subcommand calls the same code)."""
    from bramley.core.cli import method_main

    parser = add_make_buckets_arguments(
        argparse.ArgumentParser(prog="make-buckets", description=__doc__.splitlines()[0])
    )
    parser.set_defaults(func=run_make_buckets)
    return method_main(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
