"""MatViT / MatLM: fidelity to timm and core layers, nesting, extraction, sizes, budgets and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from timm.layers import Mlp as TimmMlp
from timm.models.vision_transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from bramley.core.checkpoint import load_model, save_pretrained
from bramley.core.errors import ConfigError
from bramley.core.layers import SwiGLU
from bramley.core.layers.sliceable import SliceableMlp, SliceableSwiGLU
from bramley.core.registry import create_model
from bramley.matformer import (
    MatLM,
    extract,
    flops,
    granularity_specs,
    mix_n_match_specs,
    num_parameters,
    select_for_budget,
)

VIT = dict(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, mlp_hidden=128, num_classes=5)
LM = dict(dim=32, depth=3, num_heads=4, mlp_hidden=64, max_seq_len=16)


def _images(n: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _tokens() -> torch.Tensor:
    return torch.randint(0, 257, (2, 11), generator=torch.Generator().manual_seed(2))


def _timm_vit(mlp_ratio: float) -> VisionTransformer:
    return VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, mlp_ratio=mlp_ratio, num_classes=5
    ).eval()


# -------------------------------------------------------------------------------------------------------- fidelity
def test_full_matvit_equals_timm_vision_transformer():
    torch.manual_seed(0)
    timm_model = _timm_vit(4.0)
    model = create_model("matvit", **VIT).eval()
    model.load_state_dict(timm_model.state_dict(), strict=True)  # timm's keys, unchanged
    with torch.no_grad():
        assert torch.equal(model(_images()), timm_model(_images()))


@pytest.mark.parametrize("hidden", [16, 32, 64])
def test_sliced_matvit_equals_a_smaller_timm_vit_with_copied_weights(hidden):
    torch.manual_seed(0)
    model = create_model("matvit", **VIT).eval()
    small = _timm_vit(hidden / 32)
    state = {}
    for key, value in model.state_dict().items():
        if ".mlp.fc1." in key:
            value = value[:hidden]
        elif key.endswith(".mlp.fc2.weight"):
            value = value[:, :hidden]
        state[key] = value
    small.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(model(_images(), ffn=hidden), small(_images()))


@pytest.mark.parametrize("hidden", [8, 24, 64])
def test_sliced_gelu_ffn_equals_timm_mlp_of_that_width(hidden):
    torch.manual_seed(0)
    nested = SliceableMlp(32, 64)
    dense = TimmMlp(32, hidden)
    with torch.no_grad():
        dense.fc1.weight.copy_(nested.fc1.weight[:hidden])
        dense.fc1.bias.copy_(nested.fc1.bias[:hidden])
        dense.fc2.weight.copy_(nested.fc2.weight[:, :hidden])
        dense.fc2.bias.copy_(nested.fc2.bias)
        x = torch.randn(4, 7, 32)
        assert torch.equal(nested(x, hidden), dense(x))


@pytest.mark.parametrize("hidden", [8, 24, 64])
def test_sliced_swiglu_ffn_equals_core_swiglu_of_that_width(hidden):
    """The gate and the up projection lose the same units (the official fused-SwiGLU slice pairs them wrongly)."""
    torch.manual_seed(0)
    nested = SliceableSwiGLU(32, 64)
    dense = SwiGLU(32, hidden)
    with torch.no_grad():
        dense.w1.weight.copy_(nested.w1.weight[:hidden])
        dense.w3.weight.copy_(nested.w3.weight[:hidden])
        dense.w2.weight.copy_(nested.w2.weight[:, :hidden])
        x = torch.randn(4, 7, 32)
        assert torch.equal(nested(x, hidden), dense(x))


def test_official_fused_swiglu_slice_is_not_the_smaller_swiglu():
    """OLMo fuses [value | gate] into one ff_proj and the official MatFormer slice keeps its first k rows: at half
    width those are all value rows, so the sub-model is not a SwiGLU of the first k units (what we build instead)."""
    torch.manual_seed(0)
    dim, hidden, k = 16, 32, 16
    ff_proj = nn.Linear(dim, 2 * hidden, bias=False)  # OLMo: x, gate = ff_proj(x).chunk(2); act = silu(gate) * x
    x = torch.randn(3, dim)
    value, gate = torch.nn.functional.linear(x, ff_proj.weight[:k]).chunk(2, dim=-1)  # the official slice
    official = torch.nn.functional.silu(gate) * value
    wanted = torch.nn.functional.silu(x @ ff_proj.weight[hidden : hidden + k].T) * (x @ ff_proj.weight[:k].T)
    assert official.shape[-1] == k // 2 and not torch.allclose(official, wanted[..., : k // 2])


# ---------------------------------------------------------------------------------------------- nesting, extract
@pytest.mark.parametrize("ffn_kind", ["gelu", "swiglu"])
@pytest.mark.parametrize("family", ["vit", "lm"])
@pytest.mark.parametrize("spec", [None, 16, [16, 32, 64]])
def test_extract_equals_the_sliced_forward(family, ffn_kind, spec, tmp_path):
    torch.manual_seed(0)
    if family == "vit":
        model, x = create_model("matvit", **{**VIT, "mlp_hidden": 64, "ffn": ffn_kind}).eval(), _images()
    else:
        model, x = create_model("matlm", **LM, ffn=ffn_kind).eval(), _tokens()
    small = extract(model, spec).eval()
    assert not small.nested and small.mlp_hidden == model.resolve_ffn(spec)
    assert sum(p.numel() for p in small.parameters()) == num_parameters(model, spec)
    with torch.no_grad():
        expected = model(x, ffn=spec)
        assert torch.equal(small(x), expected)
        save_pretrained(small, tmp_path / "sub")
        assert torch.equal(load_model(tmp_path / "sub")(x), expected)


def test_granularities_default_to_h_over_8_to_h_and_mix_n_match_staircases():
    model = create_model("matvit", **VIT)
    assert granularity_specs(model) == [(16,) * 3, (32,) * 3, (64,) * 3, (128,) * 3]
    specs = mix_n_match_specs(model)
    assert len(specs) == 3 * 2 and specs[0] == (16, 16, 32) and specs[1] == (16, 32, 32)
    assert all(sorted(s) == list(s) for s in specs)


def test_per_layer_hidden_sizes_and_interpolated_widths_run():
    model = create_model("matlm", **{**LM, "mlp_hidden": [64, 128, 64]}).eval()
    assert granularity_specs(model)[0] == (8, 16, 8)
    with torch.no_grad():
        assert model(_tokens(), ffn=[40, 100, 8]).shape == (2, 11, 257)


def test_matlm_is_causal():
    model = create_model("matlm", **LM).eval()
    tokens = _tokens()
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 257
    with torch.no_grad():
        assert torch.equal(model(tokens, ffn=16)[:, :-1], model(changed, ffn=16)[:, :-1])


def test_matvit_resamples_the_position_embedding_for_another_resolution():
    model = create_model("matvit", **VIT).eval()
    with torch.no_grad():
        assert model(_images(size=24), ffn=32).shape == (3, 5)


# ---------------------------------------------------------------------------------------------------- sizes, budget
@pytest.mark.parametrize("family", ["vit", "lm"])
def test_flops_equal_torch_flop_counter(family):
    if family == "vit":
        model, x = create_model("matvit", **VIT).eval(), _images(n=1)
        tokens = None
    else:
        model, x = create_model("matlm", **LM).eval(), _tokens()[:1]
        tokens = x.shape[1]
    for spec in (None, [16, 32, model.mlp_hidden[-1]]):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x, ffn=spec)
        assert flops(model, spec, tokens) == counter.get_total_flops()


@pytest.mark.parametrize("metric", ["params", "flops"])
def test_select_for_budget_fills_the_budget_with_a_staircase(metric):
    model = create_model("matvit", **VIT)
    cost = (lambda s: num_parameters(model, list(s))) if metric == "params" else (lambda s: flops(model, list(s)))
    grans = granularity_specs(model)
    budget = (cost(grans[1]) + cost(grans[2])) / 2
    spec = select_for_budget(model, budget, metric)
    assert cost(grans[1]) < cost(spec) <= budget
    assert spec in mix_n_match_specs(model)
    assert select_for_budget(model, cost(grans[-1]) * 10, metric) == grans[-1]


# -------------------------------------------------------------------------------------------------------- bad input
def test_granularities_that_do_not_divide_the_hidden_size_are_refused():
    with pytest.raises(ConfigError, match=r"do not divide the FFN hidden size 100 .*100 / 8 = 12.5"):
        create_model("matvit", mlp_hidden=100)
    with pytest.raises(ConfigError, match="must include 1"):
        create_model("matvit", granularities=[4, 2])
    with pytest.raises(ConfigError, match="positive integers"):
        create_model("matvit", granularities=[2.5, 1])


def test_a_mix_n_match_spec_of_the_wrong_length_is_refused():
    model = create_model("matlm", **LM)
    with pytest.raises(ConfigError, match="one FFN size per layer: matlm has 3 layers, the spec has 2"):
        model(_tokens(), ffn=[16, 16])
    with pytest.raises(ConfigError, match=r"outside 1 \.\. 64"):
        model(_tokens(), ffn=[16, 16, 65])


def test_extracting_from_a_model_that_is_not_nested_names_it():
    small = extract(create_model("matlm", **LM), 16)
    with pytest.raises(ConfigError, match="matlm is not nested"):
        extract(small, 8)
    with pytest.raises(ConfigError, match="matlm is not nested"):
        small(_tokens(), ffn=8)
    with pytest.raises(ConfigError, match="a Linear model, not a MatFormer model"):
        extract(nn.Linear(2, 2), 1)


def test_a_budget_below_the_smallest_sub_model_is_refused():
    model = create_model("matvit", **VIT)
    with pytest.raises(ConfigError, match="below the smallest sub-model"):
        select_for_budget(model, 10, "params")
    with pytest.raises(ConfigError, match="unknown budget metric"):
        select_for_budget(model, 1e9, "latency")


def test_matlm_refuses_float_tokens_and_too_long_inputs():
    model = create_model("matlm", **LM)
    with pytest.raises(ValueError, match="int64"):
        model(torch.randn(2, 5))
    with pytest.raises(ValueError, match="exceeds max_seq_len=16"):
        model(torch.zeros(1, 17, dtype=torch.int64))
    assert isinstance(model, MatLM)
