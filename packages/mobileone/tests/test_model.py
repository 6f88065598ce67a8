"""MobileOne architecture: variants exact to the official code, fusion, features, registry, bad input."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from bramley.core.layers import MobileOneBlock
from bramley.core.registry import create_model, list_models
from bramley.mobileone import VARIANTS, MobileOne, build_mobileone, reparameterize
from bramley.mobileone.profile import count_macs, count_params

# Official apple/ml-mobileone PARAMS table and MobileOne.__init__ (read for these facts).
OFFICIAL_WIDTHS = {
    "s0": (0.75, 1.0, 1.0, 2.0),
    "s1": (1.5, 1.5, 2.0, 2.5),
    "s2": (1.5, 2.0, 2.5, 4.0),
    "s3": (2.0, 2.5, 3.0, 4.0),
    "s4": (3.0, 3.5, 3.5, 4.0),
}
PAPER_FUSED_PARAMS_M = {"s0": 2.1, "s1": 4.8, "s2": 7.8, "s3": 10.1, "s4": 14.8}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN affine parameters and running statistics (a stand-in for a trained model), eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + 0.5 * torch.rand(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)
    return model.eval()


def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BN running statistics measured on ``x`` (cumulative average), eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_matches_official_architecture(variant):
    model = build_mobileone(variant)
    w = OFFICIAL_WIDTHS[variant]
    stem_chs = min(64, int(64 * w[0]))
    assert model.stem.out_chs == stem_chs and model.stem.stride == 2 and model.stem.num_conv_branches == 1
    assert [len(s) for s in model.stages] == [4, 16, 20, 2]  # (dw, pw) pairs of (2, 8, 10, 1)
    expected_chs = [int(b * m) for b, m in zip((64, 128, 256, 512), w)]
    assert [info["num_chs"] for info in model.feature_info] == expected_chs
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16, 32]
    branches = 4 if variant == "s0" else 1
    for stage in model.stages:
        for j, block in enumerate(stage):
            assert isinstance(block, MobileOneBlock) and isinstance(block.act, nn.ReLU)
            assert block.num_conv_branches == branches
            if j % 2 == 0:  # depthwise 3x3, stride 2 at the stage start
                assert block.kernel_size == 3 and block.groups == block.in_chs
                assert block.stride == (2 if j == 0 else 1)
            else:
                assert block.kernel_size == 1 and block.groups == 1 and block.conv_scale is None
    se = [[not isinstance(b.se, nn.Identity) for b in stage] for stage in model.stages]
    if variant == "s4":  # last 5 pairs of stage 3 and the whole stage 4 (official: num_blocks // 2 and all)
        assert se[0] == [False] * 4 and se[1] == [False] * 16
        assert se[2] == [False] * 10 + [True] * 10 and se[3] == [True, True]
        assert model.stages[3][1].se.reduce.out_channels == 2048 // 16
    else:
        assert not any(any(s) for s in se)
    assert model.fc.in_features == expected_chs[-1] and model.fc.out_features == 1000


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_equals_unfused_and_param_counts(variant):
    model = randomize_bn(build_mobileone(variant, num_classes=10), seed=int(variant[1]))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize(model)
        out = fused(x)
        assert_close_scaled(out, ref, tol=1e-5)  # fp32, relative to the logit scale
        if variant == "s0":  # k=4 branches (SE exactness is covered in bramley.core's layer tests)
            # float64 shows fusion is exact. (With batch-calibrated BN on random weights, fp32 rounding alone moves
            # the *unfused* fp32 logits ~1e-4 away from their fp64 values, so fp32 cannot show it there.)
            calibrate(model, torch.randn(2, 3, 32, 32))
            model64 = model.double()
            fused64 = reparameterize(model64)
            torch.testing.assert_close(fused64(x.double()), model64(x.double()), rtol=1e-10, atol=1e-10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert fused.stem.reparam_conv is not None and model.stem.reparam_conv is None
    # fused parameter count with the 1000-class head (10-class model + the difference in head size) vs the paper
    head_delta = (1000 - 10) * (model.num_features + 1)
    assert round((count_params(fused) + head_delta) / 1e6, 1) == pytest.approx(PAPER_FUSED_PARAMS_M[variant], abs=0.05)
    assert count_params(model) > count_params(fused)


def test_fused_gmacs_and_overparameterized_train_cost():
    model = build_mobileone("s0").eval()
    fused = reparameterize(model)
    fused_macs = count_macs(fused, 224)
    assert 0.26e9 < fused_macs < 0.29e9  # measured 0.275 GMACs
    assert count_macs(model, 64) > 3 * count_macs(fused, 64)  # k=4 branches cost train-time compute


def test_reparameterize_copy_inplace_idempotent_and_warns():
    model = create_model("mobileone_s0", num_classes=5)
    with pytest.warns(UserWarning, match="train mode"):
        reparameterize(model)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused = reparameterize(model)
    assert fused is not model and model.stem.reparam_conv is None
    assert fused.model_config == {"name": "mobileone_s0", "kwargs": {"num_classes": 5, "inference_mode": True}}
    again = reparameterize(fused)
    for (k1, v1), (k2, v2) in zip(fused.state_dict().items(), again.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    same = reparameterize(model, inplace=True)
    assert same is model and model.stem.reparam_conv is not None


def test_inference_mode_model_has_fused_state_dict_keys():
    fused = reparameterize(build_mobileone("s1").eval())
    direct = build_mobileone("s1", inference_mode=True)
    assert set(fused.state_dict()) == set(direct.state_dict())
    direct.load_state_dict(fused.state_dict())


def test_num_classes_in_chans_and_classifier_reset():
    model = build_mobileone("s0", num_classes=7, in_chans=1).eval()
    assert model(torch.randn(2, 1, 32, 40)).shape == (2, 7)
    model.reset_classifier(0)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, model.num_features)
    assert model.forward_head(model.forward_features(torch.randn(1, 1, 64, 64)), pre_logits=True).shape == (1, 1024)


def test_forward_intermediates_and_timm_features_only():
    import timm

    from bramley.mobileone import register_timm

    names = register_timm()
    assert names == [f"bramley_mobileone_s{i}" for i in range(5)]
    model = build_mobileone("s0").eval()
    x = torch.randn(1, 3, 64, 96)
    final, feats = model.forward_intermediates(x)
    assert [f.shape[1] for f in feats] == [48, 128, 256, 1024]
    assert [(f.shape[2], f.shape[3]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    torch.testing.assert_close(final, model.forward_features(x))
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    torch.testing.assert_close(last_two[1], feats[3])
    assert len(model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)) == 2

    backbone = timm.create_model("bramley_mobileone_s1", features_only=True, out_indices=(1, 2, 3)).eval()
    outs = backbone(torch.randn(1, 3, 64, 64))
    assert backbone.feature_info.reduction() == [8, 16, 32]
    assert [o.shape[1] for o in outs] == backbone.feature_info.channels() == [192, 512, 1280]
    classifier = timm.create_model("bramley_mobileone_s0", num_classes=3).eval()
    assert classifier(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_pretrained_cfg_is_the_recipe_preprocessing():
    """timm's data config of every variant (``model.pretrained_cfg``) is how the ImageNet recipe evaluates."""
    import bramley.mobileone

    recipe = yaml.safe_load((Path(bramley.mobileone.__file__).parent / "recipes" / "imagenet.yaml").read_text())
    data = recipe["data"]
    for name in list_models("mobileone_*"):
        cfg = create_model(name).pretrained_cfg
        assert cfg["input_size"] == (3, data["image_size"], data["image_size"])
        assert (cfg["crop_pct"], cfg["interpolation"]) == (data["crop_pct"], data["interpolation"])


def test_registry_lists_variants():
    assert list_models("mobileone_*") == [f"mobileone_s{i}" for i in range(5)]
    assert isinstance(create_model("mobileone_s2", num_classes=2), MobileOne)


@pytest.mark.parametrize(
    "x,match",
    [
        (torch.randn(1, 1, 32, 32), r"shape \(batch, 3, height, width\), got \(1, 1, 32, 32\)"),
        (torch.randn(3, 32, 32), r"got \(3, 32, 32\)"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "floating-point"),
    ],
)
def test_bad_input_gives_clear_error(x, match):
    model = build_mobileone("s0").eval()
    with pytest.raises(ValueError, match=match):
        model(x)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown MobileOne variant 's9'"):
        build_mobileone("s9")
    with pytest.raises(ValueError, match="fixes"):
        build_mobileone("s0", num_conv_branches=2)
    with pytest.raises(ValueError, match="se_blocks"):
        MobileOne(se_blocks=(0, 0, 11, 0))
    with pytest.raises(ValueError, match="out of range"):
        build_mobileone("s0").forward_intermediates(torch.randn(1, 3, 32, 32), indices=[4])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_and_fx_of_fused_model():
    model = reparameterize(build_mobileone("s0", num_classes=4).eval())
    x = torch.randn(1, 3, 32, 32)
    ref = model(x)
    torch.testing.assert_close(torch.jit.script(model)(x), ref)
    torch.testing.assert_close(torch.jit.trace(model, x)(x), ref)


def test_torch_compile_tiny_model():
    from bramley.mobileone.reproduce import mini_mobileone

    model = randomize_bn(mini_mobileone(2, True, True))
    x = torch.randn(2, 1, 32, 32)
    for m in (model, reparameterize(model)):
        compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BRAMLEY_SLOW"), reason="inductor takes minutes on 2 CPUs; set BRAMLEY_SLOW=1")
def test_torch_compile_inductor():
    model = reparameterize(randomize_bn(build_mobileone("s0", num_classes=4)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close_scaled(torch.compile(model)(x), model(x), tol=1e-4)
