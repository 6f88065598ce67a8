import json
import pickle
import sys

import numpy as np
import pytest
import torch

from bramley.dataset_decomposition.buckets import (
    BucketDataset,
    BucketFormatError,
    Buckets,
    BucketWriter,
    token_dtype,
)
from bramley.dataset_decomposition.sampling import BucketBatchSampler


@pytest.fixture
def folder(tmp_path):
    """Buckets 2^2..2^4 with known rows: row i of bucket k is filled with 100 * k + i."""
    writer = BucketWriter(tmp_path / "b", 2, 4, "uint16", buffer_tokens=10)
    for k, rows in ((2, 6), (3, 0), (4, 3)):
        block = (100 * k + np.arange(rows))[:, None] * np.ones((1, (1 << k) + 1), dtype=np.int64)
        writer.add({k: block[: rows // 2]})
        writer.add({k: block[rows // 2 :]})
    writer.finish(tokenizer={"name": "test", "vocab_size": 1000, "eot_id": 999}, seed=0)
    return tmp_path / "b"


def test_round_trip(folder):
    b = Buckets(folder)
    assert b.lengths == [4, 8, 16] and b.rows_per_bucket == [6, 0, 3] and len(b) == 3
    assert b.tokens_per_bucket == [24, 0, 48]
    assert b.vocab_size == 1000 and b.dtype.name == "uint16"
    assert b.array(0).shape == (6, 5) and b.array(1).shape == (0, 9)
    row = b.row(2, 1)
    assert row.dtype == torch.int64 and row.tolist() == [401] * 17
    assert (folder / "bucket_04.bin").stat().st_size == 3 * 17 * 2  # flat rows, no header
    raw = np.fromfile(folder / "bucket_02.bin", dtype="<u2").reshape(-1, 5)
    assert raw[:, 0].tolist() == [200, 201, 202, 203, 204, 205]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "bramley-dd-buckets" and manifest["version"] == 1
    assert manifest["buckets"][0] == {"log2": 2, "length": 4, "row_tokens": 5, "rows": 6, "file": "bucket_02.bin"}
    assert "Buckets(" in repr(b)


def test_dataset_items(folder):
    ds = Buckets(folder).dataset()
    assert isinstance(ds, BucketDataset) and len(ds) == 9
    assert ds[(0, 3)].tolist() == [203] * 5
    batch = ds.__getitems__([(0, 5), (0, 0)])
    assert [t[0].item() for t in batch] == [205, 200]
    mixed = ds.__getitems__([(0, 1), (2, 2)])
    assert [t.numel() for t in mixed] == [5, 17]
    with pytest.raises(IndexError, match="row 6 out of range"):
        ds[(0, 6)]
    with pytest.raises(IndexError, match="out of range"):
        ds.__getitems__([(0, 1), (0, -1)])
    with pytest.raises(IndexError, match="bucket 3 out of range"):
        ds[(3, 0)]
    with pytest.raises(TypeError, match="pairs"):
        ds[5]


def test_dataloader_with_sampler(folder):
    b = Buckets(folder)
    sampler = BucketBatchSampler.from_buckets(b, 16, curriculum="natural", num_replicas=1, rank=0)
    loader = torch.utils.data.DataLoader(b.dataset(), batch_sampler=sampler)
    shapes = sorted(tuple(batch.shape) for batch in loader)
    assert shapes == [(1, 17), (1, 17), (1, 17), (4, 5)]  # 16 tokens per step: 4 rows of 4 or 1 row of 16


def test_pickle_does_not_copy_maps(folder):
    b = Buckets(folder)
    b.array(0)
    clone = pickle.loads(pickle.dumps(b.dataset()))
    assert clone.buckets._maps == {}
    assert clone[(0, 2)].tolist() == [202] * 5


def test_errors(folder, tmp_path):
    with pytest.raises(BucketFormatError, match="not a bucket folder"):
        Buckets(tmp_path / "nowhere")
    # truncated bucket file
    with open(folder / "bucket_02.bin", "r+b") as f:
        f.truncate(20)
    with pytest.raises(BucketFormatError, match=r"bucket_02\.bin has 20 bytes"):
        Buckets(folder)


def test_manifest_errors(folder):
    path = folder / "manifest.json"
    good = json.loads(path.read_text())
    for change, message in (
        ({"version": 2}, "version 2"),
        ({"format": "other"}, "not a bramley-dd-buckets"),
        ({"dtype": "float32"}, "unknown dtype"),
        ({"buckets": []}, "no buckets"),
        ({"buckets": [{"log2": 2, "rows": 6, "file": "bucket_02.bin", "row_tokens": 9}]}, "inconsistent"),
        ({"buckets": [{"log2": 2}]}, "malformed"),
        ({"buckets": [{"log2": -1, "rows": 0, "file": "bucket_02.bin", "row_tokens": 1}]}, "inconsistent"),
    ):
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(BucketFormatError, match=message):
            Buckets(folder)
    path.write_text("{not json")
    with pytest.raises(BucketFormatError, match="not valid JSON"):
        Buckets(folder)
    (folder / "bucket_04.bin").unlink()
    path.write_text(json.dumps(good))
    with pytest.raises(BucketFormatError, match="missing"):
        Buckets(folder)


def test_unfinished_folder(tmp_path):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "progress.json").write_text("{}")
    with pytest.raises(BucketFormatError, match="resume"):
        Buckets(tmp_path / "u")


def test_writer_checks(tmp_path):
    writer = BucketWriter(tmp_path / "w", 1, 2, "uint16")
    with pytest.raises(ValueError, match="outside"):
        writer.add({3: np.zeros((1, 9), dtype=np.int64)})
    with pytest.raises(ValueError, match=r"\(count, 3\)"):
        writer.add({1: np.zeros((1, 4), dtype=np.int64)})
    with pytest.raises(ValueError, match="out of range for uint16"):
        writer.add({1: np.full((1, 3), 70000)})
    with pytest.raises(FileExistsError):
        BucketWriter(tmp_path / "w", 1, 2, "uint16")
    with pytest.raises(ValueError, match="dtype"):
        BucketWriter(tmp_path / "x", 1, 2, "int8")
    assert token_dtype(257) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_docs_examples(tmp_path, monkeypatch, capsys):
    """Run every command and Python block of docs/data.md, in order, in an empty folder."""
    import re
    import shlex
    from pathlib import Path

    from bramley.dataset_decomposition.cli import main as cli_main

    text = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    blocks = re.findall(r"```(python|bash)\n(.*?)```", text, flags=re.S)
    assert sum(kind == "python" for kind, _ in blocks) >= 4 and any(kind == "bash" for kind, _ in blocks)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus").mkdir()
    for i in range(5):
        (tmp_path / "corpus" / f"{i}.txt").write_text("import os\nprint(os.getcwd())\n" * (3 + 7 * i))
    namespace: dict = {}
    for kind, code in blocks:
        if kind == "python":
            exec(compile(code, "docs/data.md", "exec"), namespace)
            continue
        for line in code.strip().splitlines():
            argv = shlex.split(line)
            assert argv[0] == "bramley-dataset-decomposition", line
            assert cli_main(argv[1:]) == 0, line
    assert Buckets(tmp_path / "buckets").lengths == [16, 32, 64, 128]
    assert "| bucket |" in capsys.readouterr().out


def test_docs_measured_mixture_table():
    """docs/data.md's table of mean sequence length per tenth of the epoch is what bucket_schedule gives."""
    from pathlib import Path

    from bramley.dataset_decomposition.sampling import bucket_schedule

    text = (Path(__file__).parents[1] / "docs" / "data.md").read_text()
    lengths = np.array([256, 512, 1024, 2048, 4096, 8192])
    rows = {
        "natural": dict(curriculum="natural"),
        "uniform": dict(curriculum="uniform"),
        "grow_p2": dict(curriculum="grow_p2"),
        "grow_linear": dict(curriculum="grow_linear"),
        "grow_p2, subcycles": dict(curriculum="grow_p2", mixing="subcycles"),
        "grow_p2, 2 cycles": dict(curriculum="grow_p2", num_cycles=2),
    }
    for name, kwargs in rows.items():
        steps = bucket_schedule([66, 73, 89, 104, 156, 243], seed=0, **kwargs)
        means = [int(lengths[part].mean()) for part in np.array_split(steps, 10)]
        row = f"| {name} | " + " | ".join(str(m) for m in means) + " |"
        assert row in text, row


@pytest.mark.skipif(sys.version_info[:3] != (3, 11, 7), reason="the docs measured CPython 3.11.7's standard library")
def test_docs_measured_stdlib_buckets(tmp_path):
    """docs/data.md's stdlib bucket statistics are what write_buckets gives (about 2 s)."""
    from pathlib import Path

    from bramley.core.data import python_stdlib_documents
    from bramley.dataset_decomposition.make_buckets import write_buckets

    text = " ".join((Path(__file__).parents[1] / "docs" / "data.md").read_text().split())
    documents = python_stdlib_documents().documents()
    assert f"({len(documents)} files, test suites excluded)" in text
    for lo, hi in ((8, 13), (4, 9)):
        buckets = write_buckets(documents, tmp_path / f"{lo}", min_log2=lo, max_log2=hi, seed=0)
        stats = buckets.manifest["stats"]
        stored = [r * (n + 1) for r, n in zip(buckets.rows_per_bucket, buckets.lengths)]
        shares = [f"{100 * t / sum(stored):.1f}%" for t in stored]
        assert f"{stats['tokens']:,} tokens including one end-of-text" in text
        dropped = f"{stats['dropped_tokens']:,} tokens dropped ({stats['dropped_tokens'] / stats['tokens']:.2%})"
        assert dropped in text, dropped
        if lo == 8:
            for n, r, t, share in zip(buckets.lengths, buckets.rows_per_bucket, stored, shares):
                assert f"| {n} | {r:,} | {t:,} | {share} |" in text
        else:
            assert f"({', '.join(shares)} for 16..512)" in text
