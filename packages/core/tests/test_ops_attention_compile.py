"""The Triton kernels compile for an H100 (sm_90) on a machine without a GPU, without register spills.

Triton's NVIDIA backend ships ptxas, so the whole pipeline (Triton IR -> PTX -> cubin) runs on CPU; cuobjdump then
reads the resource usage. This catches kernels that only the interpreter accepts, shared-memory overflows and launch
configurations that spill to local memory. Speed itself needs a GPU (tools/bench_attention.py).
"""

from __future__ import annotations

import inspect
import re
import subprocess
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from bramley.core.ops import _attention_triton as kernels  # noqa: E402

H100_MAX_SHARED = 227 * 1024
# Triton 3.9 warns once that its FP-fusion default will change in 3.10; irrelevant to these checks.
pytestmark = pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")


def _compile(fn, pointer_types, constexprs, warps, stages):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(fn).parameters)
    signature = {
        n: pointer_types.get(n, "constexpr" if n in constexprs else "fp32" if "scale" in n else "i32") for n in names
    }
    source = ASTSource(
        fn=triton.jit(fn), signature=signature, constexprs={(names.index(n),): v for n, v in constexprs.items()}
    )
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def _resource_usage(cubin: bytes, tmp_path: Path) -> dict[str, int]:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    out = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+) STACK:(\d+)", out)
    assert match, out
    return {"registers": int(match.group(1)), "stack": int(match.group(2))}


KERNELS = {"fwd": "_fwd_kernel", "dkdv": "_bwd_dkdv_kernel", "dq": "_bwd_dq_kernel"}
SLOW = pytest.mark.slow
CASES = [
    pytest.param(kind, dim, dtype, marks=() if (kind, dim, dtype) == ("fwd", 128, torch.bfloat16) else SLOW)
    for kind in KERNELS
    for dim in (32, 64, 128, 256)
    for dtype in (torch.bfloat16, torch.float32)
]


@pytest.fixture
def fresh_triton_cache(tmp_path, monkeypatch):
    """A private kernel cache, so every test really compiles (a cached binary would hide compiler breakage)."""
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("triton's NVIDIA backend (ptxas) is not installed")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))


@pytest.mark.usefixtures("fresh_triton_cache")
@pytest.mark.parametrize("kind,head_dim,dtype", CASES)
def test_kernels_compile_for_sm90_without_spills(kind, head_dim, dtype, tmp_path):
    elem = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    pointers = {n: f"*{elem}" for n in ("Q", "K", "V", "O", "DO", "DK", "DV", "DQ")}
    pointers.update(LSE="*fp32", DELTA="*fp32", CU="*i32")
    block_d = kernels._block_d(head_dim)
    block_m, block_n, warps, stages = kernels._configs(kind, block_d, dtype)
    constexprs = {
        "HEAD_DIM": head_dim,
        "BLOCK_D": block_d,
        "BLOCK_M": block_m,
        "BLOCK_N": block_n,
        "HAS_LEFT": True,  # the window case has the most live values
        "HAS_RIGHT": True,
        **kernels._dot_flags(dtype),
    }
    compiled = _compile(getattr(kernels, KERNELS[kind]), pointers, constexprs, warps, stages)
    usage = _resource_usage(compiled.asm["cubin"], tmp_path)
    assert compiled.metadata.shared <= H100_MAX_SHARED
    assert usage["stack"] == 0, f"{kind} d{head_dim} {elem} {(block_m, block_n, warps, stages)} spills: {usage}"


@pytest.mark.usefixtures("fresh_triton_cache")
def test_interpreter_runs_leave_the_compiler_working(monkeypatch):
    """An interpreted launch patches triton.language; it must be undone, or later GPU builds in the process fail."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(5, 1, 16)
    kernels.forward(q, q, q, torch.tensor([0, 5], dtype=torch.int32), 5, 0.25, -1, 0)
    monkeypatch.delenv("TRITON_INTERPRET")
    pointers = {n: "*bf16" for n in ("Q", "K", "V", "O")}
    pointers.update(LSE="*fp32", CU="*i32")
    constexprs = {"HEAD_DIM": 32, "BLOCK_D": 32, "BLOCK_M": 64, "BLOCK_N": 32, "HAS_LEFT": False, "HAS_RIGHT": True}
    compiled = _compile(kernels._fwd_kernel, pointers, {**constexprs, **kernels._dot_flags(torch.bfloat16)}, 4, 2)
    assert compiled.asm["cubin"]
