"""Feature extraction wrapper shared by every backbone (timm ``features_only`` semantics)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["FeatureExtractor"]


class FeatureExtractor(nn.Module):
    """Wraps a backbone and returns the list of its intermediate feature maps.

    The backbone must provide ``feature_info`` (a list of ``dict(num_chs=..., reduction=..., module=...)``, one per
    stage) and ``forward_intermediates(x, indices, intermediates_only=True) -> list[Tensor]``, timm's protocol.
    ``self.feature_info`` is a timm ``FeatureInfo`` so detection/segmentation code written for timm works unchanged
    (timm comes with the ``vision`` extra of bramley-core).
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None):
        super().__init__()
        from ._optional import optional_import

        with optional_import("vision", "bramley.core.features.FeatureExtractor"):
            from timm.models._features import FeatureInfo

        if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
            raise TypeError(f"{type(model).__name__} does not support feature extraction (no forward_intermediates)")
        n = len(model.feature_info)
        indices = tuple(range(n)) if out_indices is None else tuple(i % n for i in out_indices)
        if len(set(indices)) != len(indices) or any(not -n <= i < n for i in (out_indices or ())):
            raise ValueError(f"out_indices {out_indices} invalid for a model with {n} feature levels")
        self.model = model
        self.out_indices = indices
        self.feature_info = FeatureInfo(list(model.feature_info), indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
