"""One run per output folder: a lock held while a run writes, and what a folder already holds.

Two trainings writing into one folder interleave their metrics and checkpoints; a second training started on a
finished folder silently replaced it. A run therefore holds ``<folder>/.lock`` (an advisory ``flock``, which the
operating system releases when the process dies, so a killed run never blocks its own resume) for as long as it
writes, and starts only on a folder that holds no earlier run, unless it resumes that run or is told to replace it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from .checkpoint import CONFIG_NAME, MANIFEST_NAME, WEIGHTS_NAME, temp_files
from .errors import CheckpointError

__all__ = [
    "CHECKPOINT_NAME",
    "EMA_WEIGHTS_NAME",
    "LOCK_NAME",
    "METRICS_NAME",
    "RECIPE_NAME",
    "RESULTS_NAME",
    "RUN_OUTPUTS",
    "clear_run",
    "run_lock",
    "run_state",
]

RECIPE_NAME = "recipe.yaml"  # the resolved recipe (the train verb)
RESULTS_NAME = "results.json"  # the final metrics (the train verb)
METRICS_NAME = "metrics.jsonl"  # one line per log / evaluation (the trainer)
CHECKPOINT_NAME = "checkpoint.pt"  # the exact-resume state (the trainer)
EMA_WEIGHTS_NAME = "ema.safetensors"  # the EMA weights (the trainer; model.safetensors holds the final weights)
LOCK_NAME = ".lock"
#: Everything a training run writes into its folder.
RUN_OUTPUTS = (
    RECIPE_NAME,
    RESULTS_NAME,
    METRICS_NAME,
    CHECKPOINT_NAME,
    WEIGHTS_NAME,
    EMA_WEIGHTS_NAME,
    CONFIG_NAME,
    MANIFEST_NAME,
)

_held: dict[Path, tuple[int, int]] = {}  # folder -> (file descriptor, how many holders in this process)


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold ``directory``'s run lock for the block (re-entrant within a process: the train verb and the trainer
    both take it). Another live process holding it is a :class:`CheckpointError` naming its pid."""
    folder = Path(directory).resolve()
    if folder in _held:
        fd, count = _held[folder]
        _held[folder] = (fd, count + 1)
    else:
        _held[folder] = (_acquire(folder), 1)
    try:
        yield
    finally:
        fd, count = _held[folder]
        if count > 1:
            _held[folder] = (fd, count - 1)
        else:
            del _held[folder]
            with contextlib.suppress(OSError):  # a run folder holds no lock file once its run has ended
                (folder / LOCK_NAME).unlink()
            os.close(fd)  # closing the descriptor releases the flock


def _acquire(folder: Path) -> int:
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: runs are not guarded against each other
        return os.open(os.devnull, os.O_RDONLY)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise CheckpointError(f"cannot write to {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise CheckpointError(
            f"another run (pid {holder}) is writing to {folder}; wait for it to finish or use another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def run_state(directory: str | os.PathLike) -> Literal["empty", "unfinished", "finished"]:
    """What ``directory`` holds: ``finished`` (final weights), ``unfinished`` (only a resume checkpoint) or
    ``empty``; for a chain of runs in sub-folders (one per stage), the furthest state among them."""
    folder = Path(directory)
    states = [_own_state(folder)]
    if folder.is_dir():
        states += [_own_state(sub) for sub in folder.iterdir() if sub.is_dir()]
    return max(states, key=("empty", "unfinished", "finished").index)


def _own_state(folder: Path) -> Literal["empty", "unfinished", "finished"]:
    if (folder / WEIGHTS_NAME).is_file():
        return "finished"
    if (folder / CHECKPOINT_NAME).is_file():
        return "unfinished"
    return "empty"


def clear_run(directory: str | os.PathLike) -> None:
    """Remove an earlier run's outputs (and their temporary files) from ``directory`` and from its sub-folders (the
    stages of a chain); nothing else in them."""
    folder = Path(directory)
    for target in [folder, *(sub for sub in folder.iterdir() if sub.is_dir())] if folder.is_dir() else []:
        for name in RUN_OUTPUTS:
            for path in (target / name, *temp_files(target / name)):
                path.unlink(missing_ok=True)
