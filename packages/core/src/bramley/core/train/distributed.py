"""Thin glue over ``torch.distributed``: process-group setup under torchrun, DDP / FSDP2 wrapping, full state dicts.

Everything distributed is PyTorch's own (``init_process_group``, ``DistributedDataParallel``, ``fully_shard``,
``torch.distributed.checkpoint.state_dict``); this module only decides which to call.
"""

from __future__ import annotations

import atexit
import ctypes
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import ConfigError

__all__ = [
    "DistInfo",
    "full_model_state_dict",
    "full_optimizer_state_dict",
    "init_distributed",
    "load_full_model_state_dict",
    "load_full_optimizer_state_dict",
    "settle",
    "synchronize",
    "wrap_model",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``world_size == 1`` means no process group is used."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; anything else is used as given.

    Raises:
        ConfigError: an unknown device string, or a CUDA / MPS device this machine does not have.
    """
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} requested but MPS is not available on this machine")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU. Call it around timed regions."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def init_distributed(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); otherwise run single-process.

    Uses an existing process group if the caller made one. Backend: ``nccl`` on CUDA, ``gloo`` on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and world <= 1:
        return DistInfo(), resolve_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        atexit.register(_destroy)
    return DistInfo(dist.get_rank(), local_rank, dist.get_world_size()), dev


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


_settled: list[object] = []  # the last settle() barrier, given one extra reference so that it is never freed


def settle(info: DistInfo) -> None:
    """A barrier after which the process may end at once: call it after a distributed job's last collective.

    Gloo runs each collective on a worker thread, which drops its reference to the finished collective (and to the
    tensors in it) a moment after the caller has moved on. Dropping a tensor that Python has seen takes the GIL; if
    the script has ended by then, the interpreter is finalizing, CPython ends the thread inside that destructor and
    the process aborts ("terminate called without an active exception", exit -6 under torchrun; 4 of about 114 runs
    of ``tests/ddp_train.py`` on 2 cores, after the final barrier of :meth:`Trainer.fit`; 0 of 100 with this).
    Destroying the process group does not help: its threads live as long as any module still refers to it.

    A barrier holds every collective still in flight when it is issued. This one is waited for and then kept for
    the life of the process (the previous one is released here, by this thread, while the interpreter is alive), so
    no worker ever frees a collective during finalization. A no-op without a process group.
    """
    if not info.enabled:
        return
    work = dist.barrier(async_op=True)
    work.wait()
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(work))  # finalization must not free it: see above
    for previous in _settled:
        ctypes.pythonapi.Py_DecRef(ctypes.py_object(previous))
    _settled[:] = [work]


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device, mode: str, **kwargs) -> nn.Module:
    """The module that runs forward/backward: the model itself, ``DistributedDataParallel(model)``, or the model
    after ``fully_shard`` (FSDP2 shards in place) on each submodule whose class name is in ``shard_modules`` and
    then on the root.
    """
    if not info.enabled:
        return model
    if mode == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=kwargs.get("find_unused_parameters", False)
        )
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        shard_types = set(kwargs.get("shard_modules") or ())
        for sub in list(model.modules())[1:]:
            if type(sub).__name__ in shard_types:
                fully_shard(sub)
        fully_shard(model)
        return model
    raise ValueError(f"unknown distributed mode {mode!r} (ddp or fsdp)")


# torch.distributed.checkpoint is imported on first use: it takes seconds, and `import bramley.core.train` (for
# TrainConfig defaults in a CLI's --help) should not pay for it.


def full_model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict with plain FQN keys (empty on ranks > 0 under FSDP); same keys for any wrapping."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Unsharded optimizer state keyed by parameter FQN, portable between single-process, DDP and FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (every rank passes the whole thing) into a plain, DDP or FSDP model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


def load_full_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load an optimizer state saved by :func:`full_optimizer_state_dict`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
