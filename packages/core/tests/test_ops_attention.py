"""Public API and reference path of bramley.core.ops.attention (CPU, fast)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from bramley.core.ops import attention, normalize_window, reference_attention


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _packed(lengths, heads=4, kv_heads=2, dim=16, dtype=torch.float64, requires_grad=False):
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, dim, dtype=dtype) for h in (heads, kv_heads, kv_heads))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)], _cu(lengths)


def _sdpa_per_doc(q, k, v, cu, causal=False, mask_fn=None):
    """Independent oracle: torch SDPA per document (float64 math backend)."""
    outs = []
    bounds = cu.tolist()
    for s, e in itertools.pairwise(bounds):
        if e == s:
            continue
        mask = None if mask_fn is None else mask_fn(e - s)
        o = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1),
            k[s:e].transpose(0, 1),
            v[s:e].transpose(0, 1),
            attn_mask=mask,
            is_causal=causal and mask is None,
            enable_gqa=True,
        )
        outs.append(o.transpose(0, 1))
    return torch.cat(outs) if outs else torch.zeros_like(q)


@pytest.mark.parametrize("causal", [False, True])
def test_packed_matches_sdpa_per_document(causal):
    (q, k, v), cu = _packed([1, 5, 0, 17, 2])
    out = attention(q, k, v, cu_seqlens=cu, causal=causal)
    torch.testing.assert_close(out, _sdpa_per_doc(q, k, v, cu, causal=causal))


def test_dense_matches_sdpa_and_packed():
    q = torch.randn(3, 9, 4, 32, dtype=torch.float64)
    k, v = torch.randn(2, 3, 9, 1, 32, dtype=torch.float64)  # MQA
    out, lse = attention(q, k, v, causal=True, return_lse=True)
    expected = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    assert out.shape == q.shape and lse.shape == (3, 4, 9) and lse.dtype == torch.float64
    packed, packed_lse = attention(
        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu_seqlens=_cu([9, 9, 9]), causal=True, return_lse=True
    )
    torch.testing.assert_close(packed.view_as(q), out)
    torch.testing.assert_close(packed_lse.view(4, 3, 9).transpose(0, 1), lse)


def test_lse_is_logsumexp_of_scores():
    (q, k, v), cu = _packed([6], heads=2, kv_heads=2)
    _, lse = attention(q, k, v, cu_seqlens=cu, scale=0.3, return_lse=True)
    scores = torch.einsum("qhd,khd->hqk", q, k) * 0.3
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1))


def test_window_semantics():
    (q, k, v), cu = _packed([11, 4], heads=2, kv_heads=1)

    def band(left, right):
        def mask_fn(n):
            i = torch.arange(n)
            off = i[None, :] - i[:, None]
            return (off >= -left) & (off <= right)

        return mask_fn

    torch.testing.assert_close(
        attention(q, k, v, cu_seqlens=cu, window=2), _sdpa_per_doc(q, k, v, cu, mask_fn=band(2, 2))
    )
    torch.testing.assert_close(
        attention(q, k, v, cu_seqlens=cu, window=(3, 1)), _sdpa_per_doc(q, k, v, cu, mask_fn=band(3, 1))
    )
    torch.testing.assert_close(
        attention(q, k, v, cu_seqlens=cu, window=3, causal=True), _sdpa_per_doc(q, k, v, cu, mask_fn=band(3, 0))
    )
    assert normalize_window((-1, 5), causal=True) == (-1, 0)
    assert normalize_window(None, causal=False) == (-1, -1)


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, (2, 1)), (True, 3)])
def test_gradcheck_float64(causal, window):
    (q, k, v), cu = _packed([1, 4, 0, 6], heads=4, kv_heads=2, dim=8, requires_grad=True)
    torch.autograd.gradcheck(
        lambda q, k, v: attention(q, k, v, cu_seqlens=cu, causal=causal, window=window, return_lse=True),
        (q, k, v),
        fast_mode=True,
    )


def test_empty_inputs_give_empty_or_zero_outputs():
    (q, k, v), cu = _packed([0, 0], requires_grad=True)
    out, lse = attention(q, k, v, cu_seqlens=cu, return_lse=True)
    assert out.shape == (0, 4, 16) and lse.shape == (4, 0)
    out.sum().backward()
    assert q.grad.shape == q.shape
    (q, k, v), cu = _packed([], requires_grad=False)
    assert attention(q, k, v, cu_seqlens=torch.zeros(1, dtype=torch.int32)).shape == (0, 4, 16)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_reference_is_finite_and_close(dtype):
    (q, k, v), cu = _packed([3, 8], dtype=dtype, requires_grad=True)
    out = attention(q, k, v, cu_seqlens=cu, causal=True)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert q.grad.dtype == dtype and torch.isfinite(q.grad).all()
    ref = reference_attention(q.double(), k.double(), v.double(), cu, scale=0.25, window_right=0)[0]
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


def test_torch_compile_fullgraph_through_custom_op():
    (q, k, v), cu = _packed([3, 5], dtype=torch.float32, requires_grad=True)

    def fn(q, k, v):
        return attention(q, k, v, cu_seqlens=cu, max_seqlen=5, causal=True).square().sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    loss = compiled(q, k, v)
    loss.backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    expected = fn(q, k, v)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for g, t in zip(grads, (q, k, v)):
        torch.testing.assert_close(g, t.grad)


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(k=a["k"].repeat(1, 2, 1)[:, :3], v=a["v"].repeat(1, 2, 1)[:, :3]), "multiple of key/value"),
        (lambda a: a.update(q=a["q"].float()), "share one dtype"),
        (lambda a: a.update(cu_seqlens=a["cu_seqlens"].long()), "int32"),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 5, 3, 8], dtype=torch.int32)), "non-decreasing"),
        (lambda a: a.update(cu_seqlens=torch.tensor([0, 3, 9], dtype=torch.int32)), "end at the number of tokens"),
        (lambda a: a.update(cu_seqlens=torch.tensor([1, 3, 8], dtype=torch.int32)), "start at 0"),
        (lambda a: a.update(cu_seqlens=None), "need cu_seqlens"),
        (lambda a: a.update(max_seqlen=2), "max_seqlen=2 is smaller"),
        (lambda a: a.update(k=a["k"][:, :, :8], v=a["v"][:, :, :8]), "head dims differ"),
        (lambda a: a.update(v=a["v"][:7]), "same shape"),
        (lambda a: a.update(window=-2), "window must be >= 0"),
        (lambda a: a.update(window=(1, -3)), "window sides"),
        (lambda a: a.update(backend="cuda"), "backend must be one of"),
    ],
)
def test_bad_input_raises_clear_error(change, match):
    (q, k, v), cu = _packed([3, 5], heads=4, kv_heads=2)
    args = {"q": q, "k": k, "v": v, "cu_seqlens": cu}
    change(args)
    with pytest.raises((ValueError, TypeError), match=match):
        attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)


def test_unsupported_dtype_and_head_dim():
    q = torch.randn(1, 2, 1, 300)
    with pytest.raises(ValueError, match="unsupported head dim 300"):
        attention(q, q, q)
    qi = torch.ones(1, 2, 1, 8, dtype=torch.int64)
    with pytest.raises(TypeError, match="unsupported dtype"):
        attention(qi, qi, qi)


def test_backend_triton_without_interpreter_on_cpu_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(RuntimeError, match="backend='triton'"):
        attention(q, q, q, backend="triton")


@pytest.mark.parametrize("shift", [0, 3])
def test_shifted_window_attention_as_varlen_segments(shift):
    """ByteFormer's (shifted) window attention == varlen attention over window segments == masked dense attention."""
    from bramley.core.packing import cu_seqlens_from_lengths, window_segments

    lengths, window = [13, 1, 8], 4
    cu = cu_seqlens_from_lengths(lengths)
    (q, k, v), _ = _packed(lengths, heads=2, kv_heads=2, dim=8)
    segments = window_segments(cu, window, shift)
    out = attention(q, k, v, cu_seqlens=segments)

    expected = []
    for start, end in itertools.pairwise(cu.tolist()):
        pos = torch.arange(end - start)
        win = torch.div(pos - shift + window, window, rounding_mode="floor")  # window id of each position
        mask = win[:, None] == win[None, :]
        expected.append(
            F.scaled_dot_product_attention(
                q[start:end].transpose(0, 1), k[start:end].transpose(0, 1), v[start:end].transpose(0, 1), mask
            ).transpose(0, 1)
        )
    torch.testing.assert_close(out, torch.cat(expected))
    lengths_of_windows = (segments[1:] - segments[:-1]).tolist()
    assert max(lengths_of_windows) <= window and sum(lengths_of_windows) == sum(lengths)


def test_custom_ops_pass_opcheck():
    """torch.library.opcheck: schema, fake (meta) implementations and autograd registration agree with the real ops."""
    from bramley.core.ops import _attention as ops_module

    (q, k, v), cu = _packed([3, 5], dtype=torch.float32, requires_grad=True)
    args = (q, k, v, cu, 5, 0.25, -1, 0, "auto")
    torch.library.opcheck(ops_module._attention_fwd, args)
    out, lse = ops_module._attention_fwd(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    dense = torch.randn(2, 4, 2, 8)
    torch.library.opcheck(ops_module._attention_fwd, (dense, dense, dense, None, 4, 0.3, 1, 1, "reference"))
    bwd_args = (torch.randn_like(out), torch.randn_like(lse), q.detach(), k.detach(), v.detach(), out, lse, cu, 5,
                0.25, -1, 0, "auto")  # fmt: skip
    torch.library.opcheck(ops_module._attention_bwd, bwd_args)
