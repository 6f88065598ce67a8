"""MatryoshkaLinear / MatryoshkaModel and the registered MRL models: official semantics, wrappers, checkpoints,
bad input."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.checkpoint import load_model, save_pretrained
from bramley.core.errors import ConfigError
from bramley.core.recipe import build_model
from bramley.core.registry import create_model, list_models
from bramley.mrl import (
    MatryoshkaLinear,
    MatryoshkaLoss,
    MatryoshkaModel,
    apply_blurpool,
    build_backbone,
    check_nesting,
    default_nesting,
)


class OfficialStyleHead(nn.Module):
    """Straightforward re-derivation of the official MRL_Linear_Layer (RAIVNLab/MRL, MRL.py): attributes
    ``nesting_classifier_{i}``; MRL-E keeps only ``nesting_classifier_0`` of width ``nesting[-1]`` whose weight is
    sliced per size and whose bias is added unchanged for every size."""

    def __init__(self, nesting, num_classes, efficient):
        super().__init__()
        self.nesting, self.efficient = nesting, efficient
        if efficient:
            self.nesting_classifier_0 = nn.Linear(nesting[-1], num_classes)
        else:
            for i, m in enumerate(nesting):
                setattr(self, f"nesting_classifier_{i}", nn.Linear(m, num_classes))

    def forward(self, x):
        out = ()
        for i, m in enumerate(self.nesting):
            if self.efficient:
                w, b = self.nesting_classifier_0.weight, self.nesting_classifier_0.bias
                out += (torch.matmul(x[:, :m], w[:, :m].t()) + b,)
            else:
                out += (getattr(self, f"nesting_classifier_{i}")(x[:, :m]),)
        return out


def official_style_loss(logits, target, weights=None, label_smoothing=0.0):
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    loss = 0
    for i, z in enumerate(logits):
        loss = loss + (1.0 if weights is None else weights[i]) * criterion(z, target)
    return loss


def _copy_into_official(ours: MatryoshkaLinear, ref: OfficialStyleHead) -> None:
    with torch.no_grad():
        if ours.efficient:
            ref.nesting_classifier_0.weight.copy_(ours.shared.weight)
            ref.nesting_classifier_0.bias.copy_(ours.shared.bias)
        else:
            for i, head in enumerate(ours.heads):
                getattr(ref, f"nesting_classifier_{i}").weight.copy_(head.weight)
                getattr(ref, f"nesting_classifier_{i}").bias.copy_(head.bias)


@pytest.mark.parametrize("efficient", [False, True])
def test_head_matches_official_semantics(efficient):
    nesting = [2, 4, 8, 16]
    ours = MatryoshkaLinear(16, 7, nesting, efficient=efficient)
    ref = OfficialStyleHead(nesting, 7, efficient)
    _copy_into_official(ours, ref)
    x = torch.randn(5, 16, dtype=torch.float64)
    ours, ref = ours.double(), ref.double()
    out, expected = ours(x), ref(x)
    assert isinstance(out, tuple) and len(out) == len(nesting)
    for a, b in zip(out, expected):
        assert a.shape == (5, 7)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    target = torch.randint(0, 7, (5,))
    weights = [0.5, 1.0, 2.0, 0.25]
    for w in (None, weights):
        loss = MatryoshkaLoss(w, label_smoothing=0.1)(out, target)
        torch.testing.assert_close(loss, official_style_loss(expected, target, w, 0.1))


def test_mrl_e_shares_one_weight_and_bias():
    head = MatryoshkaLinear(32, 5, [8, 16, 32], efficient=True)
    assert sum(p.numel() for p in head.parameters()) == 32 * 5 + 5
    logits = head(torch.randn(3, 32))
    sum(z.sum() for z in logits).backward()
    # size 8 only reaches the first 8 columns; the bias receives the gradient of all three sizes
    assert head.shared.weight.grad[:, :8].abs().sum() > 0
    torch.testing.assert_close(head.shared.bias.grad, torch.full((5,), 3.0 * 3))
    mrl = MatryoshkaLinear(32, 5, [8, 16, 32])
    assert sum(p.numel() for p in mrl.parameters()) == (8 + 16 + 32) * 5 + 3 * 5


def test_only_the_prefix_reaches_each_head():
    head = MatryoshkaLinear(16, 3, [4, 16])
    x = torch.randn(2, 16, requires_grad=True)
    head(x)[0].sum().backward()
    assert x.grad[:, 4:].abs().sum() == 0 and x.grad[:, :4].abs().sum() > 0


def test_default_nesting():
    assert default_nesting(2048) == [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert default_nesting(96) == [8, 16, 32, 64, 96]
    assert default_nesting(64, start=2) == [2, 4, 8, 16, 32, 64]
    assert MatryoshkaLinear(2048, 10).nesting == default_nesting(2048)
    with pytest.raises(ValueError, match="larger than the feature dim"):
        default_nesting(4, start=8)


@pytest.mark.parametrize(
    ("sizes", "match"),
    [
        ([8, 16, 64], "larger than the feature dim 32"),
        ([16, 8, 32], "sorted"),
        ([8, 8, 32], "duplicates"),
        ([], "empty"),
        ([0, 8], "positive"),
        ([8.0, 16], "positive integers"),
    ],
)
def test_bad_nesting_is_a_clear_error(sizes, match):
    with pytest.raises(ValueError, match=match):
        check_nesting(sizes, 32)
    with pytest.raises(ValueError, match=match):
        MatryoshkaLinear(32, 10, sizes)


def test_bad_inputs():
    head = MatryoshkaLinear(16, 3, [4, 16])
    with pytest.raises(ValueError, match="expects 16 features"):
        head(torch.randn(2, 8))
    with pytest.raises(ValueError, match="one logits tensor per nesting size"):
        MatryoshkaLoss()(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 weights for 2"):
        MatryoshkaLoss([1, 1, 1])(head(torch.randn(2, 16)), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="label_smoothing"):
        MatryoshkaLoss(label_smoothing=1.5)


def test_wrap_any_module_and_embed():
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 32))
    model = MatryoshkaModel(backbone, 32, 4, [8, 32])
    x = torch.randn(3, 3, 4)
    logits = model(x)
    assert [z.shape for z in logits] == [(3, 4), (3, 4)]
    emb = model.embed(x, dim=8, normalize=True)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(emb, F.normalize(model.embed(x)[:, :8], dim=1))
    wrong = MatryoshkaModel(nn.Sequential(nn.Flatten(), nn.Linear(12, 16)), 32, 4, [8, 32])
    with pytest.raises(ValueError, match=r"expected \(batch, 32\)"):
        wrong(x)


def test_registered_models():
    assert list_models(package="mrl") == ["mrl_backbone", "mrl_mlp", "mrl_resnet50"]
    with torch.device("meta"):  # the structure only
        r50 = create_model("mrl_resnet50", num_classes=5, efficient=True)
    assert r50.feature_dim == 2048 and r50.nesting == default_nesting(2048) and r50.head.efficient
    assert r50.model_config == {"name": "mrl_resnet50", "kwargs": {"num_classes": 5, "efficient": True}}
    mlp = create_model("mrl_mlp", feature_dim=8, nesting=[2, 8])
    assert [z.shape for z in mlp(torch.randn(3, 1, 8, 8))] == [(3, 10), (3, 10)]


def test_timm_backbone_by_name_and_load_model_round_trip(tmp_path):
    model = create_model("mrl_backbone", backbone="test_resnet", num_classes=3)
    assert model.feature_dim == 96 and model.nesting == [8, 16, 32, 64, 96]
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    out = model(x)
    save_pretrained(model, tmp_path / "m")
    for spec in (tmp_path / "m", tmp_path / "m" / "model.safetensors"):
        loaded = load_model(spec)
        assert isinstance(loaded, MatryoshkaModel) and loaded.nesting == model.nesting
        for a, b in zip(out, loaded(x)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": "no_such_model_xyz"}, "unknown backbone 'no_such_model_xyz'"),
        ({"backbone": "test_resnet", "nesting": [8, 128]}, r"nesting sizes \[128\] are larger than the feature dim 96"),
        ({"backbone": "test_resnet", "nesting": "8,16"}, "nesting sizes must be a list of positive integers"),
        ({"backbone": "test_resnet", "pretrained": True}, "would be downloaded, which bramley never does"),
        ({"backbone": "test_resnet", "num_classes": 0}, "num_classes must be an int >= 1"),
        ({"backbone": "test_resnet", "source": "hub"}, "source must be 'auto', 'bramley' or 'timm'"),
    ],
)
def test_bad_model_arguments_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_model("mrl_backbone", kwargs)
    assert "\n" not in str(info.value)


def test_blurpool_blurs_before_every_strided_conv_with_16_inputs():
    """FFCV's BlurPool (re-derived): a fixed depthwise [1 2 1] x [1 2 1] / 16 blur, then the strided convolution."""
    model = create_model("mrl_resnet50", num_classes=4, blurpool=True).eval()
    wrapped = sorted(n for n, m in model.named_modules() if type(m).__name__ == "BlurPoolConv2d")
    assert wrapped == [f"backbone.layer{i}.0.{name}" for i in (2, 3, 4) for name in ("conv2", "downsample.0")], (
        "stride-2 convs with >= 16 input channels (not the 3-channel stem)"
    )
    block = dict(model.named_modules())["backbone.layer2.0.conv2"]
    x = torch.randn(2, block.conv.in_channels, 9, 9)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).repeat(x.shape[1], 1, 1, 1)
    torch.testing.assert_close(block(x), block.conv(F.conv2d(x, kernel, padding=1, groups=x.shape[1])))
    assert not any("blur_filter" in k for k in model.state_dict()), "the constant filter is not saved"
    plain = apply_blurpool(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 4, 3)))
    assert not any(type(m).__name__ == "BlurPoolConv2d" for m in plain)


def test_bramley_registry_backbone():
    from bramley.core.registry import register_model

    @register_model(name="mrl_test_tiny_backbone")
    def mrl_test_tiny_backbone(num_classes: int = 10) -> nn.Module:
        class Tiny(nn.Module):
            num_features = 24

            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 24))
                self.fc = nn.Linear(24, num_classes) if num_classes else nn.Identity()

            def forward(self, x):
                return self.fc(self.body(x))

        return Tiny()

    try:
        model = create_model(
            "mrl_backbone", backbone="mrl_test_tiny_backbone", num_classes=5, nesting=[8, 24], efficient=True
        )
        assert model.model_config["kwargs"]["backbone"] == "mrl_test_tiny_backbone"
        assert [z.shape for z in model(torch.randn(2, 3, 8, 8))] == [(2, 5), (2, 5)]
        with pytest.raises(ConfigError, match="not a registered bramley model"):
            build_backbone("resnet18", source="bramley")
    finally:  # keep the shared registry clean for other packages' tests in the same session
        from bramley.core import registry

        registry._REGISTRY.pop("mrl_test_tiny_backbone", None)
