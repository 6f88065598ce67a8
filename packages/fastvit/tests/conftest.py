"""Helpers shared by the FastViT tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import bramley.fastvit  # noqa: F401  (registers the variants)

TINY_SA = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 64), num_classes=5)


def randomize_stats(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics/affines and layer scales, so fusion and weight mapping have work to do."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                buf.copy_(torch.rand(buf.shape, generator=g) * 0.5 + 0.75)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=g))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: tiny models gain nothing from more, and shared CI machines lose a lot (spin-waiting)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def randomize():
    """The :func:`randomize_stats` helper (test modules cannot import conftest under importlib mode)."""
    return randomize_stats


@pytest.fixture
def tiny_kwargs():
    """Factory kwargs of a tiny model with the SA structure (RepMixer stages + RepCPE/attention stage)."""
    return dict(TINY_SA)


@pytest.fixture
def tiny_sa():
    from bramley.core import create_model

    return randomize_stats(create_model("fastvit_sa12", **TINY_SA).eval())
