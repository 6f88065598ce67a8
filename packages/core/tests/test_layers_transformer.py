"""Transformer layers of bramley.core.layers: attention (packed/dense, causal, window, GQA, RoPE), MLPs, norms,
drop path and layer scale, against plain-torch / float64 / timm references (CPU, fast)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.layers import (
    Attention,
    DropPath,
    LayerScale,
    LayerScale2d,
    Mlp,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    apply_rotary,
)
from bramley.core.packing import position_ids


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


def _attn(dim=32, heads=4, kv_heads=None, **kw) -> Attention:
    return Attention(dim, heads, num_kv_heads=kv_heads, **kw).double()


# ------------------------------------------------------------------------------------------ plain torch references
def _rope_complex(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE via complex multiplication on the (i, i + d/2) channel pairs, float64. x: (..., tokens, heads, d)."""
    d = x.shape[-1]
    freqs = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[..., None] * freqs  # (..., tokens, d/2)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double()) * torch.polar(
        torch.ones_like(angles), angles
    ).unsqueeze(-2)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def _mask(n: int, causal: bool, window) -> torch.Tensor:
    """Boolean (n, n) mask: query i sees key j iff i - left <= j <= i + right (-1: unbounded)."""
    left, right = (-1, -1) if window is None else (window, window) if isinstance(window, int) else window
    right = 0 if causal else right
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    ok = torch.ones(n, n, dtype=torch.bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    return ok


def _plain_attention(module: Attention, x: torch.Tensor, causal=False, window=None, positions=None) -> torch.Tensor:
    """One document or a dense batch (batch, n, dim): explicit q/k/v, repeated kv heads, SDPA with a bool mask."""
    h, kvh, d = module.num_heads, module.num_kv_heads, module.head_dim
    w, b = module.qkv.weight, module.qkv.bias
    q = F.linear(x, w[: h * d], None if b is None else b[: h * d]).unflatten(-1, (h, d))
    k = F.linear(x, w[h * d : (h + kvh) * d], None if b is None else b[h * d : (h + kvh) * d]).unflatten(-1, (kvh, d))
    v = F.linear(x, w[(h + kvh) * d :], None if b is None else b[(h + kvh) * d :]).unflatten(-1, (kvh, d))
    if module.qk_norm == "head":
        q, k = module.q_norm(q), module.k_norm(k)
    elif module.qk_norm == "full":
        q, k = module.q_norm(q.flatten(-2)).unflatten(-1, (h, d)), module.k_norm(k.flatten(-2)).unflatten(-1, (kvh, d))
    if positions is not None:
        q, k = _rope_complex(q, positions), _rope_complex(k, positions)
    k, v = k.repeat_interleave(h // kvh, dim=-2), v.repeat_interleave(h // kvh, dim=-2)
    mask = _mask(x.shape[-2], causal, window)
    out = F.scaled_dot_product_attention(q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2), attn_mask=mask)
    return module.proj(out.transpose(-3, -2).flatten(-2))


# ------------------------------------------------------------------------------------------------------ attention
CASES = [
    dict(causal=False, window=None, kv_heads=None),
    dict(causal=True, window=None, kv_heads=None),
    dict(causal=False, window=2, kv_heads=2),  # GQA + symmetric window
    dict(causal=True, window=3, kv_heads=1),  # MQA + causal sliding window
    dict(causal=False, window=(1, 4), kv_heads=2),  # asymmetric window
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("use_rope", [False, True])
def test_attention_matches_plain_torch_dense_and_packed(case, use_rope):
    module = _attn(kv_heads=case["kv_heads"])
    rope = RotaryEmbedding(module.head_dim)
    kw = dict(causal=case["causal"], window=case["window"])
    # dense batch vs the plain implementation
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    pos = torch.arange(11)
    got = module(x, rotary=rope(pos) if use_rope else None, **kw)
    torch.testing.assert_close(got, _plain_attention(module, x, positions=pos if use_rope else None, **kw))
    # packed documents (including length 1, an empty one and odd lengths) vs the plain implementation per document
    lengths = [5, 1, 0, 9, 4]
    cu = _cu(lengths)
    xp = torch.randn(sum(lengths), 32, dtype=torch.float64)
    pos = position_ids(cu)
    got = module(xp, cu_seqlens=cu, rotary=rope(pos) if use_rope else None, **kw)
    for s, e in itertools.pairwise(cu.tolist()):
        if e > s:
            want = _plain_attention(module, xp[s:e], positions=pos[s:e] if use_rope else None, **kw)
            torch.testing.assert_close(got[s:e], want)


def test_packed_equals_dense_per_document_with_gradients():
    module = _attn(kv_heads=2)
    rope = RotaryEmbedding(module.head_dim, base=500000.0)
    lengths = [7, 3, 7, 1]
    cu = _cu(lengths)
    xp = torch.randn(sum(lengths), 32, dtype=torch.float64, requires_grad=True)
    packed = module(xp, cu_seqlens=cu, max_seqlen=7, causal=True, rotary=rope(position_ids(cu)))
    grad = torch.randn_like(packed)
    (gx,) = torch.autograd.grad(packed, xp, grad)
    for s, e in itertools.pairwise(cu.tolist()):
        xd = xp[s:e].detach().clone().requires_grad_(True)
        dense = module(xd[None], causal=True, rotary=rope(torch.arange(e - s)))[0]
        torch.testing.assert_close(dense, packed[s:e])
        (gd,) = torch.autograd.grad(dense, xd, grad[s:e])
        torch.testing.assert_close(gd, gx[s:e])
    # a dense batch of equal-length documents == the same documents packed; (batch, seq, head_dim) rotary works too
    a, b = xp[:7].detach(), xp[10:17].detach()
    dense = module(torch.stack([a, b]), causal=True, rotary=rope(torch.arange(7).expand(2, 7)))
    packed = module(torch.cat([a, b]), cu_seqlens=_cu([7, 7]), causal=True, rotary=rope(position_ids(_cu([7, 7]))))
    torch.testing.assert_close(dense.flatten(0, 1), packed)


def test_attention_gradients_match_plain_torch():
    module = _attn(kv_heads=2)
    x = torch.randn(2, 6, 32, dtype=torch.float64, requires_grad=True)
    ours = module(x, window=(2, 1), rotary=RotaryEmbedding(8)(torch.arange(6)))
    ref = _plain_attention(module, x, window=(2, 1), positions=torch.arange(6))
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, [x, *module.parameters()], g)
    ref_grads = torch.autograd.grad(ref, [x, *module.parameters()], g)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_attention_loads_timm_weights():
    from timm.layers import Attention as TimmAttention

    timm_attn = TimmAttention(32, num_heads=4, qkv_bias=True).eval()
    ours = Attention(32, 4).eval()
    ours.load_state_dict(timm_attn.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(ours(x), timm_attn(x), atol=1e-6, rtol=1e-5)


def test_attention_qk_norm_head_loads_timm_weights():
    from timm.layers import Attention as TimmAttention

    timm_attn = TimmAttention(32, num_heads=4, qkv_bias=True, qk_norm=True, norm_layer=torch.nn.LayerNorm).eval()
    ours = Attention(32, 4, qk_norm="head").eval()
    with torch.no_grad():  # non-trivial norm affines, so a norm over the wrong channels cannot pass
        for norm in (timm_attn.q_norm, timm_attn.k_norm):
            norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
    ours.load_state_dict(timm_attn.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(ours(x), timm_attn(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("qk_norm", ["head", "full"])
def test_attention_qk_norm_before_rope_packed_gqa(qk_norm):
    module = _attn(kv_heads=2, qk_norm=qk_norm)
    with torch.no_grad():
        for norm in (module.q_norm, module.k_norm):
            norm.weight.uniform_(0.5, 1.5), norm.bias.normal_()
    width = {"head": 8, "full": 32}[qk_norm]
    assert module.q_norm.normalized_shape == (width,) and module.k_norm.normalized_shape == (
        width // 2 ** (qk_norm == "full"),
    )
    rope = RotaryEmbedding(module.head_dim)
    cu = _cu([6, 1, 5])
    x = torch.randn(12, 32, dtype=torch.float64)
    pos = position_ids(cu)
    got = module(x, cu_seqlens=cu, causal=True, rotary=rope(pos))
    for s, e in itertools.pairwise(cu.tolist()):
        torch.testing.assert_close(got[s:e], _plain_attention(module, x[s:e], causal=True, positions=pos[s:e]))
    with pytest.raises(ValueError, match="qk_norm must be one of"):
        Attention(32, 4, qk_norm="yes")


def test_attention_parameter_layout():
    attn = Attention(64, 8, num_kv_heads=2, qkv_bias=False, proj_bias=False)
    shapes = {k: tuple(v.shape) for k, v in attn.state_dict().items()}
    assert shapes == {"qkv.weight": ((8 + 2 * 2) * 8, 64), "proj.weight": (64, 64)}


def test_attention_torch_compile_fullgraph_matches_eager():
    module = Attention(32, 4, num_kv_heads=2).eval()
    rope = RotaryEmbedding(8)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    cu = _cu([3, 6, 1])
    xp = torch.randn(10, 32)
    rot = rope(position_ids(cu))
    torch.testing.assert_close(
        compiled(xp, cu_seqlens=cu, max_seqlen=6, causal=True, rotary=rot),
        module(xp, cu_seqlens=cu, max_seqlen=6, causal=True, rotary=rot),
    )
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(compiled(x, window=1), module(x, window=1))
    # packed DropPath traces too (no value-dependent shapes): still one draw per document
    drop = torch.compile(DropPath(0.5).train(), backend="aot_eager", fullgraph=True)
    y = drop(xp + 5.0, cu_seqlens=cu)
    for s, e in itertools.pairwise(cu.tolist()):
        assert len(set((y[s:e] / (xp[s:e] + 5.0)).flatten().round(decimals=4).tolist())) == 1


@pytest.mark.parametrize(
    "build, call, error, match",
    [
        (lambda: Attention(30, 4), None, ValueError, r"dim \(30\) must be divisible by num_heads \(4\)"),
        (lambda: Attention(32, 4, num_kv_heads=3), None, ValueError, r"multiple of num_kv_heads \(3\)"),
        (lambda: Attention(32, 4), lambda m: m(torch.randn(2, 5, 16)), ValueError, r"Attention\(dim=32\)"),
        (lambda: Attention(32, 4), lambda m: m(torch.randn(5, 32)), ValueError, "needs cu_seqlens"),
        (
            lambda: Attention(32, 4),
            lambda m: m(torch.randn(2, 5, 32), cu_seqlens=_cu([5, 5])),
            ValueError,
            "cu_seqlens is for packed",
        ),
        (lambda: Attention(32, 4), lambda m: m(torch.randn(2, 3, 5, 32)), ValueError, "got shape"),
        (
            lambda: Attention(32, 4),
            lambda m: m(torch.randn(7, 32), cu_seqlens=_cu([3, 3])),
            ValueError,
            "cu_seqlens must end at the number of tokens",
        ),
        (
            lambda: Attention(32, 4),
            lambda m: m(torch.randn(2, 5, 32), rotary=RotaryEmbedding(8)(torch.arange(6))),
            ValueError,
            "rotary cos/sin must be dense",
        ),
        (
            lambda: Attention(32, 4),
            lambda m: m(torch.randn(5, 32), cu_seqlens=_cu([5]), rotary=RotaryEmbedding(16)(torch.arange(5))),
            ValueError,
            "rotary cos/sin must be packed",
        ),
    ],
)
def test_attention_bad_input(build, call, error, match):
    with pytest.raises(error, match=match):
        module = build()
        call(module)


# --------------------------------------------------------------------------------------------------------- rotary
def test_rotary_matches_complex_reference_and_shapes():
    rope = RotaryEmbedding(16, base=1000.0)
    positions = torch.randint(0, 4096, (3, 5))
    cos, sin = rope(positions)
    assert cos.shape == sin.shape == (3, 5, 16) and cos.dtype == torch.float32
    x = torch.randn(3, 5, 2, 16, dtype=torch.float64)
    torch.testing.assert_close(apply_rotary(x, cos, sin), _rope_complex(x, positions, base=1000.0), atol=2e-4, rtol=0)
    # rotations preserve the norm; position 0 is the identity
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    c0, s0 = rope(torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(apply_rotary(x[:, :1], c0, s0), x[:, :1])


def test_rotary_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(32)
    q, k = torch.randn(2, 32, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        cos, sin = rope(torch.tensor([m, n]))
        rq = apply_rotary(q[None, None], cos[:1].double(), sin[:1].double())
        rk = apply_rotary(k[None, None], cos[1:].double(), sin[1:].double())
        return float((rq * rk).sum())

    for m, n in [(0, 3), (5, 1), (7, 7)]:
        for shift in (1, 13, 250):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-3)
    assert score(0, 5) != pytest.approx(score(0, 6), abs=1e-3)  # but it does depend on the offset


def test_rotary_bad_input():
    with pytest.raises(ValueError, match="even head_dim"):
        RotaryEmbedding(7)
    with pytest.raises(TypeError, match="integer tensor"):
        RotaryEmbedding(8)(torch.arange(4.0))


# --------------------------------------------------------------------------------------------------- mlp and norm
def test_mlp_and_swiglu_formulas():
    x = torch.randn(2, 3, 8)
    mlp = Mlp(8, 24, out_features=5, act_layer=nn.ReLU)
    assert mlp(x).shape == (2, 3, 5) and Mlp(8, 24)(x).shape == x.shape
    torch.testing.assert_close(mlp(x), mlp.fc2(torch.relu(mlp.fc1(x))))
    assert sorted(Mlp(8, 24).state_dict()) == ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]
    swiglu = SwiGLU(8, 20)
    assert swiglu(x).shape == x.shape and not any(k.endswith("bias") for k in swiglu.state_dict())
    torch.testing.assert_close(
        swiglu(x), (F.silu(x @ swiglu.w1.weight.T) * (x @ swiglu.w3.weight.T)) @ swiglu.w2.weight.T
    )


def test_mlp_dropout_only_in_training():
    mlp = Mlp(8, 16, drop=0.5)
    x = torch.randn(4, 8)
    assert torch.equal(mlp.eval()(x), mlp(x))
    assert not torch.equal(mlp.train()(x), mlp(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rmsnorm_matches_float64_formula(dtype):
    norm = RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = (torch.randn(3, 4, 16) * 30).to(dtype)
    x64 = x.double()
    want = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5)
    got = norm(x)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
    # normalized in float32 (float64), cast back to the input dtype, then times the weight (Llama's order)
    torch.testing.assert_close(got, want.to(dtype) * norm.weight, atol=tol, rtol=tol)
    assert got.dtype == torch.promote_types(dtype, norm.weight.dtype)
    with pytest.raises(ValueError, match=r"RMSNorm\(dim=16\)"):
        norm(torch.randn(2, 8))


# ------------------------------------------------------------------------------------------------------ drop path
def test_drop_path_identity_in_eval_and_at_zero():
    x = torch.randn(4, 3, 5)
    assert DropPath(0.5).eval()(x) is x
    assert DropPath(0.0).train()(x) is x
    packed = x.reshape(12, 5)
    assert DropPath(0.5).eval()(packed, cu_seqlens=_cu([4, 8])) is packed
    with pytest.raises(ValueError, match=r"drop_prob must be in \[0, 1\)"):
        DropPath(1.0)


def test_drop_path_matches_timm_bit_for_bit():
    from timm.layers import DropPath as TimmDropPath

    x = torch.randn(16, 4, 3, 3)
    torch.manual_seed(3)
    want = TimmDropPath(0.3).train()(x)
    torch.manual_seed(3)
    got = DropPath(0.3).train()(x)
    assert torch.equal(got, want)


def test_drop_path_packed_one_draw_per_document():
    lengths = [3, 0, 1, 6, 2, 5]
    cu = _cu(lengths)
    x = torch.randn(sum(lengths), 4) + 5.0  # no zeros in x
    drop = DropPath(0.5).train()
    seen = set()
    for _ in range(30):
        y = drop(x, cu_seqlens=cu)
        for s, e in itertools.pairwise(cu.tolist()):
            if e == s:
                continue
            ratio = y[s:e] / x[s:e]
            assert torch.allclose(ratio, torch.zeros_like(ratio)) or torch.allclose(ratio, torch.full_like(ratio, 2.0))
            seen.add(float(ratio[0, 0]))
    assert seen == {0.0, 2.0}


def test_drop_path_preserves_expectation():
    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    x = torch.ones(20000, 3)
    assert float(drop(x).mean()) == pytest.approx(1.0, abs=0.03)
    cu = torch.arange(0, 40001, 2, dtype=torch.int32)  # 20000 documents of 2 tokens
    y = drop(torch.ones(40000, 3), cu_seqlens=cu)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.03)
    assert float((y[0::2] == y[1::2]).float().mean()) == 1.0
    with pytest.raises(ValueError, match="number of packed tokens"):
        drop(torch.ones(5, 3), cu_seqlens=_cu([2, 2]))


# ---------------------------------------------------------------------------------------------------- layer scale
def test_layer_scale_shapes_names_and_timm_parity():
    from timm.models.fastvit import LayerScale2d as TimmFastVitLayerScale2d

    ls = LayerScale(8, init_values=0.1)
    assert list(ls.state_dict()) == ["gamma"] and ls.gamma.shape == (8,)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(ls(x), x * 0.1)
    ls2 = LayerScale2d(8, 1e-6)
    timm_ls2 = TimmFastVitLayerScale2d(8, 1e-6)
    assert {k: v.shape for k, v in ls2.state_dict().items()} == {k: v.shape for k, v in timm_ls2.state_dict().items()}
    with torch.no_grad():
        timm_ls2.gamma.normal_()
    ls2.load_state_dict(timm_ls2.state_dict())
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(ls2(x), timm_ls2(x))
    with pytest.raises(ValueError, match=r"\(B, 8, H, W\)"):
        ls2(torch.randn(2, 4, 4, 8))
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        ls(torch.randn(2, 8, 4))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_layer_scale_and_drop_path_script_and_fx_trace():
    """Their input checks step aside in TorchScript and torch.fx (bramley.core.layers.checks); outputs are unchanged."""
    block = nn.Sequential(LayerScale2d(8, 0.5), DropPath(0.3)).train()
    x = torch.randn(4, 8, 3, 3)
    for graph in (torch.jit.script(block), torch.fx.symbolic_trace(block)):
        torch.manual_seed(0)
        want = block(x)
        torch.manual_seed(0)
        assert torch.equal(graph(x), want)
    scripted = torch.jit.script(DropPath(0.3).train())
    with pytest.raises(Exception, match="not supported in TorchScript"):
        scripted(torch.randn(6, 4), _cu([2, 4]))
    assert torch.equal(torch.jit.script(LayerScale(8, 0.5))(torch.ones(2, 8)), torch.full((2, 8), 0.5))


# --------------------------------------------------------------------------------------------------------- README
def test_readme_transformer_layers_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Transformer layers", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    exec(compile(code, "README.md#transformer-layers", "exec"), {})
    assert capsys.readouterr().out.strip() == "torch.Size([10, 64]) True"
