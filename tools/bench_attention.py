"""Benchmark bramley.core.ops.attention (every backend, against the attention a user would write instead) and packing.

Attention, GPU (default on a CUDA machine): one packed batch of 65,536 tokens, document lengths log-uniform in
[128, 8192] (the last document is cut to fill the batch exactly), bf16, model width 2048, head_dim 64 and 128, causal
and not, forward and forward+backward. Useful TFLOP/s = sum over documents of 4 * l^2 * heads * head_dim, halved for
causal, x3.5 for forward+backward, divided by the time. Contenders, interleaved round by round: every bramley backend
(``triton``, ``flash``, ``flex``, ``sdpa``, ``reference``), ``torch.nn.attention.varlen.varlen_attn`` and compiled
FlexAttention with a document mask called directly, and torch SDPA dense (cuDNN, flash) on equal-length batches of
the same token count. ``--auto-table PATH`` writes the fastest bramley backend per case (the table of
``backend="auto"``); ``--short`` is the few-iterations run of tools/gpu_check.sh (no ``reference``). The JSON is
rewritten after every (GQA, head dim, causal) group, so a run stopped by a time limit keeps what it measured.

Attention, CPU (``--cpu``): 8,192 tokens at several length spreads (equal lengths to log-uniform [16, 4096]), d64,
8 heads, causal and not, forward and forward+backward: ``attention`` (``backend="auto"``, i.e. ``sdpa`` on CPU)
against the two things a user would write with torch alone: a loop of ``F.scaled_dot_product_attention`` over the
documents (outputs concatenated) and one SDPA call on the zero-padded batch (causal: no mask, the padded keys are
invisible to real queries; otherwise a key-padding mask; the padding is done outside the timing), the padded batch
once as head-major contiguous tensors (``SDPA padded``) and once in the layout a model's projection gives,
``(batch, seq, heads, dim)`` passed as transposed views (``SDPA padded views``: what bramley's attention modules
hand SDPA; timm's ``Attention`` hands it the same kind of views, of one fused qkv tensor).
Same-run ratios, contenders interleaved round by round, median over rounds and its range.

Packing (CPU): best-fit-decreasing of 1M log-uniform lengths into 65,536-token bins (docs/s, fill ratio); pack/unpack
(gather/scatter) bandwidth against a plain copy of the same bytes (into a preallocated and into a new tensor), on the
device in use.

Results go to a JSON file and, between markers, into packages/core/BENCHMARKS.md.

    python tools/bench_attention.py                 # GPU attention + packing (attention needs CUDA)
    python tools/bench_attention.py --cpu           # CPU attention against the per-document loop and padded SDPA
    python tools/bench_attention.py --packing-only  # the packing part
    python tools/bench_attention.py --cpu-smoke     # tiny sizes of the CPU parts, writes nothing unless asked
    python tools/bench_attention.py --compile-evidence  # CPU: the design steps' registers/smem/spills (sm_90, sm_80)

The Triton backend is timed in three designs (issue 15's design steps): ``bramley (triton)`` (fused backward with
atomics, split forward loop, two blocks per SM at d128 on sm_90), ``bramley (triton, deterministic)`` (the same
forward, the split backward) and ``bramley (triton, before)`` (the design before the steps: single forward loop,
one-block configs, split backward looping over GQA groups); ``bramley (triton, persistent)`` is the default with
the persistent forward (design step 4, off by default until measured). ``--gqa 1 4`` adds GQA rows (4 query heads per
key/value head; bramley's triton and flash backends only).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bramley.core.bench import busy_cores
from bramley.core.ops import attention
from bramley.core.packing import best_fit_decreasing, cu_seqlens_from_lengths, pack, unpack
from bramley.core.report import cpu_model, replace_marked

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "packages" / "core" / "BENCHMARKS.md"


# ------------------------------------------------------------------------------------------------------ helpers
def doc_lengths(total: int, low: int, high: int, seed: int) -> list[int]:
    """Log-uniform lengths in [low, high] until ``total`` tokens; the last one is cut so they sum to ``total``."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    while sum(lengths) < total:
        lengths.append(int(np.exp(rng.uniform(np.log(low), np.log(high)))))
    lengths[-1] -= sum(lengths) - total
    return [n for n in lengths if n > 0]


def useful_flops(lengths: list[int], heads: int, head_dim: int, causal: bool, backward: bool) -> float:
    flops = sum(4.0 * n * n * heads * head_dim for n in lengths)
    if causal:
        flops /= 2
    return flops * (3.5 if backward else 1.0)


def round_times(fns: list[Callable[[], Any]], device: torch.device, warmup: int, rounds: int) -> list[list[float]]:
    """Wall time (ms) of each function in each round, the functions timed round-robin so that all of them see the
    same machine load, each round starting one function later (no function always runs right after the same other
    one: allocator and cache state carry over); ``warmup`` rounds first are not kept."""
    times: list[list[float]] = [[] for _ in fns]
    for step in range(warmup + rounds):
        first = step % len(fns)
        for fn, row in [*zip(fns, times)][first:] + [*zip(fns, times)][:first]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                row.append((time.perf_counter() - t0) * 1e3)
    return times


def step_fn(
    run: Callable[[], torch.Tensor], inputs: list[torch.Tensor], backward: bool, grad=None, context=None
) -> Callable:
    """One forward (no autograd graph) or forward+backward (with ``grad``, ones by default) of ``run``, inside
    ``context()`` when given (the Triton kernels' design variant)."""

    def step() -> None:
        for t in inputs:
            t.grad = None
        with context() if context is not None else contextlib.nullcontext():
            if backward:
                out = run()
                out.backward(torch.ones_like(out) if grad is None else grad)
            else:
                with torch.no_grad():
                    run()

    return step


@contextlib.contextmanager
def triton_design(design) -> Iterator[None]:
    """Launch the Triton kernels with ``design`` (an ``_attention_triton.Design``) inside the block."""
    from bramley.core.ops import _attention_triton

    saved, _attention_triton.DESIGN = _attention_triton.DESIGN, design
    try:
        yield
    finally:
        _attention_triton.DESIGN = saved


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        env["capability"] = "sm{}{}".format(*torch.cuda.get_device_capability(device))
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


# -------------------------------------------------------------------------------------------------- attention (GPU)
BRAMLEY_BACKENDS = ("triton", "flash", "flex", "sdpa", "reference")
# The Triton kernels' design steps (issue 15) timed against the design they replaced, in the same run. "triton" itself
# is the default: fused backward, split forward loop, two-block forward config.
# name suffix -> (deterministic, design: None = today's default, "before", "persistent" = default + persistent forward).
TRITON_VARIANTS = {"deterministic": (True, None), "before": (True, "before"), "persistent": (False, "persistent")}


def attention_methods(lengths, heads, head_dim, causal, device, dtype, backends, dense_seqs, kv_heads=None):
    """Yield ``(name, lengths_used, factory)``; ``factory(requires_grad)`` -> ``(run, inputs)`` (or ``(run, inputs,
    context)``) or a skip reason. With ``kv_heads < heads`` (GQA) only bramley's backends run."""
    from bramley.core.ops._attention_triton import Design

    total = sum(lengths)
    cu = cu_seqlens_from_lengths(lengths, device)
    max_len = max(lengths)
    kv_heads = heads if kv_heads is None else kv_heads

    def packed(requires_grad):
        return [
            torch.randn(total, h, head_dim, device=device, dtype=dtype, requires_grad=requires_grad)
            for h in (heads, kv_heads, kv_heads)
        ]

    if kv_heads != heads:
        backends = [backend for backend in backends if backend in ("triton", "flash")]
    designs = {"before": Design.before(), "persistent": Design(persistent_forward=True)}
    variants = [(backend, "", False, None) for backend in backends]
    if "triton" in backends:
        variants += [("triton", f", {name}", det, design) for name, (det, design) in TRITON_VARIANTS.items()]
    for backend, suffix, deterministic, design in variants:

        def ours(requires_grad, backend=backend, deterministic=deterministic, design=design):
            q, k, v = packed(requires_grad)

            def run():
                return attention(q, k, v, cu_seqlens=cu, max_seqlen=max_len, causal=causal, backend=backend,
                                 deterministic=deterministic)  # fmt: skip

            return run, [q, k, v], (lambda: triton_design(designs[design])) if design else None

        yield f"bramley ({backend}{suffix})", lengths, ours
    if kv_heads != heads:  # GQA rows: the design steps against the split backward and torch's FlashAttention only
        return

    def varlen(requires_grad):
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            return "torch.nn.attention.varlen not in this torch"
        q, k, v = packed(requires_grad)
        window = (-1, 0) if causal else (-1, -1)
        return (lambda: varlen_attn(q, k, v, cu, cu, max_len, max_len, window_size=window)), [q, k, v]

    yield "varlen_attn", lengths, varlen

    def flex(requires_grad):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))

        def mask_mod(b, h, q_idx, kv_idx):
            same = doc[q_idx] == doc[kv_idx]
            return same & (q_idx >= kv_idx) if causal else same

        block_mask = create_block_mask(mask_mod, 1, None, total, total, device=device)
        compiled = torch.compile(flex_attention)
        q, k, v = (
            torch.randn(1, heads, total, head_dim, device=device, dtype=dtype, requires_grad=requires_grad)
            for _ in range(3)
        )
        return (lambda: compiled(q, k, v, block_mask=block_mask)), [q, k, v]

    yield "FlexAttention (document mask)", lengths, flex

    from torch.nn.attention import SDPBackend, sdpa_kernel

    for seq in dense_seqs:
        if seq > total or total % seq:
            continue
        for name, sdp_backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):

            def dense(requires_grad, seq=seq, sdp_backend=sdp_backend):
                q, k, v = (
                    torch.randn(total // seq, heads, seq, head_dim, device=device, dtype=dtype,
                                requires_grad=requires_grad)
                    for _ in range(3)
                )  # fmt: skip

                def run():
                    with sdpa_kernel(sdp_backend):
                        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

                return run, [q, k, v]

            yield f"SDPA dense {name}, {total // seq}x{seq}", [seq] * (total // seq), dense


def bench_attention(args, device: torch.device) -> list[dict[str, Any]]:
    """The GPU table: every contender, interleaved round by round per (head dim, causal, fwd or fwd+bwd)."""
    dtype = torch.bfloat16
    lengths = doc_lengths(args.tokens, args.min_len, args.max_len, args.seed)
    rows = []
    for group, head_dim, causal in itertools.product(args.gqa, args.head_dims, (False, True)):
        heads = args.width // head_dim
        methods = list(attention_methods(lengths, heads, head_dim, causal, device, dtype, args.backends,
                                         args.dense_seqs, heads // group))  # fmt: skip
        table = {
            name: {"method": name, "head_dim": head_dim, "heads": heads, "kv_heads": heads // group, "causal": causal}
            for name, _, _ in methods
        }
        for backward in (False, True):
            key = "fwd+bwd" if backward else "fwd"
            names, steps, used = [], [], []
            for name, used_lengths, factory in methods:
                try:
                    made = factory(backward)
                    if isinstance(made, str):
                        table[name][f"{key} TFLOP/s"] = f"skipped: {made}"
                        continue
                    step = step_fn(made[0], made[1], backward, context=made[2] if len(made) > 2 else None)
                    step()  # compile / autotune outside the timing
                except Exception as exc:  # a contender this torch/GPU cannot run is recorded, not fatal
                    table[name][f"{key} TFLOP/s"] = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
                    continue
                names.append(name)
                steps.append(step)
                used.append(used_lengths)
            for name, used_lengths, times in zip(names, used, round_times(steps, device, args.warmup, args.iters)):
                ms = statistics.median(times)
                flops = useful_flops(used_lengths, heads, head_dim, causal, backward)
                table[name][f"{key} ms"] = round(ms, 3)
                table[name][f"{key} TFLOP/s"] = float(f"{flops / ms / 1e9:.4g}")
        for row in table.values():
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.json is not None:  # what is done so far survives a time limit (gpu_check.sh runs under one)
            args.json.write_text(json.dumps({"partial": True, "attention": rows}, indent=2, default=str))
    return rows


def auto_table(rows: list[dict[str, Any]], capability: str) -> dict[str, str]:
    """``backend="auto"``'s table from a GPU run: the fastest bramley backend (fwd+bwd) per head dim and mask."""
    from bramley.core.ops._auto import feature_of

    best: dict[str, tuple[float, str]] = {}
    for row in rows:
        method = row["method"]
        if not method.startswith("bramley (") or "triton, " in method or not isinstance(row.get("fwd+bwd ms"), float):
            continue
        feature = feature_of(
            -1, 0 if row["causal"] else -1, gqa=row.get("kv_heads", row.get("heads")) != row.get("heads")
        )
        key = f"{capability} bfloat16 d{row['head_dim']} {feature}"
        candidate = (row["fwd+bwd ms"], row["method"][len("bramley (") : -1])
        best[key] = min(best.get(key, candidate), candidate)
    return {key: backend for key, (_, backend) in sorted(best.items())}


# -------------------------------------------------------------------------------------------------- attention (CPU)
CPU_SPREADS = {  # name -> (low, high) of log-uniform lengths; equal lengths when low == high
    "none (32 x 256)": (256, 256),
    "narrow [192, 384]": (192, 384),
    "medium [64, 1024]": (64, 1024),
    "wide [16, 4096]": (16, 4096),
}


def cpu_contenders(lengths: list[int], heads: int, head_dim: int, causal: bool, backward: bool):
    """``{name: step}`` for bramley's ``attention`` and the two torch-only peers, on the same random batch."""
    total, batch, longest = sum(lengths), len(lengths), max(lengths)
    cu = cu_seqlens_from_lengths(lengths)
    bounds = list(itertools.pairwise(cu.tolist()))
    q, k, v = (torch.randn(total, heads, head_dim, requires_grad=backward) for _ in range(3))

    def ours():
        return attention(q, k, v, cu_seqlens=cu, max_seqlen=longest, causal=causal)

    def loop():
        docs = [[t[s:e].transpose(0, 1) for t in (q, k, v)] for s, e in bounds]
        return torch.cat([F.scaled_dot_product_attention(*doc, is_causal=causal).transpose(0, 1) for doc in docs])

    # Padded peer: the same documents zero-padded to the longest, padded outside the timing.
    padded = [torch.zeros(batch, heads, longest, head_dim) for _ in range(3)]
    for i, (s, e) in enumerate(bounds):
        for dst, src in zip(padded, (q, k, v)):
            dst[i, :, : e - s] = src[s:e].detach().transpose(0, 1)
    padded = [t.requires_grad_(backward) for t in padded]
    valid = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]  # (batch, longest)
    key_mask = None if causal else valid[:, None, None, :]

    def pad():
        return F.scaled_dot_product_attention(*padded, attn_mask=key_mask, is_causal=causal)

    # The same padded batch in the layout a model's projection gives, (batch, seq, heads, dim), handed to SDPA as
    # (batch, heads, seq, dim) views (as bramley's attention modules do; timm's, views of one fused qkv tensor).
    projected = [t.detach().transpose(1, 2).contiguous().requires_grad_(backward) for t in padded]

    def pad_views():
        views = [t.transpose(1, 2) for t in projected]
        return F.scaled_dot_product_attention(*views, attn_mask=key_mask, is_causal=causal).transpose(1, 2)

    pad_grad = valid[:, None, :, None].expand(batch, heads, longest, head_dim).float()  # no gradient into padding
    with torch.no_grad():  # the four compute one function: checked once, outside the timing
        expected = ours()
        torch.testing.assert_close(loop(), expected, atol=1e-4, rtol=1e-4)
        unpadded = torch.cat([doc[:, :n].transpose(0, 1) for doc, n in zip(pad(), lengths)])
        torch.testing.assert_close(unpadded, expected, atol=1e-4, rtol=1e-4)
        unpadded = torch.cat([doc[:n] for doc, n in zip(pad_views(), lengths)])
        torch.testing.assert_close(unpadded, expected, atol=1e-4, rtol=1e-4)
    return {
        "bramley": step_fn(ours, [q, k, v], backward),
        "SDPA loop": step_fn(loop, [q, k, v], backward),
        "SDPA padded": step_fn(pad, padded, backward, grad=pad_grad),
        "SDPA padded views": step_fn(pad_views, projected, backward, grad=pad_grad.transpose(1, 2)),
    }


def bench_cpu_attention(args) -> list[dict[str, Any]]:
    """The CPU table: ratios peer time / bramley time per round (> 1: bramley faster), median [min, max]."""
    rows = []
    for (name, (low, high)), causal in itertools.product(args.cpu_spreads.items(), (True, False)):
        lengths = (
            [low] * (args.cpu_tokens // low) if low == high else doc_lengths(args.cpu_tokens, low, high, args.seed)
        )
        longest = max(lengths)
        row: dict[str, Any] = {
            "spread": name, "docs": len(lengths), "longest": longest,
            "padding": f"{1 - sum(lengths) / (len(lengths) * longest):.0%}", "causal": causal,
        }  # fmt: skip
        for backward in (False, True):
            key = "fwd+bwd" if backward else "fwd"
            steps = cpu_contenders(lengths, args.cpu_heads, args.cpu_head_dim, causal, backward)
            with busy_cores(args.busy_cores):
                times = dict(zip(steps, round_times(list(steps.values()), torch.device("cpu"), 1, args.cpu_rounds)))
            row[f"{key} bramley ms"] = round(statistics.median(times["bramley"]), 2)
            for peer in ("SDPA loop", "SDPA padded", "SDPA padded views"):
                row[f"{key} {peer} / bramley"] = spread([p / o for p, o in zip(times[peer], times["bramley"])])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------------ packing
def time_interleaved_ms(fns: list[Callable[[], Any]], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Median wall time (ms) of each function, timed round-robin (:func:`round_times`)."""
    return [statistics.median(row) for row in round_times(fns, device, warmup, iters)]


def bench_packing(args, device: torch.device) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    lengths = np.exp(rng.uniform(np.log(args.min_len), np.log(args.max_len), args.bfd_items)).astype(np.int64)
    t0, c0 = time.perf_counter(), time.process_time()
    result = best_fit_decreasing(lengths, args.tokens)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    out: dict[str, Any] = {
        "bfd_items": int(args.bfd_items),
        "bfd_budget": int(args.tokens),
        "bfd_seconds": round(seconds, 3),
        "bfd_cpu_seconds": round(cpu_seconds, 3),  # CPU time of this process: robust to a busy machine
        "bfd_docs_per_s": round(args.bfd_items / seconds),
        "bfd_bins": len(result),
        "bfd_fill_ratio": round(result.fill_ratio, 5),
    }
    print(json.dumps(out), flush=True)

    # Gather/scatter bandwidth: a padded (batch, seq, width) bf16 activation <-> its packed tokens, as bytes read +
    # written per second. Two copy baselines of the packed bytes, same run: into a preallocated tensor (memcpy), and
    # into a new tensor (clone), which like pack/unpack also pays for allocating and first touching its output.
    dtype = torch.bfloat16
    seq = args.max_len
    doc = doc_lengths(args.tokens, args.min_len, args.max_len, args.seed + 1)
    batch = len(doc)
    padded = torch.randn(batch, seq, args.width, device=device, dtype=dtype)
    lens = torch.tensor(doc, device=device)
    packed, cu, _ = pack(padded, lengths=lens)
    moved = 2 * packed.numel() * packed.element_size()  # bytes read + written by pack
    scatter_moved = packed.numel() * packed.element_size() + padded.numel() * padded.element_size()
    copy_src = packed.clone()
    copy_dst = torch.empty_like(copy_src)
    ms_pack, ms_unpack, ms_copy, ms_clone = time_interleaved_ms(
        [lambda: pack(padded, lengths=lens), lambda: unpack(packed, cu, seq), lambda: copy_dst.copy_(copy_src),
         copy_src.clone],
        device, args.warmup, args.iters,
    )  # fmt: skip
    gbps = {
        "pack (gather) GB/s": moved / ms_pack / 1e6,
        "unpack (scatter + fill) GB/s": scatter_moved / ms_unpack / 1e6,
        "memcpy GB/s": moved / ms_copy / 1e6,
        "copy to new tensor GB/s": moved / ms_clone / 1e6,
    }
    gbps["pack / new-tensor copy"] = gbps["pack (gather) GB/s"] / gbps["copy to new tensor GB/s"]
    gbps["unpack / new-tensor copy"] = gbps["unpack (scatter + fill) GB/s"] / gbps["copy to new tensor GB/s"]
    gbps["pack / memcpy"] = gbps["pack (gather) GB/s"] / gbps["memcpy GB/s"]
    out.update({k: float(f"{v:.3g}") for k, v in gbps.items()})
    # glibc returns every freed tensor of >= 32 MiB to the OS, so each new one is page-faulted in again (the kernel
    # zeroes every page first). Runs with MALLOC_MMAP_MAX_=0 (memory reused) go to a section of their own.
    tuned = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "THP_MEM_ALLOC_ENABLE"}
    out["allocator"] = " ".join(f"{k}={v}" for k, v in sorted(tuned.items())) or "default"
    out["gather_shape"] = f"padded {tuple(padded.shape)} bf16 -> packed {tuple(packed.shape)} on {device.type}"
    print(json.dumps(out), flush=True)
    return out


# ------------------------------------------------------------------------------------------ compile-time evidence
# Per SM: registers, shared memory a block may reserve in all (bytes) and resident warps (CUDA programming guide).
SM_LIMITS = {"sm80": (65_536, 167_936, 64), "sm86": (65_536, 102_400, 48), "sm90": (65_536, 233_472, 64)}
CAPABILITIES = {"sm80": (8, 0), "sm86": (8, 6), "sm89": (8, 9), "sm90": (9, 0)}
BACKWARD_STEPS = {"pre": 0, "dkdv": 1, "dq": -1}


def representative_launch(kind: str, head_dim: int, dtype: torch.dtype, capability, variant: str, design=None):
    """The launch of ``kind`` that the launchers build for a benchmark-like batch (width 2048, 8192-token documents):
    "fwd" ("fwd-persistent": design step 4); the split backward's "pre", "dkdv", "dq" (``deterministic=True``); the
    fused backward's "bwd".
    ``variant``: "mha-causal" or "gqa-window" (2 query heads per key/value head, window (256, 0))."""
    from bramley.core.ops import _attention_triton as kernels

    heads = 2048 // head_dim
    kv_heads = heads // 2 if variant == "gqa-window" else heads
    window = (256, 0) if variant == "gqa-window" else (-1, 0)
    tokens, max_seqlen = 64, 8192
    q = torch.empty(tokens, heads, head_dim, dtype=dtype)
    kv = torch.empty(tokens, kv_heads, head_dim, dtype=dtype)
    lse = torch.empty(heads, tokens)
    cu = torch.tensor([0, tokens], dtype=torch.int32)
    scale = head_dim**-0.5
    if kind in ("fwd", "fwd-persistent"):
        if kind == "fwd-persistent":
            design = kernels.Design(persistent_forward=True)
        return kernels.forward_launch(q, kv, kv, torch.empty_like(q), lse, cu, max_seqlen, scale, *window, capability,
                                      design)  # fmt: skip
    steps = kernels.backward_launches(
        q, None, q, kv, kv, torch.empty_like(q), lse, torch.empty_like(lse), torch.empty_like(q),
        torch.empty_like(kv), torch.empty_like(kv), cu, max_seqlen, scale, *window, capability,
        deterministic=kind != "bwd", design=design,
    )  # fmt: skip
    launches = [step for step in steps if isinstance(step, kernels.Launch)]
    return launches[-1] if kind == "bwd" else launches[BACKWARD_STEPS[kind]]


def compile_launch(launch, capability):
    """Compile a launch for a GPU target as Triton's launcher would (its own launch-time specializer, so the
    alignment and ``== 1`` specializations are those of a real launch); returns the compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = triton.jit(launch.kernel)
    target = GPUTarget("cuda", capability[0] * 10 + capability[1], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.meta)
    options, signature, constexprs, attrs = fn._pack_args(backend, launch.meta, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def resource_usage(compiled, workdir: Path) -> dict[str, int]:
    """Registers per thread, local-memory stack (spills) and shared memory of a compiled kernel (cuobjdump)."""
    import re
    import subprocess

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = workdir / "kernel.cubin"
    path.write_bytes(compiled.asm["cubin"])
    out = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", out)
    if not match:
        raise RuntimeError(f"cuobjdump printed no resource usage: {out[:200]}")
    return {"registers": int(match.group(1)), "stack": int(match.group(2)), "shared": compiled.metadata.shared}


def blocks_per_sm(arch: str, registers: int, shared: int, warps: int) -> int:
    """Resident blocks per SM allowed by registers (allocated per warp in units of 256), shared memory (plus the
    1 KiB the driver reserves per block) and warps."""
    regs_per_sm, shared_per_sm, warps_per_sm = SM_LIMITS[arch]
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = regs_per_sm // (per_warp * warps)
    by_shared = shared_per_sm // (shared + 1024)
    return min(by_regs, by_shared, warps_per_sm // warps, 32)


# (design step, kind, design, variant) of the evidence table; each for sm_90 and sm_80, bf16, d64 and d128.
EVIDENCE = [
    ("before: forward, one loop, mask decided per tile", "fwd", "before", "mha-causal"),
    ("(3) forward, split loop, one-block config", "fwd", "split-one-block", "mha-causal"),
    ("(3) forward, split loop + two-block config where one exists", "fwd", "new", "mha-causal"),
    ("(4) persistent forward over a longest-first tile list", "fwd-persistent", "new", "mha-causal"),
    ("before / deterministic: split backward, dK/dV kernel", "dkdv", "new", "mha-causal"),
    ("before / deterministic: split backward, dQ kernel", "dq", "new", "mha-causal"),
    ("(1) fused backward (5 matmuls, dQ fp32 atomics)", "bwd", "new", "mha-causal"),
    ("(1)+(2) fused backward, GQA heads in parallel (dK/dV atomics)", "bwd", "new", "gqa-window"),
]


def compile_evidence(archs=("sm90", "sm80"), head_dims=(64, 128), dtype=torch.bfloat16) -> list[dict[str, Any]]:
    """Compile every design step's kernel as launched and read its resources: the rows of BENCHMARKS.md's
    "design steps: compile-time evidence" table. Runs on CPU (Triton's compiler and the bundled ptxas)."""
    import tempfile

    from bramley.core.ops._attention_triton import Design

    designs = {"before": Design.before(), "new": Design(), "split-one-block": Design(two_blocks_per_sm=False)}
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for arch, head_dim, (step, kind, design, variant) in itertools.product(archs, head_dims, EVIDENCE):
            capability = CAPABILITIES[arch]
            launch = representative_launch(kind, head_dim, dtype, capability, variant, designs[design])
            usage = resource_usage(compile_launch(launch, capability), Path(workdir))
            meta, regs, shared = launch.meta, usage["registers"], usage["shared"]
            warps = meta["num_warps"]
            row = {
                "design step": step, "arch": arch, "head_dim": head_dim, "variant": variant,
                "tile M x N, warps, stages": f"{meta['BLOCK_M']} x {meta['BLOCK_N']}, {warps}, {meta['num_stages']}",
                "threads": 32 * warps, "registers/thread": regs, "shared KiB": round(shared / 1024, 1),
                "spill stack B": usage["stack"], "blocks/SM": blocks_per_sm(arch, regs, shared, warps),
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------------ report
def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(c for row in rows for c in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    env = results["environment"]
    header = (
        f"Measured {env['date']} on {env['device']} (torch {env['torch']}, triton {env['triton']}, "
        f"Python {env['python']}, {env['cpu_threads']} torch threads on {env['cpu_count']} CPUs, load average "
        f"{env['load_average']} at the start"
        + (f", {results['busy_cores']} spinning process(es) alongside" if results.get("busy_cores") else "")
        + f"), `{results['command']}`."
    )
    if "attention" in results:
        replace_marked(path, "bench_attention:attention", header + "\n\n" + markdown_table(results["attention"]))
    if "auto_table" in results:
        body = header + "\n\n" + markdown_table([{"case": k, "backend": v} for k, v in results["auto_table"].items()])
        replace_marked(path, "bench_attention:auto-table", body)
    if "cpu_attention" in results:
        threads = env["cpu_threads"]
        busy = f"-{results['busy_cores']}-busy" if results.get("busy_cores") else ""
        name = f"cpu-attention-{threads}-thread{'s' if threads > 1 else ''}{busy}"
        replace_marked(path, f"bench_attention:{name}", header + "\n\n" + markdown_table(results["cpu_attention"]))
    if "packing" in results:
        body = header + "\n\n" + markdown_table([results["packing"]])
        reused = os.environ.get("MALLOC_MMAP_MAX_") == "0"
        replace_marked(path, "bench_attention:packing" + ("-reused-memory" if reused else ""), body)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="CPU attention against the per-document loop and padding")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes of the CPU parts (tests)")
    parser.add_argument("--short", action="store_true", help="GPU: few rounds, one dense baseline (gpu_check.sh)")
    parser.add_argument("--packing-only", action="store_true", help="only the packing benchmarks")
    parser.add_argument("--attention-only", action="store_true", help="only the attention benchmarks")
    parser.add_argument("--backends", nargs="+", default=list(BRAMLEY_BACKENDS), choices=BRAMLEY_BACKENDS)
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--min-len", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=8192)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument(
        "--gqa",
        type=int,
        nargs="+",
        default=[1],
        help="query heads per key/value head; > 1 times bramley's backends only",
    )
    parser.add_argument("--dense-seqs", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--cpu-tokens", type=int, default=8192)
    parser.add_argument("--cpu-heads", type=int, default=8)
    parser.add_argument("--cpu-head-dim", type=int, default=64)
    parser.add_argument("--cpu-rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--busy-cores", type=int, default=0, help="CPU attention: processes spinning while it is timed (a set load)"
    )
    parser.add_argument("--bfd-items", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="timed rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--auto-table", type=Path, default=None, help="write backend='auto''s table here (GPU run)")
    parser.add_argument("--markdown", type=Path, default=None, help=f"default {BENCHMARKS_MD} (not with --cpu-smoke)")
    parser.add_argument("--compile-evidence", action="store_true",
                        help="only compile the Triton kernels' design steps for sm_90/sm_80 (CPU) and table their "
                             "registers, shared memory, spills and blocks per SM")  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.cpu_spreads = CPU_SPREADS
    if args.cpu_smoke:
        args.cpu = True
        args.tokens, args.min_len, args.max_len, args.width = 256, 8, 64, 64
        args.cpu_tokens, args.cpu_heads, args.cpu_head_dim, args.cpu_rounds = 256, 2, 16, 1
        args.cpu_spreads = {"none (8 x 32)": (32, 32), "wide [4, 128]": (4, 128)}
        args.bfd_items, args.warmup, args.iters = 5_000, 0, 1
    if args.short:  # the materialising reference is no speed contender, and slow to run at 65k tokens
        args.warmup, args.iters, args.dense_seqs = 1, 5, [4096]
        args.backends = [backend for backend in args.backends if backend != "reference"]
    if args.compile_evidence:
        import triton

        command = " ".join(["python tools/bench_attention.py", *(argv if argv is not None else sys.argv[1:])])
        results = {"command": command, "triton": triton.__version__, "compile_evidence": compile_evidence()}
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2))
        header = (
            f"Compiled on CPU by triton {triton.__version__} (its bundled ptxas; resources read with cuobjdump), "
            "bf16, width 2048, a causal MHA launch and a GQA (2 query heads per key/value head) window (256, 0) "
            "launch, with the launch-time specialization of a real launch, `python tools/bench_attention.py "
            "--compile-evidence`."
        )
        body = header + "\n\n" + markdown_table(results["compile_evidence"])
        replace_marked(args.markdown or BENCHMARKS_MD, "bench_attention:design-steps-compile", body)
        return results
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    results: dict[str, Any] = {
        "command": " ".join(["python tools/bench_attention.py", *(argv if argv is not None else sys.argv[1:])]),
        "environment": environment(device),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "busy_cores": args.busy_cores,
    }
    if not args.packing_only:
        if args.cpu:
            results["cpu_attention"] = bench_cpu_attention(args)
        elif device.type != "cuda":
            print("the GPU attention benchmark needs CUDA: skipped (--cpu runs the CPU one)")
        else:
            results["attention"] = bench_attention(args, device)
            results["auto_table"] = auto_table(results["attention"], results["environment"]["capability"])
            if args.auto_table is not None:
                about = f"Written by `{results['command']}` on {results['environment']['device']}."
                measured = {k: results["environment"][k] for k in ("date", "device", "torch", "triton")}
                payload = {"about": about, "measured": measured, "choices": results["auto_table"]}
                args.auto_table.write_text(json.dumps(payload, indent=2) + "\n")
    if not args.attention_only:
        results["packing"] = bench_packing(args, device)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    markdown = args.markdown if args.markdown is not None else (None if args.cpu_smoke else BENCHMARKS_MD)
    if markdown is not None:
        write_markdown(markdown, results)
    return results


if __name__ == "__main__":
    main()
