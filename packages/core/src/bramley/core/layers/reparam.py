"""Structural reparameterization: train-time multi-branch conv blocks that fold into one conv for inference.

The MobileOne / FastViT family trains blocks made of several linear branches (k x k conv-BN branches, a 1x1 conv-BN
"scale" branch, a BatchNorm "identity" skip) summed before the non-linearity. All branches are linear in the input
once BatchNorm uses its running statistics (eval mode), so their sum is a single conv with a bias:

    BN(conv_W(x)) = conv_{W * g / s}(x) + (b - m * g / s),   s = sqrt(var + eps)

A 1x1 kernel is zero-padded to k x k (centred) and the identity is a k x k kernel with a single 1 at the centre of
each channel's own input slot (group aware). :meth:`MobileOneBlock.reparameterize` sums them into ``reparam_conv``.

Module names follow timm's ``MobileOneBlock`` (``identity``, ``conv_kxk.{i}.conv/bn``, ``conv_scale.conv/bn``,
``reparam_conv``) so state dicts map one to one; the SE module follows the official MobileOne code
(``se.reduce``, ``se.expand``).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ConvNorm",
    "MobileOneBlock",
    "SqueezeExcite",
    "fuse_conv_bn",
    "identity_kernel",
    "pad_kernel",
    "reparameterize_model",
]


def fuse_conv_bn(
    conv_weight: torch.Tensor, bn: nn.BatchNorm2d, conv_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold an eval-mode BatchNorm into the preceding conv.

    Args:
        conv_weight: conv kernel ``(out, in / groups, kh, kw)``.
        bn: the BatchNorm applied to the conv output (its running statistics are used).
        conv_bias: the conv's own bias, if it has one.

    Returns:
        ``(weight, bias)`` of the single conv equal to ``bn(conv(x))`` in eval mode.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fuse_conv_bn needs a BatchNorm with running statistics (track_running_stats=True)")
    if conv_weight.shape[0] != bn.num_features:
        raise ValueError(f"conv has {conv_weight.shape[0]} output channels but the BatchNorm has {bn.num_features}")
    std = (bn.running_var + bn.eps).sqrt()
    gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    bias = conv_bias if conv_bias is not None else torch.zeros_like(std)
    return conv_weight * scale.reshape(-1, 1, 1, 1), beta + (bias - bn.running_mean) * scale


def pad_kernel(kernel: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Zero-pad a square ``k x k`` kernel to ``kernel_size x kernel_size``, keeping it centred.

    Both sizes must be odd (or equal) so the centre is well defined; a conv with the padded kernel and padding
    ``kernel_size // 2`` computes the same function as the original with padding ``k // 2``.
    """
    k = kernel.shape[-1]
    if kernel.shape[-2] != k:
        raise ValueError(f"pad_kernel expects a square kernel, got {tuple(kernel.shape[-2:])}")
    if k == kernel_size:
        return kernel
    if k > kernel_size or (kernel_size - k) % 2:
        raise ValueError(f"cannot centre a {k}x{k} kernel in {kernel_size}x{kernel_size} (sizes must be odd, k <= K)")
    pad = (kernel_size - k) // 2
    return F.pad(kernel, [pad, pad, pad, pad])


def identity_kernel(
    channels: int,
    kernel_size: int,
    groups: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``(channels, channels / groups, K, K)`` kernel of a conv that returns its input unchanged.

    Output channel ``i`` reads input channel ``i``, which is slot ``i % (channels / groups)`` of its group.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"identity_kernel needs an odd kernel_size, got {kernel_size}")
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    in_per_group = channels // groups
    kernel = torch.zeros(channels, in_per_group, kernel_size, kernel_size, dtype=dtype, device=device)
    if kernel.is_meta:  # shapes only (a model built on the meta device); indexing there imports torch's decompositions
        return kernel
    idx = torch.arange(channels)
    kernel[idx, idx % in_per_group, kernel_size // 2, kernel_size // 2] = 1
    return kernel


class ConvNorm(nn.Sequential):
    """Bias-free conv followed by BatchNorm (children ``conv`` and ``bn``), "same" padding for odd kernels."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        padding: int | None = None,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs,
            out_chs,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2 if padding is None else padding,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_chs)

    def kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the single conv equal to this module in eval mode."""
        return fuse_conv_bn(self.conv.weight, self.bn)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """The single conv (with bias) equal to this module in eval mode: timm's ``fuse()`` convention, which
        ``timm.utils.reparameterize_model`` relies on (it replaces the module with what ``fuse`` returns)."""
        conv = self.conv
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=True,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        weight, bias = self.kernel_bias()
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        return fused


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as in MobileOne: global average pool, 1x1 reduce, ReLU, 1x1 expand, sigmoid gate.

    The gate is computed from the block's pre-activation output and multiplies that same tensor. The hidden width
    is ``int(channels * rd_ratio)`` with ``rd_ratio = 1/16`` as in the official MobileOne code (floored at 1 for
    tiny models). Pooling is global, so the module works at any input resolution.
    """

    def __init__(self, channels: int, rd_ratio: float = 0.0625, rd_channels: int | None = None):
        super().__init__()
        hidden = rd_channels if rd_channels is not None else max(1, int(channels * rd_ratio))
        if hidden < 1:
            raise ValueError(f"SqueezeExcite needs at least one hidden channel, got rd_channels={rd_channels}")
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = self.expand(F.relu(self.reduce(gate)))
        return x * torch.sigmoid(gate)


def _make_act(act_layer: Callable[..., nn.Module]) -> nn.Module:
    """The activation, in place when it supports it: the block output is always a fresh tensor (saves a copy)."""
    try:
        accepts_inplace = "inplace" in inspect.signature(act_layer).parameters
    except (TypeError, ValueError):
        accepts_inplace = False
    return act_layer(inplace=True) if accepts_inplace else act_layer()


class MobileOneBlock(nn.Module):
    """MobileOne's reparameterizable conv block (also FastViT's conv stem/stages building block).

    Train time: ``act(se(sum_i conv_kxk[i](x) + conv_scale(x) + identity(x)))`` where each ``conv_kxk`` is a k x k
    conv-BN, ``conv_scale`` a 1x1 conv-BN (only when ``kernel_size > 1`` and ``use_scale_branch``) and ``identity``
    a BatchNorm (only when ``stride == 1`` and ``in_chs == out_chs``). With ``num_conv_branches=1`` and both optional
    branches off it is a plain conv-BN-act, the baseline that over-parameterization is compared against.
    Inference: ``act(se(reparam_conv(x)))``.

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: odd square kernel size (padding is ``kernel_size // 2``).
        stride: conv stride.
        groups: conv groups, as in :class:`torch.nn.Conv2d` (``groups=in_chs`` for depthwise). We take ``groups``
            rather than timm's ``group_size`` because it is what the official MobileOne/FastViT code and PyTorch use.
        inference_mode: build the fused block directly (a single ``reparam_conv``), e.g. to load a fused checkpoint.
        use_se: squeeze-excite (:class:`SqueezeExcite`) before the activation.
        use_act: apply ``act_layer``; else the block is linear.
        use_scale_branch: add the 1x1 conv-BN branch (ignored when ``kernel_size == 1``).
        use_identity: add the BatchNorm skip branch where it applies (``stride == 1`` and ``in_chs == out_chs``).
        num_conv_branches: number ``k`` of parallel k x k conv-BN branches (over-parameterization factor).
        act_layer: activation class, instantiated with ``inplace=True`` when it accepts it (e.g. ``nn.ReLU``).
        se_layer: squeeze-excite class, called as ``se_layer(out_chs)``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        inference_mode: bool = False,
        use_se: bool = False,
        use_act: bool = True,
        use_scale_branch: bool = True,
        use_identity: bool = True,
        num_conv_branches: int = 1,
        act_layer: Callable[..., nn.Module] = nn.ReLU,
        se_layer: Callable[[int], nn.Module] = SqueezeExcite,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"MobileOneBlock needs an odd kernel_size (centred branches), got {kernel_size}")
        if in_chs % groups or out_chs % groups:
            raise ValueError(f"in_chs ({in_chs}) and out_chs ({out_chs}) must be divisible by groups ({groups})")
        if num_conv_branches < 0:
            raise ValueError(f"num_conv_branches must be >= 0, got {num_conv_branches}")
        self.in_chs, self.out_chs = in_chs, out_chs
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.num_conv_branches = num_conv_branches

        self.reparam_conv: nn.Conv2d | None = None
        self.identity: nn.BatchNorm2d | None = None
        self.conv_kxk: nn.ModuleList | None = None
        self.conv_scale: ConvNorm | None = None
        if inference_mode:
            self.reparam_conv = self._make_reparam_conv()
        else:
            if use_identity and stride == 1 and in_chs == out_chs:
                self.identity = nn.BatchNorm2d(out_chs)
            self.conv_kxk = nn.ModuleList(
                ConvNorm(in_chs, out_chs, kernel_size, stride=stride, groups=groups) for _ in range(num_conv_branches)
            )
            if use_scale_branch and kernel_size > 1:
                self.conv_scale = ConvNorm(in_chs, out_chs, 1, stride=stride, groups=groups)
            if self.identity is None and self.conv_scale is None and num_conv_branches == 0:
                raise ValueError("MobileOneBlock has no branch at all (num_conv_branches=0, no scale, no identity)")
        self.se = se_layer(out_chs) if use_se else nn.Identity()
        self.act = _make_act(act_layer) if use_act else nn.Identity()

    def _make_reparam_conv(self) -> nn.Conv2d:
        return nn.Conv2d(
            self.in_chs,
            self.out_chs,
            self.kernel_size,
            stride=self.stride,
            padding=self.kernel_size // 2,
            groups=self.groups,
            bias=True,
        )

    @property
    def is_reparameterized(self) -> bool:
        """True once the branches are fused into ``reparam_conv``."""
        return self.reparam_conv is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            return self.act(self.se(self.reparam_conv(x)))
        # summation order (scale, k x k branches, identity) matches timm's so that logits agree bit for bit
        out = self.conv_scale(x) if self.conv_scale is not None else torch.zeros((), dtype=x.dtype, device=x.device)
        if self.conv_kxk is not None:
            for branch in self.conv_kxk:
                out = out + branch(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(self.se(out))

    def get_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` of the single conv equal to the sum of all branches in eval mode."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight, self.reparam_conv.bias
        ref = next(self.parameters())
        kernel = torch.zeros(
            self.out_chs,
            self.in_chs // self.groups,
            self.kernel_size,
            self.kernel_size,
            dtype=ref.dtype,
            device=ref.device,
        )
        bias = torch.zeros(self.out_chs, dtype=ref.dtype, device=ref.device)
        if self.conv_kxk is not None:
            for branch in self.conv_kxk:
                w, b = branch.kernel_bias()
                kernel, bias = kernel + w, bias + b
        if self.conv_scale is not None:
            w, b = self.conv_scale.kernel_bias()
            kernel, bias = kernel + pad_kernel(w, self.kernel_size), bias + b
        if self.identity is not None:
            ident = identity_kernel(self.in_chs, self.kernel_size, self.groups, dtype=ref.dtype, device=ref.device)
            w, b = fuse_conv_bn(ident, self.identity)
            kernel, bias = kernel + w, bias + b
        return kernel, bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fuse every branch into ``reparam_conv`` in place and delete the branches (a no-op once fused)."""
        if self.reparam_conv is not None:
            return
        kernel, bias = self.get_kernel_bias()
        conv = self._make_reparam_conv().to(device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self.conv_kxk = None
        self.conv_scale = None
        self.identity = None
        self.reparam_conv = conv

    def extra_repr(self) -> str:
        return f"num_conv_branches={self.num_conv_branches}, reparameterized={self.is_reparameterized}"


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every reparameterizable submodule of ``model`` (anything with a ``reparameterize()`` method).

    Submodules are fused deepest first, so a container whose ``reparameterize`` relies on fused children works.
    Idempotent: fusing a fused model changes nothing. When ``model`` carries a ``model_config`` (built by
    ``bramley.core.create_model``), the fused model's config says ``inference_mode=True``, so a ``save_pretrained``
    folder of it rebuilds the fused structure: every registered model with reparameterizable blocks takes that
    factory argument.

    Args:
        model: the train-time model. Fusion uses BatchNorm running statistics, i.e. eval-mode semantics; a model in
            train mode gets a warning (its batch-statistics outputs cannot be matched by the fused model).
        inplace: fuse ``model`` itself; by default a deep copy is fused and ``model`` is left untouched.

    Returns:
        The fused model (``model`` itself when ``inplace``).
    """
    if model.training:
        warnings.warn(
            "reparameterize_model called on a model in train mode: the fused model equals the original only in eval "
            "mode (BatchNorm running statistics); call model.eval() first",
            UserWarning,
            stacklevel=2,
        )
    if not inplace:
        model = copy.deepcopy(model)
    fused_any = False
    for module in reversed(list(model.modules())):
        fuse = getattr(module, "reparameterize", None)
        if callable(fuse):
            fuse()
            fused_any = True
    config = getattr(model, "model_config", None)
    if fused_any and isinstance(config, dict):
        model.model_config = {**config, "kwargs": {**config.get("kwargs", {}), "inference_mode": True}}
    return model
