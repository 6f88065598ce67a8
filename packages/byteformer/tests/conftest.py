"""Fixtures shared by the ByteFormer tests (test modules cannot import each other under importlib mode)."""

from __future__ import annotations

import pytest

from shared.cli_testing import QUICK_TRAIN


@pytest.fixture
def tiny_recipe() -> list[str]:
    """Overrides for a two-block BF-Ti (corenet's per-block pattern cut to depth 2) and one short epoch: a recipe
    runs in a second."""
    return [
        "model.kwargs.depth=2",
        "model.kwargs.embed_dim=32",
        "model.kwargs.num_heads=2",
        "model.kwargs.window_shifts=[0,4]",
        "model.kwargs.window_sizes=[8]",
        "model.kwargs.downsample=[true,false]",
        "model.kwargs.max_num_tokens=1024",
        "train.epochs=1",
        *QUICK_TRAIN,
        "train.grad_accum_steps=1",
        "train.ema_decay=null",
        "optim.warmup_steps=0",
        "eval.batch_size=64",
    ]
