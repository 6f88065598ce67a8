"""Batched image augmentations on tensors for SimCLR views (random resized crop, flip, colour jitter, noise).

They run on whole ``(N, C, H, W)`` batches on the training device, so they work for 8x8 digits and 224x224 photos
alike and need no per-sample PIL pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["BatchAugment"]


@dataclass
class BatchAugment:
    """Random per-sample augmentation of a batch.

    Args:
        scale: range of the crop's area fraction (random resized crop, aspect ratio in ``ratio``).
        ratio: range of the crop's aspect ratio.
        hflip: probability of a horizontal flip (keep 0 for digits).
        brightness: strength of the additive brightness jitter (relative to the batch's value range).
        contrast: strength of the multiplicative contrast jitter.
        noise: std of additive Gaussian noise (relative to the batch's value range).
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.4
    noise: float = 0.05

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images (N, C, H, W), got {tuple(x.shape)}")
        n, dev = x.shape[0], x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device="cpu").to(dev)

        area = self.scale[0] + (self.scale[1] - self.scale[0]) * rand(n)
        log_r = torch.log(torch.tensor(self.ratio))
        aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * rand(n))
        sx = torch.sqrt(area * aspect).clamp(max=1.0)
        sy = torch.sqrt(area / aspect).clamp(max=1.0)
        tx = (1 - sx) * (2 * rand(n) - 1)
        ty = (1 - sy) * (2 * rand(n) - 1)
        flip = torch.where(rand(n) < self.hflip, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
        theta[:, 1, 1], theta[:, 1, 2] = sy, ty
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        span = (x.amax() - x.amin()).clamp(min=1e-6)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        contrast = 1 + self.contrast * (2 * rand(n, 1, 1, 1) - 1)
        brightness = self.brightness * span * (2 * rand(n, 1, 1, 1) - 1)
        out = (out - mean) * contrast + mean + brightness
        if self.noise > 0:
            out = out + self.noise * span * torch.randn(out.shape, generator=generator).to(dev)
        return out
