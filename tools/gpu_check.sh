#!/usr/bin/env bash
# GPU check of bramley-core's attention and packing (issue 15), for one H100/H200 without network access.
#
# Runs, each step under its own time limit so the whole check stays under 9 minutes (a first run, 2026-12-04 on an
# H200, timed out in every step of the old 210/60/180 s limits: cold Triton and inductor compiles, pytest on one
# process; with pytest-xdist on 12 processes the pytest step took 64 s):
#   1. env.txt      GPU, driver, python/torch/triton versions, git commit
#   2. pytest.log   pytest -m gpu for ops and packing (every attention backend against float64, CUDA-graph capture,
#                   no host sync on the hot path, the Triton gather)
#   3. check.log    an independent varlen check (a from-scratch float64 per-document attention, flash-attn's error
#      check.json   rule against its own same-dtype baseline, forward and backward, every backend) and a CUDA-graph
#                   capture of a forward+backward step replayed against eager
#   4. bench.log    tools/bench_attention.py --short --gqa 1 4: every backend and the torch peers (varlen_attn,
#      bench.json   FlexAttention, dense SDPA), d64 and d128, causal and not, forward and forward+backward, the Triton
#                   kernels' design steps against the design before them ("bramley (triton, before)") and the
#                   deterministic backward, MHA and GQA (4 query heads per kv head), plus the packing bench;
#      BENCHMARKS.md  a copy of packages/core/BENCHMARKS.md with the GPU tables filled in, and the table of
#      auto_table.json  backend="auto" (copy it to packages/core/src/bramley/core/ops/ to use it)
# No install step: the image's python runs the workspace from source (PYTHONPATH).
#
# Usage: tools/gpu_check.sh [--out DIR] [--python PYTHON] [--dry-run]
#   --out DIR      output folder (default: gpu_check_<UTC date>), at most 8 files
#   --python PY    interpreter (default: $PYTHON or python)
#   --dry-run      no GPU needed: runs the Python parts on CPU at tiny sizes (what the tests do), skips pytest -m gpu
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

OUT=""
PY="${PYTHON:-python}"
DRY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) [[ $# -ge 2 ]] || { echo "gpu_check.sh: --out needs a folder" >&2; exit 2; }; OUT="$2"; shift 2 ;;
    --python) [[ $# -ge 2 ]] || { echo "gpu_check.sh: --python needs an interpreter" >&2; exit 2; }; PY="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SRC="$(printf '%s:' "$ROOT"/packages/*/src)"
export PYTHONPATH="$ROOT:${SRC}${PYTHONPATH:-}"
cd "$ROOT"

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_check.sh: python interpreter '$PY' not found (use --python)" >&2
  exit 2
fi
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "gpu_check.sh: $PY cannot import torch (use --python with the image's interpreter)" >&2
  exit 2
fi
if [[ $DRY -eq 0 ]] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check.sh: no CUDA device visible to $PY (torch.cuda.is_available() is False). Run it on the GPU" \
       "machine, or with --dry-run to exercise its Python parts on CPU." >&2
  exit 3
fi

OUT="${OUT:-gpu_check_$(date -u +%Y%m%d_%H%M%S)}"
mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-/tmp/bramley_gpu_check_triton}"  # compiled kernels, outside $OUT
export BRAMLEY_GPU_CHECK_DRY=$DRY
STATUS=()

run_step() {  # run_step NAME SECONDS LOG COMMAND...: run under a time limit, append to LOG, record the outcome
  local name="$1" limit="$2" log="$3"
  shift 3
  local start=$SECONDS
  echo "== $name (limit ${limit}s)" | tee -a "$log"
  timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  local outcome="ok"
  [[ $rc -eq 124 || $rc -eq 137 ]] && outcome="TIMED OUT"
  [[ $rc -ne 0 && $outcome == "ok" ]] && outcome="FAILED (exit $rc)"
  STATUS+=("$name: $outcome in $((SECONDS - start))s")
  echo "== $name: $outcome" | tee -a "$log"
}

# 1. Environment ---------------------------------------------------------------------------------------------------
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "dry run: $DRY"
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv
  "$PY" - <<'PY'
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
for name in ("triton", "numpy", "pytest", "hypothesis"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError:
        print(name, "MISSING")
PY
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 2. pytest -m gpu ---------------------------------------------------------------------------------------------------
TESTS=(packages/core/tests/test_ops_attention.py packages/core/tests/test_ops_attention_triton.py
       packages/core/tests/test_gather.py)
"$PY" -c 'import hypothesis' 2>/dev/null && TESTS+=(packages/core/tests/test_packing.py)
PARALLEL=()
PYTEST_LIMIT=300  # one process: the old 210 s limit was reached at 62 %
if "$PY" -c 'import xdist' 2>/dev/null; then  # compiles in parallel; the kernels share the one GPU
  PARALLEL=(-n 8)
  PYTEST_LIMIT=150
fi
if [[ $DRY -eq 0 ]]; then
  TORCHINDUCTOR_COMPILE_THREADS=2 run_step "pytest -m gpu" $PYTEST_LIMIT "$OUT/pytest.log" \
    "$PY" -m pytest -o addopts="" -p shared.pytest_plugin \
    --import-mode=importlib -m gpu -q -rfEs --tb=short "${PARALLEL[@]}" "${TESTS[@]}"
else
  echo "dry run: pytest -m gpu skipped" >"$OUT/pytest.log"
fi

# 3. Independent varlen check and CUDA-graph capture -----------------------------------------------------------------
run_step "independent varlen check + CUDA graph" 120 "$OUT/check.log" "$PY" - "$OUT/check.json" <<'PY'
"""bramley attention against a from-scratch float64 per-document attention (not bramley's reference), with
flash-attn's rule: error <= 2 x (error of the same-dtype baseline: products in the dtype, softmax in fp32) + noise."""
import itertools, json, math, os, sys
import torch
from bramley.core.ops import attention

dry = os.environ.get("BRAMLEY_GPU_CHECK_DRY") == "1"
device = "cpu" if dry else "cuda"
torch.manual_seed(0)
lengths = [1, 5, 0, 17] if dry else [1, 127, 128, 129, 2049, 0, 77, 1000]
dims = [16] if dry else [64, 128]
dtypes = [torch.float32] if dry else [torch.bfloat16, torch.float16]
backends = ["sdpa", "reference"] if dry else ["triton", "triton-deterministic", "flash", "flex", "sdpa", "auto"]
masks = {"full": (-1, -1), "causal": (-1, 0), "window": (64, 0)}
heads, kv_heads = 8, 2


def independent(q, k, v, window, scale, upcast):
    """Per document: scores, mask, softmax in fp32 (float64 when upcast), P @ V; autograd gives the gradients."""
    work = torch.float64 if upcast else q.dtype
    outs, start = [], 0
    for n in lengths:
        if n == 0:
            continue
        qd, kd, vd = (t[start : start + n].to(work).transpose(0, 1) for t in (q, k, v))
        kd, vd = kd.repeat_interleave(heads // kv_heads, 0), vd.repeat_interleave(heads // kv_heads, 0)
        i, j = torch.arange(n, device=q.device)[:, None], torch.arange(n, device=q.device)[None, :]
        visible = torch.ones(n, n, dtype=torch.bool, device=q.device)
        if window[0] >= 0:
            visible &= j >= i - window[0]
        if window[1] >= 0:
            visible &= j <= i + window[1]
        scores = (qd @ kd.transpose(-1, -2)) * scale
        probs = torch.softmax(scores.masked_fill(~visible, -math.inf).to(torch.float64 if upcast else torch.float32),
                              dim=-1).to(work)
        outs.append((probs @ vd).transpose(0, 1))
        start += n
    return torch.cat(outs)


def grads(fn, leaves, dout):
    leaves = [t.detach().requires_grad_() for t in leaves]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, dout.to(out.dtype))]


results, failed = [], 0
cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
for dtype, dim, (mask, window), backend in itertools.product(dtypes, dims, masks.items(), backends):
    total, scale = sum(lengths), dim**-0.5
    q = torch.randn(total, heads, dim, device=device).to(dtype)
    k, v = (torch.randn(total, kv_heads, dim, device=device).to(dtype) for _ in range(2))
    dout = torch.randn(total, heads, dim, device=device).to(dtype)
    row = {"backend": backend, "dtype": str(dtype).removeprefix("torch."), "head_dim": dim, "mask": mask}
    try:
        ours = grads(lambda q, k, v: attention(q, k, v, cu_seqlens=cu, max_seqlen=max(lengths), window=window,
                                               scale=scale, backend=backend.split("-")[0],
                                               deterministic=backend.endswith("-deterministic")), (q, k, v), dout)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
        failed += 1
        results.append(row)
        print(json.dumps(row), flush=True)
        continue
    exact = grads(lambda q, k, v: independent(q, k, v, window, scale, True), (q, k, v), dout)
    base = grads(lambda q, k, v: independent(q, k, v, window, scale, False), (q, k, v), dout)
    ok = True
    for name, o, e, b in zip(("out", "dq", "dk", "dv"), ours, exact, base):
        err, base_err = (o.double() - e).abs().max().item(), (b.double() - e).abs().max().item()
        e32 = e.float()
        bound = 2 * base_err + 2 * ((e32 + 0.3 - 0.3) - e32).abs().max().item()
        if dtype == torch.float32:
            bound = max(bound, 2e-5 * max(1.0, e.abs().max().item()))
        row[name] = f"{err:.2e} <= {bound:.2e}"
        ok &= err <= bound
    row["ok"] = ok
    failed += not ok
    results.append(row)
    print(json.dumps(row), flush=True)

graph = {}
if not dry:  # capture forward + backward of the hot path in a CUDA graph; replay must equal eager
    q, k, v = (torch.randn(2500, h, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for h in (heads, kv_heads, kv_heads))
    cu2 = torch.tensor([0, 1000, 1003, 2500], dtype=torch.int32, device="cuda")
    for backend in ("triton", "flash"):
        try:
            step = lambda q, k, v: attention(q, k, v, cu_seqlens=cu2, max_seqlen=1497, causal=True, backend=backend)
            graphed = torch.cuda.make_graphed_callables(step, (q, k, v))
            replay = graphed(q, k, v)
            replay.float().sum().backward()
            g_replay = [t.grad.clone() for t in (q, k, v)]
            for t in (q, k, v):
                t.grad = None
            eager = step(q, k, v)
            eager.float().sum().backward()
            # FlashAttention's backward accumulates dQ with atomics: equal up to summation order, not bitwise.
            close = lambda a, b: torch.allclose(a.float(), b.float(), rtol=2e-2, atol=1e-3)
            same = close(replay, eager) and all(close(a, t.grad) for a, t in zip(g_replay, (q, k, v)))
            graph[backend] = "replay == eager" if same else "replay differs from eager"
            failed += not same
        except Exception as exc:
            graph[backend] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
            failed += 1
        print("CUDA graph", backend, graph[backend], flush=True)

json.dump({"varlen_check": results, "cuda_graph": graph, "failed": failed}, open(sys.argv[1], "w"), indent=2)
print(f"{len(results)} cases, {failed} failed")
sys.exit(1 if failed else 0)
PY

# 4. Benchmarks ----------------------------------------------------------------------------------------------------
cp packages/core/BENCHMARKS.md "$OUT/BENCHMARKS.md"
if [[ $DRY -eq 0 ]]; then
  run_step "bench_attention --short" 210 "$OUT/bench.log" "$PY" tools/bench_attention.py --short --gqa 1 4 \
    --json "$OUT/bench.json" --markdown "$OUT/BENCHMARKS.md" --auto-table "$OUT/auto_table.json"
else
  run_step "bench_attention --cpu-smoke" 180 "$OUT/bench.log" "$PY" tools/bench_attention.py --cpu-smoke --attention-only \
    --json "$OUT/bench.json" --markdown "$OUT/BENCHMARKS.md"
fi

echo
echo "gpu_check.sh summary ($OUT):"
printf '  %s\n' "${STATUS[@]}"
[[ ${#STATUS[@]} -gt 0 ]] && ! printf '%s\n' "${STATUS[@]}" | grep -qv ': ok in '
