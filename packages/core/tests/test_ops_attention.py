"""Public API of bramley.core.ops.attention and its CPU backends (sdpa, reference; flex forward) against float64."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from bramley.core.ops import BACKENDS, _attention, _sdpa, attention, normalize_window, reference_attention, set_debug
from bramley.core.threads import torch_threads

CPU_BACKENDS = ["sdpa", "reference"]


@pytest.fixture(autouse=True)
def _debug_checks():
    """Value checks of cu_seqlens on (they are off by default: on CUDA each costs a device sync)."""
    previous = set_debug(True)
    yield
    set_debug(previous)


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


def _packed(lengths, heads=4, kv_heads=2, dim=16, dtype=torch.float64, requires_grad=False):
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, dim, dtype=dtype) for h in (heads, kv_heads, kv_heads))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)], _cu(lengths)


def _sdpa_per_doc(q, k, v, cu, causal=False, mask_fn=None):
    """Independent oracle: torch SDPA per document (float64 math backend)."""
    outs = []
    for s, e in itertools.pairwise(cu.tolist()):
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


def _band(left, right):
    def mask_fn(n):
        i = torch.arange(n)
        off = i[None, :] - i[:, None]
        return (off >= -left) & (off <= right)

    return mask_fn


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_packed_matches_sdpa_per_document(backend, causal):
    (q, k, v), cu = _packed([1, 5, 0, 17, 2])
    out = attention(q, k, v, cu_seqlens=cu, causal=causal, backend=backend)
    torch.testing.assert_close(out, _sdpa_per_doc(q, k, v, cu, causal=causal))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_dense_matches_sdpa_and_packed(backend):
    q = torch.randn(3, 9, 4, 32, dtype=torch.float64)
    k, v = torch.randn(2, 3, 9, 1, 32, dtype=torch.float64)  # MQA
    out, lse = attention(q, k, v, causal=True, return_lse=True, backend=backend)
    expected = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True
    ).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    assert out.shape == q.shape and lse.shape == (3, 4, 9) and lse.dtype == torch.float64
    packed, packed_lse = attention(
        q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), cu_seqlens=_cu([9, 9, 9]), causal=True, return_lse=True,
        backend=backend,
    )  # fmt: skip
    torch.testing.assert_close(packed.view_as(q), out)
    torch.testing.assert_close(packed_lse.view(4, 3, 9).transpose(0, 1), lse)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lse_is_logsumexp_of_scores(backend):
    (q, k, v), cu = _packed([6, 3], heads=2, kv_heads=2)
    _, lse = attention(q, k, v, cu_seqlens=cu, scale=0.3, return_lse=True, backend=backend)
    scores = torch.einsum("qhd,khd->hqk", q, k) * 0.3
    same_doc = torch.block_diag(torch.ones(6, 6), torch.ones(3, 3)).bool()
    torch.testing.assert_close(lse, torch.logsumexp(scores.masked_fill(~same_doc, float("-inf")), -1))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_window_semantics(backend):
    (q, k, v), cu = _packed([11, 4], heads=2, kv_heads=1)
    cases = [(2, False, (2, 2)), ((3, 1), False, (3, 1)), (3, True, (3, 0)), (2**31 - 1, True, (99, 0))]
    for window, causal, band in cases:
        out = attention(q, k, v, cu_seqlens=cu, window=window, causal=causal, backend=backend)
        torch.testing.assert_close(out, _sdpa_per_doc(q, k, v, cu, mask_fn=_band(*band)))
    assert normalize_window((-1, 5), causal=True) == (-1, 0)
    assert normalize_window(None, causal=False) == (-1, -1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, (2, 1)), (True, 3)])
def test_gradcheck_float64(backend, causal, window):
    """Output and LSE gradients (the LSE's own gradient included) by finite differences."""
    (q, k, v), cu = _packed([1, 4, 0, 6], heads=4, kv_heads=2, dim=8, requires_grad=True)
    torch.autograd.gradcheck(
        lambda q, k, v: attention(q, k, v, cu_seqlens=cu, causal=causal, window=window, return_lse=True,
                                  backend=backend),
        (q, k, v),
        fast_mode=True,
    )  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_runs_of_equal_lengths_match_reference(causal):
    """Adjacent documents of one length are one batched kernel call (a run); outputs, LSE and gradients, the LSE's
    own gradient included, equal the reference's whether the result is one run (returned as a view) or several."""
    for lengths in ([9, 9, 9, 2, 9, 13, 0, 1, 13], [7, 7, 7], [0, 300, 0]):
        (q, k, v), cu = _packed(lengths, heads=4, kv_heads=2, dim=8, requires_grad=True)
        results = {}
        for backend in ("sdpa", "reference"):
            out, lse = attention(q, k, v, cu_seqlens=cu, causal=causal, return_lse=True, backend=backend)
            assert out.is_contiguous() and lse.is_contiguous()
            weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
            grads = torch.autograd.grad((out * weight).sum() + lse.square().sum(), (q, k, v))
            results[backend] = (out, lse, *grads)
        for ours, ref in zip(results["sdpa"], results["reference"]):
            torch.testing.assert_close(ours, ref)
    assert _sdpa._runs(_cu([9, 9, 9, 2, 9, 13, 0, 1, 13])) == [
        (0, 3, 9), (27, 1, 2), (29, 1, 9), (38, 1, 13), (51, 1, 1), (52, 1, 13),
    ]  # fmt: skip


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_with_several_threads_is_bit_identical_to_one(causal):
    """With several torch threads the CPU runs (a long run cut in pieces) go to single-threaded workers: outputs, LSE
    and gradients (LSE's included) equal one thread's bit for bit; autograd sees one graph from the caller's thread."""
    lengths = [9, 9, 9, 9, 9, 2, 40, 13, 0, 1, 13, 70]
    assert _sdpa._pieces(_cu(lengths), 2) == [
        (0, 3, 9), (27, 2, 9), (45, 1, 2), (47, 1, 40), (87, 1, 13), (100, 1, 1), (101, 1, 13), (114, 1, 70),
    ]  # fmt: skip
    (q, k, v), cu = _packed(lengths, heads=4, kv_heads=2, dim=16, dtype=torch.float32, requires_grad=True)
    results = {}
    for threads in (1, 2):
        with torch_threads(threads):
            out, lse = attention(q, k, v, cu_seqlens=cu, causal=causal, return_lse=True)
            assert out.requires_grad and out.grad_fn is not None
            weight = torch.linspace(-1, 1, out.numel()).view_as(out)
            grads = torch.autograd.grad((out * weight).sum() + lse.square().sum(), (q, k, v))
            with torch.no_grad():
                assert not attention(q, k, v, cu_seqlens=cu, causal=causal).requires_grad
        results[threads] = (out, lse, *grads)
    for one, two in zip(results[1], results[2]):
        assert torch.equal(one, two)


@pytest.mark.parametrize("threads", [1, 2])
def test_sdpa_gathers_runs_without_a_final_cat(threads, monkeypatch):
    """With several runs each result is copied into the packed output by the thread that computed it: no ``cat`` of
    the parts afterwards, forward or backward. That ``cat`` is a parallel region on the calling thread, which with
    another process on a core took 120-160 ms instead of ~1 ms (BENCHMARKS.md). Values: the reference backend's."""
    (q, k, v), cu = _packed([9, 9, 2, 40, 13, 0, 1], requires_grad=True)

    def run(backend):
        out, lse = attention(q, k, v, cu_seqlens=cu, causal=True, return_lse=True, backend=backend)
        return out, lse, *torch.autograd.grad((out * out).sum() + lse.sum(), (q, k, v))

    expected = run("reference")

    def no_cat(*args, **kwargs):
        raise AssertionError("torch.cat was called")

    with torch_threads(threads):
        monkeypatch.setattr(torch, "cat", no_cat)
        got = run("sdpa")
        monkeypatch.undo()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_inputs_give_empty_or_zero_outputs(backend):
    (q, k, v), cu = _packed([0, 0], requires_grad=True)
    out, lse = attention(q, k, v, cu_seqlens=cu, return_lse=True, backend=backend)
    assert out.shape == (0, 4, 16) and lse.shape == (4, 0)
    out.sum().backward()
    assert q.grad.shape == q.shape
    (q, k, v), cu = _packed([], requires_grad=False)
    assert attention(q, k, v, cu_seqlens=torch.zeros(1, dtype=torch.int32), backend=backend).shape == (0, 4, 16)
    dense = torch.randn(2, 0, 4, 16, requires_grad=True)
    out, lse = attention(dense, dense, dense, return_lse=True, backend=backend)
    assert out.shape == dense.shape and lse.shape == (2, 4, 0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_is_finite_and_close(backend, dtype):
    (q, k, v), cu = _packed([3, 8], dtype=dtype, requires_grad=True)
    out = attention(q, k, v, cu_seqlens=cu, causal=True, backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert q.grad.dtype == dtype and torch.isfinite(q.grad).all()
    ref = reference_attention(q.double(), k.double(), v.double(), cu, scale=0.25, window_right=0)[0]
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph_through_custom_op(backend):
    (q, k, v), cu = _packed([3, 5], dtype=torch.float32, requires_grad=True)

    def fn(q, k, v):
        return attention(q, k, v, cu_seqlens=cu, max_seqlen=5, causal=True, backend=backend).square().sum()

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


def test_backends_that_cannot_run_here_raise(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(RuntimeError, match="backend='triton'"):
        attention(q, q, q, backend="triton")
    with pytest.raises(RuntimeError, match="backend='flash'"):
        attention(q, q, q, backend="flash")


def _fake_varlen(takes_gqa, calls=None):
    """A CPU stand-in for ``varlen_attn`` with torch 2.11's signature (no ``enable_gqa``) or a later one's; ``calls``
    collects the ``enable_gqa`` each call got."""

    def attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
               window_size=(-1, -1), enable_gqa=False):  # fmt: skip
        if calls is not None:
            calls.append(enable_gqa)
        if not enable_gqa:
            assert key.shape[1] == query.shape[1], "fewer key/value heads without enable_gqa"
        out, lse = reference_attention(query, key, value, cu_seq_q, scale, *window_size)
        return (out, lse) if return_aux is not None and return_aux.lse else out

    if takes_gqa:
        return attend

    def without_gqa(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    window_size=(-1, -1)):  # fmt: skip
        return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, return_aux=return_aux, scale=scale,
                      window_size=window_size)  # fmt: skip

    return without_gqa


@pytest.mark.parametrize("dense", [False, True], ids=["packed", "dense"])
@pytest.mark.parametrize("takes_gqa", [False, True], ids=["torch-2.11", "enable_gqa"])
def test_flash_adapts_to_the_varlen_attn_signature(takes_gqa, dense):
    """torch 2.11's varlen_attn has no enable_gqa (every flash case failed on an H200 with it passed): key/value heads
    are then repeated, and their gradients summed back over each group. Output, LSE and gradients (the LSE's too) of
    the flash backend's code past its CUDA checks, against the reference backend."""
    from torch.nn.attention.varlen import AuxRequest

    from bramley.core.ops._flash_flex import run_varlen

    lengths = [7, 7, 7] if dense else [5, 0, 9]
    (q, k, v), cu = _packed(lengths, heads=6, kv_heads=2, requires_grad=True)
    if dense:
        q, k, v = (t.detach().view(3, 7, *t.shape[1:]).requires_grad_() for t in (q, k, v))
        cu = None
    calls = []
    out, lse = run_varlen(_fake_varlen(takes_gqa, calls), AuxRequest, q, k, v, cu, max(lengths), 0.3, -1, 0, True)
    assert calls and set(calls) == {takes_gqa}, "enable_gqa is passed exactly where the signature has it"
    expected, expected_lse = attention(q, k, v, cu_seqlens=cu, causal=True, scale=0.3, return_lse=True,
                                       backend="reference")  # fmt: skip
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(lse, expected_lse)
    dout, dlse = torch.randn_like(out), torch.randn_like(lse)
    ours = torch.autograd.grad([out, lse], (q, k, v), [dout, dlse])
    exact = torch.autograd.grad([expected, expected_lse], (q, k, v), [dout, dlse])
    for a, b in zip(ours, exact):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # the LSE's gradient is computed in fp32


def test_flash_needs_a_varlen_attn_with_window_and_scale(monkeypatch):
    from torch.nn.attention import varlen

    from bramley.core.ops._flash_flex import flash_available

    def first_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        raise AssertionError("not called")

    monkeypatch.setattr(varlen, "varlen_attn", first_varlen_attn)
    assert not flash_available()
    monkeypatch.setattr(varlen, "varlen_attn", _fake_varlen(False))
    assert flash_available()


def test_flash_signature_checks_compile_without_graph_breaks_or_warnings():
    """auto and flash read varlen_attn's signature inside the code torch.compile traces (fullgraph in the CUDA test)."""
    import warnings

    from torch.nn.attention.varlen import varlen_attn

    from bramley.core.ops import _flash_flex
    from bramley.core.ops._flash_flex import flash_available, varlen_attend

    def step(x):
        varlen_attend(varlen_attn, None, 4, 0.5, (-1, 0))
        return x + 1 if flash_available() else x - 1

    assert varlen_attn in _flash_flex._parameter_names, "read at import, so compiled code never inspects it"
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(step, fullgraph=True, backend="eager")(torch.zeros(2))
    assert torch.equal(out, step(torch.zeros(2)))
    assert not [w for w in caught if "bramley" in str(w.filename) or "_flash_flex" in str(w.message)]


def test_auto_is_sdpa_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(_attention, "sdpa_forward", lambda *a: calls.append(a) or _sdpa.sdpa_forward(*a))
    (q, k, v), cu = _packed([3, 5])
    attention(q, k, v, cu_seqlens=cu)
    assert len(calls) == 1


def test_debug_flag_round_trips():
    assert set_debug(False) is True
    assert _attention.debug_enabled() is False
    assert set_debug(True) is False


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shift", [0, 3])
def test_shifted_window_attention_as_varlen_segments(backend, shift):
    """ByteFormer's (shifted) window attention == varlen attention over window segments == masked dense attention."""
    from bramley.core.packing import cu_seqlens_from_lengths, window_segments

    lengths, window = [13, 1, 8], 4
    cu = cu_seqlens_from_lengths(lengths)
    (q, k, v), _ = _packed(lengths, heads=2, kv_heads=2, dim=8)
    segments = window_segments(cu, window, shift)
    out = attention(q, k, v, cu_seqlens=segments, backend=backend)

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


LAYOUTS = {
    "packed": lambda: torch.randn(8, 4, 16),
    "packed-fused-qkv": lambda: torch.randn(8, 3, 4, 16).unbind(1)[0],
    "packed-heads-major": lambda: torch.randn(4, 8, 16).transpose(0, 1),
    "dense": lambda: torch.randn(2, 5, 4, 16),
    "dense-permuted": lambda: torch.randn(2, 4, 5, 16).transpose(1, 2),
    "dense-seq-major": lambda: torch.randn(5, 2, 4, 16).transpose(0, 1),
}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_custom_ops_pass_opcheck_on_layouts(backend, layout):
    """torch.library.opcheck: schema, fake implementations (strides included) and autograd agree with the real ops,
    for inputs in several memory layouts."""
    q, k, v = (LAYOUTS[layout]().requires_grad_() for _ in range(3))
    cu = _cu([3, 5]) if q.dim() == 3 else None
    args = (q, k, v, cu, 5, 0.25, -1, 0, backend, True)
    torch.library.opcheck(_attention._attention_fwd, args)
    out, lse = _attention._attention_fwd(*[a.detach() if isinstance(a, torch.Tensor) else a for a in args])
    bwd_args = (torch.randn_like(out), torch.randn_like(lse), q.detach(), k.detach(), v.detach(), out, lse, cu, 5,
                0.25, -1, 0, backend)  # fmt: skip
    torch.library.opcheck(_attention._attention_bwd, bwd_args)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_forward_on_cpu_matches_reference():
    """FlexAttention (eager on CPU, forward only in this torch) under the document / window masks, float64."""
    (q, k, v), cu = _packed([5, 0, 12, 3], heads=4, kv_heads=2, dim=8)
    for causal, window in [(False, None), (True, None), (False, (2, 1))]:
        out, lse = attention(q, k, v, cu_seqlens=cu, causal=causal, window=window, return_lse=True, backend="flex")
        ref_out, ref_lse = attention(q, k, v, cu_seqlens=cu, causal=causal, window=window, return_lse=True,
                                     backend="reference")  # fmt: skip
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(lse, ref_lse)
    dense = torch.randn(2, 7, 4, 8, dtype=torch.float64)
    torch.testing.assert_close(
        attention(dense, dense, dense, causal=True, backend="flex"),
        attention(dense, dense, dense, causal=True, backend="reference"),
    )
    with pytest.raises(RuntimeError, match="no backward on CPU"):
        attention(q.requires_grad_(), k, v, cu_seqlens=cu, backend="flex")


def test_auto_table_choices(monkeypatch):
    """auto on CUDA: a measured row wins (Triton only through one); otherwise flash for fp16/bf16, sdpa else."""
    from types import SimpleNamespace

    from bramley.core.ops import _auto

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(_auto, "flash_available", lambda: True)

    def fake(dtype, heads=8, dim=64):
        return SimpleNamespace(is_cuda=True, device="cuda:0", dtype=dtype, shape=(10, heads, dim))

    monkeypatch.setattr(_auto, "_table", lambda: {})
    assert _auto.auto_backend(fake(torch.bfloat16), fake(torch.bfloat16), -1, 0) == "flash"
    assert _auto.auto_backend(fake(torch.float32), fake(torch.float32), -1, 0) == "sdpa"
    table = {"sm90 bfloat16 d64 causal+gqa": "triton", "sm90 float32 d64 full": "flash"}
    monkeypatch.setattr(_auto, "_table", lambda: table)
    assert _auto.auto_backend(fake(torch.bfloat16), fake(torch.bfloat16, heads=2), -1, 0) == "triton"
    assert _auto.auto_backend(fake(torch.bfloat16), fake(torch.bfloat16), -1, 0) == "flash"
    assert _auto.auto_backend(fake(torch.float32), fake(torch.float32), -1, -1) == "sdpa"  # flash cannot run fp32
    assert _auto.table_key((8, 9), torch.float16, 128, _auto.feature_of(4, 0, False)) == "sm89 float16 d128 window"
    shipped = json.loads(_auto.TABLE_PATH.read_text())
    assert all(v in BACKENDS[1:] for v in shipped["choices"].values())
