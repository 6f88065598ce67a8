"""The Triton kernels compile for sm_80, sm_86/89 and sm_90 on a machine without a GPU, as they are launched.

Triton's NVIDIA backend ships ptxas, so the whole pipeline (Triton IR -> PTX -> cubin) runs on CPU; cuobjdump then
reads the resource usage. Each kernel is compiled from the arguments its launcher would pass (``forward_launch`` /
``backward_launches`` on representative tensors: width 2048, 8192-token documents), bound by Triton's own launch-time
specializer for the target, so the alignment and ``== 1`` specializations are those of a real launch. Asserted: no
local-memory spill stack and shared memory within the architecture's limit, for the config the launcher picks.

The default run compiles the benchmark's configuration (bf16, head dim 128, MHA causal) for each kernel and
architecture; ``BRAMLEY_COMPILE_MATRIX=1`` compiles every config of the table (5 head dims x fp16/bf16 and fp32 x 3
architectures x 2 launch variants, about 8 minutes on 2 cores). Speed itself needs a GPU (tools/bench_attention.py).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from bramley.core.ops import _attention_triton as kernels  # noqa: E402

# Triton 3.9 warns once that its FP-fusion default will change in 3.10; irrelevant to these checks.
pytestmark = pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")
CAPABILITIES = {"sm80": (8, 0), "sm86": (8, 6), "sm89": (8, 9), "sm90": (9, 0)}
VARIANTS = ("mha-causal", "gqa-window")
MATRIX = os.environ.get("BRAMLEY_COMPILE_MATRIX") == "1"


def representative_launch(kind: str, head_dim: int, dtype: torch.dtype, capability, variant: str):
    """The launch of ``kind`` ("fwd", "pre", "dkdv", "dq") that the launchers build for a benchmark-like batch."""
    heads = 2048 // head_dim
    kv_heads = heads // 2 if variant == "gqa-window" else heads
    window = (256, 0) if variant == "gqa-window" else (-1, 0)
    tokens, max_seqlen = 64, 8192
    q = torch.empty(tokens, heads, head_dim, dtype=dtype)
    kv = torch.empty(tokens, kv_heads, head_dim, dtype=dtype)
    lse = torch.empty(heads, tokens)
    cu = torch.tensor([0, tokens], dtype=torch.int32)
    scale = head_dim**-0.5
    if kind == "fwd":
        return kernels.forward_launch(q, kv, kv, torch.empty_like(q), lse, cu, max_seqlen, scale, *window, capability)
    launches = kernels.backward_launches(
        q, None, q, kv, kv, torch.empty_like(q), lse, torch.empty_like(lse), torch.empty_like(q),
        torch.empty_like(kv), torch.empty_like(kv), cu, max_seqlen, scale, *window, capability,
    )  # fmt: skip
    return launches[("pre", "dkdv", "dq").index(kind)]


def compile_launch(launch, capability):
    """Compile a launch for a GPU target as Triton's launcher would; returns the compiled kernel."""
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


def resource_usage(compiled, tmp_path: Path) -> dict[str, int]:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = tmp_path / "kernel.cubin"
    path.write_bytes(compiled.asm["cubin"])
    out = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", out)
    assert match, out
    return {"registers": int(match.group(1)), "stack": int(match.group(2)), "shared": compiled.metadata.shared}


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
        return [*cases, ("sm89", "dq", 128, torch.bfloat16, "mha-causal"), ("sm90", "pre", 128, torch.bfloat16,
                                                                             "mha-causal")]  # fmt: skip
    return [
        (arch, kind, dim, dtype, variant)
        for arch in ("sm80", "sm86", "sm90")
        for kind in ("fwd", "dkdv", "dq")
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
