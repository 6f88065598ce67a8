"""Small convolutional classifiers for the mini reproduction (teachers and students on 32 px synthetic images).

Any registered bramley classifier (MobileOne, FastViT, ...) or timm model trains on a reinforced dataset; these two
exist so the mini reproduction runs in minutes on a CPU: ``dr_convnet`` (the student) and ``dr_convnet_wide`` (a
teacher, 4x the compute).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from bramley.core.registry import register_model

__all__ = ["ConvNet", "dr_convnet", "dr_convnet_wide"]


# -------------------------------------------------------------------------------------------------------- blocks
def _conv_bn_relu(in_chans: int, out_chans: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False), nn.BatchNorm2d(out_chans), nn.ReLU(inplace=True)
    )


# --------------------------------------------------------------------------------------------------------- model
class ConvNet(nn.Module):
    """Stages of two 3x3 conv-BN-ReLU layers, each stage but the last followed by 2x2 max pooling; global average
    pooling, dropout and a linear classifier.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        widths: channels of each stage.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, widths: Sequence[int] = (32, 64, 128), drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive channel counts, got {list(widths)}")
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        chans = in_chans
        for i, width in enumerate(widths):
            layers += [_conv_bn_relu(chans, width), _conv_bn_relu(width, width)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            chans = width
        self.features = nn.Sequential(*layers)
        self.num_features = chans
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(chans, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, num_features)``."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.forward_features(x)))


# ------------------------------------------------------------------------------------------------------ factories
@register_model(input_size=(3, 32, 32))
def dr_convnet(num_classes: int = 1000, **kwargs) -> ConvNet:
    """Six-layer CNN, widths 32-64-128 (the mini reproduction's student)."""
    return ConvNet(num_classes, **{"widths": (32, 64, 128), **kwargs})


@register_model(input_size=(3, 32, 32))
def dr_convnet_wide(num_classes: int = 1000, **kwargs) -> ConvNet:
    """Six-layer CNN, widths 64-128-256 (the mini reproduction's teachers)."""
    return ConvNet(num_classes, **{"widths": (64, 128, 256), **kwargs})
