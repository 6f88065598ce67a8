"""DDP and FSDP2 on 2 CPU processes over gloo (torchrun), against a single-process run with the same global batch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from bramley.core.checkpoint import load_checkpoint

HELPER = Path(__file__).with_name("ddp_train.py")


def _helper():
    spec = importlib.util.spec_from_file_location("ddp_train", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "tests/ddp_train.py"]
    readme = (HELPER.parents[1] / "packages" / "core" / "README.md").read_text()
    assert "python " + " ".join(launcher) + " " in readme  # the README's command is the one tested here
    cmd = [sys.executable, *launcher, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=HELPER.parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    helper = _helper()
    return helper, helper.run(tmp_path_factory.mktemp("single"), batch_size=8)


def test_ddp_matches_single_process(distributed_run, single_run):
    out, results = distributed_run
    _, single = single_run
    assert results["world_size"] == 2 and len(single.losses) == 6
    assert results["ddp"] == pytest.approx(single.losses, rel=1e-5, abs=1e-6)
    for name, reference in (("model", single.model), ("ema", single.ema_model)):
        weights = load_checkpoint(out / "ddp" / f"{name}.safetensors")
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6)


def test_ddp_rank0_writes_checkpoint_and_metrics(distributed_run, single_run):
    out, _ = distributed_run
    _, single = single_run
    state = torch.load(out / "ddp" / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 6
    assert set(state["model"]) == set(single.model.state_dict())  # plain keys, no "module." prefix
    steps = [json.loads(line)["step"] for line in (out / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # written once (by rank 0), not once per rank


def test_fit_ends_with_one_kept_barrier(distributed_run):
    _, results = distributed_run  # and the launch exited 0: see settle() for the abort it prevents
    assert results["settled_barriers"] == 1


def test_ddp_resume_is_exact(distributed_run):
    _, results = distributed_run
    assert results["ddp_resumed"] == results["ddp"][3:]


def test_fsdp_matches_single_process(distributed_run, single_run):
    out, results = distributed_run
    _, single = single_run
    assert results["fsdp_param_type"] == "DTensor"  # really sharded by fully_shard
    assert results["fsdp"] == pytest.approx(single.losses, rel=1e-5, abs=1e-6)
    assert results["fsdp_from_ddp"] == pytest.approx(results["ddp"][3:], rel=1e-5, abs=1e-6)
    for name, reference in (("model", single.model), ("ema", single.ema_model)):  # EMA over sharded DTensors too
        weights = load_checkpoint(out / "fsdp" / f"{name}.safetensors")
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6)


def test_ddp_checkpoint_resumes_in_single_process(distributed_run, single_run, tmp_path):
    out, results = distributed_run
    helper, _ = single_run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = helper.run(tmp_path, batch_size=8, resume=str(out / "ddp_step3.pt"))
    messages = " | ".join(str(w.message) for w in caught)
    assert "written by 2 process(es)" in messages and "batch_size: 4 -> 8" in messages
    assert resumed.start_step == 3
    assert resumed.losses == pytest.approx(results["ddp"][3:], rel=1e-5, abs=1e-6)
