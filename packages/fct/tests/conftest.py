"""Fixtures shared by the FCT tests (test modules cannot import each other under importlib mode)."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_chain() -> list[str]:
    """Overrides that shrink a full-scale recipe's chain: every stage two steps at 32 px, 2 old classes, on the CPU."""
    return [
        "data.image_size=32",
        "data.old_classes=2",
        "train.steps=2",
        "train.batch_size=4",
        "train.num_workers=0",
        "train.device=cpu",
        "train.progress=false",
        "optim.warmup_epochs=0",
        "loss.side_info.optim.warmup_epochs=0",
        "loss.side_info.train.batch_size=4",
        "loss.transformation.inner_dim=32",
        "eval.batch_size=4",
    ]
