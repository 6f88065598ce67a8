"""Read and write GBC graph files (.jsonl, .json, .parquet), streaming with bounded memory.

GBC10M shards are about 10 GB each, so nothing here holds a file: ``.jsonl`` is read line by line, a ``.json`` array
element by element (an incremental decoder over 1 MiB chunks), ``.parquet`` batch by batch; writers take any iterable
of graphs and write as they go. A graph read and written back is the same JSON object, key for key and in key order
(unknown fields included); see the README for the one parquet caveat (one schema per file).

Problems name the file and line (``.jsonl``, ``.json``) or row (``.parquet``): a malformed JSON line, a missing field,
an unknown label, a dangling edge. :class:`GraphReader` stops at the first one with a :class:`DataError`, or with
``skip_invalid`` counts it, keeps the first few messages and goes on with the next graph.
"""

from __future__ import annotations

import json
import json.scanner
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bramley.core.errors import DataError

from .graph import GbcGraph, GraphFormatError
from .validate import validate_graph

__all__ = [
    "FORMATS",
    "GraphReader",
    "Record",
    "file_format",
    "iter_records",
    "load_hf_dataset",
    "parquet_schema",
    "read_graphs",
    "write_graphs",
]

FORMATS = ("jsonl", "json", "parquet")
CHUNK = 1 << 20  # bytes read at a time from a .json array
MAX_ELEMENT = 256 << 20  # a .json array element larger than this is taken as malformed, not buffered further
PARQUET_BATCH = 256  # graphs per parquet read batch (a GBC10M graph is a few kB)
PARQUET_ROW_GROUP = 4096  # graphs per parquet row group written


def file_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """``jsonl``, ``json`` or ``parquet``: ``fmt`` if given, else from the file's suffix."""
    if fmt is None:
        fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown graph file format {fmt!r} (expected .jsonl, .json or .parquet)")
    return fmt


@dataclass
class Record:
    """One raw graph of a file: where it is (``line`` for JSON, ``row`` for parquet) and its JSON object, or the
    reason it could not be decoded (``error``)."""

    where: str
    value: Any = None
    error: str | None = None


# ------------------------------------------------------------------------------------------------------ reading
def iter_records(path: str | os.PathLike, fmt: str | None = None) -> Iterator[Record]:
    """The raw graph objects of a file, one at a time, each with its position; JSON errors come as records too, so
    that one bad line does not lose the others."""
    fmt = file_format(path, fmt)
    if not Path(path).is_file():
        raise DataError(f"{path}: no such graph file")
    if fmt == "jsonl":
        yield from _jsonl_records(path)
    elif fmt == "json":
        yield from _json_records(path)
    else:
        yield from _parquet_records(path)


def _jsonl_records(path: str | os.PathLike) -> Iterator[Record]:
    with open(path, encoding="utf-8", errors="strict") as f:
        line_no = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no + 1}: not UTF-8 text ({e.reason})") from None
            if not line:
                return
            line_no += 1
            if line.isspace():
                continue
            try:
                yield Record(f"line {line_no}", _loads(line))
            except json.JSONDecodeError as e:
                yield Record(f"line {line_no}", error=f"malformed JSON ({e.msg} at column {e.colno})")


_scan_once = json.scanner.make_scanner(json.JSONDecoder())


def _loads(line: str) -> Any:
    """``json.loads(line)``, calling the decoder's scanner directly for a line that starts with its value and ends
    with JSON whitespace (every line ``write_graphs`` writes); any other line goes to ``json.loads`` itself, which
    gives the same value or the same error."""
    try:
        value, end = _scan_once(line, 0)
    except (json.JSONDecodeError, StopIteration):
        return json.loads(line)
    if end != len(line) and line[end:].strip(" \t\n\r"):
        return json.loads(line)  # raises "Extra data"
    return value


def _json_records(path: str | os.PathLike) -> Iterator[Record]:
    """A ``.json`` file holding one graph object or an array of them, decoded incrementally."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buffer = f.read(CHUNK)
        pos, line = _skip_space(buffer, 0, 1)
        if pos >= len(buffer):
            return
        if buffer[pos] != "[":
            text = buffer + f.read()  # a single graph object: it is the whole file
            try:
                yield Record(f"line {line}", json.loads(text))
            except json.JSONDecodeError as e:
                yield Record(f"line {e.lineno}", error=f"malformed JSON ({e.msg} at column {e.colno})")
            return
        pos += 1
        eof = False
        first = True
        while True:
            pos, line = _skip_space(buffer, pos, line)
            if pos < len(buffer) and buffer[pos] == "]":
                return
            if not first:
                if pos >= len(buffer) and not eof:
                    buffer, pos, eof = buffer[pos:] + f.read(CHUNK), 0, False
                    continue
                if pos >= len(buffer) or buffer[pos] != ",":
                    yield Record(f"line {line}", error="malformed JSON array (expected ',' or ']' between graphs)")
                    return
                pos, line = _skip_space(buffer, pos + 1, line)
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, pos)
                    break
                except json.JSONDecodeError as e:
                    if eof or len(buffer) - pos > MAX_ELEMENT:
                        where = f"line {line + buffer.count(chr(10), pos, e.pos)}"
                        yield Record(where, error=f"malformed JSON ({e.msg})")
                        return
                    more = f.read(CHUNK)
                    eof = not more
                    buffer, pos = buffer[pos:] + more, 0
            yield Record(f"line {line}", value)
            line += buffer.count("\n", pos, end)
            pos, first = end, False
            if len(buffer) - pos < CHUNK // 2 and not eof:
                more = f.read(CHUNK)
                eof = not more
                buffer, pos = buffer[pos:] + more, 0


def _skip_space(buffer: str, pos: int, line: int) -> tuple[int, int]:
    while pos < len(buffer) and buffer[pos] in " \t\r\n":
        line += buffer[pos] == "\n"
        pos += 1
    return pos, line


def _parquet_records(path: str | os.PathLike) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    row = 0
    for batch in file.iter_batches(batch_size=PARQUET_BATCH):
        for value in batch.to_pylist():
            row += 1
            yield Record(f"row {row}", value)


@dataclass
class GraphReader:
    """The graphs of a file, parsed and (by default) validated, streamed.

    Iterating raises :class:`DataError` ``"<file>:<line N|row N>: <problem>"`` at the first invalid graph, or with
    ``skip_invalid`` skips it and counts it in :attr:`skipped` (the first ``keep_messages`` messages are kept in
    :attr:`problems`). Warnings (edge texts missing from their source's captions) are counted in :attr:`warnings`.

    Args:
        path: a .jsonl, .json or .parquet file.
        fmt: the format when the suffix does not say it.
        validate: check each graph's meaning (:func:`~bramley.gbc.validate.validate_graph`), not only its structure.
        strict_edge_text: an edge text missing from its source's captions is an error.
        skip_invalid: skip invalid graphs instead of stopping.
    """

    path: str | os.PathLike
    fmt: str | None = None
    validate: bool = True
    strict_edge_text: bool = False
    skip_invalid: bool = False
    keep_messages: int = 20
    read: int = field(default=0, init=False)
    skipped: int = field(default=0, init=False)
    warnings: int = field(default=0, init=False)
    problems: list[str] = field(default_factory=list, init=False)

    def __iter__(self) -> Iterator[GbcGraph]:
        for record in iter_records(self.path, self.fmt):
            graph, problem = self._parse(record)
            if problem is not None:
                message = f"{self.path}:{record.where}: {problem}"
                if not self.skip_invalid:
                    raise DataError(message)
                self.skipped += 1
                if len(self.problems) < self.keep_messages:
                    self.problems.append(message)
                continue
            self.read += 1
            yield graph

    def _parse(self, record: Record) -> tuple[GbcGraph | None, str | None]:
        if record.error is not None:
            return None, record.error
        try:
            graph = GbcGraph.from_dict(record.value)
        except GraphFormatError as e:
            return None, str(e)
        if self.validate:
            found = validate_graph(graph, self.strict_edge_text)
            if not found:
                return graph, None
            errors = [p.message for p in found if p.level == "error"]
            warnings = [p.message for p in found if p.level == "warning"]
            self.warnings += len(warnings)
            if warnings and len(self.problems) < self.keep_messages:
                self.problems.append(f"{self.path}:{record.where}: warning: {warnings[0]}")
            if errors:
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                return None, errors[0] + more
        return graph, None


def read_graphs(path: str | os.PathLike, **options: Any) -> GraphReader:
    """The graphs of a file, streamed (see :class:`GraphReader` for the options)."""
    return GraphReader(path, **options)


# ------------------------------------------------------------------------------------------------------ writing
def _as_dict(graph: GbcGraph | dict[str, Any]) -> dict[str, Any]:
    return graph.to_dict() if isinstance(graph, GbcGraph) else graph


def parquet_schema(graphs: Iterable[GbcGraph | dict[str, Any]], batch_size: int = PARQUET_ROW_GROUP):
    """One arrow schema that holds every graph (the union of their fields), computed in a streaming pass."""
    import pyarrow as pa

    schema = None
    for batch in _batches(graphs, batch_size):
        inferred = _infer_schema(batch)
        schema = inferred if schema is None else pa.unify_schemas([schema, inferred], promote_options="permissive")
    return schema


def _infer_schema(batch: list[dict[str, Any]]):
    """The arrow schema of a batch of graphs: every key of every row (``Table.from_pylist`` takes the columns of
    the first row only and would drop the others)."""
    import pyarrow as pa

    return pa.schema(pa.array(batch).type)


def _batches(graphs: Iterable[GbcGraph | dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for g in graphs:
        batch.append(_as_dict(g))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def write_graphs(
    graphs: Iterable[GbcGraph | dict[str, Any]],
    path: str | os.PathLike,
    fmt: str | None = None,
    schema: Any = None,
) -> int:
    """Write graphs to a .jsonl, .json (an array) or .parquet file as they come; returns how many were written.

    The file is written beside its destination and renamed at the end, so a failed write leaves no half file.
    Parquet needs one schema for the file: ``schema`` (see :func:`parquet_schema`), else the first row group's; a
    later graph with fields the schema lacks is an error naming them (nothing is dropped silently).
    """
    from bramley.core.checkpoint import atomic_write

    fmt = file_format(path, fmt)
    count = 0

    def write(tmp: str) -> None:
        nonlocal count
        if fmt == "parquet":
            count = _write_parquet(graphs, tmp, schema, str(path))
            return
        with open(tmp, "w", encoding="utf-8") as f:
            if fmt == "json":
                f.write("[")
            for g in graphs:
                text = json.dumps(_as_dict(g), ensure_ascii=False)
                if fmt == "jsonl":
                    f.write(text + "\n")
                else:
                    f.write(("\n" if count == 0 else ",\n") + text)
                count += 1
            if fmt == "json":
                f.write("\n]\n")

    atomic_write(path, write)
    return count


def _write_parquet(graphs: Iterable[GbcGraph | dict[str, Any]], tmp: str, schema: Any, name: str) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    count = 0
    try:
        for batch in _batches(graphs, PARQUET_ROW_GROUP):
            inferred = _infer_schema(batch)
            if schema is None:
                schema = inferred
            unified = pa.unify_schemas([schema, inferred], promote_options="permissive")
            if not unified.equals(schema):
                raise DataError(
                    f"{name}: graphs {count + 1}..{count + len(batch)} have fields or types the parquet schema lacks "
                    f"({_schema_difference(schema, unified)}); compute the file's schema first (parquet_schema, or "
                    "`bramley-gbc convert`, which does)"
                )
            table = pa.Table.from_struct_array(pa.array(batch, type=pa.struct(schema)))
            if writer is None:
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(table)
            count += len(batch)
        if writer is None:
            writer = pq.ParquetWriter(tmp, schema or pa.schema([("vertices", pa.list_(pa.null()))]))
    finally:
        if writer is not None:
            writer.close()
    return count


def _schema_difference(schema: Any, unified: Any) -> str:
    changed = [f.name for f in unified if f.name not in schema.names or not schema.field(f.name).equals(f)]
    return "columns " + ", ".join(changed) if changed else "types"


# -------------------------------------------------------------------------------------------------- HF datasets
def load_hf_dataset(paths: str | os.PathLike | list[str | os.PathLike], streaming: bool = True, split: str = "train"):
    """Local GBC1M / GBC10M files (.jsonl or .parquet shards) as a Hugging Face ``datasets`` dataset.

    Rows are the graphs' JSON objects; ``GbcGraph.from_dict(row)`` parses one. ``streaming=True`` (default) reads
    shards lazily, as GBC10M needs. Requires the ``hf`` extra (``pip install bramley-gbc[hf]``).
    """
    try:
        import datasets
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "loading GBC files with Hugging Face datasets needs the hf extra: pip install 'bramley-gbc[hf]'"
        ) from None
    files = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if not files:
        raise DataError("load_hf_dataset: no files given")
    kinds = {file_format(p) for p in files}
    if len(kinds) != 1 or "json" in kinds:
        raise DataError(f"load_hf_dataset: give .jsonl or .parquet files of one kind, got {sorted(kinds)}")
    for p in files:
        if not Path(p).is_file():
            raise DataError(f"{p}: no such graph file")
    builder = "json" if kinds == {"jsonl"} else "parquet"
    return datasets.load_dataset(builder, data_files=files, split=split, streaming=streaming)
