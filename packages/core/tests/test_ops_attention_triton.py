"""Triton attention kernels run by the CPU interpreter (TRITON_INTERPRET=1) at small sizes, against float64.

Accuracy follows flash-attn's rule: the kernel's error against the float64 reference must be within 2x (plus a few
ulps) of the error of a same-dtype PyTorch baseline (the reference path computed in that dtype throughout).
CUDA runs of the same checks at full-size shapes are the ``gpu``-marked tests at the end.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from bramley.core.ops import _attention as attention_module
from bramley.core.ops import _attention_triton, attention
from bramley.core.ops._reference import reference_attention, reference_attention_backward

pytestmark = pytest.mark.usefixtures("triton_interpret")


def _cu(lengths, device="cpu"):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


def _inputs(lengths, heads, kv_heads, dim, dtype, device="cpu"):
    total = sum(lengths)
    q = torch.randn(total, heads, dim, device=device).to(dtype)
    k = torch.randn(total, kv_heads, dim, device=device).to(dtype)
    v = torch.randn(total, kv_heads, dim, device=device).to(dtype)
    return q, k, v, _cu(lengths, device)


def _ulps(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """flash-attn's slack: the rounding error of representing the reference in ``dtype`` (times 2)."""
    return 2 * ((ref + 0.3 - 0.3).to(dtype).double() - ref).abs().max().item() + 1e-6


def _assert_within_baseline(name, ours, baseline, exact, dtype):
    err = (ours.double() - exact).abs().max().item()
    base = (baseline.double() - exact).abs().max().item()
    bound = 2 * base + _ulps(exact, dtype)
    assert err <= bound, f"{name}: kernel error {err:.3g} > 2 x baseline error {base:.3g} + ulps"


def _check_against_reference(lengths, heads, kv_heads, dim, dtype, window, scale=None, grad_lse=True):
    left, right = window
    q, k, v, cu = _inputs(lengths, heads, kv_heads, dim, dtype)
    scale = scale or dim**-0.5
    max_len = max(lengths)
    out, lse = _attention_triton.forward(q, k, v, cu, max_len, scale, left, right)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse) if grad_lse else None
    grads = _attention_triton.backward(dout, dlse, q, k, v, out, lse, cu, max_len, scale, left, right)

    f64 = [t.double() for t in (q, k, v)]
    exact_out, exact_lse = reference_attention(*f64, cu, scale, left, right)
    exact_grads = reference_attention_backward(
        dout.double(), None if dlse is None else dlse.double(), *f64, cu, scale, left, right
    )
    base_out, base_lse = reference_attention(q, k, v, cu, scale, left, right, compute_dtype=dtype)
    base_grads = reference_attention_backward(dout, dlse, q, k, v, cu, scale, left, right, compute_dtype=dtype)

    assert out.dtype == dtype and lse.dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in (out, lse, *grads))
    _assert_within_baseline("out", out, base_out, exact_out, dtype)
    _assert_within_baseline("lse", lse, base_lse, exact_lse, torch.float32 if dtype == torch.float32 else dtype)
    for name, ours, base, exact in zip(("dq", "dk", "dv"), grads, base_grads, exact_grads):
        assert ours.dtype == dtype and ours.shape == exact.shape
        _assert_within_baseline(name, ours, base, exact, dtype)


# Lengths include 1, odd lengths, an empty document and documents spanning several 16-row interpreter tiles.
LENGTHS = [1, 19, 0, 33, 6]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (5, 2)], ids=["full", "causal", "window"])
def test_kernels_match_float64_reference(dtype, window):
    _check_against_reference(LENGTHS, heads=2, kv_heads=1, dim=32, dtype=dtype, window=window)


@pytest.mark.parametrize(
    "heads,kv_heads,dim,window",
    [(4, 4, 16, (3, 0)), (3, 1, 64, (-1, 0)), (2, 2, 24, (-1, -1)), (4, 2, 40, (0, 7))],
    ids=["mha-d16-causal-window", "mqa-d64-causal", "d24-padded", "gqa-d40-right-window"],
)
def test_heads_and_head_dims(heads, kv_heads, dim, window):
    _check_against_reference([7, 1, 18], heads, kv_heads, dim, torch.float16, window, grad_lse=False)


def test_public_api_runs_the_kernels_dense_and_autograd(monkeypatch):
    """attention(backend='triton') goes through the custom op into the kernels, never the reference path."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the reference path ran instead of the Triton kernels")

    monkeypatch.setattr(attention_module, "reference_attention", forbidden)
    monkeypatch.setattr(attention_module, "reference_attention_backward", forbidden)
    q = torch.randn(2, 21, 2, 32, dtype=torch.float16, requires_grad=True)
    k, v = (torch.randn(2, 21, 1, 32, dtype=torch.float16, requires_grad=True) for _ in range(2))
    out, lse = attention(q, k, v, causal=True, return_lse=True, backend="triton")
    (out.float().square().sum() + lse.sum()).backward()
    assert lse.shape == (2, 2, 21)
    monkeypatch.undo()

    f64 = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    ref_out, ref_lse = attention(*f64, causal=True, return_lse=True)
    (ref_out.square().sum() + ref_lse.sum()).backward()
    torch.testing.assert_close(out.double(), ref_out, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4, rtol=1e-4)
    for ours, ref in zip((q, k, v), f64):
        torch.testing.assert_close(ours.grad.double(), ref.grad, atol=2e-2, rtol=2e-2)


def test_strided_inputs_from_fused_qkv():
    """q/k/v sliced out of one (total, 3, heads, dim) projection: non-contiguous token strides are read in place."""
    qkv = torch.randn(12, 3, 2, 16)
    q, k, v = qkv.unbind(1)
    cu = _cu([5, 7])
    out, lse = _attention_triton.forward(q, k, v, cu, 7, 0.25, -1, -1)
    ref_out, ref_lse = reference_attention(q.double(), k.double(), v.double(), cu, 0.25)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


def test_empty_batch_and_empty_documents():
    q, k, v, cu = _inputs([0, 0], 2, 1, 16, torch.float32)
    out, lse = _attention_triton.forward(q, k, v, cu, 0, 0.25, -1, 0)
    assert out.shape == (0, 2, 16) and lse.shape == (2, 0)
    grads = _attention_triton.backward(out, None, q, k, v, out, lse, cu, 0, 0.25, -1, 0)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]


# ------------------------------------------------------------------------------------------------------ CUDA
DEVICE_LENGTHS = [1, 127, 128, 129, 1000, 0, 2049, 77]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("dim", [16, 32, 64, 96, 128, 256])
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (256, 0), (100, 50)])
def test_cuda_kernels_match_float64_reference(dtype, dim, window, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(0)
    left, right = window
    q, k, v, cu = _inputs(DEVICE_LENGTHS, 8, 2, dim, dtype, device="cuda")
    scale = dim**-0.5
    max_len = max(DEVICE_LENGTHS)
    out, lse = _attention_triton.forward(q, k, v, cu, max_len, scale, left, right)
    dout = torch.randn_like(out)
    grads = _attention_triton.backward(dout, None, q, k, v, out, lse, cu, max_len, scale, left, right)
    f64 = [t.double() for t in (q, k, v)]
    exact_out, exact_lse = reference_attention(*f64, cu, scale, left, right)
    exact_grads = reference_attention_backward(dout.double(), None, *f64, cu, scale, left, right)
    base_out, _ = reference_attention(q, k, v, cu, scale, left, right, compute_dtype=dtype)
    base_grads = reference_attention_backward(dout, None, q, k, v, cu, scale, left, right, compute_dtype=dtype)
    _assert_within_baseline("out", out, base_out, exact_out, dtype)
    torch.testing.assert_close(lse.double(), exact_lse, atol=1e-3, rtol=1e-3)
    for name, ours, base, exact in zip(("dq", "dk", "dv"), grads, base_grads, exact_grads):
        _assert_within_baseline(name, ours, base, exact, dtype)


@pytest.mark.gpu
def test_cuda_auto_dispatch_uses_triton_and_compiles():
    q = torch.randn(2, 300, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = torch.compile(lambda q: attention(q, q, q, causal=True), fullgraph=True)(q)
    out.float().sum().backward()
    ref = attention(q.detach().double(), q.detach().double(), q.detach().double(), causal=True)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


def test_shifted_windows_as_segments_in_the_kernel():
    from bramley.core.packing import cu_seqlens_from_lengths, window_segments

    q, k, v, _ = _inputs([23, 9], 2, 1, 16, torch.float32)
    segments = window_segments(cu_seqlens_from_lengths([23, 9]), window=8, shift=4)
    out = attention(q, k, v, cu_seqlens=segments, backend="triton")
    expected = attention(q.double(), k.double(), v.double(), cu_seqlens=segments)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
