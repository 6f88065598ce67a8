"""Reparameterizable layers: fused == unfused in eval mode, helpers, naming, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.layers import (
    ConvNorm,
    MobileOneBlock,
    SqueezeExcite,
    fuse_conv_bn,
    identity_kernel,
    pad_kernel,
    reparameterize_model,
)


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.randn(n, generator=g)
            m.bias.data = torch.randn(n, generator=g)
            m.running_mean = torch.randn(n, generator=g) * 0.5
            m.running_var = torch.rand(n, generator=g) * 1.5 + 0.25
    return module


def assert_fused_equal(block: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> nn.Module:
    block.eval()
    with torch.no_grad():
        ref = block(x)
        fused = reparameterize_model(block)
        out = fused(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=atol, rtol=1e-5)
    return fused


CASES = [
    # in, out, kernel, stride, groups, branches, scale
    (8, 8, 3, 1, 1, 1, True),  # identity + scale + 1 branch
    (8, 8, 3, 1, 1, 4, True),  # k = 4
    (8, 8, 3, 1, 1, 2, False),  # k = 2, no scale branch
    (8, 8, 3, 1, 8, 4, True),  # depthwise with identity
    (8, 16, 3, 1, 2, 2, True),  # grouped, no identity (in != out)
    (8, 8, 3, 2, 8, 4, True),  # depthwise stride 2 (no identity)
    (6, 12, 3, 2, 1, 1, True),  # dense stride 2
    (8, 8, 1, 1, 1, 4, True),  # pointwise: identity, no scale branch (k = 1)
    (8, 16, 1, 1, 1, 1, True),  # pointwise expand, plain conv-BN
    (12, 12, 5, 1, 3, 2, True),  # 5x5 grouped, identity padded to 5x5
    (8, 8, 7, 1, 8, 1, True),  # FastViT-style 7x7 depthwise
    (8, 8, 3, 1, 1, 0, True),  # no kxk branch: scale + identity only
]


@pytest.mark.parametrize("in_chs,out_chs,k,stride,groups,branches,scale", CASES)
@pytest.mark.parametrize("use_se", [False, True])
def test_block_fused_equals_unfused(in_chs, out_chs, k, stride, groups, branches, scale, use_se):
    block = MobileOneBlock(
        in_chs,
        out_chs,
        k,
        stride=stride,
        groups=groups,
        num_conv_branches=branches,
        use_scale_branch=scale,
        use_se=use_se,
    )
    randomize_bn(block, seed=in_chs * 100 + k)
    assert (block.identity is not None) == (stride == 1 and in_chs == out_chs)
    assert (block.conv_scale is not None) == (scale and k > 1)
    x = torch.randn(2, in_chs, 11, 9)  # odd sizes: padding and stride-2 edges matter
    fused = assert_fused_equal(block, x)
    assert isinstance(fused.reparam_conv, nn.Conv2d)
    assert fused.conv_kxk is None and fused.conv_scale is None and fused.identity is None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())


def test_plain_conv_bn_block_has_single_branch():
    block = randomize_bn(MobileOneBlock(8, 8, 3, use_scale_branch=False, use_identity=False))
    assert block.identity is None and block.conv_scale is None and len(block.conv_kxk) == 1
    assert_fused_equal(block, torch.randn(2, 8, 6, 6))


def test_block_without_activation_is_linear_and_fuses():
    block = randomize_bn(MobileOneBlock(4, 4, 3, use_act=False, num_conv_branches=3))
    assert isinstance(block.act, nn.Identity)
    assert_fused_equal(block, torch.randn(3, 4, 8, 8))


def test_custom_activation_is_used():
    block = MobileOneBlock(4, 4, 3, act_layer=nn.GELU)
    assert isinstance(block.act, nn.GELU)


def test_state_dict_names_follow_timm():
    block = MobileOneBlock(8, 8, 3, groups=8, num_conv_branches=2, use_se=True)
    keys = set(block.state_dict())
    for expected in (
        "identity.weight",
        "identity.running_var",
        "conv_kxk.0.conv.weight",
        "conv_kxk.1.bn.running_mean",
        "conv_scale.conv.weight",
        "conv_scale.bn.bias",
        "se.reduce.weight",
        "se.expand.bias",
    ):
        assert expected in keys
    fused = reparameterize_model(block.eval())
    assert {k for k in fused.state_dict() if not k.startswith("se.")} == {"reparam_conv.weight", "reparam_conv.bias"}


def test_inference_mode_block_loads_fused_state_dict():
    block = randomize_bn(MobileOneBlock(6, 6, 3, groups=3, num_conv_branches=2)).eval()
    fused = reparameterize_model(block)
    direct = MobileOneBlock(6, 6, 3, groups=3, num_conv_branches=2, inference_mode=True).eval()
    direct.load_state_dict(fused.state_dict(), strict=True)
    x = torch.randn(2, 6, 7, 7)
    torch.testing.assert_close(direct(x), block(x), atol=1e-5, rtol=1e-5)


def test_matches_timm_block_on_same_weights():
    from timm.models.byobnet import MobileOneBlock as TimmBlock

    for in_chs, out_chs, k, stride, group_size, groups in [(8, 8, 3, 1, 1, 8), (8, 16, 1, 1, 0, 1), (8, 8, 3, 2, 1, 8)]:
        theirs = randomize_bn(
            TimmBlock(in_chs, out_chs, kernel_size=k, stride=stride, group_size=group_size, num_conv_branches=3)
        ).eval()
        ours = MobileOneBlock(in_chs, out_chs, k, stride=stride, groups=groups, num_conv_branches=3).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        x = torch.randn(2, in_chs, 10, 10)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
            theirs.reparameterize()
            ours.reparameterize()
            ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
            assert set(ours_sd) == set(theirs_sd)
            for key in ours_sd:
                torch.testing.assert_close(ours_sd[key], theirs_sd[key], atol=1e-6, rtol=1e-6)


def test_reparameterize_model_copy_inplace_idempotent_and_deep():
    model = nn.Sequential(
        MobileOneBlock(3, 8, 3, stride=2),
        nn.Sequential(MobileOneBlock(8, 8, 3, groups=8, num_conv_branches=4), MobileOneBlock(8, 8, 1)),
        nn.AdaptiveAvgPool2d(1),
    )
    randomize_bn(model).eval()
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)

    fused = reparameterize_model(model)
    assert fused is not model
    assert model[0].reparam_conv is None, "the original must be untouched by a copying fuse"
    assert all(m.is_reparameterized for m in fused.modules() if isinstance(m, MobileOneBlock))
    torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)

    again = reparameterize_model(fused)
    for (k1, v1), (k2, v2) in zip(fused.state_dict().items(), again.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)

    same = reparameterize_model(model, inplace=True)
    assert same is model and model[0].is_reparameterized
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_reparameterize_model_warns_in_train_mode():
    model = nn.Sequential(MobileOneBlock(4, 4, 3))
    with pytest.warns(UserWarning, match="train mode"):
        reparameterize_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reparameterize_model(model.eval())


def test_reparameterize_model_calls_custom_modules_deepest_first():
    order = []

    class Leaf(nn.Module):
        def __init__(self, name, *children):
            super().__init__()
            self.name = name
            self.inner = nn.ModuleList(children)

        def reparameterize(self):
            order.append(self.name)

    model = Leaf("root", Leaf("a", Leaf("a1")), Leaf("b")).eval()
    reparameterize_model(model, inplace=True)
    assert order.index("a1") < order.index("a") < order.index("root")
    assert order.index("b") < order.index("root")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("fused", [False, True])
def test_block_torchscript(fused):
    block = randomize_bn(MobileOneBlock(4, 4, 3, num_conv_branches=2, use_se=True)).eval()
    if fused:
        block = reparameterize_model(block)
    scripted = torch.jit.script(block)
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(scripted(x), block(x))


def test_block_trains_and_backpropagates():
    block = MobileOneBlock(4, 4, 3, num_conv_branches=2).train()
    x = torch.randn(4, 4, 6, 6)
    block(x).square().mean().backward()
    assert all(p.grad is not None for p in block.parameters())


def test_fuse_conv_bn_matches_modules():
    cn = randomize_bn(ConvNorm(4, 6, 3, stride=2, groups=2)).eval()
    w, b = cn.kernel_bias()
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(F.conv2d(x, w, b, stride=2, padding=1, groups=2), cn(x), atol=1e-5, rtol=1e-5)
    fused = cn.fuse()  # timm's convention: a module that replaces the ConvNorm
    assert isinstance(fused, nn.Conv2d) and fused.bias is not None
    torch.testing.assert_close(fused(x), cn(x), atol=1e-5, rtol=1e-5)

    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    bn = randomize_bn(nn.BatchNorm2d(6)).eval()
    w, b = fuse_conv_bn(conv.weight, bn, conv.bias)
    torch.testing.assert_close(F.conv2d(x, w, b, padding=1), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_pad_kernel_and_identity_kernel():
    x = torch.randn(2, 6, 8, 8)
    w1 = torch.randn(6, 3, 1, 1)
    torch.testing.assert_close(F.conv2d(x, pad_kernel(w1, 5), padding=2, groups=2), F.conv2d(x, w1, groups=2))
    for groups in (1, 2, 6):
        for k in (1, 3, 7):
            ident = identity_kernel(6, k, groups)
            assert ident.shape == (6, 6 // groups, k, k)
            torch.testing.assert_close(F.conv2d(x, ident, padding=k // 2, groups=groups), x)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: MobileOneBlock(4, 4, 2), "odd kernel_size"),
        (lambda: MobileOneBlock(4, 6, 3, groups=4), "divisible by groups"),
        (lambda: MobileOneBlock(4, 8, 1, num_conv_branches=0), "no branch"),
        (lambda: MobileOneBlock(4, 4, 3, num_conv_branches=-1), "num_conv_branches"),
        (lambda: pad_kernel(torch.zeros(1, 1, 5, 5), 3), "cannot centre"),
        (lambda: pad_kernel(torch.zeros(1, 1, 1, 1), 4), "cannot centre"),
        (lambda: identity_kernel(6, 2), "odd kernel_size"),
        (lambda: identity_kernel(6, 3, groups=4), "divisible"),
        (lambda: fuse_conv_bn(torch.zeros(3, 1, 1, 1), nn.BatchNorm2d(4)), "3 output channels"),
        (lambda: fuse_conv_bn(torch.zeros(4, 1, 1, 1), nn.BatchNorm2d(4, track_running_stats=False)), "running"),
        (lambda: SqueezeExcite(8, rd_channels=0), "hidden channel"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_squeeze_excite_follows_official_design():
    se = SqueezeExcite(64)
    assert se.reduce.out_channels == 4 and se.expand.out_channels == 64  # int(64 / 16)
    x = torch.randn(2, 64, 5, 7)
    gate = torch.sigmoid(se.expand(F.relu(se.reduce(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * gate)
    # the gate depends on the pooled input: a constant-per-channel shift changes it
    assert not torch.allclose(se(x + 1.0) - 1.0 * gate, se(x))


def test_readme_layers_example_runs(capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Layers", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(code, "README.md#layers", "exec"), {})
    out = capsys.readouterr().out
    assert "reparam_conv.weight" in out and out.strip().endswith("True")
