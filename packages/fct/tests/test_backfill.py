import pytest
import torch
from safetensors.torch import load_file, save_file

from bramley.fct.backfill import BackfillError, load_gallery, save_gallery, transform_gallery
from bramley.fct.models import FCTTransformation


@pytest.fixture
def transformation():
    t = FCTTransformation(old_dim=6, new_dim=5, side_info_dim=3, inner_dim=16)
    # non-trivial BN statistics so eval mode matters
    t.train()
    with torch.no_grad():
        for _ in range(3):
            t(torch.randn(32, 6), torch.randn(32, 3))
    return t.eval()


@pytest.fixture
def gallery(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "gallery.safetensors"
    save_gallery(
        path,
        embeddings=torch.randn(103, 6, generator=g),
        side_info=torch.randn(103, 3, generator=g),
        labels=torch.arange(103) % 7,
    )
    return path


def test_backfill_matches_direct_transform_and_carries_labels(transformation, gallery, tmp_path):
    out = tmp_path / "new.safetensors"
    res = transform_gallery(transformation, gallery, out, batch_size=16, progress=False)
    assert res.complete and res.num_items == 103 and res.batches_total == 7
    data = load_gallery(out)
    src = load_file(str(gallery))
    with torch.no_grad():
        expected = transformation(src["embeddings"], src["side_info"])
    torch.testing.assert_close(data["embeddings"], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(data["labels"], src["labels"])
    assert torch.equal(data["side_info"], src["side_info"])  # kept for the next update
    assert not (tmp_path / "new.safetensors.parts").exists()


def test_interrupted_backfill_resumes_byte_identical(transformation, gallery, tmp_path):
    ref = tmp_path / "ref.safetensors"
    transform_gallery(transformation, gallery, ref, batch_size=10, progress=False)
    out = tmp_path / "out.safetensors"
    first = transform_gallery(transformation, gallery, out, batch_size=10, max_batches=4, progress=False)
    assert not first.complete and first.batches_done == 4 and not out.exists()
    second = transform_gallery(transformation, gallery, out, batch_size=10, max_batches=3, progress=False)
    assert second.batches_done == 7
    last = transform_gallery(transformation, gallery, out, batch_size=10, progress=True)
    assert last.complete
    assert out.read_bytes() == ref.read_bytes()


def test_crash_mid_batch_then_resume(transformation, gallery, tmp_path, monkeypatch):
    ref = tmp_path / "ref.safetensors"
    transform_gallery(transformation, gallery, ref, batch_size=20, progress=False)
    out = tmp_path / "out.safetensors"
    calls = {"n": 0}
    forward = FCTTransformation.forward

    def crashing(self, old, side=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(self, old, side)

    monkeypatch.setattr(FCTTransformation, "forward", crashing)
    with pytest.raises(KeyboardInterrupt):
        transform_gallery(transformation, gallery, out, batch_size=20, progress=False)
    monkeypatch.setattr(FCTTransformation, "forward", forward)
    parts = sorted(p.name for p in (tmp_path / "out.safetensors.parts").iterdir())
    assert parts == ["manifest.json", "part-00000000.safetensors", "part-00000001.safetensors"]
    assert transformation.training is False
    transform_gallery(transformation, gallery, out, batch_size=20, progress=False)
    assert out.read_bytes() == ref.read_bytes()


def test_resume_refuses_changed_inputs(transformation, gallery, tmp_path):
    out = tmp_path / "out.safetensors"
    transform_gallery(transformation, gallery, out, batch_size=10, max_batches=2, progress=False)
    with pytest.raises(BackfillError, match="batch_size"):
        transform_gallery(transformation, gallery, out, batch_size=20, progress=False)
    other = FCTTransformation(6, 5, 3, 16).eval()
    with pytest.raises(BackfillError, match="transformation"):
        transform_gallery(other, gallery, out, batch_size=10, progress=False)
    res = transform_gallery(other, gallery, out, batch_size=20, resume=False, progress=False)
    assert res.complete


def test_separate_side_info_file(transformation, tmp_path):
    old, side = tmp_path / "old.safetensors", tmp_path / "side.safetensors"
    save_gallery(old, embeddings=torch.randn(9, 6))
    save_gallery(side, side_info=torch.randn(9, 3))
    res = transform_gallery(transformation, old, tmp_path / "o.safetensors", side_info_path=side, progress=False)
    assert res.complete and load_gallery(tmp_path / "o.safetensors")["embeddings"].shape == (9, 5)


def test_without_side_info(tmp_path):
    t = FCTTransformation(6, 5, 0, 16).eval()
    old = tmp_path / "old.safetensors"
    save_gallery(old, embeddings=torch.randn(9, 6))
    assert transform_gallery(t, old, tmp_path / "o.safetensors", progress=False).complete
    with pytest.raises(BackfillError, match="uses no side information"):
        transform_gallery(t, old, tmp_path / "p.safetensors", side_info_path=old, progress=False)


def test_clear_errors(transformation, tmp_path):
    p = tmp_path / "g.safetensors"
    out = tmp_path / "o.safetensors"
    with pytest.raises(BackfillError, match="does not exist"):
        transform_gallery(transformation, p, out)
    p.write_bytes(b"not a safetensors file")
    with pytest.raises(BackfillError, match="not a readable safetensors"):
        transform_gallery(transformation, p, out)
    save_gallery(p, embeddings=torch.randn(9, 7), side_info=torch.randn(9, 3))
    with pytest.raises(BackfillError, match="dim 7 but the transformation expects old embeddings of dim 6"):
        transform_gallery(transformation, p, out)
    save_gallery(p, embeddings=torch.randn(9, 6))
    with pytest.raises(BackfillError, match="needs side information"):
        transform_gallery(transformation, p, out)
    save_file({"embeddings": torch.randn(9, 6), "side_info": torch.randn(8, 3)}, str(p))
    with pytest.raises(BackfillError, match="has 8 items but the gallery has 9"):
        transform_gallery(transformation, p, out)
    save_gallery(p, embeddings=torch.randn(9, 6), side_info=torch.randn(9, 4))
    with pytest.raises(BackfillError, match="dim 4 but the transformation expects 3"):
        transform_gallery(transformation, p, out)
    save_gallery(p, vectors=torch.randn(9, 6))
    with pytest.raises(BackfillError, match="no tensor 'embeddings' \\(it holds: vectors\\)"):
        transform_gallery(transformation, p, out)
    save_gallery(p, embeddings=torch.randn(9, 6, 1), side_info=torch.randn(9, 3))
    with pytest.raises(BackfillError, match="must be 2-D"):
        transform_gallery(transformation, p, out)
    save_file({"embeddings": torch.randn(9, 6), "side_info": torch.randn(9, 3), "ids": torch.arange(5)}, str(p))
    with pytest.raises(BackfillError, match=r"'ids'.*must have 9 rows"):
        transform_gallery(transformation, p, out)
    with pytest.raises(BackfillError, match="disagree on the number of items"):
        save_gallery(p, embeddings=torch.randn(9, 6), labels=torch.arange(8))


def test_refuses_writing_over_its_input_and_recovers_from_a_damaged_manifest(transformation, gallery, tmp_path):
    with pytest.raises(BackfillError, match="would replace its input"):
        transform_gallery(transformation, gallery, gallery, progress=False)
    with pytest.raises(BackfillError, match="max_batches must be positive"):
        transform_gallery(transformation, gallery, tmp_path / "o.safetensors", max_batches=0, progress=False)
    out = tmp_path / "o.safetensors"
    transform_gallery(transformation, gallery, out, batch_size=10, max_batches=2, progress=False)
    (tmp_path / "o.safetensors.parts" / "manifest.json").write_text("{cut sho")
    with pytest.raises(BackfillError, match="unfinished backfill of different inputs"):
        transform_gallery(transformation, gallery, out, batch_size=10, progress=False)
    assert transform_gallery(transformation, gallery, out, batch_size=10, resume=False, progress=False).complete
