"""Per-sample seeded augmentation: the random draws for sample ``i`` in epoch ``e`` depend only on (seed, e, i).

With the usual global RNGs, the augmentation a sample receives depends on the number of DataLoader workers, on the
order samples reach a worker, and on everything drawn before; resuming mid-epoch or changing ``num_workers`` changes
the data. Running each sample's transform under :func:`seeded_rng` removes that dependence.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed derived from ``(seed, epoch, index)`` through ``numpy.random.SeedSequence`` (well mixed)."""
    if min(seed, epoch, index) < 0:
        raise ValueError(f"seed, epoch and index must be non-negative, got {(seed, epoch, index)}")
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextlib.contextmanager
def seeded_rng(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Seed torch (CPU), Python ``random`` and NumPy's global RNG for one sample; restore all three afterwards.

    Covers torchvision transforms (torch RNG) and timm's auto-augment (``random`` and ``numpy``). CUDA RNGs are left
    alone: data transforms run on the CPU. Cost: roughly 0.1-0.3 ms per sample, most of it saving and restoring
    NumPy's 2.5 kB Mersenne-Twister state (``torch.manual_seed`` is avoided: it also seeds every accelerator).
    """
    value = sample_seed(seed, epoch, index)
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(value)
    random.seed(value)
    np.random.seed(value % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


class SharedEpoch:
    """An epoch counter in shared memory, so ``set_epoch`` reaches DataLoader workers that are already running."""

    def __init__(self, epoch: int = 0) -> None:
        self._value = torch.tensor(epoch, dtype=torch.int64).share_memory_()

    def set(self, epoch: int) -> None:
        self._value.fill_(epoch)

    def get(self) -> int:
        return int(self._value)


class SeededTransformDataset(Dataset):
    """Apply ``transform`` to each item's first element under :func:`seeded_rng` ``(seed, epoch, index)``.

    Call :meth:`set_epoch` before iterating each epoch (works with persistent workers too). Items that are tuples
    ``(x, *rest)`` become ``(transform(x), *rest)``; other items are transformed whole.
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self._epoch = SharedEpoch()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        with seeded_rng(self.seed, self._epoch.get(), index):
            return apply_to_first(self.transform, item)


def apply_to_first(transform: Callable, item: Any) -> Any:
    """``(x, *rest) -> (transform(x), *rest)`` for tuple items; ``transform(item)`` otherwise."""
    if isinstance(item, tuple):
        return (transform(item[0]), *item[1:])
    return transform(item)
