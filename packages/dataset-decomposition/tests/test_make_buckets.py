import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from bramley.core.errors import DataError
from bramley.dataset_decomposition import make_buckets as mb
from bramley.dataset_decomposition.buckets import BucketFormatError, Buckets
from bramley.dataset_decomposition.decompose import decompose


def words(rng, n):
    vocab = ["alpha", "beta", "gamma", "delta", "é", "naïve", "def", "return", "\n", "    "]
    return " ".join(rng.choice(vocab, size=n).tolist())


def write_corpus(root: Path, files: int = 6, seed: int = 0) -> list[str]:
    """``files`` text files under root/docs, lengths from a few bytes to long documents; returns their texts."""
    rng = np.random.default_rng(seed)
    (root / "docs" / "sub").mkdir(parents=True)
    texts = []
    for i in range(files):
        text = words(rng, int(rng.integers(1, 400)))
        folder = root / "docs" / ("sub" if i % 2 else "")
        (folder / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
        texts.append(text)
    return texts


def same_files(a: Buckets, b: Buckets) -> bool:
    return [f.read_bytes() for f in a.files] == [f.read_bytes() for f in b.files]


def test_jsonl_txt_and_directory(tmp_path):
    texts = write_corpus(tmp_path, files=5)
    rng = np.random.default_rng(1)
    records = [{"text": words(rng, int(n)), "id": i} for i, n in enumerate(rng.integers(1, 300, size=8))]
    with open(tmp_path / "a.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records[:4])
        f.write("\n")  # blank lines are skipped
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records[4:])
    (tmp_path / "lines.txt").write_text("first line document\n\nsecond line document\n")
    inputs = [tmp_path / "docs", tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"]
    b = mb.make_buckets(inputs, tmp_path / "out", min_log2=3, max_log2=6, progress=False)
    documents = texts + [r["text"] for r in records]
    stats = b.manifest["stats"]
    assert stats["documents"] == len(documents) == 13
    assert stats["tokens"] == sum(len(t.encode()) + 1 for t in documents)
    assert stats["kept_tokens"] + stats["dropped_tokens"] == stats["tokens"]
    assert sum(r * (n + 1) for r, n in zip(b.rows_per_bucket, b.lengths)) == stats["kept_tokens"]
    assert b.account.dropped == stats["dropped_tokens"] and b.account.targets == sum(b.tokens_per_bucket)
    assert [s["documents"] for s in b.manifest["sources"]] == [1] * 5 + [4, 4]
    assert b.tokenizer == {"name": "byte", "path": None, "vocab_size": 257, "eot_id": 256}
    streams = [t.encode() + b"\x00EOT" for t in documents]
    for row in b.array(0).tolist() + b.array(3).tolist():  # every row is a contiguous piece of one document
        piece = b"".join(bytes([t]) if t < 256 else b"\x00EOT" for t in row)
        assert any(piece in s for s in streams)
    lines = mb.make_buckets([tmp_path / "lines.txt"], tmp_path / "lines", min_log2=2, max_log2=4, txt_mode="line")
    assert lines.manifest["stats"]["documents"] == 2


def test_rows_are_the_decomposition_of_each_document(tmp_path):
    texts = write_corpus(tmp_path, files=4, seed=3)
    b = mb.make_buckets([tmp_path / "docs"], tmp_path / "out", min_log2=2, max_log2=5, seed=7, progress=False)
    files = mb.list_input_files([tmp_path / "docs"])
    expected = {k: [] for k in range(2, 6)}
    for index, path in enumerate(files):  # the cuts of file i use the generator (seed, i)
        ids = mb.ByteLevelTokenizer().encode(path.read_text(encoding="utf-8"))
        rows, _ = decompose(ids, 2, 5, rng=np.random.default_rng([7, index]))
        for k, block in rows.items():
            expected[k].extend(block.tolist())
    assert len(texts) == len(files)
    for i, k in enumerate(range(2, 6)):
        assert b.array(i).tolist() == expected[k]


def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    write_corpus(tmp_path, files=8)
    kw = dict(min_log2=2, max_log2=5, progress=False, buffer_tokens=16, checkpoint_seconds=0)
    reference = mb.make_buckets([tmp_path / "docs"], tmp_path / "ref", **kw)

    original = mb._decompose_documents
    calls = {"n": 0}

    def interrupted(texts, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th file: write some of its rows to disk, then die
            original([next(iter(texts))], *args, **kwargs)
            kwargs_writer = args[1]
            kwargs_writer._write()
            raise KeyboardInterrupt
        return original(texts, *args, **kwargs)

    monkeypatch.setattr(mb, "_decompose_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mb.make_buckets([tmp_path / "docs"], tmp_path / "out", **kw)
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["files_done"] == 3 and not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(Exception, match="unfinished"):
        Buckets(tmp_path / "out")
    monkeypatch.setattr(mb, "_decompose_documents", original)
    resumed = mb.make_buckets([tmp_path / "docs"], tmp_path / "out", **kw)
    assert resumed.rows_per_bucket == reference.rows_per_bucket
    for b in range(len(reference)):
        assert (tmp_path / "out" / reference.files[b].name).read_bytes() == reference.files[b].read_bytes()
    assert resumed.manifest["stats"] == reference.manifest["stats"]
    assert not (tmp_path / "out" / "progress.json").exists()


def test_resume_after_sigkill(tmp_path):
    # a real kill of a separate process, then the same command again
    rng = np.random.default_rng(0)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(80):
        (folder / f"{i:04d}.txt").write_text(words(rng, 3000))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bramley.dataset_decomposition.make_buckets", str(folder), "--out", str(out)]
    cmd += ["--min-log2", "3", "--max-log2", "7", "--no-progress", "--checkpoint-seconds", "0"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        progress = out / "progress.json"
        if progress.exists() and json.loads(progress.read_text() or "{}").get("files_done", 0) >= 2:
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"make-buckets ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (out / "manifest.json").exists()
    resumed = mb.make_buckets([folder], out, min_log2=3, max_log2=7, progress=False)
    reference = mb.make_buckets([folder], tmp_path / "ref", min_log2=3, max_log2=7, progress=False)
    assert same_files(resumed, reference)
    assert resumed.manifest["stats"] == reference.manifest["stats"]


def test_undecodable_files_are_skipped_and_reported(tmp_path):
    write_corpus(tmp_path, files=2)
    clean = mb.make_buckets([tmp_path / "docs"], tmp_path / "clean", min_log2=2, max_log2=5, progress=False)
    (tmp_path / "docs" / "bad.txt").write_bytes(b"ok \xff\xfe broken")
    with open(tmp_path / "docs" / "z.jsonl", "wb") as f:  # a good line, then an undecodable one
        f.write(json.dumps({"text": "good " * 50}).encode() + b"\n" + b'{"text": "\xff"}\n')
    files = [tmp_path / "docs", tmp_path / "docs" / "z.jsonl"]
    with pytest.warns(UserWarning, match="skipped 2 file"):
        b = mb.make_buckets(files, tmp_path / "out", min_log2=2, max_log2=5, progress=False)
    assert [s["path"].split("/")[-1] for s in b.manifest["skipped_files"]] == ["bad.txt", "z.jsonl"]
    # nothing of the half-read jsonl stayed (row counts differ: file indices, hence the cuts' seeds, moved)
    assert b.manifest["stats"]["documents"] == clean.manifest["stats"]["documents"] == 2
    assert b.account.stored == b.manifest["stats"]["kept_tokens"]
    assert b.manifest["stats"]["tokens"] == clean.manifest["stats"]["tokens"]


def test_input_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n{"body": "y"}\n')
    with pytest.raises(ValueError, match=r"a\.jsonl:2: no 'text' field"):
        mb.make_buckets([tmp_path / "a.jsonl"], tmp_path / "o1", progress=False)
    (tmp_path / "b.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match="not a string"):
        mb.make_buckets([tmp_path / "b.jsonl"], tmp_path / "o2", progress=False)
    (tmp_path / "c.jsonl").write_text("{oops\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        mb.make_buckets([tmp_path / "c.jsonl"], tmp_path / "o3", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mb.make_buckets([tmp_path / "missing.txt"], tmp_path / "o4", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no files matching"):
        mb.make_buckets([tmp_path / "empty"], tmp_path / "o5", progress=False)


def test_finished_and_mismatched_folders(tmp_path):
    write_corpus(tmp_path, files=3)
    docs = [tmp_path / "docs"]
    mb.make_buckets(docs, tmp_path / "out", min_log2=2, max_log2=5, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        mb.make_buckets(docs, tmp_path / "out", min_log2=2, max_log2=5, progress=False)
    again = mb.make_buckets(docs, tmp_path / "out", min_log2=2, max_log2=4, overwrite=True, progress=False)
    assert again.lengths == [4, 8, 16]
    # an unfinished run with other settings is not resumed
    (tmp_path / "out" / "manifest.json").unlink()
    state = {"config": {"seed": 1}, "file_ids": [], "files_done": 0, "rows": {}, "sources": [], "skipped": []}
    (tmp_path / "out" / "progress.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="different settings"):
        mb.make_buckets(docs, tmp_path / "out", min_log2=2, max_log2=4, progress=False)
    # a corrupt or foreign progress file is named, not parsed into a confusing error
    for text, message in (('{"config": ', "progress.json is not valid JSON"), ("{}", "not a make-buckets progress")):
        (tmp_path / "out" / "progress.json").write_text(text)
        with pytest.raises(BucketFormatError, match=message):
            mb.make_buckets(docs, tmp_path / "out", min_log2=2, max_log2=4, progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        mb.make_buckets(docs, tmp_path / "file", progress=False)


def test_cli(tmp_path, capsys):
    write_corpus(tmp_path, files=3)
    parser = mb.add_make_buckets_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        [str(tmp_path / "docs"), "--out", str(tmp_path / "o"), "--min-log2", "2", "--max-log2", "4"]
    )
    assert mb.run_make_buckets(args) == 0
    out = capsys.readouterr().out
    assert "| bucket |" in out and "3 documents" in out and "dropped" in out
    args = parser.parse_args([str(tmp_path / "nothing"), "--out", str(tmp_path / "p")])
    with pytest.raises(FileNotFoundError, match="does not exist"):  # the CLI shows it as one line
        mb.run_make_buckets(args)
    assert mb.main([str(tmp_path / "docs"), "--out", str(tmp_path / "q"), "--no-progress", "--no-randomize"]) == 0
    assert mb.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2  # python -m: one line, exit 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("make-buckets: error: ")


def test_write_buckets_from_documents(tmp_path):
    docs = ["short", "x" * 300, "é" * 40]
    b = mb.write_buckets(docs, tmp_path / "w", min_log2=2, max_log2=6, seed=1)
    assert b.manifest["stats"]["documents"] == 3
    assert b.manifest["stats"]["tokens"] == sum(len(d.encode()) + 1 for d in docs)
    with pytest.raises(FileExistsError):
        mb.write_buckets(docs, tmp_path / "w")
    with pytest.raises(DataError, match="are all too short"):  # no row at all: no empty bucket folder either
        mb.write_buckets(["ab", "c"], tmp_path / "short", min_log2=3, max_log2=4, source="two tiny documents")
    assert not list((tmp_path / "short").glob("*"))
    with pytest.raises(DataError, match="empty hold no documents"):
        mb.write_buckets([], tmp_path / "none", min_log2=3, max_log2=4, source="empty")


def test_hf_tokenizer_without_libraries(tmp_path, monkeypatch):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match="pip install tokenizers"):
        mb.load_tokenizer(str(tmp_path / "tok"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mb.load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="byte tokenizer"):
        mb.load_tokenizer("byte", eot_token="</s>")


def test_hf_tokenizer_through_tokenizers(tmp_path, monkeypatch):
    """The wiring to the `tokenizers` API, with a stand-in module (the real library is not a dependency)."""

    class FakeTokenizer:
        @classmethod
        def from_file(cls, path):
            assert path.endswith("tokenizer.json")
            return cls()

        def encode(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return types.SimpleNamespace(ids=[ord(c) for c in text])

        def get_vocab_size(self, with_added_tokens=True):
            return 70001

        def token_to_id(self, token):
            return {"<|endoftext|>": 70000}.get(token)

    monkeypatch.setitem(sys.modules, "tokenizers", types.SimpleNamespace(Tokenizer=FakeTokenizer))
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    (tmp_path / "d.txt").write_text("hello world " * 2)  # 24 + 1 tokens: 2^4 + 1, 2^2 + 1, 3 dropped
    b = mb.make_buckets([tmp_path / "d.txt"], tmp_path / "o", tokenizer=str(tmp_path / "tok"), min_log2=2,
                        max_log2=5, progress=False)  # fmt: skip
    assert b.dtype.name == "uint32"
    assert b.tokenizer["eot_id"] == 70000 and b.tokenizer["eot_token"] == "<|endoftext|>"
    assert b.rows_per_bucket == [1, 0, 1, 0]
    assert b.array(2)[0].tolist() == [ord(c) for c in "hello world hello"]
    with pytest.raises(ValueError, match="--eot-token"):
        mb.load_tokenizer(str(tmp_path / "tok"), eot_token="</s>")


def test_hf_tokenizer_through_transformers(tmp_path, monkeypatch):
    """The fallback to `transformers.AutoTokenizer` (local files only), with a stand-in module."""
    loaded = {}

    class FakeAuto:
        eos_token, unk_token_id = "</s>", 0

        @classmethod
        def from_pretrained(cls, path, local_files_only=False):
            loaded.update(path=path, local_files_only=local_files_only)
            return cls()

        def __call__(self, text, add_special_tokens=True):
            assert add_special_tokens is False
            return {"input_ids": [3 + (ord(c) % 50) for c in text]}

        def __len__(self):
            return 60

        def convert_tokens_to_ids(self, token):
            return {"</s>": 2}.get(token, self.unk_token_id)

    monkeypatch.setitem(sys.modules, "tokenizers", None)
    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(AutoTokenizer=FakeAuto))
    (tmp_path / "tok").mkdir()
    tok = mb.load_tokenizer(str(tmp_path / "tok"))
    assert loaded == {"path": str(tmp_path / "tok"), "local_files_only": True}
    assert tok.eot_id == 2 and tok.vocab_size == 60
    assert tok.encode("ab").tolist() == [3 + 97 % 50, 3 + 98 % 50, 2]
    with pytest.raises(ValueError, match="no end-of-text token"):
        mb.load_tokenizer(str(tmp_path / "tok"), eot_token="<|endoftext|>")  # unknown -> unk id, refused
