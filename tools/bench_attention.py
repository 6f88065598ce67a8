"""Benchmark bramley.core.ops.attention (varlen flash attention) and the packing helpers.

Attention (GPU): one packed batch of 65,536 tokens, document lengths log-uniform in [128, 8192] (the last document is
cut to fill the batch exactly), bf16, model width 2048, head_dim 64 and 128, causal and not, forward and
forward+backward. Useful TFLOP/s = sum over documents of 4 * l^2 * heads * head_dim, halved for causal, x3.5 for
forward+backward, divided by the time. Baselines in the same run: torch SDPA dense (cuDNN and flash backends) on
equal-length batches of the same token count, ``torch.nn.attention.varlen.varlen_attn`` and FlexAttention with a
document mask on the same packed batch.

Packing (CPU): best-fit-decreasing of 1M log-uniform lengths into 65,536-token bins (docs/s, fill ratio); pack/unpack
(gather/scatter) bandwidth against a plain copy of the same bytes (into a preallocated and into a new tensor), on the
device in use.

Results go to a JSON file and, between markers, into packages/core/BENCHMARKS.md.

    python tools/bench_attention.py                 # everything (attention needs CUDA)
    python tools/bench_attention.py --packing-only  # the CPU part
    python tools/bench_attention.py --cpu-smoke     # tiny sizes, reference path, writes nothing unless asked
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bramley.core.ops import attention
from bramley.core.packing import best_fit_decreasing, cu_seqlens_from_lengths, pack, unpack

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


def time_ms(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fwd_bwd(run: Callable[[], torch.Tensor], inputs: list[torch.Tensor], backward: bool) -> Callable[[], None]:
    def step() -> None:
        for t in inputs:
            t.grad = None
        if backward:
            out = run()
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                run()

    return step


def environment(device: torch.device) -> dict[str, Any]:
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


# ------------------------------------------------------------------------------------------------------ attention
def attention_methods(lengths, heads, head_dim, causal, device, dtype, backend, dense_seqs):
    """Yield ``(name, lengths_used, run_factory)``; run_factory(requires_grad) -> (run, inputs) or a skip reason."""
    total = sum(lengths)
    cu = cu_seqlens_from_lengths(lengths, device)
    max_len = max(lengths)

    def packed(requires_grad):
        return [
            torch.randn(total, heads, head_dim, device=device, dtype=dtype, requires_grad=requires_grad)
            for _ in range(3)
        ]

    def ours(requires_grad):
        q, k, v = packed(requires_grad)
        return (lambda: attention(q, k, v, cu_seqlens=cu, max_seqlen=max_len, causal=causal, backend=backend)), [
            q,
            k,
            v,
        ]

    yield f"bramley ({backend})", lengths, ours

    def varlen(requires_grad):
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            return "torch.nn.attention.varlen not in this torch"
        if device.type != "cuda":
            return "needs CUDA"
        q, k, v = packed(requires_grad)
        window = (-1, 0) if causal else (-1, -1)
        return (lambda: varlen_attn(q, k, v, cu, cu, max_len, max_len, window_size=window)), [q, k, v]

    yield "varlen_attn", lengths, varlen

    def flex(requires_grad):
        if device.type != "cuda":
            return "needs CUDA (compiled FlexAttention)"
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

    sdp_backends = (
        (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION))
        if device.type == "cuda"
        else (("default", None),)
    )
    for seq in dense_seqs:
        if seq > total or total % seq:
            continue
        for name, sdp_backend in sdp_backends:

            def dense(requires_grad, seq=seq, sdp_backend=sdp_backend):
                q, k, v = (
                    torch.randn(
                        total // seq, heads, seq, head_dim, device=device, dtype=dtype, requires_grad=requires_grad
                    )
                    for _ in range(3)
                )

                def run():
                    if sdp_backend is None:
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    with sdpa_kernel(sdp_backend):
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

                return run, [q, k, v]

            yield f"SDPA dense {name}, {total // seq}x{seq}", [seq] * (total // seq), dense


def bench_attention(args, device: torch.device) -> list[dict[str, Any]]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backend = "triton" if device.type == "cuda" else "reference"
    lengths = doc_lengths(args.tokens, args.min_len, args.max_len, args.seed)
    rows = []
    for head_dim in args.head_dims:
        heads = args.width // head_dim
        for causal in (False, True):
            methods = attention_methods(lengths, heads, head_dim, causal, device, dtype, backend, args.dense_seqs)
            for name, used_lengths, factory in methods:
                row: dict[str, Any] = {"method": name, "head_dim": head_dim, "causal": causal}
                for backward in (False, True):
                    key = "fwd+bwd" if backward else "fwd"
                    try:
                        made = factory(backward)
                        if isinstance(made, str):
                            row[f"{key} TFLOP/s"] = f"skipped: {made}"
                            continue
                        run, inputs = made
                        ms = time_ms(fwd_bwd(run, inputs, backward), device, args.warmup, args.iters)
                    except Exception as exc:  # a baseline this torch/GPU cannot run is recorded, not fatal
                        row[f"{key} TFLOP/s"] = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
                        continue
                    flops = useful_flops(used_lengths, heads, head_dim, causal, backward)
                    row[f"{key} ms"] = round(ms, 3)
                    row[f"{key} TFLOP/s"] = float(f"{flops / ms / 1e9:.4g}")
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


# ------------------------------------------------------------------------------------------------------ packing
def time_interleaved_ms(fns: list[Callable[[], Any]], device: torch.device, warmup: int, iters: int) -> list[float]:
    """Median wall time (ms) of each function, timed round-robin so that all of them see the same machine load."""
    times: list[list[float]] = [[] for _ in fns]
    for step in range(warmup + iters):
        for fn, row in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                row.append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(row) for row in times]


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


# ------------------------------------------------------------------------------------------------------ report
def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(c for row in rows for c in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str) -> str:
    start, end = f"<!-- bench_attention:{name}:start -->", f"<!-- bench_attention:{name}:end -->"
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        return text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    return text.rstrip() + "\n\n" + block + "\n"


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    text = path.read_text() if path.exists() else "# bramley-core benchmarks\n"
    env = results["environment"]
    header = (
        f"Measured {env['date']} on {env['device']} (torch {env['torch']}, triton {env['triton']}, "
        f"Python {env['python']}, {env['cpu_threads']} CPU threads), `{results['command']}`."
    )
    if "attention" in results:
        body = header + "\n\n" + markdown_table(results["attention"])
        text = replace_section(text, "attention", body)
    if "packing" in results:
        body = header + "\n\n" + markdown_table([results["packing"]])
        reused = os.environ.get("MALLOC_MMAP_MAX_") == "0"
        text = replace_section(text, "packing-reused-memory" if reused else "packing", body)
    path.write_text(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU, reference path")
    parser.add_argument("--packing-only", action="store_true", help="only the packing benchmarks")
    parser.add_argument("--attention-only", action="store_true", help="only the attention benchmarks")
    parser.add_argument("--tokens", type=int, default=65_536)
    parser.add_argument("--min-len", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=8192)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--head-dims", type=int, nargs="+", default=None, help="default 64 128 (16 32 smoke)")
    parser.add_argument("--dense-seqs", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--bfd-items", type=int, default=1_000_000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help=f"default {BENCHMARKS_MD} (not with --cpu-smoke)")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.tokens, args.min_len, args.max_len, args.width = 256, 8, 64, 64
        args.head_dims = args.head_dims or [16, 32]
        args.bfd_items, args.warmup, args.iters = 5_000, 0, 1
        args.dense_seqs = [64]
    args.head_dims = args.head_dims or [64, 128]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    results: dict[str, Any] = {
        "command": " ".join(["python tools/bench_attention.py", *(argv if argv is not None else sys.argv[1:])]),
        "environment": environment(device),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    if not args.packing_only:
        if device.type != "cuda" and not args.cpu_smoke:
            print("attention benchmark needs CUDA: skipped (use --cpu-smoke for the CPU reference path)")
        else:
            results["attention"] = bench_attention(args, device)
    if not args.attention_only:
        results["packing"] = bench_packing(args, device)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    markdown = args.markdown if args.markdown is not None else (None if args.cpu_smoke else BENCHMARKS_MD)
    if markdown is not None:
        write_markdown(markdown, results)
    return results


if __name__ == "__main__":
    main()
