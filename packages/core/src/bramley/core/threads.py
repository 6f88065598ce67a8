"""Torch CPU threads: the one thread policy every command and data path uses, and a pool for many small kernels.

Commands take ``--threads`` (:func:`bramley.core.cli.add_threads_argument`) and run their work under
:func:`torch_threads`; code below the CLI (data transforms) uses it directly, so it lives outside the CLI module.

:func:`map_single_threaded` runs independent pieces of work (one attention kernel per document) on
``torch.get_num_threads()`` worker threads whose kernels each run on one thread. Torch splits every kernel call into a
parallel region over all its threads and joins them at the end of the call; when another process holds a core, each
of many short calls waits for its descheduled thread. Workers that take the next piece when they are free do not wait
for one another, and the results are the same: the CPU kernels compute each output row on one thread whatever the
count (tests check it bit for bit).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["map_single_threaded", "torch_threads"]

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (``None``: as they are) and restore the previous count after
    it, also on an error: commands are called in-process too (tests, ``bramley``), and must leave torch as found.

    Cheap when nothing changes (no ``set_num_threads`` call), so it may wrap small hot operations too.
    """
    import torch

    previous = torch.get_num_threads()
    if count is not None and count != previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _single_threaded_pool(count: int) -> ThreadPoolExecutor:
    """``count`` worker threads, each running torch kernels on one thread; made once per process and count, and kept
    (a forked child, e.g. a DataLoader worker, inherits the pool object but not its threads, so it makes its own)."""
    import torch

    key = (os.getpid(), count)
    with _pools_lock:
        if key not in _pools:
            # Each thread takes torch's shared count once, when it first asks for it, and keeps its own from then on.
            # A worker takes it (get), then sets its own to one (set, which also changes the shared count); once every
            # worker has (the barrier), the caller sets the shared count back to its own.
            previous = torch.get_num_threads()
            started = threading.Barrier(count + 1)

            def start() -> None:
                torch.get_num_threads()
                torch.set_num_threads(1)
                started.wait()

            pool = ThreadPoolExecutor(count, thread_name_prefix="bramley-kernel")
            for _ in range(count):
                pool.submit(start)
            started.wait()
            torch.set_num_threads(previous)
            _pools[key] = pool
        return _pools[key]


def map_single_threaded(function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[function(item) for item in items]``, on ``torch.get_num_threads()`` workers whose kernels run on one thread.

    For independent pieces of torch work (each releases the GIL in its kernels): a free worker takes the next item, so
    nobody waits for a descheduled thread, as one multi-threaded call per item does. Give the costliest items first.
    Serial (in the calling thread, as written above) with one thread or one item. The workers run with the caller's
    grad mode; an exception from any item is raised here. Gather large results inside ``function`` (each item copies
    its result into a preallocated output) rather than with a ``cat`` of the returned pieces: the calling thread runs
    that ``cat`` as a parallel region of all its threads, and with another process on a core such a region stalled
    (16 MB of attention output: 120-160 ms instead of ~1 ms in about one call in five).
    """
    import torch

    threads = torch.get_num_threads()
    if threads < 2 or len(items) < 2:
        return [function(item) for item in items]
    grad = torch.is_grad_enabled()

    def run(item: T) -> R:
        with torch.set_grad_enabled(grad):
            return function(item)

    return list(_single_threaded_pool(threads).map(run, items))
