"""Width-sliceable (nested) transformer layers: one set of weights, many widths.

A sub-network of width ``k`` uses the *first* ``k`` channels of every sliced dimension: the first ``k`` hidden units of
an FFN (MatFormer's nested granularities), the first ``h`` whole heads of an attention layer and the first ``d``
channels of the residual stream (SHARCS' width-adaptive layers, DynaBERT-style). Nothing is copied at run time; each
layer reads a view of its full weights, so all widths train the same parameters.

Every layer here equals a dense smaller layer (:class:`~bramley.core.layers.Mlp`, :class:`~bramley.core.layers.SwiGLU`,
:class:`~bramley.core.layers.Attention`, ``nn.Linear``, ``nn.LayerNorm``) holding the copied slice of its weights; the
``extract`` methods build that dense layer, which is what an exported sub-model runs.

The active *input* width is always read from the input (``x.shape[-1]``), so a residual stream of width ``d`` flows
through the layers unchanged; only the inner width (hidden units, heads) is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..ops import attention
from .transformer import Attention, Mlp, SwiGLU

__all__ = [
    "SliceableAttention",
    "SliceableLinear",
    "SliceableMlp",
    "SliceableSwiGLU",
    "WidthLayerNorm",
    "check_widths",
    "slice_linear",
    "width_channels",
]


# ---------------------------------------------------------------------------------------------------------- widths
def width_channels(dim: int, width: float, multiple: int = 1) -> int:
    """The channels of ``width`` (a fraction in (0, 1]) of ``dim``: ``width * dim``, which must be a whole, positive
    multiple of ``multiple`` (e.g. the head size); a width that does not land on one is an error, never rounded."""
    if not 0 < width <= 1:
        raise ConfigError(f"width must be in (0, 1], got {width}")
    channels = width * dim
    whole = round(channels)
    if abs(channels - whole) > 1e-6 * max(1, dim) or whole <= 0 or whole % multiple:
        allowed = ", ".join(f"{k * multiple / dim:g}" for k in range(1, dim // multiple + 1))
        unit = f"a multiple of {multiple} channels" if multiple > 1 else "a whole number of channels"
        raise ConfigError(f"width {width} of {dim} channels is {channels:g}, not {unit}; allowed widths: {allowed}")
    return whole


def check_widths(widths: Sequence[float], num_heads: int | None = None, dim: int | None = None) -> tuple[float, ...]:
    """Validate a width list: non-empty, each in (0, 1], strictly increasing (so no duplicates), and, given
    ``num_heads`` and/or ``dim``, each a whole number of heads and of channels. Returns the widths as floats."""
    widths = tuple(float(w) for w in widths)
    if not widths:
        raise ConfigError("widths must not be empty")
    outside = [w for w in widths if not 0 < w <= 1]
    if outside:
        raise ConfigError(f"widths must be in (0, 1], got {list(outside)} in {list(widths)}")
    if len(set(widths)) != len(widths):
        raise ConfigError(f"widths must not repeat, got {list(widths)}")
    if list(widths) != sorted(widths):
        raise ConfigError(f"widths must be sorted ascending, got {list(widths)}")
    for w in widths:
        if num_heads is not None:
            width_channels(num_heads, w)
        if dim is not None:
            width_channels(dim, w, multiple=dim // num_heads if num_heads else 1)
    return widths


# ---------------------------------------------------------------------------------------------------------- linear
def slice_linear(linear: nn.Linear, x: torch.Tensor, out_features: int | None = None) -> torch.Tensor:
    """``linear`` on its first ``x.shape[-1]`` input and first ``out_features`` output channels (``None``: all).

    Works on any ``nn.Linear`` (timm, transformers, ...), so an existing model runs sliced without conversion.
    """
    in_features = x.shape[-1]
    out_features = linear.out_features if out_features is None else out_features
    if not 0 < in_features <= linear.in_features:
        raise ValueError(f"input has {in_features} channels; this layer takes 1 to {linear.in_features}")
    if not 0 < out_features <= linear.out_features:
        raise ValueError(f"out_features must be in [1, {linear.out_features}], got {out_features}")
    bias = None if linear.bias is None else linear.bias[:out_features]
    return F.linear(x, linear.weight[:out_features, :in_features], bias)


def _extract_linear(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    """A standalone ``nn.Linear`` holding a copy of ``linear``'s first ``out_features x in_features`` block."""
    if not (0 < in_features <= linear.in_features and 0 < out_features <= linear.out_features):
        raise ValueError(
            f"cannot extract ({out_features}, {in_features}) from a ({linear.out_features}, {linear.in_features}) layer"
        )
    weight = linear.weight
    dense = nn.Linear(in_features, out_features, bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        dense.weight.copy_(weight[:out_features, :in_features])
        if linear.bias is not None:
            dense.bias.copy_(linear.bias[:out_features])
    return dense


class SliceableLinear(nn.Linear):
    """``nn.Linear`` whose active width is its first input channels (from ``x``) and first ``out_features`` outputs."""

    def forward(self, x: torch.Tensor, out_features: int | None = None) -> torch.Tensor:
        return slice_linear(self, x, out_features)

    def extract(self, in_features: int | None = None, out_features: int | None = None) -> nn.Linear:
        """A dense ``nn.Linear`` equal to this layer at the given widths (``None``: full)."""
        return _extract_linear(self, in_features or self.in_features, out_features or self.out_features)


# ------------------------------------------------------------------------------------------------------------ FFNs
def _hidden(requested: int | None, full: int) -> int:
    if requested is None:
        return full
    if not 0 < requested <= full:
        raise ValueError(f"hidden_features must be in [1, {full}], got {requested}")
    return requested


class SliceableMlp(nn.Module):
    """The ViT MLP (``fc1 -> act -> drop -> fc2 -> drop``, timm's names) nested over its hidden units.

    ``forward(x, hidden_features=k)`` uses the first ``k`` rows of ``fc1`` and the first ``k`` columns of ``fc2``; the
    input and output width is ``x.shape[-1]`` (the first channels of the residual stream).

    Args:
        in_features: full input (and output) channels.
        hidden_features: full hidden channels.
        act_layer: activation class (called without arguments).
        bias: biases on ``fc1`` and ``fc2``.
        drop: dropout after the activation and after ``fc2`` (train mode).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        bias: bool = True,
        drop: float = 0.0,
    ):
        super().__init__()
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.act_layer = act_layer
        self.fc1 = SliceableLinear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = SliceableLinear(hidden_features, in_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, hidden_features: int | None = None) -> torch.Tensor:
        hidden = self.drop1(self.act(self.fc1(x, _hidden(hidden_features, self.hidden_features))))
        return self.drop2(self.fc2(hidden, x.shape[-1]))

    def extract(self, hidden_features: int, in_features: int | None = None) -> Mlp:
        """A dense :class:`~bramley.core.layers.Mlp` equal to ``forward(x, hidden_features)`` on ``in_features``."""
        in_features = in_features or self.in_features
        hidden = _hidden(hidden_features, self.hidden_features)
        dense = Mlp(in_features, hidden, act_layer=self.act_layer, bias=self.fc1.bias is not None, drop=self.drop1.p)
        dense.fc1 = self.fc1.extract(in_features, hidden)
        dense.fc2 = self.fc2.extract(hidden, in_features)
        return dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, hidden_features={self.hidden_features}"


class SliceableSwiGLU(nn.Module):
    """Llama's gated FFN ``w2(silu(w1(x)) * w3(x))`` (core's names) nested over its hidden units.

    ``forward(x, hidden_features=k)`` uses the first ``k`` units of the gate ``w1`` *and* of the up projection ``w3``
    (unit ``i`` of the gate belongs to unit ``i`` of the value, so both are cut together) and the first ``k`` inputs
    of ``w2``; input and output width is ``x.shape[-1]``.
    """

    def __init__(self, dim: int, hidden_features: int, bias: bool = False):
        super().__init__()
        self.dim = dim
        self.hidden_features = hidden_features
        self.w1 = SliceableLinear(dim, hidden_features, bias=bias)
        self.w3 = SliceableLinear(dim, hidden_features, bias=bias)
        self.w2 = SliceableLinear(hidden_features, dim, bias=bias)

    def forward(self, x: torch.Tensor, hidden_features: int | None = None) -> torch.Tensor:
        hidden = _hidden(hidden_features, self.hidden_features)
        return self.w2(F.silu(self.w1(x, hidden)) * self.w3(x, hidden), x.shape[-1])

    def extract(self, hidden_features: int, dim: int | None = None) -> SwiGLU:
        """A dense :class:`~bramley.core.layers.SwiGLU` equal to ``forward(x, hidden_features)`` on ``dim``."""
        dim = dim or self.dim
        hidden = _hidden(hidden_features, self.hidden_features)
        dense = SwiGLU(dim, hidden, bias=self.w1.bias is not None)
        dense.w1 = self.w1.extract(dim, hidden)
        dense.w3 = self.w3.extract(dim, hidden)
        dense.w2 = self.w2.extract(hidden, dim)
        return dense

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_features={self.hidden_features}"


# ------------------------------------------------------------------------------------------------------- attention
class SliceableAttention(nn.Module):
    """Multi-head self-attention nested over whole heads, with core :class:`~bramley.core.layers.Attention`'s layout.

    ``qkv`` is one ``Linear(dim, 3 * dim)`` with rows ``[q heads | k heads | v heads]`` and ``proj`` the output
    projection, so timm ViT weights load unchanged. ``forward(x, num_heads=h)`` runs the first ``h`` heads (the head
    size stays ``dim / num_heads``, and so does the scale ``1 / sqrt(head_dim)``) on the first ``x.shape[-1]`` input
    channels and writes ``x.shape[-1]`` output channels.

    Args:
        dim: full model width.
        num_heads: full number of heads; must divide ``dim``.
        qkv_bias: bias on ``qkv``.
        proj_bias: bias on ``proj``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def _qkv_weights(self, heads: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The rows of the first ``heads`` q, k and v heads, on the first ``in_features`` columns."""
        inner = heads * self.head_dim
        rows = [self.qkv.weight[i * self.dim : i * self.dim + inner, :in_features] for i in range(3)]
        weight = torch.cat(rows) if heads < self.num_heads else self.qkv.weight[:, :in_features]
        bias = self.qkv.bias
        if bias is not None and heads < self.num_heads:
            bias = torch.cat([bias[i * self.dim : i * self.dim + inner] for i in range(3)])
        return weight, bias

    def _heads(self, requested: int | None) -> int:
        if requested is None:
            return self.num_heads
        if not 0 < requested <= self.num_heads:
            raise ValueError(f"num_heads must be in [1, {self.num_heads}], got {requested}")
        return requested

    def forward(
        self,
        x: torch.Tensor,
        num_heads: int | None = None,
        *,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Attend within each document with the first ``num_heads`` heads.

        Args:
            x: packed ``(total, d)`` with ``cu_seqlens`` or dense ``(batch, seq, d)``, ``d <= dim``.
            num_heads: active heads (``None``: all).
            cu_seqlens, max_seqlen, causal: as :meth:`bramley.core.layers.Attention.forward`.
        """
        heads = self._heads(num_heads)
        in_features = x.shape[-1]
        if x.dim() not in (2, 3) or not 0 < in_features <= self.dim:
            raise ValueError(f"SliceableAttention(dim={self.dim}) got input of shape {tuple(x.shape)}")
        if (x.dim() == 2) != (cu_seqlens is not None):
            raise ValueError("packed (total, d) input needs cu_seqlens; dense (batch, seq, d) input must not have it")
        weight, bias = self._qkv_weights(heads, in_features)
        q, k, v = F.linear(x, weight, bias).unflatten(-1, (3, heads, self.head_dim)).unbind(-3)
        out = attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, causal=causal)
        return slice_linear(self.proj, out.flatten(-2), in_features)

    def extract(self, num_heads: int, dim: int | None = None) -> Attention:
        """A dense :class:`~bramley.core.layers.Attention` equal to ``forward(x, num_heads)`` on ``dim`` channels.

        Core's ``Attention`` has as many inner channels as model channels, so ``dim`` must be
        ``num_heads * head_dim`` (shrink heads and residual width together).
        """
        heads = self._heads(num_heads)
        dim = heads * self.head_dim if dim is None else dim
        if dim != heads * self.head_dim:
            raise ConfigError(
                f"extract needs dim == num_heads * head_dim ({heads} * {self.head_dim} = {heads * self.head_dim}), "
                f"got dim={dim}: a standalone Attention has as many inner channels as model channels"
            )
        weight, bias = self._qkv_weights(heads, dim)
        dense = Attention(dim, heads, qkv_bias=bias is not None, proj_bias=self.proj.bias is not None)
        dense.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dense.qkv.weight.copy_(weight)
            if bias is not None:
                dense.qkv.bias.copy_(bias)
        dense.proj = _extract_linear(self.proj, dim, dim)
        return dense

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


# ----------------------------------------------------------------------------------------------------------- norms
class WidthLayerNorm(nn.Module):
    """One ``nn.LayerNorm`` per width: a sub-network has its own activation statistics, so each width gets its own
    affine parameters (SHARCS, DynaBERT) instead of sharing a slice of the full norm's.

    Norm ``i`` (state-dict ``norms.<i>``) belongs to ``widths[i]`` and has ``width_channels(dim, widths[i])`` channels,
    or ``dim`` channels for every width when ``slice_channels=False`` (widths that cut heads and FFN units but keep
    the residual stream). ``forward(x, width=w)`` uses the norm of ``w``; without ``width`` the norm is picked by
    ``x.shape[-1]``, which must name exactly one width.

    Args:
        dim: full channels.
        widths: the widths (fractions), validated by :func:`check_widths`.
        slice_channels: whether a width also narrows the normalized channels.
        eps: LayerNorm epsilon.
    """

    def __init__(self, dim: int, widths: Sequence[float], slice_channels: bool = True, eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.widths = check_widths(widths)
        self.slice_channels = slice_channels
        self.channels = tuple(width_channels(dim, w) if slice_channels else dim for w in self.widths)
        self.norms = nn.ModuleList(nn.LayerNorm(c, eps=eps) for c in self.channels)

    def index(self, width: float) -> int:
        """Position of ``width`` in ``widths``."""
        for i, w in enumerate(self.widths):
            if math.isclose(width, w):
                return i
        raise ValueError(f"width {width} is not one of {list(self.widths)}")

    def forward(self, x: torch.Tensor, width: float | None = None) -> torch.Tensor:
        if width is not None:
            return self.norms[self.index(width)](x)
        matches = [i for i, c in enumerate(self.channels) if c == x.shape[-1]]
        if len(matches) != 1:
            what = "no width" if not matches else f"widths {[self.widths[i] for i in matches]} all"
            raise ValueError(f"{what} of {list(self.widths)} normalize {x.shape[-1]} channels; pass width=")
        return self.norms[matches[0]](x)

    def extract(self, width: float) -> nn.LayerNorm:
        """A standalone copy of the norm of ``width``."""
        norm = self.norms[self.index(width)]
        dense = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, device=norm.weight.device, dtype=norm.weight.dtype)
        dense.load_state_dict(norm.state_dict())
        return dense

    def extra_repr(self) -> str:
        return f"dim={self.dim}, widths={list(self.widths)}, slice_channels={self.slice_channels}"
