import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from bramley.core.data import ByteTokenizer, TextDocuments, python_stdlib_documents


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "docs"
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_text("alpha document", encoding="utf-8")
    (root / "b" / "c.txt").write_text("gamma — unicode ✓", encoding="utf-8")
    (root / "b" / "bad.txt").write_bytes(b"\xff\xfe not utf-8 \x80")
    (root / "empty.txt").write_text("")
    (root / "long.txt").write_text("x" * 500)
    (root / "skip.md").write_text("not matched")
    return root


def test_directory_ordering_and_skips_are_reported(corpus):
    docs = TextDocuments(corpus, max_chars=100)
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) not decodable as utf-8: .*bad.txt"):
        items = list(docs.items())
    assert [p.relative_to(corpus).as_posix() for p, _ in items] == ["a.txt", "b/c.txt"]
    assert [t for _, t in items] == ["alpha document", "gamma — unicode ✓"]
    s = docs.stats
    assert (s.files, s.documents, s.too_short, s.too_long, len(s.undecodable)) == (6 - 1, 2, 1, 1, 1)
    assert s.undecodable[0][0].name == "bad.txt"


def test_explicit_paths_keep_order_and_other_encodings(corpus, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    docs = TextDocuments([corpus / "b" / "c.txt", corpus / "a.txt"])
    assert docs.documents() == ["gamma — unicode ✓", "alpha document"]
    assert TextDocuments(latin, encoding="latin-1").documents() == ["café"]
    assert TextDocuments(corpus, pattern="*.md").documents() == ["not matched"]
    assert TextDocuments(corpus, exclude_dirs=["b"], min_chars=0).documents() == ["alpha document", "", "x" * 500]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextDocuments(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no files matching"):
        TextDocuments(tmp_path)
    with pytest.raises(ValueError, match="min_chars"):
        TextDocuments(tmp_path, min_chars=10, max_chars=5)
    with pytest.raises(LookupError):
        TextDocuments(tmp_path, encoding="no-such-codec")


def test_python_stdlib_documents_found():
    docs = python_stdlib_documents()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert len(docs.paths) > 300
    assert stdlib / "os.py" in docs.paths and stdlib / "json" / "__init__.py" in docs.paths
    assert not any("site-packages" in p.parts or "test" in p.parts for p in docs.paths)
    first = next(iter(docs))
    assert isinstance(first, str) and len(first) > 0
    assert sys.version_info >= (3, 10)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids.dtype == torch.int64 and ids[-1] == 256 and len(ids) == len("héllo".encode()) + 1
    assert tok.decode(ids) == "héllo"
    stream = tok.encode_documents(["a", "", "bc"])
    assert stream.tolist() == [97, 256, 256, 98, 99, 256]
    assert tok.decode_documents(stream) == ["a", "", "bc"]
    assert tok.decode_documents([97, 256, 98]) == ["a", "b"]
    assert tok.decode([]) == "" and tok.encode("", add_eot=False).numel() == 0
    with pytest.raises(ValueError, match="decode_documents"):
        tok.decode(stream)
    with pytest.raises(ValueError, match=r"\[0, 256\]"):
        tok.decode([300])
