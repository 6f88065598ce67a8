"""Attention kernels against float64: Triton run by the CPU interpreter (TRITON_INTERPRET=1) at small sizes, the
``sdpa`` backend's fused CPU kernels, and (``gpu``-marked, at the end) every backend on CUDA.

Half-precision accuracy follows flash-attn's rule: the error of the output and of each gradient against the float64
reference must be within 2x (plus fp32 rounding noise) of the error of flash-attn's same-dtype PyTorch baseline, which
computes the products in the input dtype but keeps the softmax in fp32 (a tighter bound than a baseline that rounds
the softmax too). fp32 has an fp32 tolerance; the LSE is fp32 arithmetic on exact products for every dtype.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from bramley.core.ops import _attention as attention_module
from bramley.core.ops import _attention_triton, attention, set_debug
from bramley.core.ops._reference import reference_attention, reference_attention_backward, visibility_mask

pytestmark = pytest.mark.usefixtures("triton_interpret")


@pytest.fixture(autouse=True)
def _debug_checks():
    previous = set_debug(True)
    yield
    set_debug(previous)


def _cu(lengths, device="cpu"):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


def _inputs(lengths, heads, kv_heads, dim, dtype, device="cpu"):
    total = sum(lengths)
    q = torch.randn(total, heads, dim, device=device).to(dtype)
    k = torch.randn(total, kv_heads, dim, device=device).to(dtype)
    v = torch.randn(total, kv_heads, dim, device=device).to(dtype)
    return q, k, v, _cu(lengths, device)


def _flash_attn_baseline(q, k, v, cu, scale, window, dout, dlse):
    """flash-attn's ``attention_ref(upcast=False)``: q @ k^T and P @ V in the input dtype, the softmax computed in fp32
    and rounded to the input dtype; gradients by autograd through the same ops. Returns ``(out, lse, grads)``."""
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    group = q.shape[1] // k.shape[1]
    outs, lses = [], []
    for s, e in itertools.pairwise(cu.tolist()):
        qd, kd, vd = (t[s:e].transpose(0, 1) for t in (q, k, v))
        kd, vd = kd.repeat_interleave(group, 0), vd.repeat_interleave(group, 0)
        scores = (qd @ kd.transpose(-1, -2)) * scale
        mask = visibility_mask(e - s, *window, q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        outs.append((probs @ vd).transpose(0, 1))
        lses.append(torch.logsumexp(scores.float(), dim=-1))
    out, lse = torch.cat(outs), torch.cat(lses, dim=1)
    loss = (out.float() * dout.float()).sum() + (0 if dlse is None else (lse * dlse).sum())
    return out.detach(), lse.detach(), torch.autograd.grad(loss, (q, k, v))


def _assert_within_baseline(name, ours, baseline, exact):
    """flash-attn's rule for fp16/bf16: ``|ours - exact| <= 2 |baseline - exact| + 2 x (fp32 rounding noise of
    exact)``. fp32 is held to an fp32 tolerance instead (flash-attn has no fp32 rule): a recompute-based backward sums
    in another order than the materialised baseline, a few ulps per term."""
    if ours.dtype == torch.float32:
        torch.testing.assert_close(ours.double(), exact, atol=2e-5, rtol=2e-5, msg=lambda m, name=name: f"{name}: {m}")
        return
    err = (ours.double() - exact).abs().max().item()
    base = (baseline.double() - exact).abs().max().item()
    exact32 = exact.float()
    noise = 2 * ((exact32 + 0.3 - 0.3) - exact32).abs().max().item()
    assert err <= 2 * base + noise, f"{name}: error {err:.3g} > 2 x baseline error {base:.3g} + {noise:.3g}"


def _check_against_reference(
    backend, lengths, heads, kv_heads, dim, dtype, window, grad_lse=True, device="cpu", deterministic=False
):
    """Output, LSE and gradients of ``attention(backend=...)`` against float64 and flash-attn's baseline."""
    q, k, v, cu = _inputs(lengths, heads, kv_heads, dim, dtype, device)
    scale = dim**-0.5
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out, lse = attention(*leaves, cu_seqlens=cu, max_seqlen=max(lengths), window=window, scale=scale,
                         return_lse=True, backend=backend, deterministic=deterministic)  # fmt: skip
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse) if grad_lse else None
    grads = torch.autograd.grad([out, lse] if grad_lse else [out], leaves, [dout, dlse] if grad_lse else [dout])

    f64 = [t.double() for t in (q, k, v)]
    exact_out, exact_lse = reference_attention(*f64, cu, scale, *window)
    exact_grads = reference_attention_backward(
        dout.double(), None if dlse is None else dlse.double(), *f64, cu, scale, *window
    )
    base_out, _, base_grads = _flash_attn_baseline(q, k, v, cu, scale, window, dout, dlse)

    assert out.dtype == dtype and lse.dtype == torch.float32
    assert all(torch.isfinite(t).all() for t in (out, lse, *grads))
    _assert_within_baseline("out", out, base_out, exact_out)
    torch.testing.assert_close(lse.double(), exact_lse, atol=1e-4, rtol=1e-5)  # fp32 arithmetic on exact products
    for name, ours, base, exact in zip(("dq", "dk", "dv"), grads, base_grads, exact_grads):
        assert ours.dtype == dtype and ours.shape == exact.shape
        _assert_within_baseline(name, ours, base, exact)


# Lengths include 1, odd lengths, an empty document and documents spanning several 16-row interpreter tiles.
LENGTHS = [1, 19, 0, 33, 6]


@pytest.mark.parametrize("backend", ["triton", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (5, 2)], ids=["full", "causal", "window"])
def test_kernels_match_float64_reference(backend, dtype, window):
    _check_against_reference(backend, LENGTHS, heads=2, kv_heads=1, dim=32, dtype=dtype, window=window)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window", [(-1, 0), (100, 0)], ids=["causal", "window"])
def test_sdpa_half_precision_gradients_on_longer_documents(dtype, window):
    """torch's half-precision kernels alone gave dK and dV errors of 2-4x flash-attn's baseline on causal documents
    of 129+ tokens (LENGTHS above are too short to show it); the backward now computes in fp32 and rounds once."""
    _check_against_reference("sdpa", [300, 129, 7], heads=8, kv_heads=2, dim=64, dtype=dtype, window=window)


@pytest.mark.parametrize(
    "heads,kv_heads,dim,window",
    [(4, 4, 16, (3, 0)), (3, 1, 64, (-1, 0)), (2, 2, 24, (-1, -1)), (4, 2, 40, (0, 7))],
    ids=["mha-d16-causal-window", "mqa-d64-causal", "d24-padded", "gqa-d40-right-window"],
)
def test_heads_and_head_dims(heads, kv_heads, dim, window):
    _check_against_reference("triton", [7, 1, 18], heads, kv_heads, dim, torch.float16, window, grad_lse=False)


# ------------------------------------------------------------------------- design steps (issue 15), on the CPU
def _grads(q, k, v, cu, window, dout, dlse, deterministic):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out, lse = attention(*leaves, cu_seqlens=cu, max_seqlen=int((cu[1:] - cu[:-1]).max()), window=window,
                         return_lse=True, backend="triton", deterministic=deterministic)  # fmt: skip
    return torch.autograd.grad([out, lse], leaves, [dout, dlse])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "heads,kv_heads,window",
    [(2, 1, (-1, 0)), (6, 2, (5, 2)), (4, 1, (-1, -1))],
    ids=["gqa2-causal", "gqa3-window", "mqa4-full"],
)
def test_split_backward_matches_float64_reference(dtype, heads, kv_heads, window):
    """deterministic=True (split kernels, GQA heads per program + group sum) under the same rule as the fused one."""
    _check_against_reference("triton", [7, 1, 18], heads, kv_heads, 16, dtype, window, deterministic=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_backward_equals_split_backward(dtype):
    """The fused backward (atomics) and the split one compute the same gradients up to summation order."""
    q, k, v, cu = _inputs([7, 0, 18], 4, 2, 16, dtype)
    dout = torch.randn_like(q)
    dlse = torch.randn(4, q.shape[0])
    fused = _grads(q, k, v, cu, (9, 3), dout, dlse, deterministic=False)
    split = _grads(q, k, v, cu, (9, 3), dout, dlse, deterministic=True)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=1.6e-2)  # ~1 bf16 ulp
    for name, a, b in zip(("dq", "dk", "dv"), fused, split):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"{name}: {m}")


def _atomic_kernels(steps):
    import inspect

    return [s.kernel.__name__ for s in steps if isinstance(s, _attention_triton.Launch)
            and "atomic_add" in inspect.getsource(s.kernel)]  # fmt: skip


def _launch_steps(heads, kv_heads, deterministic, design=None):
    q, k, v, cu = _inputs([20, 9], heads, kv_heads, 16, torch.float32)
    lse = torch.empty(heads, q.shape[0])
    return _attention_triton.backward_launches(
        q, None, q, k, v, q, lse, torch.empty_like(lse), torch.empty_like(q), torch.empty_like(k),
        torch.empty_like(v), cu, 20, 0.25, -1, 0, (9, 0), deterministic=deterministic, design=design,
    )  # fmt: skip


def test_deterministic_backward_is_bit_identical_and_uses_no_atomics():
    """deterministic=True launches no kernel that adds with atomics (the fused one does), and two runs agree to the
    bit. (The interpreter runs atomics in order, so on CPU the fused path repeats too: the gpu test below checks
    the property where it matters.)"""
    assert _atomic_kernels(_launch_steps(4, 2, deterministic=False)) == ["_bwd_fused_kernel"]
    assert _atomic_kernels(_launch_steps(4, 2, deterministic=True)) == []
    q, k, v, cu = _inputs([7, 1, 18], 2, 1, 16, torch.bfloat16)
    dout, dlse = torch.randn_like(q), torch.randn(2, q.shape[0])
    first = _grads(q, k, v, cu, (-1, 0), dout, dlse, deterministic=True)
    second = _grads(q, k, v, cu, (-1, 0), dout, dlse, deterministic=True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_gqa_backward_runs_one_program_per_query_head():
    """Design step (2): the fused kernel and the split dK/dV kernel have one program per query head (heads on grid
    axis 1); the design before looped over the GQA group in one program per key/value head."""

    def kernel(steps, name):
        return next(s for s in steps if isinstance(s, _attention_triton.Launch) and s.kernel.__name__ == name)

    for deterministic, name in ((False, "_bwd_fused_kernel"), (True, "_bwd_dkdv_kernel")):
        assert kernel(_launch_steps(6, 2, deterministic), name).grid[1] == 6
    before = kernel(_launch_steps(6, 2, True, _attention_triton.Design.before()), "_bwd_dkdv_kernel")
    assert before.grid[1] == 2 and before.args[-6] == 3  # heads_per_program = group


@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (20, 0), (5, 2), (0, 17), (33, -1)])
def test_forward_split_loop_equals_the_single_loop_and_the_reference(window):
    """Design step (3): the split loop skips the mask only on tiles every row sees whole. It must give the single
    loop's result to the bit in fp32 (a tile wrongly taken as full would add invisible keys) and the reference's."""
    q, k, v, cu = _inputs([40, 57, 3], 2, 1, 16, torch.float32)
    out = {}
    for split in (True, False):
        design = _attention_triton.Design(split_loop=split)
        o, lse = torch.empty_like(q), torch.empty(2, q.shape[0])
        _attention_triton.forward_launch(q, k, v, o, lse, cu, 57, 0.25, *window, (9, 0), design)()
        out[split] = (o, lse)
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
    expected_out, expected_lse = reference_attention(q.double(), k.double(), v.double(), cu, 0.25, *window)
    torch.testing.assert_close(out[True][0].double(), expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[True][1].double(), expected_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (5, 2)])
def test_persistent_forward_equals_the_grid_forward(window):
    """Design step (4): the persistent kernel runs the same blocks (each head of each listed tile) as the grid
    kernel, so its result is the same to the bit; empty documents and blocks past a document's end are skipped."""
    q, k, v, cu = _inputs([40, 0, 3, 57], 3, 1, 16, torch.float32)
    out = {}
    for persistent in (False, True):
        o, lse = torch.empty_like(q), torch.empty(3, q.shape[0])
        design = _attention_triton.Design(persistent_forward=persistent)
        launch = _attention_triton.forward_launch(q, k, v, o, lse, cu, 57, 0.25, *window, (9, 0), design)
        assert launch.kernel.__name__ == ("_fwd_persistent_kernel" if persistent else "_fwd_kernel")
        launch()
        out[persistent] = (o, lse)
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])


def test_forward_tiles_are_the_non_empty_blocks_longest_first():
    lengths, block = [40, 0, 3, 57], 16
    tiles, count = _attention_triton.forward_tiles(_cu(lengths), 57, block, block, -1, 0)
    num_m = 4
    expected = [(d, b) for d, n in enumerate(lengths) for b in range(num_m) if b * block < n]
    assert int(count) == len(expected) and tiles.numel() == len(lengths) * num_m
    listed = [(int(t) // num_m, int(t) % num_m) for t in tiles[: int(count)]]
    assert sorted(listed) == expected
    work = [min(b * block + block, lengths[d]) for d, b in listed]  # causal: keys 0 .. end of the block
    assert work == sorted(work, reverse=True)


def test_design_before_still_matches_the_reference():
    """The benchmark times the design before the steps beside the new one; it must still be right."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench", Path(__file__).resolve().parents[3] / "tools" / "bench_attention.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with bench.triton_design(_attention_triton.Design.before()):
        assert _attention_triton.Design.before() == _attention_triton.DESIGN
        _check_against_reference("triton", [7, 1, 18], 4, 2, 16, torch.float32, (5, 0), deterministic=True)
    assert _attention_triton.Design() == _attention_triton.DESIGN


def test_deterministic_must_be_a_bool():
    q = torch.randn(1, 3, 1, 16)
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        attention(q, q, q, backend="triton", deterministic=1)


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
WINDOWS = [(-1, -1), (-1, 0), (256, 0), (100, 50)]
CUDA_CASES = [
    *(("triton", dtype, dim, window) for dtype in (torch.float16, torch.bfloat16, torch.float32)
      for dim in (16, 32, 64, 96, 128, 256) for window in WINDOWS),
    *(("flash", dtype, dim, window) for dtype in (torch.float16, torch.bfloat16) for dim in (64, 128, 256)
      for window in WINDOWS),
    *(("flex", torch.bfloat16, dim, window) for dim in (64, 128) for window in WINDOWS[:3]),
    *(("sdpa", dtype, 64, window) for dtype in (torch.bfloat16, torch.float32) for window in WINDOWS[1:3]),
    ("reference", torch.float32, 64, (-1, 0)),
]  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("backend,dtype,dim,window", CUDA_CASES)
def test_cuda_backends_match_float64_reference(backend, dtype, dim, window, monkeypatch):
    """Every backend on CUDA: output, LSE and gradients (LSE gradient included) under the flash-attn rule."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _check_against_reference(backend, DEVICE_LENGTHS, 8, 2, dim, dtype, window, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "flash"])
def test_cuda_hot_path_has_no_host_sync_and_captures_in_a_cuda_graph(backend, monkeypatch):
    """With max_seqlen given and debug checks off, forward and backward never sync with the host: they run under
    torch's sync debug mode set to error, and capture into a CUDA graph whose replay equals the eager result."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    set_debug(False)
    q, k, v, cu = _inputs([300, 17, 0, 1000], 8, 2, 64, torch.bfloat16, device="cuda")
    leaves = [t.requires_grad_() for t in (q, k, v)]

    def step(q, k, v):
        return attention(q, k, v, cu_seqlens=cu, max_seqlen=1000, causal=True, backend=backend)

    step(*leaves).float().sum().backward()  # compile and warm up outside the checks
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = step(*leaves)
        out.float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # Fresh leaves for the capture: the eager graph above keeps the old leaves' gradient accumulators alive, bound to
    # the default stream, and torch 2.11 then refuses the capture on its side stream (seen on an H200, 2026-12-04).
    del out
    leaves = [t.detach().requires_grad_() for t in leaves]
    graphed = torch.cuda.make_graphed_callables(step, tuple(leaves))
    for t in leaves:
        t.grad = None
    replayed = graphed(*leaves)
    replayed.float().sum().backward()
    grads = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    eager = step(*leaves)
    eager.float().sum().backward()
    torch.testing.assert_close(replayed, eager)
    for g, t in zip(grads, leaves):
        torch.testing.assert_close(g, t.grad)


@pytest.mark.gpu
@pytest.mark.parametrize("heads,kv_heads", [(8, 8), (8, 2)], ids=["mha", "gqa"])
def test_cuda_deterministic_backward_is_bit_identical(heads, kv_heads, monkeypatch):
    """On the GPU, where atomics really race: deterministic=True repeats to the bit; the fused path equals it
    within bf16 rounding (it may differ in the last bits from run to run)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v, cu = _inputs([1, 127, 2049, 0, 300], heads, kv_heads, 128, torch.bfloat16, device="cuda")
    dout, dlse = torch.randn_like(q), torch.randn(heads, q.shape[0], device="cuda")
    runs = [_grads(q, k, v, cu, (-1, 0), dout, dlse, deterministic=True) for _ in range(3)]
    assert all(torch.equal(a, b) for run in runs[1:] for a, b in zip(runs[0], run))
    fused = _grads(q, k, v, cu, (-1, 0), dout, dlse, deterministic=False)
    for a, b in zip(fused, runs[0]):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_cuda_auto_never_picks_triton_unmeasured_and_compiles(monkeypatch):
    """With no measured row in the auto table, auto runs flash (bf16) on CUDA, fullgraph-compiled, not Triton."""
    from bramley.core.ops import _auto

    monkeypatch.setattr(_auto, "_table", lambda: {})
    monkeypatch.setattr(attention_module, "_forward_impl", None)  # the custom-op backends must not run
    q = torch.randn(2, 300, 8, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out = torch.compile(lambda q: attention(q, q, q, causal=True), fullgraph=True)(q)
    out.float().sum().backward()
    ref = reference_attention(*(q.detach().double().flatten(0, 1) for _ in range(3)), _cu([300, 300], "cuda"), 0.125,
                              -1, 0)[0]  # fmt: skip
    torch.testing.assert_close(out.double().flatten(0, 1), ref, atol=2e-2, rtol=2e-2)


def test_shifted_windows_as_segments_in_the_kernel():
    from bramley.core.packing import cu_seqlens_from_lengths, window_segments

    q, k, v, _ = _inputs([23, 9], 2, 1, 16, torch.float32)
    segments = window_segments(cu_seqlens_from_lengths([23, 9]), window=8, shift=4)
    out = attention(q, k, v, cu_seqlens=segments, backend="triton")
    expected = attention(q.double(), k.double(), v.double(), cu_seqlens=segments)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [(-1, 2**31 - 5), (2**31 - 5, -1), (2**31 - 1, 2**31 - 1), (40, 0)])
def test_window_sides_past_every_document_are_unbounded(window):
    """Sides near 2**31 overflowed the kernels' 32-bit block bounds (zero outputs or zero dK); any side that reaches
    past the longest document is the unbounded side."""
    q, k, v, cu = _inputs([40, 7], 2, 1, 16, torch.float32)
    unbounded = tuple(-1 if side >= 40 else side for side in window)
    out, lse = _attention_triton.forward(q, k, v, cu, 40, 0.25, *window)
    expected_out, expected_lse = reference_attention(q, k, v, cu, 0.25, *unbounded)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)
    dout = torch.randn_like(out)
    grads = _attention_triton.backward(dout, None, q, k, v, out, lse, cu, 40, 0.25, *window)
    for ours, ref in zip(grads, reference_attention_backward(dout, None, q, k, v, cu, 0.25, *unbounded)):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_dense_sequence_length_zero():
    q = torch.randn(2, 0, 2, 16, requires_grad=True)
    out, lse = attention(q, q, q, causal=True, return_lse=True, backend="triton")
    assert out.shape == (2, 0, 2, 16) and lse.shape == (2, 2, 0)
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_lse_and_delta_head_offsets_are_64_bit(tmp_path):
    """``head * stride`` of the LSE/delta rows wraps in int32 once heads x tokens >= 2**31. The kernels are launched
    with LSE and delta rows 2**30 + 64 floats apart, views into a sparse memory-mapped file (nothing is allocated),
    placed so that a wrapped offset would land inside the mapping: the test fails instead of crashing."""
    heads, lengths = 3, [9, 20]
    q, k, v, cu = _inputs(lengths, heads, 1, 16, torch.float32)
    row = 2**30 + 64
    base = 2**31  # a wrapped head-2 offset (2 * row - 2**32) from here stays in the mapping
    path = tmp_path / "rows.bin"
    elements = base + (2 * heads) * row
    with open(path, "wb") as f:
        f.truncate(elements * 4)
    mapped = torch.from_file(str(path), shared=True, size=elements, dtype=torch.float32)
    lse = mapped.as_strided((heads, q.shape[0]), (row, 1), base)
    delta = mapped.as_strided((heads, q.shape[0]), (row, 1), base + heads * row)
    out = torch.empty_like(q)
    _attention_triton.forward_launch(q, k, v, out, lse, cu, 20, 0.25, -1, 0, (9, 0))()
    expected_out, expected_lse = reference_attention(q, k, v, cu, 0.25, -1, 0)
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)
    dout = torch.randn_like(out)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    for launch in _attention_triton.backward_launches(
        dout, None, q, k, v, out, lse, delta, dq, dk, dv, cu, 20, 0.25, -1, 0, (9, 0)
    ):
        launch()
    torch.testing.assert_close(delta, (dout * out).sum(-1).t(), atol=1e-5, rtol=1e-5)
    for ours, ref in zip((dq, dk, dv), reference_attention_backward(dout, None, q, k, v, cu, 0.25, -1, 0)):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_hot_path_reads_no_offsets_on_the_host(monkeypatch):
    """Debug checks off and max_seqlen given: the Triton path neither checks cu_seqlens (``.cpu()``, a device sync
    on CUDA) nor reduces it for max_seqlen; with debug on, bad offsets are caught. (On CUDA the gpu test below runs
    the same path under torch's sync debug mode and inside a CUDA graph.)"""
    q, k, v, cu = _inputs([5, 9], 2, 1, 16, torch.float32)
    reads = []
    monkeypatch.setattr(attention_module, "_check_cu_seqlens", lambda *args: reads.append("check"))
    set_debug(False)
    attention(q, k, v, cu_seqlens=cu, max_seqlen=9, causal=True, backend="triton")
    assert reads == []
    set_debug(True)
    attention(q, k, v, cu_seqlens=cu, max_seqlen=9, causal=True, backend="triton")
    assert reads == ["check"]
