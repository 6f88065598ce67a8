"""The Triton kernels compile for sm_80, sm_86/89 and sm_90 on a machine without a GPU, as they are launched.

Triton's NVIDIA backend ships ptxas, so the whole pipeline (Triton IR -> PTX -> cubin) runs on CPU; cuobjdump then
reads the resource usage. Each kernel is compiled from the arguments its launcher would pass (``forward_launch`` /
``backward_launches`` on representative tensors: width 2048, 8192-token documents), bound by Triton's own launch-time
specializer for the target, so the alignment and ``== 1`` specializations are those of a real launch. Asserted: no
local-memory spill stack and shared memory within the architecture's limit, for the config the launcher picks.

The default run compiles the benchmark's configuration (bf16, head dim 128, MHA causal) for each kernel and
architecture, and the fused backward (issue 15's design step 1, with GQA atomics too); ``BRAMLEY_COMPILE_MATRIX=1``
compiles every config of the table (4 kernels x 5 head dims x fp16/bf16 and fp32 x 3 architectures x 2 launch
variants, about 10 minutes on 2 cores) and regenerates BENCHMARKS.md's compile-evidence table to compare it with the
committed one. The compile helpers live in tools/bench_attention.py (``--compile-evidence`` writes that table).
Speed itself needs a GPU (tools/bench_attention.py).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from bramley.core.ops import _attention_triton as kernels  # noqa: E402

# Triton 3.9 warns once that its FP-fusion default will change in 3.10; irrelevant to these checks.
pytestmark = pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
ROOT = Path(__file__).resolve().parents[3]
CAPABILITIES = {"sm80": (8, 0), "sm86": (8, 6), "sm89": (8, 9), "sm90": (9, 0)}
VARIANTS = ("mha-causal", "gqa-window")
MATRIX = os.environ.get("BRAMLEY_COMPILE_MATRIX") == "1"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "tools" / "bench_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
representative_launch = bench.representative_launch  # the launches of a benchmark-like batch, per kernel
compile_launch = bench.compile_launch
resource_usage = bench.resource_usage


@pytest.fixture
def fresh_triton_cache(tmp_path, monkeypatch):
    """A private kernel cache, so every test really compiles (a cached binary would hide compiler breakage)."""
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("triton's NVIDIA backend (ptxas) is not installed")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))


def _cases():
    if not MATRIX:
        default = [("sm80", "sm86", "sm90"), ("fwd", "dkdv", "dq"), (128,), (torch.bfloat16,), ("mha-causal",)]
        cases = [(a, k, d, t, v) for a in default[0] for k in default[1] for d in default[2] for t in default[3]
                 for v in default[4]]  # fmt: skip
        extra = [("sm89", "dq", 128, torch.bfloat16, "mha-causal"), ("sm90", "pre", 128, torch.bfloat16, "mha-causal"),
                 ("sm90", "bwd", 128, torch.bfloat16, "mha-causal"), ("sm80", "bwd", 128, torch.bfloat16, "mha-causal"),
                 ("sm90", "bwd", 128, torch.bfloat16, "gqa-window"),
                 ("sm90", "fwd-persistent", 128, torch.bfloat16, "mha-causal")]  # fmt: skip
        return [*cases, *extra]
    return [
        (arch, kind, dim, dtype, variant)
        for arch in ("sm80", "sm86", "sm90")
        for kind in ("fwd", "dkdv", "dq", "bwd")
        for dim in (16, 32, 64, 128, 256)
        for dtype in (torch.bfloat16, torch.float32)
        for variant in VARIANTS
    ]


@pytest.mark.usefixtures("fresh_triton_cache")
@pytest.mark.parametrize("arch,kind,head_dim,dtype,variant", _cases())
def test_kernels_compile_as_launched_without_spills(arch, kind, head_dim, dtype, variant, tmp_path):
    capability = CAPABILITIES[arch]
    launch = representative_launch(kind, head_dim, dtype, capability, variant)
    usage = resource_usage(compile_launch(launch, capability), tmp_path)
    config = {k: launch.meta.get(k) for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")}
    assert usage["stack"] == 0, f"{arch} {kind} d{head_dim} {dtype} {variant} {config} spills: {usage}"
    assert usage["shared"] <= kernels.MAX_SHARED[capability], f"{arch} {kind} {config}: too much shared memory"
    if (arch, kind, head_dim, dtype) == ("sm90", "fwd", 128, torch.bfloat16):  # design step (3)
        blocks = bench.blocks_per_sm(arch, usage["registers"], usage["shared"], launch.meta["num_warps"])
        assert blocks >= 2, f"the d128 forward should fit two blocks per SM on sm_90: {usage} {config}"


def test_architecture_tables():
    assert [kernels.architecture(c) for c in [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0)]] == [
        "sm86", "sm80", "sm86", "sm86", "sm90", "sm90",
    ]  # fmt: skip
    for (arch, fp32, kind, block_d), config in kernels._ARCH_CONFIGS.items():
        assert kernels._configs(kind, block_d, torch.float32 if fp32 else torch.bfloat16, CAPABILITIES[arch]) == config


@pytest.mark.usefixtures("fresh_triton_cache")
def test_interpreter_runs_leave_the_compiler_working(monkeypatch, tmp_path):
    """An interpreted launch patches triton.language; it must be undone, or later GPU builds in the process fail."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(5, 1, 16)
    kernels.forward(q, q, q, torch.tensor([0, 5], dtype=torch.int32), 5, 0.25, -1, 0)
    monkeypatch.delenv("TRITON_INTERPRET")
    launch = representative_launch("fwd", 32, torch.bfloat16, (9, 0), "mha-causal")
    assert compile_launch(launch, (9, 0)).asm["cubin"]


@pytest.mark.skipif(not MATRIX, reason="recompiles every design step's kernels (BRAMLEY_COMPILE_MATRIX=1)")
@pytest.mark.usefixtures("fresh_triton_cache")
def test_benchmarks_md_compile_evidence_is_current():
    """BENCHMARKS.md's "design steps: compile-time evidence" table is what the compiler gives for today's kernels."""
    text = (ROOT / "packages" / "core" / "BENCHMARKS.md").read_text()
    table = bench.markdown_table(bench.compile_evidence())
    assert table in text, "BENCHMARKS.md is stale: run python tools/bench_attention.py --compile-evidence"
