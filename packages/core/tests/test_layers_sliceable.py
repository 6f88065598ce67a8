"""Width-sliceable layers: every slice equals a dense smaller layer holding the copied weights (timm's Mlp, core's
SwiGLU and Attention, nn.Linear, nn.LayerNorm), gradients reach only the active slice, and bad widths are refused."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp as TimmMlp

from bramley.core.errors import ConfigError
from bramley.core.layers import (
    Attention,
    SliceableAttention,
    SliceableLinear,
    SliceableMlp,
    SliceableSwiGLU,
    SwiGLU,
    WidthLayerNorm,
    check_widths,
    slice_linear,
    width_channels,
)

DIM, HIDDEN, HEADS = 32, 64, 4  # head_dim 8


def _randomize(module: nn.Module) -> nn.Module:
    """Non-trivial values everywhere (LayerNorm's ones/zeros would hide a wrong slice)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


@pytest.mark.parametrize(("d_in", "d_out"), [(32, 48), (5, 7), (1, 1), (32, None)])
def test_slice_linear_equals_a_dense_linear(d_in, d_out):
    full = _randomize(SliceableLinear(32, 48))
    x = torch.randn(3, d_in)
    dense = full.extract(d_in, d_out)
    assert dense.weight.shape == (d_out or 48, d_in)
    assert torch.equal(full(x, d_out), dense(x))


@pytest.mark.parametrize("hidden", [8, 16, 33, HIDDEN])
@pytest.mark.parametrize("d_in", [16, DIM])
def test_mlp_slice_equals_timm_mlp_with_copied_weights(hidden, d_in):
    nested = _randomize(SliceableMlp(DIM, HIDDEN)).eval()
    reference = TimmMlp(d_in, hidden, act_layer=nn.GELU).eval()
    with torch.no_grad():
        reference.fc1.weight.copy_(nested.fc1.weight[:hidden, :d_in])
        reference.fc1.bias.copy_(nested.fc1.bias[:hidden])
        reference.fc2.weight.copy_(nested.fc2.weight[:d_in, :hidden])
        reference.fc2.bias.copy_(nested.fc2.bias[:d_in])
    x = torch.randn(2, 5, d_in)
    assert torch.equal(nested(x, hidden), reference(x))
    assert torch.equal(nested.extract(hidden, d_in)(x), reference(x))


@pytest.mark.parametrize("hidden", [8, 21, HIDDEN])
def test_swiglu_slice_cuts_gate_and_value_together(hidden):
    nested = _randomize(SliceableSwiGLU(DIM, HIDDEN, bias=True))
    reference = SwiGLU(DIM, hidden, bias=True)
    reference.load_state_dict(
        {
            "w1.weight": nested.w1.weight[:hidden],
            "w1.bias": nested.w1.bias[:hidden],
            "w3.weight": nested.w3.weight[:hidden],
            "w3.bias": nested.w3.bias[:hidden],
            "w2.weight": nested.w2.weight[:, :hidden],
            "w2.bias": nested.w2.bias,
        }
    )
    x = torch.randn(4, DIM)
    assert torch.equal(nested(x, hidden), reference(x))
    assert torch.equal(nested.extract(hidden)(x), reference(x))


def test_full_width_equals_core_attention_and_timm_layout():
    nested = _randomize(SliceableAttention(DIM, HEADS))
    core = Attention(DIM, HEADS)
    core.load_state_dict(nested.state_dict())  # same keys, same layout
    x = torch.randn(2, 7, DIM)
    torch.testing.assert_close(nested(x), core(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_heads_slice_equals_a_dense_attention(heads, causal):
    """h heads on an h*head_dim residual: equal to core Attention(h*hd, h) with the copied q/k/v rows and proj block."""
    nested = _randomize(SliceableAttention(DIM, HEADS)).double()
    head_dim, d = DIM // HEADS, heads * (DIM // HEADS)
    qkv_w = nested.qkv.weight.view(3, HEADS, head_dim, DIM)[:, :heads, :, :d].reshape(3 * d, d)
    qkv_b = nested.qkv.bias.view(3, HEADS, head_dim)[:, :heads].reshape(3 * d)
    dense = Attention(d, heads).double()
    dense.load_state_dict(
        {
            "qkv.weight": qkv_w,
            "qkv.bias": qkv_b,
            "proj.weight": nested.proj.weight[:d, :d],
            "proj.bias": nested.proj.bias[:d],
        }
    )
    x = torch.randn(11, d, dtype=torch.float64)
    cu = _cu([4, 1, 6])
    expected = dense(x, cu_seqlens=cu, causal=causal)
    torch.testing.assert_close(nested(x, heads, cu_seqlens=cu, causal=causal), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(nested.extract(heads)(x, cu_seqlens=cu, causal=causal), expected, rtol=0, atol=1e-12)


def test_attention_keeps_the_residual_width_when_only_heads_shrink():
    """SHARCS-style: 2 of 4 heads on the full 32-channel stream = attention of those heads, projected back to 32."""
    nested = _randomize(SliceableAttention(DIM, HEADS)).double()
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    q, k, v = F.linear(x, nested.qkv.weight, nested.qkv.bias).unflatten(-1, (3, HEADS, 8)).unbind(-3)
    keep = slice(0, 2)
    out = F.scaled_dot_product_attention(*(t[:, :, keep].transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    expected = F.linear(out.flatten(-2), nested.proj.weight[:, :16], nested.proj.bias)
    torch.testing.assert_close(nested(x, 2), expected, rtol=0, atol=1e-12)


def test_gradients_reach_only_the_active_slice():
    mlp = SliceableMlp(DIM, HIDDEN)
    mlp(torch.randn(3, 16), 8).sum().backward()
    assert mlp.fc1.weight.grad[:8, :16].abs().sum() > 0
    assert mlp.fc1.weight.grad[8:].abs().sum() == 0 and mlp.fc1.weight.grad[:, 16:].abs().sum() == 0
    assert mlp.fc2.weight.grad[16:].abs().sum() == 0 and mlp.fc2.weight.grad[:, 8:].abs().sum() == 0


def test_width_layer_norm_one_norm_per_width():
    norm = _randomize(WidthLayerNorm(DIM, [0.25, 0.5, 1.0]))
    assert norm.channels == (8, 16, 32)
    for width, channels in zip(norm.widths, norm.channels):
        x = torch.randn(3, channels)
        assert torch.equal(norm(x), norm.extract(width)(x))
        assert torch.equal(norm(x), norm(x, width=width))
    shared = WidthLayerNorm(DIM, [0.5, 1.0], slice_channels=False)
    assert shared.channels == (32, 32) and shared.norms[0] is not shared.norms[1]
    with pytest.raises(ValueError, match="pass width="):
        shared(torch.randn(2, DIM))
    with pytest.raises(ValueError, match="not one of"):
        shared(torch.randn(2, DIM), width=0.75)


def test_width_rules_and_their_errors():
    assert width_channels(DIM, 0.25) == 8
    assert check_widths([0.25, 0.5, 1.0], num_heads=HEADS, dim=DIM) == (0.25, 0.5, 1.0)
    with pytest.raises(ConfigError, match=r"allowed widths: 0.25, 0.5, 0.75, 1"):
        check_widths([0.3, 1.0], num_heads=HEADS)
    with pytest.raises(ConfigError, match=r"in \(0, 1\]"):
        check_widths([0.5, 1.5])
    with pytest.raises(ConfigError, match="sorted ascending"):
        check_widths([1.0, 0.5])
    with pytest.raises(ConfigError, match="must not repeat"):
        check_widths([0.5, 0.5])
    with pytest.raises(ConfigError, match="must not be empty"):
        check_widths([])
    with pytest.raises(ValueError, match="hidden_features must be in"):
        SliceableMlp(DIM, HIDDEN)(torch.randn(2, DIM), HIDDEN + 1)
    with pytest.raises(ValueError, match="this layer takes 1 to 32"):
        SliceableMlp(DIM, HIDDEN)(torch.randn(2, DIM + 1))
    with pytest.raises(ValueError, match="num_heads must be in"):
        SliceableAttention(DIM, HEADS)(torch.randn(1, 3, DIM), 5)
    with pytest.raises(ConfigError, match="extract needs dim == num_heads"):
        SliceableAttention(DIM, HEADS).extract(2, dim=DIM)


def test_slice_linear_runs_any_linear():
    """A timm / transformers nn.Linear runs sliced as it is, no conversion."""
    linear = nn.Linear(12, 20)
    x = torch.randn(2, 6)
    assert torch.equal(slice_linear(linear, x, 10), x @ linear.weight[:10, :6].T + linear.bias[:10])
    with pytest.raises(ValueError, match="out_features must be in"):
        slice_linear(linear, x, 21)
