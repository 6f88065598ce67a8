"""bramley.core.train: config, schedules, EMA, accumulation, AMP, metrics, checkpoints and exact resume."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from bramley.core import checkpoint as checkpoint_module
from bramley.core.checkpoint import CheckpointError
from bramley.core.config import ConfigError
from bramley.core.train import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    LRSchedule,
    ModelEma,
    ShardedBatchSampler,
    TrainConfig,
    Trainer,
    param_groups,
    resolve_amp,
)
from bramley.core.train import trainer as trainer_module
from bramley.core.train.trainer import TrainingDiverged


def make_data(n: int = 48, dim: int = 6, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = (x[:, :classes].argmax(1)).long()
    return TensorDataset(x, y)


def make_model(seed: int = 0, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def ce_loss(model, batch):
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.float(), y), {"acc": (logits.argmax(1) == y).float().mean()}


def top1(model, loader):
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return {"top1": correct / total}


# ---------------------------------------------------------------- config
def test_config_from_dict_coerces_and_round_trips():
    cfg = TrainConfig.from_dict({"lr": "1e-3", "epochs": 2, "betas": [0.9, 0.95], "clip_grad_norm": None})
    assert cfg.lr == 1e-3 and cfg.betas == (0.9, 0.95) and cfg.clip_grad_norm is None
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(batch_size=8).batch_size == 8


def test_config_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown TrainConfig keys \['learning_rate'\].*valid keys:.*\blr\b"):
        TrainConfig.from_dict({"learning_rate": 0.1})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer": "lamb"}, "optimizer='lamb' is not one of sgd, adamw"),
        ({"amp": "fp8"}, "amp='fp8'"),
        ({"grad_accum_steps": 0}, "grad_accum_steps must be >= 1"),
        ({"ema_decay": 1.0}, "ema_decay must be in"),
        ({"checkpoint_every": 5}, "need out_dir"),
        ({"resume": True}, "need out_dir"),
        ({"lr": "fast"}, "lr must be float"),
        ({"device": "tpu"}, r"device='tpu' is not one of auto, cpu, cuda, cuda:N, mps"),
        ({"device": "cuda:x"}, r"device='cuda:x' is not one of"),
        ({"amp": "fp16", "device": "cpu"}, r"amp='fp16' needs a CUDA device, got device='cpu'"),
        ({"lr": float("nan")}, r"TrainConfig\.lr must be a finite number, got nan"),
        ({"lr": "1e999"}, r"TrainConfig\.lr must be a finite number, got inf"),
        ({"momentum": float("inf")}, r"TrainConfig\.momentum must be a finite number"),
        ({"weight_decay": float("nan")}, r"TrainConfig\.weight_decay must be a finite number"),
        ({"eps": float("-inf")}, r"TrainConfig\.eps must be a finite number"),
        ({"betas": [0.9, float("nan")]}, r"TrainConfig\.betas must be a finite number, got \(0\.9, nan\)"),
        ({"warmup_epochs": float("inf")}, r"TrainConfig\.warmup_epochs must be a finite number"),
        ({"warmup_start_factor": float("nan")}, r"TrainConfig\.warmup_start_factor must be a finite number"),
        ({"clip_grad_norm": float("inf")}, r"TrainConfig\.clip_grad_norm must be a finite number"),
        ({"ema_decay": float("nan")}, r"TrainConfig\.ema_decay must be a finite number"),
        ({"min_lr_ratio": float("nan")}, r"TrainConfig\.min_lr_ratio must be a finite number"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1\.0"),
        ({"momentum": -0.1}, r"momentum must be in \[0, 1\)"),
        ({"betas": [0.9, 1.0]}, r"betas must each be in \[0, 1\)"),
        ({"eps": -1e-8}, r"eps must be >= 0"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(changes)


def test_config_accepts_device_names():
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert TrainConfig(device=device).device == device
    assert TrainConfig(amp="fp16", device="cuda:0").amp == "fp16"  # checked against the hardware by the Trainer


# ---------------------------------------------------------------- schedules
def test_warmup_cosine_values():
    s = LRSchedule("cosine", total_steps=14, warmup_steps=4, min_ratio=0.1)
    assert [s(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s(4) == pytest.approx(1.0)
    assert s(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s(14) == pytest.approx(0.1)
    values = [s(i) for i in range(4, 15)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_linear_constant_and_start_factor():
    lin = LRSchedule("linear", total_steps=10, warmup_steps=0)
    assert [lin(i) for i in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    const = LRSchedule("constant", total_steps=10, warmup_steps=2, warmup_start_factor=0.5)
    assert [const(i) for i in (0, 1, 2, 9)] == pytest.approx([0.75, 1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="warmup_steps"):
        LRSchedule("cosine", total_steps=3, warmup_steps=5)


def test_trainer_applies_schedule_per_step(tmp_path):
    cfg = TrainConfig(
        epochs=2, batch_size=8, lr=0.2, schedule="cosine", warmup_epochs=1, log_every=1, out_dir=str(tmp_path)
    )
    trainer = Trainer(make_model(), cfg, train_data=make_data(32), loss_fn=ce_loss)
    trainer.fit()
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / METRICS_NAME).read_text().splitlines()) if r["kind"] == "train"]
    expected = [0.2 * LRSchedule("cosine", 8, 4)(i) for i in range(8)]
    assert lrs == pytest.approx(expected)


# ---------------------------------------------------------------- sampler
def test_sharded_sampler_union_matches_single_process():
    single = ShardedBatchSampler(20, 4, seed=3, drop_last=True)
    shards = [ShardedBatchSampler(20, 2, seed=3, drop_last=True, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for s in [single, *shards]:
            s.set_epoch(epoch)
        for big, a, b in zip(single, *shards):
            assert sorted(big) == sorted(a + b)
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert list(single) != first and sorted(i for batch in single for i in batch) == list(range(20))


def test_sampler_padding_and_errors():
    s = ShardedBatchSampler(5, 2, shuffle=False, drop_last=False, rank=1, world_size=2)
    assert list(s) == [[1, 3], [0]]  # padded with the first index so both ranks get 3 samples
    with pytest.raises(ValueError, match="no batch"):
        ShardedBatchSampler(3, 4, drop_last=True)


# ---------------------------------------------------------------- EMA and optimizer groups
def test_ema_math_and_warmup():
    model = nn.Linear(2, 1)
    ema = ModelEma(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, 0.9 * start + 0.1 * model.weight, rtol=0, atol=1e-6)
    warm = ModelEma(model, decay=0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(warm.current_decay())
        warm.update(model)
    assert decays == pytest.approx([2 / 11, 3 / 12, 4 / 13])


def test_param_groups_skip_norm_and_bias():
    model = make_model()
    groups = param_groups(model, weight_decay=0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight), id(model[4].weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 4
    assert len(param_groups(model, 0.1, decay_norm_and_bias=True)) == 1


# ---------------------------------------------------------------- accumulation and AMP
def _linear_run(batch_size: int, accum: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    cfg = TrainConfig(
        epochs=2, batch_size=batch_size, grad_accum_steps=accum, lr=0.05, momentum=0.9, weight_decay=1e-3, seed=1
    )
    data = make_data(32)
    Trainer(model, cfg, train_data=data, loss_fn=lambda m, b: F.mse_loss(m(b[0]), F.one_hot(b[1], 3).float())).fit()
    return model.state_dict()


def test_grad_accumulation_matches_big_batch():
    big, accumulated = _linear_run(8, 1), _linear_run(4, 2)
    for key in big:
        torch.testing.assert_close(accumulated[key], big[key], rtol=0, atol=1e-6)


def test_partial_accumulation_group_still_steps():
    cfg = TrainConfig(epochs=1, batch_size=8, grad_accum_steps=4, drop_last=True)
    trainer = Trainer(make_model(), cfg, train_data=make_data(40), loss_fn=ce_loss)  # 5 batches -> 4 + 1
    assert trainer.steps_in_epoch(0) == 2
    trainer.fit()
    assert trainer.step == 2 and len(trainer.losses) == 2


def test_bf16_autocast_on_cpu():
    seen = []

    def loss_fn(model, batch):
        logits = model(batch[0])
        seen.append(logits.dtype)
        return F.cross_entropy(logits.float(), batch[1])

    cfg = TrainConfig(steps=3, batch_size=8, amp="bf16")
    result = Trainer(make_model(), cfg, train_data=make_data(), loss_fn=loss_fn).fit()
    assert seen == [torch.bfloat16] * 3 and math.isfinite(result["train_loss"])


def test_amp_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) == (None, False)
    assert resolve_amp("bf16", cpu) == (torch.bfloat16, False)
    with pytest.raises(ConfigError, match=r"fp16.*needs a CUDA device"):
        resolve_amp("fp16", cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="device='auto' resolves to CUDA here")
def test_fp16_on_auto_cpu_device_is_a_config_error():
    with pytest.raises(ConfigError, match=r"amp='fp16' needs a CUDA device \(this run is on cpu\)"):
        Trainer(make_model(), TrainConfig(steps=1, batch_size=8, amp="fp16"), train_data=make_data(), loss_fn=ce_loss)


# ---------------------------------------------------------------- metrics, budget, errors
def test_metrics_jsonl_and_result(tmp_path):
    cfg = TrainConfig(
        epochs=2, batch_size=8, lr=0.1, log_every=2, ema_decay=0.5, out_dir=str(tmp_path), clip_grad_norm=1.0
    )
    trainer = Trainer(
        make_model(), cfg, train_data=make_data(32), loss_fn=ce_loss, eval_data=make_data(16, seed=1), eval_fn=top1
    )
    result = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [(r["step"], r["epoch"]) for r in train] == [(2, 0.5), (4, 1.0), (6, 1.5), (8, 2.0)]
    assert {"loss", "lr", "train_acc", "grad_norm", "epoch", "steps_per_s"} <= set(train[0])
    assert train[0]["loss"] == pytest.approx(sum(trainer.losses[:2]) / 2)
    assert [(r["step"], r["epoch"]) for r in evals] == [(4, 1), (8, 2)]
    assert result["eval_top1"] == evals[-1]["eval_top1"] and result["ema_eval_top1"] == evals[-1]["ema_eval_top1"]
    assert result["step"] == 8 and result["train_loss"] == pytest.approx(sum(trainer.losses[4:]) / 4)
    assert trainer.ema_model is not None and trainer.ema_model is not trainer.model
    assert {p.name for p in tmp_path.iterdir()} == {
        METRICS_NAME,
        CHECKPOINT_NAME,
        "model.safetensors",
        "ema.safetensors",
        "SHA256SUMS",
    }


def test_steps_budget_and_default_eval():
    cfg = TrainConfig(steps=5, batch_size=8, epochs=100)
    trainer = Trainer(make_model(), cfg, train_data=make_data(32), loss_fn=ce_loss, eval_data=make_data(16, seed=1))
    result = trainer.fit()
    assert trainer.step == 5 and result["epoch"] == pytest.approx(1.25) and "eval_loss" in result


def test_clear_errors():
    data = make_data(32)
    with pytest.raises(TypeError, match="scalar loss"):
        Trainer(make_model(), TrainConfig(steps=1, batch_size=8), train_data=data, loss_fn=lambda m, b: m(b[0])).fit()
    with pytest.raises(TypeError, match="lacks set_epoch"):
        Trainer(make_model(), TrainConfig(), train_data=data, loss_fn=ce_loss, batch_sampler=[[0, 1]])
    with pytest.raises(ValueError, match="gives no batch"):
        Trainer(make_model(), TrainConfig(batch_size=64), train_data=data, loss_fn=ce_loss)
    with pytest.raises(ValueError, match="shards for rank 0 of 2 but this process is rank 0 of 1"):
        sampler = ShardedBatchSampler(32, 4, rank=0, world_size=2)
        sampler.num_replicas = 2
        Trainer(make_model(), TrainConfig(), train_data=data, loss_fn=ce_loss, batch_sampler=sampler)
    with pytest.raises(TrainingDiverged, match="training loss became nan at step 1; no checkpoint was written"):
        Trainer(
            make_model(),
            TrainConfig(steps=2, batch_size=8, log_every=1),
            train_data=data,
            loss_fn=lambda m, b: m(b[0]).sum() * float("nan"),
        ).fit()


class ScaleDataset(Dataset):
    """Items are keyed by (index, h, w) like the multi-scale sampler's; returns an h*w-sized feature."""

    def __init__(self, n: int):
        self.n = n
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        index, h, w = key
        return torch.full((6,), float(index) / self.n + h * w / 100), torch.tensor(index % 3)


class EpochSizedSampler:
    """A user batch sampler whose batch size (and so its length) changes with the epoch."""

    def __init__(self, n: int):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self):
        size = 4 if self.epoch % 2 == 0 else 8
        g = torch.Generator().manual_seed(self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        return [[(i, 2, size) for i in order[s : s + size]] for s in range(0, self.n - size + 1, size)]

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        return iter(self._batches())


def test_user_batch_sampler_with_tuples():
    data = ScaleDataset(32)
    trainer = Trainer(
        make_model(), TrainConfig(epochs=2), train_data=data, loss_fn=ce_loss, batch_sampler=EpochSizedSampler(32)
    )
    assert trainer.total_steps == 8 + 4
    trainer.fit()
    assert trainer.step == 12 and data.epochs == [0, 1]


# ---------------------------------------------------------------- checkpoints and exact resume
class Crash(RuntimeError):
    pass


def _resume_config(out_dir, **kw) -> TrainConfig:
    base = dict(
        epochs=2,
        batch_size=4,
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-3,
        ema_decay=0.8,
        ema_warmup=True,
        warmup_epochs=0.5,
        grad_accum_steps=2,
        checkpoint_every=3,
        log_every=1,
        out_dir=str(out_dir),
        seed=5,
    )
    return TrainConfig(**{**base, **kw})


class StepCounter:
    """A stateful callback: its count must survive a kill and resume."""

    def __init__(self):
        self.calls = 0

    def __call__(self, trainer):
        self.calls += 1

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def _run(out_dir, crash_at=None, resume=False, stop_at=None):
    def crash(trainer):
        if trainer.step == crash_at:
            raise Crash
        if trainer.step == stop_at:
            trainer.should_stop = True

    cfg = _resume_config(out_dir, resume=resume)
    trainer = Trainer(
        make_model(dropout=0.2),
        cfg,
        train_data=make_data(40),
        loss_fn=ce_loss,
        eval_data=make_data(8, seed=1),
        eval_fn=top1,
        callbacks=[StepCounter(), crash],
    )
    if crash_at:
        with pytest.raises(Crash):
            trainer.fit()
    else:
        trainer.fit()
    return trainer


def _records(out_dir):
    records = [json.loads(line) for line in (out_dir / METRICS_NAME).read_text().splitlines()]
    for r in records:
        r.pop("steps_per_s", None)
    return records


def test_resume_is_exact(tmp_path):
    straight = _run(tmp_path / "a")  # 40 samples / 4 = 10 batches -> 5 steps per epoch, 10 steps
    assert straight.step == 10
    crashed = _run(tmp_path / "b", crash_at=8)  # mid epoch 1; last checkpoint at step 6
    assert crashed.step == 8
    resumed = _run(tmp_path / "b", resume=True)
    assert resumed.start_step == 6
    assert resumed.callbacks[0].calls == straight.callbacks[0].calls == 10
    assert resumed.losses == straight.losses[6:]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    for key, value in straight.ema_model.state_dict().items():
        assert torch.equal(resumed.ema_model.state_dict()[key], value), key
    assert _records(tmp_path / "b") == _records(tmp_path / "a")
    again = _run(tmp_path / "b", resume=True)  # a finished run returns its final metrics without training
    assert again.start_step == 0 and again.losses == []

    stopped = _run(tmp_path / "c", stop_at=7)  # a graceful stop checkpoints where it stops
    assert stopped.step == 7 and stopped.losses == straight.losses[:7]
    continued = _run(tmp_path / "c", resume=True)
    assert continued.start_step == 7 and continued.losses == straight.losses[7:]
    assert torch.equal(continued.model[0].weight, straight.model[0].weight)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    trainer = Trainer(make_model(), _resume_config(tmp_path, ema_decay=None), train_data=make_data(40), loss_fn=ce_loss)
    path = trainer.save()
    before = path.read_bytes()
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(3)}, f)
        raise OSError("disk full")

    monkeypatch.setattr(trainer_module.torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="disk full"):
        trainer.save()
    monkeypatch.setattr(trainer_module.torch, "save", real_save)
    assert path.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left behind
    trainer.load(path)  # still a valid checkpoint


def test_start_removes_stale_temp_files_of_its_outputs(tmp_path):
    ours = [f".{name}.k3x_9q2a.tmp" for name in (CHECKPOINT_NAME, METRICS_NAME, "model.safetensors", "ema.safetensors")]
    others = [".notes.txt.k3x_9q2a.tmp", f"{CHECKPOINT_NAME}.tmp", f".{CHECKPOINT_NAME}.tmp", "data.tmp"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"left by a killed writer")
    cfg = TrainConfig(steps=1, batch_size=8, out_dir=str(tmp_path))
    Trainer(make_model(), cfg, train_data=make_data(), loss_fn=ce_loss).fit()
    names = {p.name for p in tmp_path.iterdir()}
    assert not names & set(ours) and set(others) <= names


def _diverging_loss(bad_from_step: int, weights_only: bool = False):
    """``ce_loss`` until step ``bad_from_step``, then a nan loss (or a finite loss whose gradients are nan)."""
    calls = 0

    def loss_fn(model, batch):
        nonlocal calls
        calls += 1
        loss, extras = ce_loss(model, batch)
        if calls >= bad_from_step:
            # sqrt has an infinite slope at 0: the loss stays finite, the gradient is inf * 0 = nan
            loss = loss + (model[0].weight * 0).sqrt().sum() if weights_only else loss * float("nan")
        return loss, extras

    return loss_fn


def test_nan_loss_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(steps=8, batch_size=8, checkpoint_every=2, log_every=50, out_dir=str(tmp_path))
    trainer = Trainer(make_model(), cfg, train_data=make_data(), loss_fn=_diverging_loss(5))
    path = tmp_path / CHECKPOINT_NAME
    message = f"training loss became nan at step 5; the last good checkpoint is {path} (step 4)"
    with pytest.raises(TrainingDiverged, match=f"^{re.escape(message)}$"):
        trainer.fit()  # the nan is seen when step 6 is about to be checkpointed: that checkpoint is not written
    state = torch.load(path, weights_only=True)
    assert state["step"] == 4 and all(torch.isfinite(v).all() for v in state["model"].values())
    resumed = Trainer(make_model(), cfg.replace(resume=True), train_data=make_data(), loss_fn=_diverging_loss(1))
    with pytest.raises(TrainingDiverged, match=f"^{re.escape(message)}$"):  # the checkpoint it resumed from
        resumed.fit()
    assert issubclass(TrainingDiverged, RuntimeError)


def test_nan_weights_are_never_checkpointed(tmp_path):
    cfg = TrainConfig(steps=8, batch_size=8, checkpoint_every=2, log_every=50, out_dir=str(tmp_path))
    trainer = Trainer(make_model(), cfg, train_data=make_data(), loss_fn=_diverging_loss(4, weights_only=True))
    path = tmp_path / CHECKPOINT_NAME
    message = f"model weights are not finite at step 4; the last good checkpoint is {path} (step 2)"
    with pytest.raises(TrainingDiverged, match=f"^{re.escape(message)}$"):
        trainer.fit()  # step 4's loss is finite, its update is not
    state = torch.load(path, weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


# ---------------------------------------------------------------- kill -9 anywhere, then resume
KILL_POINTS = {
    # point: whether the kill leaves a stale temp file behind
    "checkpoint_write": True,  # half-way through writing the step-6 checkpoint (resume from step 3)
    "final_log": False,  # half-way through the last train record, in _finish
    "final_eval": False,  # half-way through the final eval record
    "final_checkpoint": True,  # half-way through the final checkpoint
    "model_weights": True,  # final checkpoint written, half-way through model.safetensors
    "ema_weights": True,  # model.safetensors written, half-way through ema.safetensors
}
_CHILD = "import runpy, sys; runpy.run_path(sys.argv[1])['_run_until_killed'](*sys.argv[2:])"


def _kill_test_trainer(out_dir, resume: bool = False) -> Trainer:
    """8 steps of 5 per epoch: checkpoints at 3 and 6, an epoch-end eval at 5, and _finish logs and evaluates at 8."""
    cfg = TrainConfig(
        steps=8, batch_size=4, lr=0.1, ema_decay=0.8, warmup_steps=2, checkpoint_every=3, log_every=3,
        out_dir=str(out_dir), seed=5, resume=resume,
    )  # fmt: skip
    data, eval_data = make_data(20), make_data(8, seed=1)
    return Trainer(make_model(dropout=0.2), cfg, train_data=data, loss_fn=ce_loss, eval_data=eval_data, eval_fn=top1)


def _run_until_killed(out_dir: str, point: str, threads: str) -> None:
    """Subprocess body: run the kill-test training and SIGKILL this process at ``point`` (see KILL_POINTS)."""
    torch.set_num_threads(int(threads))  # as in the test process, so that the numbers match bit for bit

    def die_half_written(write, obj, path, **kwargs):
        write(obj, path, **kwargs)
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    real_torch_save, real_save_file, real_metrics = torch.save, checkpoint_module.save_file, Trainer._write_metrics

    def torch_save(state, path, **kwargs):
        final = "final_metrics" in state
        if (point == "checkpoint_write" and state["step"] == 6) or (point == "final_checkpoint" and final):
            die_half_written(real_torch_save, state, path, **kwargs)
        real_torch_save(state, path, **kwargs)

    def save_file(tensors, path, **kwargs):
        temp_prefix = {"model_weights": ".model.safetensors.", "ema_weights": ".ema.safetensors."}.get(point)
        if temp_prefix is not None and Path(path).name.startswith(temp_prefix):
            die_half_written(real_save_file, tensors, path, **kwargs)
        real_save_file(tensors, path, **kwargs)

    def write_metrics(trainer, record):
        if record["step"] == 8 and (point, record["kind"]) in {("final_log", "train"), ("final_eval", "eval")}:
            line = json.dumps(record)
            with open(trainer.out_dir / METRICS_NAME, "a") as f:
                f.write(line[: len(line) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        real_metrics(trainer, record)

    torch.save, checkpoint_module.save_file, Trainer._write_metrics = torch_save, save_file, write_metrics
    _kill_test_trainer(out_dir).fit()


@pytest.mark.parametrize("point", KILL_POINTS)
def test_resume_after_kill_completes_the_run(tmp_path, point):
    straight, out = tmp_path / "straight", tmp_path / "killed"
    expected = _kill_test_trainer(straight).fit()
    command = [sys.executable, "-c", _CHILD, __file__, str(out), point, str(torch.get_num_threads())]
    child = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert any(p.name.endswith(".tmp") for p in out.iterdir()) == KILL_POINTS[point]

    weights = ("model.safetensors", "ema.safetensors")
    for _ in range(2):  # resume the killed run, then resume the finished run: neither changes the outputs
        assert _kill_test_trainer(out, resume=True).fit() == expected
        assert {p.name for p in out.iterdir()} == {METRICS_NAME, CHECKPOINT_NAME, "SHA256SUMS", *weights}  # no temp
        for name in weights:
            assert (out / name).read_bytes() == (straight / name).read_bytes(), name
    records = _records(out)
    assert records == _records(straight)
    assert [(r["kind"], r["step"]) for r in records] == [("train", 3), ("train", 5), ("eval", 5), ("train", 6),
                                                         ("train", 8), ("eval", 8)]  # fmt: skip
    final = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert final["step"] == 8 and final["final_metrics"] == expected


def test_resume_rejects_foreign_file(tmp_path):
    bad = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    trainer = Trainer(
        make_model(),
        TrainConfig(steps=1, batch_size=8, resume=str(bad), out_dir=str(tmp_path)),
        train_data=make_data(),
        loss_fn=ce_loss,
    )
    with pytest.raises(CheckpointError, match="not a bramley training checkpoint"):
        trainer.fit()
    trained = Trainer(make_model(), TrainConfig(steps=1, batch_size=8, out_dir=str(tmp_path / "run")),
                      train_data=make_data(), loss_fn=ce_loss)  # fmt: skip
    trained.fit()
    wider = nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.ReLU(), nn.Dropout(0.0), nn.Linear(32, 3))
    other = TrainConfig(steps=1, batch_size=8, resume=str(tmp_path / "run" / CHECKPOINT_NAME))
    with pytest.raises(CheckpointError, match=r"shape mismatches.*0\.bias: checkpoint \(16,\) vs model \(32,\)"):
        Trainer(wider, other, train_data=make_data(), loss_fn=ce_loss).fit()
    missing = TrainConfig(steps=1, batch_size=8, resume=str(tmp_path / "nope.pt"))
    with pytest.raises(CheckpointError, match=r"resume checkpoint .*nope\.pt does not exist"):
        Trainer(make_model(), missing, train_data=make_data(), loss_fn=ce_loss).fit()


# ---------------------------------------------------------------- README
def _readme_section() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("\n## Trainer\n", 1)[1]
    return section.split("\n## ", 1)[0]


def test_readme_trainer_example_runs(tmp_path, monkeypatch, capsys):
    code = _readme_section().split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result["step"] == 24 and {"train_loss", "eval_loss", "ema_eval_loss"} <= set(result)
    assert (tmp_path / "runs" / "demo" / CHECKPOINT_NAME).is_file()
    assert "'step': 24.0" in capsys.readouterr().out


# ---------------------------------------------------------------- with bramley.core.data's multi-scale sampler
def _multiscale_run(out_dir, num_workers=0, crash_at=None, resume=False):
    from bramley.core.data import MultiScaleDataset, VariableBatchSampler, multiscale_collate

    g = torch.Generator().manual_seed(0)
    images = torch.rand(24, 3, 16, 16, generator=g)
    raw = TensorDataset(images, (images.mean((1, 2, 3)) > 0.5).long())

    def transform_for(h, w):
        def transform(x):
            x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            return x.flip(-1) if torch.rand(()) < 0.5 else x  # random: exact only through per-sample seeding

        return transform

    data = MultiScaleDataset(raw, transform_for, seed=7)
    sampler = VariableBatchSampler(data, base_batch_size=4, base_size=16, scales=[8, 16], seed=7)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def crash(trainer):
        if trainer.step == crash_at:
            raise Crash

    cfg = TrainConfig(epochs=2, lr=0.05, checkpoint_every=4, out_dir=str(out_dir), resume=resume)
    cfg.num_workers = num_workers
    trainer = Trainer(
        model, cfg, train_data=data, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]),
        batch_sampler=sampler, collate_fn=multiscale_collate, callbacks=[crash],
    )  # fmt: skip
    if crash_at:
        with pytest.raises(Crash):
            trainer.fit()
    else:
        trainer.fit()
    return trainer


def test_multiscale_sampler_resume_is_exact_across_worker_counts(tmp_path):
    straight = _multiscale_run(tmp_path / "a")
    assert straight.step == straight.total_steps > 5
    _multiscale_run(tmp_path / "b", crash_at=5)
    resumed = _multiscale_run(tmp_path / "b", num_workers=2, resume=True)
    assert resumed.start_step == 4 and resumed.losses == straight.losses[4:]
    assert torch.equal(resumed.model[4].weight, straight.model[4].weight)


# ---------------------------------------------------------------- one run per folder, metrics once per step
def _epoch_end_run(out_dir, crash_at=None, resume=False) -> Trainer:
    """5 steps per epoch, a log every 2 steps (not dividing the epoch) and a checkpoint at each epoch's end."""

    def crash(trainer):
        if trainer.step == crash_at:
            raise KeyboardInterrupt  # stands for a kill: no checkpoint, no export

    cfg = TrainConfig(
        steps=10, batch_size=8, log_every=2, checkpoint_every=5, out_dir=str(out_dir), resume=resume, progress=False
    )
    return Trainer(make_model(), cfg, train_data=make_data(40), loss_fn=ce_loss, callbacks=[crash])


def test_resume_after_an_epoch_end_log_writes_each_step_once(tmp_path):
    """The checkpoint at step 5 holds step 5 still unlogged; the epoch's end logged it before the kill at step 6."""
    _epoch_end_run(tmp_path / "straight").fit()
    with pytest.raises(KeyboardInterrupt):
        _epoch_end_run(tmp_path / "killed", crash_at=6).fit()
    assert [r["step"] for r in _records(tmp_path / "killed")] == [2, 4, 5, 6]
    _epoch_end_run(tmp_path / "killed", resume=True).fit()
    steps = [r["step"] for r in _records(tmp_path / "killed") if r["kind"] == "train"]
    assert steps == [2, 4, 5, 6, 8, 10], "each step once (step 5 was written twice before)"
    assert _records(tmp_path / "killed") == _records(tmp_path / "straight")


def test_a_fresh_run_refuses_a_folder_holding_a_run(tmp_path):
    _epoch_end_run(tmp_path).fit()
    with pytest.raises(CheckpointError, match=r"already holds a finished run: resume it \(train.resume=true\)"):
        _epoch_end_run(tmp_path).fit()
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="already holds an unfinished run"):
        _epoch_end_run(tmp_path).fit()


def test_resume_true_needs_a_checkpoint_and_auto_does_not(tmp_path):
    with pytest.raises(CheckpointError, match=r"train\.resume=true but .* has no checkpoint\.pt to resume"):
        _epoch_end_run(tmp_path / "a", resume=True).fit()
    result = _epoch_end_run(tmp_path / "b", resume="auto").fit()
    assert result["step"] == 10 and (tmp_path / "b" / "model.safetensors").is_file()
    assert _epoch_end_run(tmp_path / "b", resume="auto").fit() == result, "auto resumes a finished run: no change"


def test_a_finished_run_is_not_extended(tmp_path):
    _epoch_end_run(tmp_path).fit()
    longer = TrainConfig(steps=15, batch_size=8, out_dir=str(tmp_path), resume=True, progress=False)
    with pytest.raises(ConfigError, match="is a finished run of 10 steps but this run asks for 15"):
        Trainer(make_model(), longer, train_data=make_data(40), loss_fn=ce_loss).fit()


def test_a_corrupt_checkpoint_is_refused_by_its_checksum(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _epoch_end_run(tmp_path, crash_at=6).fit()
    data = bytearray((tmp_path / CHECKPOINT_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / CHECKPOINT_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checkpoint.pt does not match its checksum in .*SHA256SUMS"):
        _epoch_end_run(tmp_path, resume=True).fit()


def test_progress_lines_without_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BRAMLEY_PROGRESS", "1")  # plain lines, as in a log file
    cfg = TrainConfig(steps=4, batch_size=8, log_every=2, progress=True)
    Trainer(make_model(), cfg, train_data=make_data(40), loss_fn=ce_loss).fit()
    err = capsys.readouterr().err
    assert re.search(r"train: 4/4 steps \(100%\), [0-9.e+]+ steps/s, loss=\d\.\d{4}, lr=", err), err


def test_budget_errors_name_the_recipe_keys():
    with pytest.raises(ConfigError, match=r"no batch of train\.batch_size=64 per rank .* use a smaller train\.batch"):
        Trainer(make_model(), TrainConfig(steps=2, batch_size=64), train_data=make_data(40), loss_fn=ce_loss)
    too_long = TrainConfig(steps=2, batch_size=8, warmup_epochs=3)
    with pytest.raises(ConfigError, match=r"warmup \(15 steps: optim\.warmup_epochs=3 of 5 steps each\) is longer"):
        Trainer(make_model(), too_long, train_data=make_data(40), loss_fn=ce_loss)


def test_weight_decay_anneals_with_a_cosine_and_resumes_exactly(tmp_path):
    def run(out, crash_at=None, resume=False):
        decays = []

        def record(trainer):
            decays.append(trainer.optimizer.param_groups[0]["weight_decay"])
            if trainer.step == crash_at:
                raise KeyboardInterrupt

        cfg = TrainConfig(
            steps=10, batch_size=8, weight_decay=1e-2, weight_decay_end=1e-4, checkpoint_every=5,
            out_dir=str(out), resume=resume, progress=False,
        )  # fmt: skip
        trainer = Trainer(make_model(), cfg, train_data=make_data(40), loss_fn=ce_loss, callbacks=[record])
        trainer.fit()
        return decays, trainer

    decays, straight = run(tmp_path / "a")
    expected = [1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(1, 11)]
    assert decays == pytest.approx(expected, rel=1e-12), "the next step's decay, set after each step"
    assert straight.optimizer.param_groups[1]["weight_decay"] == 0.0, "groups without decay keep none"
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_at=7)
    resumed_decays, resumed = run(tmp_path / "b", resume=True)
    assert resumed_decays == decays[5:], "after a resume the decay continues from the configured start"
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match=r"weight_decay_end must be in \[0, weight_decay=0\.001\]"):
        TrainConfig(weight_decay=1e-3, weight_decay_end=1e-2)
