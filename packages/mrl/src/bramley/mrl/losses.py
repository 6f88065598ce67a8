"""Matryoshka losses: the supervised per-size cross-entropy and a CLIP-style contrastive variant."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.errors import ConfigError, DataError

from .embeddings import truncate_normalize
from .nesting import check_nesting

__all__ = ["MatryoshkaContrastiveLoss", "MatryoshkaLoss"]


def _check_weights(weights: Sequence[float] | None, n: int | None = None) -> list[float] | None:
    if weights is None:
        return None
    weights = [float(w) for w in weights]
    if not weights or any(w < 0 for w in weights):
        raise ConfigError(f"relative_importance must be non-negative numbers, got {weights}")
    if n is not None and len(weights) != n:
        raise ConfigError(f"relative_importance has {len(weights)} weights for {n} nesting sizes")
    return weights


class MatryoshkaLoss(nn.Module):
    """Sum over nesting sizes of ``relative_importance[i] * CrossEntropy(logits[i], target)``.

    This is the paper's objective (and the official ``Matryoshka_CE_Loss``): each size's loss is the usual mean over
    the batch, and the sizes are summed (weights default to 1), not averaged.

    Args:
        relative_importance: one non-negative weight per nesting size (default all 1).
        label_smoothing: passed to cross-entropy (the paper's ResNet-50 recipe uses 0.1).
    """

    def __init__(self, relative_importance: Sequence[float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.relative_importance = _check_weights(relative_importance)
        self.label_smoothing = label_smoothing

    def per_size(self, logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Unweighted cross-entropy of each size, shape ``(num_sizes,)``."""
        if isinstance(logits, torch.Tensor) and logits.ndim == 2:
            raise DataError("MatryoshkaLoss expects one logits tensor per nesting size (a tuple), got one tensor")
        if len(logits) == 0:
            raise DataError("MatryoshkaLoss got no logits")
        return torch.stack([F.cross_entropy(z, target, label_smoothing=self.label_smoothing) for z in logits])

    def forward(self, logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        losses = self.per_size(logits, target)
        if self.relative_importance is None:
            return losses.sum()
        weights = _check_weights(self.relative_importance, len(losses))
        return (losses * losses.new_tensor(weights)).sum()


class MatryoshkaContrastiveLoss(nn.Module):
    """CLIP's symmetric InfoNCE applied at every nesting size of two embeddings, weighted and summed.

    At size ``m`` both embeddings are truncated to their first ``m`` features and L2-normalised, the logits are
    ``scale * a_m @ b_m.T`` and the loss is the mean of the row-wise and column-wise cross-entropy against the
    diagonal, as in CLIP. Row ``i`` of ``a`` and ``b`` are the positive pair.

    Args:
        nesting: the nesting sizes.
        relative_importance: one weight per size (default all 1).
        temperature: initial temperature; ``scale = 1 / temperature``.
        learnable_temperature: learn ``log(scale)`` as CLIP does (clamped to ``scale <= 100``).
    """

    def __init__(
        self,
        nesting: Sequence[int],
        relative_importance: Sequence[float] | None = None,
        temperature: float = 0.07,
        learnable_temperature: bool = False,
    ) -> None:
        super().__init__()
        self.nesting = check_nesting(nesting)
        self.relative_importance = _check_weights(relative_importance, len(self.nesting))
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        log_scale = torch.tensor(1.0 / temperature).log()
        if learnable_temperature:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def per_size(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Unweighted CLIP loss of each size, shape ``(num_sizes,)``."""
        if a.ndim != 2 or a.shape != b.shape:
            shapes = f"{tuple(a.shape)}, {tuple(b.shape)}"
            raise DataError(f"embeddings must be two (N, D) tensors of equal shape, got {shapes}")
        if self.nesting[-1] > a.shape[1]:
            raise DataError(f"nesting sizes {self.nesting} exceed the embedding dim {a.shape[1]}")
        scale = self.log_scale.exp().clamp(max=100.0)
        target = torch.arange(a.shape[0], device=a.device)
        losses = []
        for m in self.nesting:
            logits = scale * truncate_normalize(a, m) @ truncate_normalize(b, m).T
            losses.append((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)
        return torch.stack(losses)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        losses = self.per_size(a, b)
        if self.relative_importance is None:
            return losses.sum()
        return (losses * losses.new_tensor(self.relative_importance)).sum()
