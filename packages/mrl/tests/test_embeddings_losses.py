"""Embedding utilities and the losses (CLIP-style contrastive MRL included)."""

import pytest
import torch
import torch.nn.functional as F

from bramley.mrl import (
    MatryoshkaContrastiveLoss,
    MatryoshkaLinear,
    MatryoshkaLoss,
    load_embeddings,
    save_embeddings,
    truncate_normalize,
)


def test_truncate_normalize():
    x = torch.randn(4, 16)
    y = truncate_normalize(x, 8)
    torch.testing.assert_close(y, x[:, :8] / x[:, :8].norm(dim=1, keepdim=True))
    torch.testing.assert_close(truncate_normalize(x), F.normalize(x, dim=1))
    assert torch.equal(truncate_normalize(x, 4, normalize=False), x[:, :4])
    with pytest.raises(ValueError, match="cannot truncate 16-dim embeddings to 32"):
        truncate_normalize(x, 32)
    with pytest.raises(ValueError, match="positive int"):
        truncate_normalize(x, 0)


def test_save_load_embeddings_round_trip(tmp_path):
    emb, labels = torch.randn(10, 6, dtype=torch.float16), torch.arange(10) % 3
    path = save_embeddings(tmp_path / "e.safetensors", emb, labels, {"model": "x", "nesting": [2, 6]})
    f = load_embeddings(path)
    assert torch.equal(f.embeddings, emb) and torch.equal(f.labels, labels)
    assert f.metadata == {"num": 10, "dim": 6, "model": "x", "nesting": [2, 6]}
    g = load_embeddings(save_embeddings(tmp_path / "n.safetensors", emb))
    assert g.labels is None


def test_embedding_file_errors(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        save_embeddings(tmp_path / "a.safetensors", torch.randn(3))
    with pytest.raises(ValueError, match="labels must have shape"):
        save_embeddings(tmp_path / "a.safetensors", torch.randn(3, 2), torch.arange(4))
    with pytest.raises(ValueError, match="integers"):
        save_embeddings(tmp_path / "a.safetensors", torch.randn(3, 2), torch.rand(3))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_embeddings(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_embeddings(bad)
    from safetensors.torch import save_file

    save_file({"weights": torch.randn(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="no 'embeddings' tensor"):
        load_embeddings(tmp_path / "other.safetensors")


def clip_loss_reference(a, b, scale):
    logits = scale * F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    target = torch.arange(len(a))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def test_contrastive_loss_is_clip_at_every_size():
    a, b = torch.randn(6, 32, dtype=torch.float64), torch.randn(6, 32, dtype=torch.float64)
    loss = MatryoshkaContrastiveLoss([4, 8, 32], relative_importance=[1.0, 0.5, 2.0], temperature=0.1).double()
    expected = sum(w * clip_loss_reference(a[:, :m], b[:, :m], 10.0) for m, w in zip([4, 8, 32], [1.0, 0.5, 2.0]))
    torch.testing.assert_close(loss(a, b), expected)
    learn = MatryoshkaContrastiveLoss([4, 32], learnable_temperature=True)
    a32 = torch.randn(6, 32, requires_grad=True)
    learn(a32, torch.randn(6, 32)).backward()
    assert learn.log_scale.grad is not None and a32.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="exceed the embedding dim"):
        MatryoshkaContrastiveLoss([8, 64])(torch.randn(2, 32), torch.randn(2, 32))
    with pytest.raises(ValueError, match="equal shape"):
        MatryoshkaContrastiveLoss([8])(torch.randn(2, 32), torch.randn(3, 32))
    with pytest.raises(ValueError, match="2 weights for 3"):
        MatryoshkaContrastiveLoss([4, 8, 16], relative_importance=[1, 1])


def test_loss_trains_a_tiny_head():
    """A short plain loop: the Matryoshka loss decreases every size's error on separable data."""
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 5] > 0).long()
    head = MatryoshkaLinear(16, 4, [2, 8, 16])
    loss_fn = MatryoshkaLoss(label_smoothing=0.1)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    start = loss_fn.per_size(head(x), y).detach()
    for _ in range(100):
        opt.zero_grad()
        loss_fn(head(x), y).backward()
        opt.step()
    end = loss_fn.per_size(head(x), y).detach()
    assert bool((end < start).all())
    acc = [(z.argmax(1) == y).float().mean().item() for z in head(x)]
    assert acc[0] < 0.8 < acc[1]  # 2 features cannot see feature 5; 8 can
