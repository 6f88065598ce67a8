"""Learnable per-channel residual-branch scales (CaiT's LayerScale) for channels-last and NCHW tensors."""

from __future__ import annotations

import torch
import torch.nn as nn

from .checks import is_traced

__all__ = ["LayerScale", "LayerScale2d"]


class LayerScale(nn.Module):
    """``x * gamma`` with a learnable ``gamma`` of shape ``(dim,)``, for channels-last inputs ``(..., dim)``.

    The parameter is named ``gamma`` as in timm's ``LayerScale``, so timm ViT/DeiT-III state dicts load as is.

    Args:
        dim: channels (last dim of the input).
        init_values: initial value of every entry of ``gamma`` (CaiT: small, e.g. ``1e-5``).
    """

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript compiles both sides of an `and`)
            if not is_traced(x) and x.shape[-1] != self.gamma.shape[0]:
                raise ValueError(f"LayerScale expects (..., {self.gamma.shape[0]}) inputs, got shape {tuple(x.shape)}")
        return x * self.gamma

    def extra_repr(self) -> str:
        return f"dim={self.gamma.shape[0]}"


class LayerScale2d(nn.Module):
    """``x * gamma`` with a learnable ``gamma`` of shape ``(dim, 1, 1)``, for NCHW inputs ``(B, dim, H, W)``.

    ``gamma`` is stored as ``(dim, 1, 1)``, the layout of timm's FastViT ``LayerScale2d`` and the official FastViT
    ``layer_scale`` parameters (timm's generic ``timm.layers.LayerScale2d`` stores ``(dim,)``; reshape when converting
    from it), so FastViT checkpoints load without reshaping and outputs match timm's bit for bit.

    Args:
        dim: channels (dim 1 of the input).
        init_values: initial value of every entry of ``gamma``.
    """

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript compiles both sides of an `and`)
            if not is_traced(x) and (x.dim() != 4 or x.shape[1] != self.gamma.shape[0]):
                raise ValueError(
                    f"LayerScale2d expects (B, {self.gamma.shape[0]}, H, W) inputs, got shape {tuple(x.shape)}"
                )
        return x * self.gamma

    def extra_repr(self) -> str:
        return f"dim={self.gamma.shape[0]}"
