"""UDON's model: shapes, normalisation, normface classifier, timm backbones equal to timm, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bramley.core.registry import create_model
from bramley.udon.model import CosineClassifier, JointEmbeddingModel, UdonModel, build_backbone


def test_outputs_shapes_and_norms():
    model = UdonModel([3, 5], backbone_kwargs={"widths": [8, 16]}).eval()
    x = torch.randn(4, 3, 16, 16)
    one = model(x, domain=1)
    assert one["embedding"].shape == (4, 64) and one["teacher_embedding"].shape == (4, 256)
    assert one["teacher_logits"].shape == (4, 5) and one["student_logits"].shape == (4, 5)
    for key in ("embedding", "teacher_embedding"):
        assert torch.allclose(one[key].norm(dim=1), torch.ones(4), atol=1e-5)
    every = model(x)
    assert every["teacher_embedding_1"].shape == (4, 256) and every["teacher_logits_0"].shape == (4, 3)
    assert torch.allclose(every["teacher_logits_1"], one["teacher_logits"], atol=1e-6)
    assert torch.allclose(every["embedding"], model.embed(x)) and torch.allclose(every["embedding"], one["embedding"])


def test_cosine_classifier_is_a_cosine():
    head = CosineClassifier(8, 5)
    x = F.normalize(torch.randn(3, 8), dim=1)
    want = F.cosine_similarity(x[:, None, :], head.weight[None, :, :], dim=-1)
    assert torch.allclose(head(x), want, atol=1e-6)


def test_timm_backbone_equals_timm():
    import timm

    model = UdonModel([3, 4], backbone="timm:resnet10t").eval()
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    reference.load_state_dict(model.backbone.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.features(x), F.normalize(reference(x), dim=-1), atol=1e-6)


def test_bramley_backbone_by_name():
    backbone = build_backbone("mobileone_s0")
    assert backbone.num_features > 0 and backbone(torch.randn(2, 3, 32, 32)).shape == (2, backbone.num_features)


def test_joint_model_offsets_and_registry():
    model = create_model("udon_joint", num_classes=[3, 4, 2])
    assert isinstance(model, JointEmbeddingModel) and model.offsets.tolist() == [0, 3, 7]
    assert model(torch.randn(2, 3, 16, 16))["logits"].shape == (2, 9)


def test_bad_input():
    with pytest.raises(ValueError, match="domain 1 has 1 classes"):
        UdonModel([3, 1])
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        UdonModel([3, 3], backbone="nope")
    with pytest.raises(ValueError, match="domain 2 out of range"):
        UdonModel([3, 3], backbone_kwargs={"widths": [8]})(torch.randn(2, 3, 8, 8), domain=2)
