"""channels_last_inference: convolution weights in channels_last for the block, the model unchanged afterwards.

Every registered model's outputs under it are compared with NCHW's in tests/test_model_suite.py
(``test_channels_last``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bramley.core.layers import MobileOneBlock, channels_last_inference


def small_net() -> nn.Module:
    return nn.Sequential(
        MobileOneBlock(3, 12, 3, stride=2, num_conv_branches=2),  # 1x1 stride-2 scale branch, 3 input channels
        MobileOneBlock(12, 12, 3, groups=12),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 5),
    ).eval()


def test_runs_channels_last_and_restores_the_model():
    torch.manual_seed(0)
    model = small_net()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    before = {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
    with channels_last_inference(model) as inside:
        assert inside is model
        convs = [p for p in model.parameters() if p.dim() == 4]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
        assert not any(p.is_contiguous() for p in convs if p.shape[1] > 1 and p.shape[-1] > 1)  # really converted
        features = model[:2](x)
        out = model(x)
    assert features.is_contiguous(memory_format=torch.channels_last)  # convolutions ran channels_last
    assert out.grad_fn is None  # no autograd inside: no weight gradient (the oneDNN bug is in one)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        assert (p.data_ptr(), p.stride()) == before[name] and p.requires_grad  # its own memory back


def test_restores_the_model_when_the_block_raises():
    model = small_net()
    before = [p.data_ptr() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="inside"), channels_last_inference(model):
        raise RuntimeError("inside")
    assert [p.data_ptr() for p in model.parameters()] == before


def test_parameters_it_cannot_restride_are_left_alone():
    lazy = nn.Sequential(nn.LazyConv2d(4, 3), nn.Conv2d(4, 4, 3))  # the lazy weight has no shape yet
    with channels_last_inference(lazy):
        assert isinstance(lazy[0].weight, nn.parameter.UninitializedParameter)
        assert lazy[1].weight.is_contiguous(memory_format=torch.channels_last) and not lazy[1].weight.is_contiguous()
    assert lazy[1].weight.is_contiguous()
    linear = nn.Linear(4, 2)  # no 4-D parameters: nothing to do
    x = torch.randn(3, 4)
    with channels_last_inference(linear):
        out = linear(x)
    torch.testing.assert_close(out, linear(x).detach())
