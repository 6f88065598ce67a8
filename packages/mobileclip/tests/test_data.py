"""The DataCompDR reinforced format: written and read back streaming, bad shards named by sample key."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest
import torch

from bramley.core.errors import DataError
from bramley.mobileclip.data import ReinforcedSample, read_shards, write_shards


def _sample(i: int, n_aug: int = 3, n_syn: int = 2, dim: int = 6, image: bool = True) -> ReinforcedSample:
    g = torch.Generator().manual_seed(i)
    return ReinforcedSample(
        key=f"{i:06d}",
        url=f"https://example.com/{i}.jpg",
        caption=f"caption number {i} ünïcode",
        param_aug=[{"src": [8, 10], "crop": [0, 0, 8, 10], "flip": a % 2, "ops": []} for a in range(n_aug)],
        syn_text=[f"synthetic {i}.{s}" for s in range(n_syn)],
        image_emb=torch.randn(n_aug, dim, generator=g),
        text_emb=torch.randn(1 + n_syn, dim, generator=g),
        image=torch.randint(0, 256, (3, 8, 10), dtype=torch.uint8, generator=g) if image else None,
    )


@pytest.mark.parametrize("embeddings", ["npz", "pth.gz"])
def test_round_trip_streaming_across_shards(tmp_path, embeddings):
    samples = [_sample(i) for i in range(5)]
    paths = write_shards(iter(samples), tmp_path / "shards" / "%05d.tar", maxcount=2, embeddings=embeddings)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(paths[0]) as tar:  # the published member names
        assert sorted(tar.getnames())[:6] == sorted(
            f"000000.{m}" for m in ("url.txt", "txt", "paug.json", "syn.json", embeddings, "png")
        )
    back = list(read_shards([str(p) for p in paths], embed_dim=6, require_image=True))
    assert [s.key for s in back] == [s.key for s in samples]
    for a, b in zip(back, samples, strict=True):
        assert (a.url, a.caption, a.param_aug, a.syn_text) == (b.url, b.caption, b.param_aug, b.syn_text)
        assert torch.equal(a.image_emb, b.image_emb) and torch.equal(a.text_emb, b.text_emb)
        assert torch.equal(a.image, b.image)  # lossless
    assert len(list(read_shards(str(tmp_path / "shards" / "{00000..00002}.tar")))) == 5


def _write_raw(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _raw(key: str = "abc", image_emb=(2, 4), text_emb=(2, 4)) -> dict[str, bytes]:
    buffer = io.BytesIO()
    np.savez(buffer, image_emb=np.zeros(image_emb, np.float32), text_emb=np.zeros(text_emb, np.float32))
    return {
        f"{key}.url.txt": b"u",
        f"{key}.txt": b"t",
        f"{key}.paug.json": json.dumps({"param_aug": [{}, {}]}).encode(),
        f"{key}.syn.json": json.dumps({"syn_text": ["s"]}).encode(),
        f"{key}.npz": buffer.getvalue(),
    }


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.pop("abc.syn.json"), "sample 'abc' .*lacks member\\(s\\) syn.json"),
        (lambda m: m.pop("abc.npz"), "lacks member\\(s\\) npz"),
        (lambda m: m.update(_raw(image_emb=(3, 4))), "sample 'abc': 3 image embeddings for 2 augmentations"),
        (lambda m: m.update(_raw(text_emb=(2, 5))), "sample 'abc': image embeddings are 4-d, text embeddings 5-d"),
        (lambda m: m.update({"abc.paug.json": b"[1, 2]"}), "sample 'abc': paug.json must be a JSON object"),
        (lambda m: m.update({"abc.npz": b"not a zip"}), "sample 'abc': unreadable npz"),
    ],
)
def test_bad_shards_name_the_sample(tmp_path, mutate, match):
    members = _raw()
    mutate(members)
    _write_raw(tmp_path / "bad.tar", members)
    with pytest.raises(DataError, match=match):
        list(read_shards(str(tmp_path / "bad.tar")))


def test_wrong_teacher_width_and_missing_image(tmp_path):
    _write_raw(tmp_path / "s.tar", _raw())
    with pytest.raises(DataError, match="sample 'abc': embeddings are 4-d, expected 8"):
        list(read_shards(str(tmp_path / "s.tar"), embed_dim=8))
    with pytest.raises(DataError, match="lacks member\\(s\\) png"):
        list(read_shards(str(tmp_path / "s.tar"), require_image=True))
    with pytest.raises(DataError, match="does not exist"):
        list(read_shards(str(tmp_path / "missing.tar")))


def test_pickled_embeddings_are_refused(tmp_path):
    """A pth.gz member holding arbitrary pickled objects is not executed (torch.load weights_only)."""

    class Boom:
        def __reduce__(self):
            return (print, ("executed",))

    members = _raw()
    del members["abc.npz"]
    buffer = io.BytesIO()
    torch.save({"image_emb": Boom()}, buffer)
    members["abc.pth.gz"] = gzip.compress(buffer.getvalue())
    _write_raw(tmp_path / "p.tar", members)
    with pytest.raises(DataError, match=r"unreadable pth\.gz"):
        list(read_shards(str(tmp_path / "p.tar")))
