"""The one trainer of bramley: AMP, accumulation, EMA, schedules, exact resume, JSONL metrics, DDP / FSDP.

A training step is ``grad_accum_steps`` micro-steps ``loss_fn(model, batch).backward()`` followed by one optimizer
step, one scheduler step and one EMA update. Checkpoints are taken after optimizer steps and hold everything needed
to continue as if the run had never stopped: weights, optimizer, scheduler, grad scaler, EMA, the position in the
data (epoch, batches consumed) and every RNG state of every rank.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..checkpoint import (
    CONFIG_NAME,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    atomic_write,
    check_state_dict,
    save_checkpoint,
    save_model_config,
    temp_files,
    verify_checksum,
)
from ..errors import CheckpointError, ConfigError
from ..run import CHECKPOINT_NAME, EMA_WEIGHTS_NAME, METRICS_NAME, run_lock, run_state
from .config import TrainConfig
from .data import DeviceLoader, ResumableBatchSampler, ShardedBatchSampler, move_to_device
from .distributed import (
    full_model_state_dict,
    full_optimizer_state_dict,
    init_distributed,
    load_full_model_state_dict,
    load_full_optimizer_state_dict,
    settle,
    wrap_model,
)
from .ema import ModelEma
from .optim import build_optimizer
from .rng import get_rng_state, seed_everything, set_rng_state
from .schedule import LRSchedule, build_scheduler

__all__ = ["CHECKPOINT_NAME", "EMA_WEIGHTS_NAME", "METRICS_NAME", "Trainer", "TrainingDiverged", "resolve_amp"]

# every file the trainer writes into out_dir (each through atomic_write)
_OUTPUT_NAMES = (CHECKPOINT_NAME, METRICS_NAME, WEIGHTS_NAME, EMA_WEIGHTS_NAME, CONFIG_NAME, MANIFEST_NAME)
_FORMAT = "bramley-train-1"
# settings that may change between a run and its resumption without changing the numbers
_RUNTIME_FIELDS = frozenset(
    {
        "resume",
        "progress",
        "out_dir",
        "device",
        "distributed",
        "num_workers",
        "pin_memory",
        "log_every",
        "checkpoint_every",
        "eval_every",
        "find_unused_parameters",
        "fsdp_shard_modules",
    }
)

LossFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]"]
EvalFn = Callable[[nn.Module, Iterable], Mapping[str, float]]


class TrainingDiverged(RuntimeError):
    """The training loss or the weights became non-finite; the message names the step and the last good checkpoint.

    No checkpoint is written from the diverged state, so ``resume`` (with a lower learning rate, say) starts from the
    last good one.
    """


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` for the AMP mode on ``device``.

    ``auto``: bf16 on CUDA devices that support it, else fp16 with a GradScaler on CUDA, no autocast elsewhere.
    ``bf16`` works on CPU and CUDA; ``fp16`` needs CUDA.

    Raises:
        ConfigError: the mode does not exist or the device cannot run it.
    """
    if amp == "none":
        return None, False
    if amp == "auto":
        if device.type != "cuda":
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"amp='bf16' but {torch.cuda.get_device_name(device)} has no bf16 support; use 'fp16'")
        return torch.bfloat16, False
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(
                f"amp='fp16' needs a CUDA device (this run is on {device.type}): fp16 autocast with loss scaling "
                "is CUDA-only here; use amp='bf16' or amp='none'"
            )
        return torch.float16, True
    raise ConfigError(f"unknown amp mode {amp!r} (none, auto, bf16, fp16)")


class Trainer:
    """Train ``model`` on ``train_data`` with ``loss_fn`` as configured by ``cfg``.

    Args:
        model: the model (moved to the device; wrapped in DDP / FSDP when launched by torchrun).
        cfg: a :class:`TrainConfig`, or a mapping of its fields (e.g. a YAML section).
        train_data: a map-style dataset; its ``set_epoch(epoch)`` is called each epoch when it has one (seeded
            per-sample augmentation, see ``bramley.core.data``).
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, {"name": float})``; ``batch`` is already on the
            device and ``model`` is the module to call (the DDP wrapper under DDP).
        eval_data: optional dataset evaluated every ``cfg.eval_every`` epochs and at the end.
        eval_fn: ``eval_fn(model, loader) -> {"name": float}``, run under ``torch.no_grad`` in eval mode; the loader
            yields batches already on the device. Default: the mean of ``loss_fn`` over ``eval_data``.
        batch_sampler: optional object yielding lists of indices (or of ``(index, h, w)`` tuples) with
            ``set_epoch(epoch)`` and ``__len__``; it must give the same batches for the same epoch, and shard itself
            under DDP. Default: a :class:`ShardedBatchSampler` over ``train_data``.
        collate_fn: passed to the DataLoaders.
        optimizer: an optimizer over ``model``'s parameters, or ``f(model) -> optimizer`` (needed for FSDP, whose
            parameters only exist after sharding). Default: built from ``cfg.optimizer``. The schedule multiplies
            each param group's own learning rate.
        callbacks: ``f(trainer)`` called after every optimizer step (before that step's checkpoint, so what
            it changes, e.g. optimizer settings, is saved); setting
            ``trainer.should_stop = True`` ends ``fit`` after the current step (with a checkpoint when ``out_dir``
            is set, so ``resume=True`` continues the run). A callback object with
            ``state_dict()`` / ``load_state_dict(state)`` has its state saved in checkpoints and restored on resume.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig | Mapping[str, Any] | None = None,
        train_data: Dataset | None = None,
        loss_fn: LossFn | None = None,
        eval_data: Dataset | None = None,
        eval_fn: EvalFn | None = None,
        *,
        batch_sampler: Any = None,
        collate_fn: Callable | None = None,
        optimizer: torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer] | None = None,
        callbacks: Sequence[Callable[[Trainer], None]] = (),
    ) -> None:
        if cfg is None:
            cfg = TrainConfig()
        elif isinstance(cfg, Mapping):
            cfg = TrainConfig.from_dict(cfg)
        elif not isinstance(cfg, TrainConfig):
            raise TypeError(f"cfg must be a TrainConfig or a mapping, got {type(cfg).__name__}")
        cfg.validate()
        if train_data is None:
            raise ValueError("Trainer needs train_data")
        if isinstance(train_data, IterableDataset):
            raise TypeError("train_data is an IterableDataset; the trainer needs a map-style dataset for exact resume")
        if loss_fn is None:
            raise ValueError("Trainer needs loss_fn(model, batch) -> loss or (loss, {'name': float})")
        self.cfg = cfg
        self.loss_fn = loss_fn
        self.eval_fn = eval_fn
        self.callbacks = list(callbacks)
        self.should_stop = False

        self.dist, self.device = init_distributed(cfg.device)
        self.amp_dtype, use_scaler = resolve_amp(cfg.amp, self.device)
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
        fsdp = self.dist.enabled and cfg.distributed == "fsdp"

        self.model = model.to(self.device)
        self.ema = ModelEma(self.model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay is not None else None
        wrap_kw = {"find_unused_parameters": cfg.find_unused_parameters, "shard_modules": cfg.fsdp_shard_modules}
        self.wrapped = wrap_model(self.model, self.dist, self.device, cfg.distributed, **wrap_kw)
        if self.ema is not None and fsdp:
            wrap_model(self.ema.module, self.dist, self.device, "fsdp", **wrap_kw)

        if optimizer is None:
            self.optimizer = build_optimizer(self.model, cfg)
        elif isinstance(optimizer, torch.optim.Optimizer):
            if fsdp:
                raise TypeError("under FSDP pass optimizer as a factory f(model) -> optimizer (sharding swaps params)")
            self.optimizer = optimizer
        elif callable(optimizer):
            self.optimizer = optimizer(self.model)
        else:
            raise TypeError(f"optimizer must be an Optimizer or a callable, got {type(optimizer).__name__}")
        # FSDP2 keeps DTensor gradients, which the plain GradScaler handles (ShardedGradScaler is for FSDP1)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        # the configured decays (a resumed optimizer holds annealed ones): weight_decay_end anneals from these
        self._decay_start = [group.get("weight_decay", 0.0) for group in self.optimizer.param_groups]

        self.train_data = train_data
        self._build_data(train_data, eval_data, batch_sampler, collate_fn)
        if cfg.steps is not None:
            self.total_steps = cfg.steps
        else:
            self.total_steps = sum(self.steps_in_epoch(e) for e in range(cfg.epochs))
        if cfg.warmup_steps is not None:
            warmup, source = cfg.warmup_steps, f"optim.warmup_steps={cfg.warmup_steps}"
        else:
            warmup = round(cfg.warmup_epochs * self.steps_in_epoch(0))
            source = f"optim.warmup_epochs={cfg.warmup_epochs:g} of {self.steps_in_epoch(0)} steps each"
        if warmup > self.total_steps:
            raise ConfigError(
                f"the warmup ({warmup} steps: {source}) is longer than the whole run ({self.total_steps} steps): "
                "shorten the warmup or train longer"
            )
        self.schedule = LRSchedule(cfg.schedule, self.total_steps, warmup, cfg.min_lr_ratio, cfg.warmup_start_factor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler = build_scheduler(self.optimizer, self.schedule)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.start_step = 0
        self.losses: list[float] = []
        self.last_metrics: dict[str, float] = {}
        self._pending: list[tuple[int, torch.Tensor, Mapping[str, Any]]] = []
        self._epoch_losses: list[float] = []
        self._window: list[dict[str, float]] = []
        self._last_eval_step = -1
        self._log_window_start = time.perf_counter()
        self._grad_norm: torch.Tensor | None = None
        self._finished_metrics: dict[str, float] | None = None
        self._last_checkpoint: tuple[Path, int] | None = None  # (path, step) of the newest checkpoint written or loaded

    # ------------------------------------------------------------------ data
    def _build_data(self, train_data, eval_data, batch_sampler, collate_fn) -> None:
        cfg = self.cfg
        if batch_sampler is None:
            batch_sampler = ShardedBatchSampler(
                len(train_data),
                cfg.batch_size,
                seed=cfg.seed,
                shuffle=cfg.shuffle,
                drop_last=cfg.drop_last,
                rank=self.dist.rank,
                world_size=self.dist.world_size,
            )
        else:
            missing = [m for m in ("set_epoch", "__len__", "__iter__") if not hasattr(batch_sampler, m)]
            if missing:
                raise TypeError(
                    f"batch_sampler {type(batch_sampler).__name__} lacks {', '.join(missing)}: the trainer needs "
                    "set_epoch(epoch) (same batches for the same epoch, for exact resume) and __len__"
                )
            self._check_sharding(batch_sampler)
        self.batch_sampler = ResumableBatchSampler(batch_sampler)
        self._loader_gen = torch.Generator()
        pin = cfg.pin_memory and self.device.type == "cuda"
        self.train_loader = DataLoader(
            train_data,
            batch_sampler=self.batch_sampler,
            num_workers=cfg.num_workers,
            collate_fn=collate_fn,
            pin_memory=pin,
            generator=self._loader_gen,
        )
        self.eval_loader = None
        if eval_data is not None:
            loader = DataLoader(
                eval_data,
                batch_size=cfg.eval_batch_size or cfg.batch_size,
                shuffle=False,
                num_workers=cfg.num_workers,
                collate_fn=collate_fn,
                pin_memory=pin,
                generator=torch.Generator().manual_seed(cfg.seed),
            )
            self.eval_loader = DeviceLoader(loader, self.device, non_blocking=pin)
        elif self.eval_fn is not None:
            raise ValueError("eval_fn given without eval_data")
        self._epoch_batches: dict[int, int] = {}

    def _check_sharding(self, sampler: Any) -> None:
        """A user batch sampler shards itself; catch one built before the process group existed (world size 1)."""
        world = getattr(sampler, "num_replicas", getattr(sampler, "world_size", None))
        rank = getattr(sampler, "rank", None)
        if world is None or rank is None:
            if self.dist.enabled:
                warnings.warn(
                    f"batch_sampler {type(sampler).__name__} has no num_replicas/rank: the trainer cannot check that "
                    f"it gives each of the {self.dist.world_size} ranks its own shard",
                    stacklevel=3,
                )
            return
        if (world, rank) != (self.dist.world_size, self.dist.rank):
            raise ValueError(
                f"batch_sampler {type(sampler).__name__} shards for rank {rank} of {world} but this process is rank "
                f"{self.dist.rank} of {self.dist.world_size}; build it after "
                "bramley.core.train.init_distributed() (or pass num_replicas/rank) so each rank gets its own shard"
            )

    def batches_in_epoch(self, epoch: int) -> int:
        """Micro-batches this rank sees in ``epoch`` (the sampler's length after ``set_epoch(epoch)``)."""
        if epoch not in self._epoch_batches:
            sampler = self.batch_sampler.batch_sampler
            sampler.set_epoch(epoch)
            self._epoch_batches[epoch] = len(sampler)
            if self._epoch_batches[epoch] < 1:
                raise ValueError(f"batch sampler yields no batch in epoch {epoch}")
        return self._epoch_batches[epoch]

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimizer steps in ``epoch``: a last group of fewer than ``grad_accum_steps`` micro-batches still steps."""
        return math.ceil(self.batches_in_epoch(epoch) / self.cfg.grad_accum_steps)

    # ------------------------------------------------------------------ training
    @property
    def epoch_progress(self) -> float:
        """Epochs done, fractional within the current one (1.5 = halfway through the second epoch)."""
        return self.epoch + self.batch_in_epoch / self.batches_in_epoch(self.epoch)

    @property
    def ema_model(self) -> nn.Module | None:
        """The EMA copy of the model (``None`` without ``ema_decay``)."""
        return self.ema.module if self.ema is not None else None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _sync_context(self, sync: bool):
        """Skip the gradient all-reduce on non-final micro-steps (DDP ``no_sync`` / FSDP2 gradient sync off)."""
        if not self.dist.enabled:
            return contextlib.nullcontext()
        if isinstance(self.wrapped, nn.parallel.DistributedDataParallel):
            return contextlib.nullcontext() if sync else self.wrapped.no_sync()
        self.wrapped.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def _compute_loss(self, batch: Any) -> tuple[torch.Tensor, Mapping[str, Any]]:
        out = self.loss_fn(self.wrapped, batch)
        extras: Mapping[str, Any] = {}
        if isinstance(out, tuple):
            if len(out) != 2 or not isinstance(out[1], Mapping):
                raise TypeError("loss_fn must return a loss tensor or (loss, {'name': float})")
            out, extras = out
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise TypeError(f"loss_fn must return a scalar loss tensor, got {shape}")
        return out.reshape(()), extras

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        if cfg.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
            self._grad_norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # a GradScaler-skipped first step makes LambdaLR warn about call order
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def _anneal_weight_decay(self) -> None:
        """Set the next step's weight decay: a cosine from each group's configured decay to ``weight_decay_end``."""
        end = self.cfg.weight_decay_end
        if end is None:
            return
        progress = min(1.0, self.step / max(1, self.total_steps))
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        for group, start in zip(self.optimizer.param_groups, self._decay_start):
            if start > 0:
                group["weight_decay"] = end + (start - end) * factor

    def fit(self) -> dict[str, float]:
        """Train to the configured budget (resuming first if ``cfg.resume``); returns the final metrics.

        The main process holds ``out_dir``'s run lock throughout (:func:`bramley.core.run.run_lock`): a second run
        on the same folder is refused while this one is alive. A fresh run refuses a folder that already holds a
        run (resume it, or remove it first). Under torchrun it returns after :func:`settle`, so the script may end
        right after it.
        """
        owns_folder = self.out_dir is not None and self.dist.is_main
        with run_lock(self.out_dir) if owns_folder else contextlib.nullcontext():
            metrics = self._fit()
        settle(self.dist)
        return metrics

    def _fit(self) -> dict[str, float]:
        cfg = self.cfg
        self.should_stop = False
        self._remove_stale_temp_files()
        resumed = self._maybe_resume()
        if self._finished_metrics is not None:
            # a kill after the final checkpoint can leave the weights unexported: export them again from it
            if self.out_dir is not None:
                self._save_weights()
            return dict(self._finished_metrics)
        if not resumed:
            self._check_fresh_folder()
            seed_everything(cfg.seed + self.dist.rank)
            self._start_metrics_file(keep_until=None)
        self.start_step = self.step
        progress = None
        if cfg.progress and self.dist.is_main:
            from ..progress import progress as make_progress

            progress = make_progress(self.total_steps, "train", "steps", initial=self.step)
        self.wrapped.train()
        accum = cfg.grad_accum_steps
        try:
            while self.step < self.total_steps and not self.should_stop:
                n_batches = self.batches_in_epoch(self.epoch)
                self.batch_sampler.set_epoch(self.epoch, skip=self.batch_in_epoch)
                if hasattr(self.train_data, "set_epoch"):  # per-sample seeded augmentation (bramley.core.data)
                    self.train_data.set_epoch(self.epoch)
                self._loader_gen.manual_seed(cfg.seed * 1_000_003 + self.epoch * 1009 + self.dist.rank)
                group_losses: list[torch.Tensor] = []
                group_extras: Mapping[str, Any] = {}
                for i, batch in enumerate(self.train_loader, start=self.batch_in_epoch):
                    group_start = i - i % accum
                    group_size = min(accum, n_batches - group_start)
                    last_micro = i - group_start == group_size - 1
                    batch = move_to_device(batch, self.device, non_blocking=cfg.pin_memory)
                    with self._sync_context(last_micro), self._autocast():
                        loss, extras = self._compute_loss(batch)
                    self.scaler.scale(loss / group_size).backward()
                    group_losses.append(loss.detach().float())
                    group_extras = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in extras.items()}
                    if not last_micro:
                        continue
                    lr = self.scheduler.get_last_lr()[0]
                    self._optimizer_step()
                    self.step += 1
                    self._anneal_weight_decay()
                    self.batch_in_epoch = i + 1
                    step_loss = torch.stack(group_losses).mean()
                    self._pending.append((self.step, step_loss, {"lr": lr, **group_extras}))
                    group_losses = []
                    if progress is not None:
                        progress.update(1)
                    if self.step % cfg.log_every == 0:
                        self._log()
                        if progress is not None:
                            progress.set_postfix(loss=f"{self.losses[-1]:.4f}", lr=f"{lr:.3g}")
                    for callback in self.callbacks:
                        callback(self)
                    final_step = self.step >= self.total_steps  # _finish() saves the final checkpoint
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not final_step:
                        self.save()
                    if self.step >= self.total_steps or self.should_stop:
                        break
                if self.batch_in_epoch >= n_batches:
                    self._end_epoch()
        finally:
            if progress is not None:
                progress.close()
        if self.should_stop and self.step < self.total_steps:  # stopped early by a callback: resumable
            self._log()
            if self.out_dir is not None:
                self.save()
            return self._summary()
        return self._finish()

    def _check_fresh_folder(self) -> None:
        """A fresh run never writes over an earlier run's outputs (its checkpoint, its final weights). Checked by the
        main process, which owns the folder (under torchrun the others stop when it fails)."""
        if self.out_dir is None or not self.dist.is_main or run_state(self.out_dir) == "empty":
            return
        state = run_state(self.out_dir)
        raise CheckpointError(
            f"{self.out_dir} already holds a{'n' if state == 'unfinished' else ''} {state} run: resume it "
            "(train.resume=true), write to another folder, or remove it first (the train verb's --overwrite)"
        )

    def _end_epoch(self) -> None:
        self._log()
        self.epoch += 1
        self.batch_in_epoch = 0
        last_epoch = self.step >= self.total_steps
        if self.eval_loader is not None and (self.epoch % self.cfg.eval_every == 0 or last_epoch):
            self.evaluate()
        self._epoch_losses = []

    def _finish(self) -> dict[str, float]:
        """Final log, final eval, final checkpoint (marked finished), exported weights.

        A kill before the final checkpoint is written resumes from an earlier one and redoes the whole sequence (resume
        drops the metrics records written after that checkpoint); a kill after it resumes to :meth:`fit`'s export.
        """
        self._log()
        if self.eval_loader is not None and self._last_eval_step != self.step:
            self.evaluate()
        metrics = self._summary()
        if self.out_dir is not None:
            self.save(final_metrics=metrics)
            self._save_weights()
        return metrics

    def _summary(self) -> dict[str, float]:
        metrics = {"step": float(self.step), "epoch": self.epoch_progress}
        if self._epoch_losses:
            metrics["train_loss"] = sum(self._epoch_losses) / len(self._epoch_losses)
        elif "train_loss" in self.last_metrics:
            metrics["train_loss"] = self.last_metrics["train_loss"]
        metrics.update({k: v for k, v in self.last_metrics.items() if k.startswith(("eval_", "ema_eval_"))})
        return metrics

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` on the model (and the EMA model) over ``eval_data``; logs and returns the metrics.

        Under DDP / FSDP every rank evaluates the whole eval set (identical results, no gathering needed).
        """
        if self.eval_loader is None:
            raise ValueError("evaluate() needs eval_data")
        metrics = {f"eval_{k}": v for k, v in self._eval_model(self.model).items()}
        if self.ema is not None:
            metrics.update({f"ema_eval_{k}": v for k, v in self._eval_model(self.ema.module).items()})
        self._last_eval_step = self.step
        self.last_metrics.update(metrics)
        self._write_metrics({"kind": "eval", "step": self.step, "epoch": self.epoch, **metrics})
        return metrics

    def _eval_model(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            with self._autocast():
                if self.eval_fn is not None:
                    result = self.eval_fn(model, self.eval_loader)
                else:
                    losses = [self._eval_loss(model, batch) for batch in self.eval_loader]
                    result = {"loss": sum(losses) / len(losses)}
        finally:
            model.train(was_training)
        if not isinstance(result, Mapping):
            raise TypeError(f"eval_fn must return a mapping name -> float, got {type(result).__name__}")
        return {k: float(v) for k, v in result.items()}

    def _eval_loss(self, model: nn.Module, batch: Any) -> float:
        out = self.loss_fn(model, batch)
        return float(out[0] if isinstance(out, tuple) else out)

    # ------------------------------------------------------------------ logging
    def _collect(self) -> None:
        """Turn pending per-step loss tensors into floats (one device sync, one all-reduce across ranks)."""
        if not self._pending:
            return
        keys = sorted(k for k in self._pending[-1][2] if k != "lr")
        rows = []
        for step, loss, extras in self._pending:
            if sorted(k for k in extras if k != "lr") != keys:
                raise ValueError(f"loss_fn returned metrics {sorted(extras)} at step {step}, later {keys}")
            rows.append(torch.stack([loss.float().cpu(), *(torch.as_tensor(float(extras[k])) for k in keys)]))
        values = torch.stack(rows).to(self.device)
        if self.dist.enabled:
            dist.all_reduce(values)  # SUM then divide: gloo has no AVG
            values /= self.dist.world_size
        values = values.cpu().double().tolist()
        for (step, _, extras), row in zip(self._pending, values):
            if not math.isfinite(row[0]):
                raise self._diverged(f"training loss became {row[0]} at step {step}")
            self._window.append({"step": step, "lr": extras["lr"], "loss": row[0], **dict(zip(keys, row[1:]))})
            self.losses.append(row[0])
            self._epoch_losses.append(row[0])
        self._pending = []
        self.last_metrics["train_loss"] = sum(self._epoch_losses) / len(self._epoch_losses)

    def _log(self) -> None:
        """Write one train record: the mean loss (and loss_fn metrics) over the steps since the last record."""
        self._collect()
        if not self._window:
            return
        now = time.perf_counter()
        window, self._window = self._window, []
        last = window[-1]
        record: dict[str, Any] = {"kind": "train", "step": last["step"], "epoch": self.epoch_progress, "lr": last["lr"]}
        for key in last:
            if key not in ("step", "lr"):
                name = key if key == "loss" else f"train_{key}"
                record[name] = sum(w[key] for w in window) / len(window)
        if self._grad_norm is not None:
            record["grad_norm"] = float(self._grad_norm)
        record["steps_per_s"] = len(window) / max(now - self._log_window_start, 1e-9)
        self._log_window_start = now
        self._write_metrics(record)

    def _write_metrics(self, record: Mapping[str, Any]) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        with open(self.out_dir / METRICS_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _start_metrics_file(self, keep_until: int | None, keep_record_at_step: bool = True) -> None:
        """Fresh run: empty metrics.jsonl. Resume at step k: keep the records before k, and the train record at k
        when it was written before the checkpoint (``keep_record_at_step``: the checkpoint's log window was empty);
        the resumed run writes again whatever came after the checkpoint, so each step appears once."""
        if self.out_dir is None or not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / METRICS_NAME
        kept = []
        if keep_until is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                at_step = keep_record_at_step and rec.get("kind") == "train" and rec.get("step") == keep_until
                if rec.get("step", 0) < keep_until or at_step:
                    kept.append(line + "\n")
        text = "".join(kept)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume (collective under DDP/FSDP: call on every rank; complete on rank 0)."""
        rng = get_rng_state()
        if self.dist.enabled:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            rng_states = gathered
        else:
            rng_states = [rng]
        state: dict[str, Any] = {
            "format": _FORMAT,
            "model": full_model_state_dict(self.wrapped),
            "optimizer": full_optimizer_state_dict(self.wrapped, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_losses": list(self._epoch_losses),
            "log_window": list(self._window),
            "rng": rng_states,
            "world_size": self.dist.world_size,
            "config": self.cfg.to_dict(),
            "callbacks": [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.callbacks],
        }
        if self.ema is not None:
            state["ema"] = {"module": full_model_state_dict(self.ema.module), "updates": self.ema.updates}
        return state

    def save(self, path: str | os.PathLike | None = None, final_metrics: Mapping[str, float] | None = None) -> Path:
        """Write the resume checkpoint atomically (rank 0) to ``path`` or ``out_dir/checkpoint.pt``."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("save() needs a path or cfg.out_dir")
            path = self.out_dir / CHECKPOINT_NAME
        path = Path(path)
        self._collect()
        if not self._weights_finite():
            raise self._diverged(f"model weights are not finite at step {self.step}")
        state = self.checkpoint_state()
        if final_metrics is not None:
            state["final_metrics"] = dict(final_metrics)
        if self.dist.is_main:
            atomic_write(path, lambda tmp: torch.save(state, tmp), checksum=True)
        if self.dist.enabled:
            dist.barrier()
        self._last_checkpoint = (path, self.step)
        return path

    def _weights_finite(self) -> bool:
        """Whether every floating-point parameter and buffer of the model is finite, on every rank (collective)."""
        tensors = itertools.chain(self.model.parameters(), self.model.buffers())
        local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]  # FSDP2 shards are DTensors
        checks = [torch.isfinite(t).all() for t in local if t.is_floating_point() and t.numel()]
        bad = (~torch.stack(checks)).sum() if checks else torch.zeros((), dtype=torch.long, device=self.device)
        if self.dist.enabled:
            bad = bad.to(self.device)
            dist.all_reduce(bad)
        return int(bad) == 0

    def _diverged(self, what: str) -> TrainingDiverged:
        if self._last_checkpoint is None:
            return TrainingDiverged(f"{what}; no checkpoint was written")
        path, step = self._last_checkpoint
        return TrainingDiverged(f"{what}; the last good checkpoint is {path} (step {step})")

    def _remove_stale_temp_files(self) -> None:
        """Delete the temp files (``.{name}.{random}.tmp``) that a write of our outputs killed mid-way left behind."""
        if self.out_dir is None or not self.dist.is_main or not self.out_dir.is_dir():
            return
        for name in _OUTPUT_NAMES:
            for stale in temp_files(self.out_dir / name):
                stale.unlink(missing_ok=True)

    def full_state_dict(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """Unsharded CPU weights of the model (or of the EMA copy) with plain keys, whatever the wrapping.

        Under FSDP this gathers the shards: call it on every rank (ranks > 0 get an empty dict).
        """
        if ema:
            if self.ema is None:
                raise ValueError("no EMA model: set ema_decay")
            return full_model_state_dict(self.ema.module)
        return full_model_state_dict(self.wrapped)

    def _save_weights(self) -> None:
        """Final weights as safetensors (``model.safetensors``, ``ema.safetensors``) with the model's config, and the
        config as ``config.json`` (last), which makes ``out_dir`` a ``save_pretrained`` folder of the final model."""
        state = self.full_state_dict()
        ema_state = self.full_state_dict(ema=True) if self.ema is not None else None
        if self.dist.is_main:
            config = getattr(self.model, "model_config", None)
            save_checkpoint(state, self.out_dir / WEIGHTS_NAME, config=config)
            if ema_state is not None:
                save_checkpoint(ema_state, self.out_dir / EMA_WEIGHTS_NAME, config=config)
            if config is not None:
                save_model_config(config, self.out_dir)
        if self.dist.enabled:
            dist.barrier()

    def _resume_path(self) -> Path | None:
        """The checkpoint to resume: ``resume=True`` needs ``out_dir``'s, ``"auto"`` takes it when there is one (a
        requeued job), a path names one."""
        resume = self.cfg.resume
        if resume is False or resume is None:
            return None
        if resume is True or resume == "auto":
            path = self.out_dir / CHECKPOINT_NAME
            if path.exists():
                return path
            if resume == "auto":
                return None
            raise CheckpointError(
                f"train.resume=true but {self.out_dir} has no {CHECKPOINT_NAME} to resume: start a fresh run "
                "(train.resume=false), or use train.resume=auto to resume only when there is a checkpoint"
            )
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"resume checkpoint {path} does not exist")
        return path

    def _maybe_resume(self) -> bool:
        path = self._resume_path()
        if path is None:
            return False
        self.load(path)
        return True

    def load(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint written by :meth:`save` (every rank reads the file)."""
        path = Path(path)
        verify_checksum(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for foreign or truncated files
            raise CheckpointError(f"cannot read training checkpoint {path}: {type(e).__name__}: {e}") from None
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise CheckpointError(f"{path} is not a bramley training checkpoint (format {_FORMAT})")
        if "final_metrics" in state and int(state["step"]) != self.total_steps:
            raise ConfigError(
                f"{path} is a finished run of {state['step']} steps but this run asks for {self.total_steps} "
                "(train.steps / train.epochs changed): a finished run is not extended; train a new run in another "
                "folder (from these weights if you like: model.safetensors)"
            )
        changed = {
            k: (v, getattr(self.cfg, k))
            for k, v in state["config"].items()
            if k not in _RUNTIME_FIELDS and hasattr(self.cfg, k) and v != self.cfg.to_dict()[k]
        }
        if changed:
            diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
            warnings.warn(f"resuming {path} with a changed config ({diff}); the run will not match", stacklevel=2)
        check_state_dict(self.model, state["model"], source=f"training checkpoint {path}")
        load_full_model_state_dict(self.wrapped, state["model"])
        load_full_optimizer_state_dict(self.wrapped, self.optimizer, state["optimizer"])
        sched = dict(state["scheduler"])
        sched["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)  # the schedule comes from the current config
        self.scheduler.load_state_dict(sched)
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"{path} has no EMA state but train.ema_decay is set")
            if isinstance(self.wrapped, nn.parallel.DistributedDataParallel) or not self.dist.enabled:
                self.ema.module.load_state_dict(state["ema"]["module"])
            else:
                load_full_model_state_dict(self.ema.module, state["ema"]["module"])
            self.ema.updates = int(state["ema"]["updates"])
        saved_callbacks = state["callbacks"]
        if len(saved_callbacks) != len(self.callbacks) and any(c is not None for c in saved_callbacks):
            n_saved, n_now = len(saved_callbacks), len(self.callbacks)
            raise CheckpointError(f"{path} holds the state of {n_saved} callbacks, this trainer has {n_now}")
        for callback, cb_state in zip(self.callbacks, saved_callbacks):
            if cb_state is not None:
                callback.load_state_dict(cb_state)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self._epoch_losses = list(state["epoch_losses"])
        self._window = [dict(w) for w in state["log_window"]]
        if state["world_size"] == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank])
        else:
            warnings.warn(
                f"{path} was written by {state['world_size']} process(es), this run has {self.dist.world_size}: "
                "RNG states are re-seeded and the data order is resharded, so the run will not match exactly",
                stacklevel=2,
            )
            seed_everything(self.cfg.seed + self.dist.rank + 7919 * self.step)
        self._last_checkpoint = (path, self.step)
        if "final_metrics" in state:
            self._finished_metrics = dict(state["final_metrics"])
        else:
            self._start_metrics_file(keep_until=self.step, keep_record_at_step=not state["log_window"])
