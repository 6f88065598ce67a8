"""bramley.core.threads: the thread-count context and the single-threaded worker pool."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import torch

from bramley.core.threads import map_single_threaded, torch_threads


def _kernel_threads(item: int) -> tuple[int, int, bool]:
    """Runs a parallel kernel first (torch fixes a thread's count at its first one), then reports the count."""
    torch.randn(64, 64) @ torch.randn(64, 64)
    return item, torch.get_num_threads(), torch.is_grad_enabled()


def test_workers_run_one_thread_each_and_leave_the_callers_count():
    with torch_threads(2):
        results = map_single_threaded(_kernel_threads, list(range(6)))
        assert [r[0] for r in results] == list(range(6))  # in the order given
        assert {r[1] for r in results} == {1}
        assert torch.get_num_threads() == 2
        seen = []  # a thread started afterwards still starts with the caller's count
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert seen == [2]


def test_serial_with_one_thread_or_one_item():
    caller = threading.get_ident()
    with torch_threads(1):
        assert map_single_threaded(lambda i: threading.get_ident(), [0, 1, 2]) == [caller] * 3
    with torch_threads(2):
        assert map_single_threaded(lambda i: threading.get_ident(), [0]) == [caller]


def test_workers_take_the_callers_grad_mode_and_raise_its_errors():
    with torch_threads(2):
        with torch.no_grad():
            assert {r[2] for r in map_single_threaded(_kernel_threads, [0, 1, 2])} == {False}
        assert {r[2] for r in map_single_threaded(_kernel_threads, [0, 1, 2])} == {True}

        def fail(item: int) -> int:
            if item == 2:
                raise ValueError(f"item {item} is bad")
            return item

        with pytest.raises(ValueError, match="item 2 is bad"):
            map_single_threaded(fail, [0, 1, 2, 3])


def _child_maps() -> None:
    with torch_threads(2):
        assert [r[1] for r in map_single_threaded(_kernel_threads, [0, 1, 2])] == [1, 1, 1]


def test_a_forked_child_makes_its_own_workers():
    """A fork copies the pool object but not its threads: the child must not queue work on threads it does not have."""
    with torch_threads(2):
        map_single_threaded(_kernel_threads, [0, 1])  # the parent's pool exists
    child = multiprocessing.get_context("fork").Process(target=_child_maps)
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's worker pool")
    assert child.exitcode == 0
