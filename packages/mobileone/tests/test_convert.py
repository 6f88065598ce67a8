"""Outside references: timm parity (same weights, same logits) and official checkpoint conversion."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bramley.core.convert import build_converted, load_official_file
from bramley.core.errors import CheckpointError, ConfigError
from bramley.mobileone import VARIANTS, build_mobileone, reparameterize
from bramley.mobileone.convert import (
    bramley_to_official,
    bramley_to_timm,
    convert_official,
    detect_variant,
    official_to_bramley,
    timm_to_bramley,
)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.2 + 0.3 * torch.rand(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = 0.5 + torch.rand(n, generator=g)
    return model.eval()


@pytest.mark.parametrize("variant", ["s0", "s4"])  # k=4 branches; SE blocks. s1-s3 share s4's code path minus SE.
def test_timm_parity_unfused_and_fused(variant):
    import timm
    from timm.utils import reparameterize_model as timm_reparameterize

    theirs = randomize_bn(timm.create_model(f"mobileone_{variant}", pretrained=False, num_classes=10), seed=3)
    ours = build_mobileone(variant, num_classes=10).eval()
    ours.load_state_dict(timm_to_bramley(theirs.state_dict()), strict=True)
    back = bramley_to_timm(ours.state_dict())
    assert list(back) == list(theirs.state_dict())
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)  # identical computation, identical logits
        fused_ours, fused_theirs = reparameterize(ours), timm_reparameterize(theirs)
        ref = fused_theirs(x)
        scale = float(ref.abs().max())
        torch.testing.assert_close(fused_ours(x), ref, rtol=1e-6, atol=1e-6 * scale)  # fusion sums in another order
    assert set(bramley_to_timm(fused_ours.state_dict())) == set(fused_theirs.state_dict())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_timm_key_and_shape_map_for_every_variant(variant):
    import timm

    with torch.device("meta"):
        theirs = timm.create_model(f"mobileone_{variant}", pretrained=False)
        ours = build_mobileone(variant)
    mapped = {k: tuple(v.shape) for k, v in timm_to_bramley(theirs.state_dict()).items()}
    assert mapped == {k: tuple(v.shape) for k, v in ours.state_dict().items()}


def official_keys(variant: str, fused: bool) -> set[str]:
    """Key names of the official apple/ml-mobileone model, enumerated from its structure (not from our code).

    stage0 = MobileOneBlock(3 -> min(64, 64 w0), k3 s2); stage1..4 = (depthwise k3, pointwise k1) pairs; each block
    has rbr_skip (BN) when in == out and stride 1, rbr_conv.{i}.conv/bn, rbr_scale.conv/bn when k > 1, se.reduce /
    se.expand when it uses SE; fused blocks have reparam_conv.weight/bias instead of the rbr_* branches.
    """
    cfg = VARIANTS[variant]
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def block(prefix, cin, cout, k, stride, branches, se):
        keys = []
        if fused:
            keys += [f"{prefix}.reparam_conv.weight", f"{prefix}.reparam_conv.bias"]
        else:
            if cin == cout and stride == 1:
                keys += [f"{prefix}.rbr_skip.{p}" for p in bn]
            for i in range(branches):
                keys += [f"{prefix}.rbr_conv.{i}.conv.weight"] + [f"{prefix}.rbr_conv.{i}.bn.{p}" for p in bn]
            if k > 1:
                keys += [f"{prefix}.rbr_scale.conv.weight"] + [f"{prefix}.rbr_scale.bn.{p}" for p in bn]
        if se:
            keys += [f"{prefix}.se.{n}.{p}" for n in ("reduce", "expand") for p in ("weight", "bias")]
        return keys

    w = cfg.width_multipliers
    in_planes = min(64, int(64 * w[0]))
    keys = block("stage0", 3, in_planes, 3, 2, 1, False)
    for s, (base, depth, n_se) in enumerate(zip((64, 128, 256, 512), (2, 8, 10, 1), cfg.se_blocks), start=1):
        planes = int(base * w[s - 1])
        for j in range(depth):
            use_se = j >= depth - n_se
            k = cfg.num_conv_branches
            keys += block(f"stage{s}.{2 * j}", in_planes, in_planes, 3, 2 if j == 0 else 1, k, use_se)
            keys += block(f"stage{s}.{2 * j + 1}", in_planes, planes, 1, 1, k, use_se)
            in_planes = planes
    return set(keys) | {"linear.weight", "linear.bias"}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("fused", [False, True])
def test_official_key_names_round_trip(variant, fused):
    with torch.device("meta"):
        model = build_mobileone(variant, inference_mode=fused)
    official = bramley_to_official(model.state_dict())
    assert set(official) == official_keys(variant, fused)
    assert official_to_bramley(official).keys() == model.state_dict().keys()
    assert detect_variant(official_to_bramley(official)) == (variant, fused, 1000)


@pytest.mark.parametrize("fused", [False, True])
def test_convert_official_file(tmp_path, fused):
    ours = randomize_bn(build_mobileone("s0", num_classes=1000))
    if fused:
        ours = reparameterize(ours)
    path = tmp_path / "mobileone_s0.pth.tar"
    torch.save({f"module.{k}": v for k, v in bramley_to_official(ours.state_dict()).items()}, path)  # DDP-saved
    converted = convert_official(load_official_file(path))
    assert converted.model_name == "mobileone_s0"
    assert converted.model_kwargs == {"inference_mode": fused, "num_classes": 1000}
    model = build_converted(converted)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x), ours(x), rtol=0, atol=0)
    assert convert_official(load_official_file(path), "mobileone_s0").model_name == "mobileone_s0"
    with pytest.raises(CheckpointError, match=r"holds mobileone_s0 \((un)?fused\), not mobileone_s1"):
        convert_official(load_official_file(path), "mobileone_s1")
    with pytest.raises(ConfigError, match="unknown MobileOne model 's1'"):
        convert_official(load_official_file(path), "s1")


def test_convert_official_headless_backbone():
    with torch.device("meta"):
        state = build_mobileone("s2", num_classes=0).state_dict()
    converted = convert_official(bramley_to_official(state))
    assert (converted.model_name, converted.model_kwargs["num_classes"]) == ("mobileone_s2", 0)


def test_convert_errors():
    with pytest.raises(CheckpointError, match=r"unexpected key 'features\.0\.weight'"):
        convert_official({"features.0.weight": torch.zeros(1)})
    with torch.device("meta"):
        state = bramley_to_official(build_mobileone("s1").state_dict())
    partial = {k: torch.zeros(v.shape) for k, v in state.items() if not k.startswith("stage4.")}
    with pytest.raises(CheckpointError, match="matches none of the MobileOne variants"):
        convert_official(partial)
    classifier = {k: torch.zeros(v.shape) for k, v in state.items() if k != "linear.weight"}
    with pytest.raises(CheckpointError, match=r"classifier keys but no fc\.weight"):
        convert_official(classifier)
