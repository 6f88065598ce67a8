"""Distributed half of tests/test_ddp.py: run with ``torchrun --nproc_per_node 2 tests/ddp_train.py OUT_DIR``.

In one launch (to pay the process start-up once) rank 0 records the per-step losses of:
``ddp`` a straight DDP run; ``ddp_resumed`` a DDP run killed after step 5 and resumed from its step-3 checkpoint;
``fsdp`` a straight FSDP2 run; ``fsdp_from_ddp`` an FSDP2 run resumed from the DDP step-3 checkpoint.
Each process sees ``batch_size=4``; the single-process reference in the test uses ``batch_size=8``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from bramley.core.train import TrainConfig, Trainer
from bramley.core.train import distributed as distributed_module


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 6, generator=g)
    return TensorDataset(x, x[:, :3].argmax(1))


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 3))


def loss_fn(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def config(out_dir: Path, batch_size: int, **kw) -> TrainConfig:
    base = dict(
        epochs=2,
        batch_size=batch_size,
        grad_accum_steps=2,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
        warmup_steps=2,
        ema_decay=0.9,
        clip_grad_norm=5.0,
        checkpoint_every=3,
        log_every=1,
        out_dir=str(out_dir),
        seed=3,
    )
    return TrainConfig(**{**base, **kw})


def run(out_dir: Path, batch_size: int, crash_at: int | None = None, **kw) -> Trainer:
    class Crash(RuntimeError):
        pass

    def crash(trainer: Trainer) -> None:
        if trainer.step == crash_at:
            raise Crash

    trainer = Trainer(
        make_model(),
        config(out_dir, batch_size, **kw),
        train_data=make_data(),
        loss_fn=loss_fn,
        callbacks=[crash] if crash_at else [],
    )
    with contextlib.suppress(Crash):
        trainer.fit()
    return trainer


def main(out: Path) -> None:
    results = {}
    results["ddp"] = run(out / "ddp", 4).losses
    run(out / "ddp_resume", 4, crash_at=5)
    if dist.get_rank() == 0:
        shutil.copy(out / "ddp_resume" / "checkpoint.pt", out / "ddp_step3.pt")
    dist.barrier()
    results["ddp_resumed"] = run(out / "ddp_resume", 4, resume=True).losses
    fsdp = run(out / "fsdp", 4, distributed="fsdp")
    results["fsdp"] = fsdp.losses
    results["fsdp_param_type"] = type(fsdp.model[0].weight).__name__
    from_ddp = run(out / "fsdp_from_ddp", 4, distributed="fsdp", resume=str(out / "ddp_step3.pt"))
    results["fsdp_from_ddp"] = from_ddp.losses
    results["world_size"] = dist.get_world_size()
    results["settled_barriers"] = len(distributed_module._settled)  # each fit() settled; only the last one is kept
    if dist.get_rank() == 0:
        (out / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
