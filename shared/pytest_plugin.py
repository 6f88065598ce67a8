"""Pytest plugin loaded for the whole workspace (see ``addopts`` in the root pyproject).

- Tests run in parallel workers (pytest-xdist, ``-n auto``: one per core, at most 4; ``-n 0`` for one process).
- ``gpu``-marked tests are skipped when no CUDA device is present.
- Every test starts from the same seeds and with one torch thread, so that 2-core CI runs are repeatable and fast.
- Fixtures that make small data files on the fly (no downloads anywhere in the test suite).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the default in ``addopts``): one worker per core, at most 4 (each test runs one torch thread; a
    worker holds a few hundred MiB of imports). ``BRAMLEY_TEST_WORKERS`` overrides; ``-n 0`` runs in one process."""
    if "BRAMLEY_TEST_WORKERS" in os.environ:
        return int(os.environ["BRAMLEY_TEST_WORKERS"])
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _small_thread_pool():
    """One torch thread per test (``BRAMLEY_TEST_THREADS`` to change): test models are tiny, and two OpenMP
    threads spin-waiting on a busy 2-core machine made steps 10-100x slower than one thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BRAMLEY_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A tiny ImageFolder tree: 3 classes x 4 RGB PNGs of 20x24 pixels, written by the test itself."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for c, cls in enumerate(["cat", "dog", "fox"]):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
            pixels[..., c] = 255  # class-dependent colour so a model can tell them apart
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


@pytest.fixture
def triton_interpret(monkeypatch):
    """Run Triton kernels on CPU through the interpreter (small sizes only: it is slow).

    Triton reads ``TRITON_INTERPRET`` when a kernel is first launched, but some of ``triton.language`` is bound at
    import: kernels launched here go through ``bramley.core.ops._triton``, which handles a late switch.
    """
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield
    os.environ.pop("TRITON_INTERPRET", None)
