"""Fixtures shared by the MRL tests (test modules cannot import each other under importlib mode)."""

from __future__ import annotations

import pytest

from shared.cli_testing import QUICK_CPU_TRAIN


@pytest.fixture
def tiny_paper_recipe() -> list[str]:
    """Overrides that shrink the ImageNet recipe to toy scale: a tiny timm backbone (96 features), 32 px, one epoch."""
    return [
        "model.name=mrl_backbone",
        "model.kwargs.backbone=test_resnet",
        "data.image_size=32",
        "data.val_image_size=32",
        "train.epochs=1",
        *QUICK_CPU_TRAIN,
        "optim.warmup_epochs=0",
    ]
