import re

import pytest
import torch
import torch.nn.functional as F

from bramley.core.checkpoint import from_pretrained, save_pretrained
from bramley.core.convert import build_converted
from bramley.core.errors import CheckpointError, ConfigError, DataError
from bramley.core.registry import create_model
from bramley.fct.augment import BatchAugment
from bramley.fct.models import FCTTransformation, convert_official, nt_xent
from bramley.fct.train import BCTLoss, TransformationTask, transformation_loss


def test_transformation_architecture_matches_official_sizes():
    h = FCTTransformation(old_dim=128, new_dim=128, side_info_dim=128, inner_dim=2048)
    shapes = {k: tuple(v.shape) for k, v in h.state_dict().items() if k.endswith("linear.weight")}
    assert shapes == {
        "old_proj.0.linear.weight": (256, 128),
        "old_proj.1.linear.weight": (256, 256),
        "side_proj.0.linear.weight": (256, 128),
        "side_proj.1.linear.weight": (256, 256),
        "mixer.0.linear.weight": (2048, 512),
        "mixer.1.linear.weight": (2048, 2048),
        "mixer.2.linear.weight": (128, 2048),
    }
    assert h.mixer[2].linear.bias is not None and h.mixer[0].linear.bias is None  # bias only without BN
    assert h(torch.randn(4, 128), torch.randn(4, 128)).shape == (4, 128)
    plain = FCTTransformation(16, 24, 0, 32)
    assert plain.mixer[0].linear.in_features == 48 and plain(torch.randn(3, 16)).shape == (3, 24)


def test_transformation_bad_input():
    h = FCTTransformation(8, 6, 4, 16)
    with pytest.raises(ValueError, match=r"old embeddings must have shape \(N, 8\)"):
        h(torch.randn(2, 7), torch.randn(2, 4))
    with pytest.raises(ValueError, match="needs side information"):
        h(torch.randn(2, 8))
    with pytest.raises(ValueError, match=r"side information must have shape \(2, 4\)"):
        h(torch.randn(2, 8), torch.randn(3, 4))
    with pytest.raises(ValueError, match="built without side information"):
        FCTTransformation(8, 6, 0, 16)(torch.randn(2, 8), torch.randn(2, 4))


def _official_state_dict(h: FCTTransformation) -> dict:
    """Our weights under the official MLP_BN_SIDE_PROJECTION key names and 1x1-conv shapes (DataParallel prefix)."""
    sd = {}
    for k, v in h.state_dict().items():
        k = k.replace("old_proj.", "p1.").replace("side_proj.", "p2.").replace("linear.", "conv.")
        k = k.replace("norm.", "normalizer.")
        sd["module." + k] = v[:, :, None, None] if k.endswith("conv.weight") else v
    return sd


def test_convert_official_roundtrip():
    h = FCTTransformation(8, 6, 4, 16)
    h.train()
    h(torch.randn(10, 8), torch.randn(10, 4))  # move BN statistics
    h.eval()
    official = _official_state_dict(h)
    assert "module.p1.0.conv.weight" in official and official["module.p1.0.conv.weight"].ndim == 4
    converted = convert_official(official)
    assert converted.model_name == "fct_transformation"
    assert converted.model_kwargs == {"old_dim": 8, "new_dim": 6, "side_info_dim": 4, "inner_dim": 16}
    model = build_converted(converted)
    x, s = torch.randn(5, 8), torch.randn(5, 4)
    torch.testing.assert_close(model(x, s), h(x, s))
    assert convert_official(official, "fct_transformation").model_kwargs == converted.model_kwargs


def test_convert_official_refuses_foreign_input():
    official = _official_state_dict(FCTTransformation(8, 6, 4, 16))
    with pytest.raises(CheckpointError, match=re.escape("key 'p1.0.conv.weight' is missing")):
        convert_official({"encoder.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=re.escape("key 'mixer.2.conv.weight' is missing")):
        convert_official({k: v for k, v in official.items() if not k.startswith("module.mixer.2.")})
    with pytest.raises(CheckpointError, match=re.escape("'encoder.weight' is not a key of the official")):
        convert_official({**official, "module.encoder.weight": torch.zeros(1)})
    bad = {**official, "module.p1.0.conv.weight": torch.zeros(16, 8, 3, 3)}
    with pytest.raises(CheckpointError, match=r"expected a 1x1 conv weight, got shape \(16, 8, 3, 3\)"):
        convert_official(bad)
    with pytest.raises(CheckpointError, match="missing keys"):  # core's strict check names our keys
        build_converted(convert_official({k: v for k, v in official.items() if "running_var" not in k}))
    with pytest.raises(ConfigError, match="not 'fct_resnet50'"):
        convert_official(official, "fct_resnet50")


@pytest.mark.parametrize(
    "name,kwargs,x",
    [
        ("fct_convnet", {"widths": [8, 16], "embedding_dim": 12, "num_classes": 5}, torch.randn(2, 1, 8, 8)),
        ("fct_side_info", {"backbone_kwargs": {"widths": [8], "embedding_dim": 6}}, torch.randn(2, 1, 8, 8)),
        ("fct_side_info", {"objective": "autoencoder", "image_shape": [1, 8, 8]}, torch.randn(2, 1, 8, 8)),
    ],
)
def test_save_pretrained_roundtrip(tmp_path, name, kwargs, x):
    model = create_model(name, **kwargs).eval()
    save_pretrained(model, tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m").eval()
    torch.testing.assert_close(loaded.embed(x), model.embed(x))


def test_transformation_save_pretrained_roundtrip(tmp_path):
    h = create_model("fct_transformation", old_dim=8, new_dim=6, side_info_dim=4, inner_dim=16).eval()
    save_pretrained(h, tmp_path / "h")
    x, s = torch.randn(3, 8), torch.randn(3, 4)
    torch.testing.assert_close(from_pretrained(tmp_path / "h").eval()(x, s), h(x, s))


def test_backbone_api_and_errors():
    net = create_model("fct_convnet", widths=[8, 16], embedding_dim=12, num_classes=5)
    x = torch.randn(3, 1, 8, 8)
    assert net(x).shape == (3, 5) and net.embed(x).shape == (3, 12)
    assert (net.eval().embed(x) >= 0).all()  # last_nonlin: ReLU after the embedding's BN
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, H, W\)"):
        net(torch.randn(3, 3, 8, 8))
    enc = create_model("fct_convnet", num_classes=0)
    with pytest.raises(RuntimeError, match="no classifier"):
        enc(x)
    with pytest.raises(ValueError, match="unknown side-information objective"):
        create_model("fct_side_info", objective="byol")
    with pytest.raises(ValueError, match="needs image_shape"):
        create_model("fct_side_info", objective="autoencoder")


def test_resnet_backbone_builds():
    net = create_model("fct_resnet18", embedding_dim=16, num_classes=3).eval()
    assert net.embed(torch.randn(1, 3, 32, 32)).shape == (1, 16)


def test_bct_loss_is_classification_plus_influence_on_old_classes():
    torch.manual_seed(0)
    old = create_model("fct_convnet", widths=[8], embedding_dim=6, num_classes=3)
    new = create_model("fct_convnet", widths=[8, 8], embedding_dim=6, num_classes=5)
    x, y = torch.randn(8, 1, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0, 4, 2])
    loss, _ = BCTLoss(old.head.classifier.weight, weight=0.5, label_smoothing=0.0)(new, (x, y))
    emb = new.embed(x)
    keep = y < 3
    expected = F.cross_entropy(new.classify(emb), y) + 0.5 * F.cross_entropy(
        emb[keep] @ old.head.classifier.weight.T, y[keep]
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert old.head.classifier.weight.grad is None  # the old classifier stays frozen
    mismatched = create_model("fct_convnet", widths=[8], embedding_dim=7, num_classes=5)
    with pytest.raises(ValueError, match="BCT needs equal embedding dims"):
        BCTLoss(old.head.classifier.weight)(mismatched, (x, y))


def test_transformation_task_freezes_other_models():
    old = create_model("fct_convnet", widths=[8], embedding_dim=6, num_classes=3)
    new = create_model("fct_convnet", widths=[8], embedding_dim=5, num_classes=5)
    h = FCTTransformation(6, 5, 0, 16)
    task = TransformationTask(h, old, new).train()
    assert not old.training and not new.training and h.training
    stats = old.head.embedding.norm.running_mean.clone()
    transformation_loss(task, (torch.randn(4, 1, 8, 8), None)).backward()
    assert torch.equal(stats, old.head.embedding.norm.running_mean)
    assert all(p.grad is None for p in [*old.parameters(), *new.parameters()])
    assert all(p.grad is not None for p in h.parameters())
    task.bn_frozen = True
    task.train()
    assert not h.training
    with pytest.raises(ValueError, match="side_info_dim=0"):
        TransformationTask(h, old, new, side_model=old)


def test_nt_xent_prefers_matching_views():
    z = torch.randn(16, 8)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z)) < nt_xent(z, torch.randn(16, 8))


def test_batch_augment_shapes_and_randomness():
    x = torch.randn(6, 3, 16, 16)
    g = torch.Generator().manual_seed(0)
    a, b = BatchAugment(hflip=0.5)(x, g), BatchAugment(hflip=0.5)(x, g)
    assert a.shape == x.shape and not torch.allclose(a, b)
    identity = BatchAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0, contrast=0, noise=0)(x)
    torch.testing.assert_close(identity, x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="batch of images"):
        BatchAugment()(torch.randn(3, 16, 16))


def test_bct_synthesized_classifier_covers_every_class_with_normalised_means():
    from torch.utils.data import TensorDataset

    from bramley.fct.train import embed_dataset, synthesized_class_weights

    old = create_model("fct_convnet", widths=[8], embedding_dim=6, num_classes=2).eval()
    x, y = torch.randn(12, 1, 8, 8), torch.tensor([0, 1, 2, 3] * 3)
    w = synthesized_class_weights(old, TensorDataset(x, y))
    emb, _ = embed_dataset(old, TensorDataset(x, y))
    unit = F.normalize(emb, dim=1)
    torch.testing.assert_close(w, torch.stack([unit[y == c].mean(0) for c in range(4)]))  # old classes too
    new = create_model("fct_convnet", widths=[8], embedding_dim=6, num_classes=4)
    _, extras = BCTLoss(w, 1.0, 0.0)(new, (x, y))
    torch.testing.assert_close(extras["influence"], F.cross_entropy(new.embed(x) @ w.T, y).item())
    with pytest.raises(DataError, match="class 1 has no training sample"):
        synthesized_class_weights(old, TensorDataset(x[y != 1], y[y != 1]))


def test_bct_with_the_trained_old_classifier_skips_unknown_classes():
    old = create_model("fct_convnet", widths=[8], embedding_dim=6, num_classes=2).eval()
    new = create_model("fct_convnet", widths=[8], embedding_dim=6, num_classes=4)
    x, y = torch.randn(12, 1, 8, 8), torch.tensor([0, 1, 2, 3] * 3)
    _, extras = BCTLoss(old.head.classifier.weight, 1.0, 0.0)(new, (x, y))
    known = y < 2
    expected = F.cross_entropy(new.embed(x)[known] @ old.head.classifier.weight.T, y[known]).item()
    assert extras["influence"] == pytest.approx(expected, rel=1e-5)
