"""ByteFormer: a transformer that classifies the raw bytes of a file, on packed variable-length batches.

Pipeline per sample (Horton et al., "Bytes Are All You Need", 2023; sizes and defaults from apple/corenet's
``byteformer.py`` and ``projects/byteformer/*.yaml``)::

    bytes (n,) -> Embedding(257, dim) -> Conv1d(dim, dim, k, stride k // 2) -> + learned positions
      -> 12 pre-norm blocks with shifted-window attention, token merging (2 -> 1) after the configured blocks
      -> LayerNorm -> mean over the sample's tokens -> Linear(dim, num_classes)

A batch is **packed**: the bytes of all samples concatenated, ``tokens (total,)`` int64, with ``cu_seqlens (B + 1,)``
int32 offsets. Every operation is per sample, so a sample's logits do not depend on what else is in the batch:

- **Token reduction.** The strided convolution of a sample of ``n`` bytes gives ``(n - k) // s + 1`` tokens
  (``s = k // 2``; the last ``(n - k) % s`` bytes fall outside every window, exactly as ``nn.Conv1d`` on the sample
  alone). On the packed tensor it is computed as one GEMM over gathered windows ``tokens[start + j * s : ... + k]``
  whose starts never cross a sample boundary: the same numbers as running ``Conv1d`` on each sample alone, without
  padding. A sample shorter than ``k`` bytes would give no token and raises.
- **Shifted windows.** Block ``i`` attends inside windows of ``window_sizes[i]`` tokens starting at positions ``p``
  with ``(p - shift) % window == 0`` of each sample (:func:`bramley.core.packing.window_segments`), i.e. with a shift
  the first window of a sample holds ``shift`` tokens. This is what corenet's roll-and-mask windowing intends (a
  shifted window never joins the two ends of a sequence); here windows are just more ``cu_seqlens`` for varlen
  attention, with no padding, no roll and no mask.
- **Token merging** (corenet's ``TokenMerging``): consecutive pairs ``(x[2i], x[2i+1])`` of a sample are concatenated
  and projected ``Linear(2 dim, dim, bias=False)`` + LayerNorm; an odd last token is paired with zeros, so ``n`` tokens
  become ``ceil(n / 2)``. (corenet flattens a pair channel-major; the same function up to a fixed permutation of the
  Linear's input columns.)
- **Pooling**: the mean over exactly the sample's own tokens.

:meth:`ByteFormer.forward_padded` computes the same function on a padded ``(B, L)`` batch with masks; it exists only
as the baseline of ``bramley byteformer bench`` (what padding costs) and as a cross-check in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.errors import DataError
from bramley.core.layers import Attention, DropPath, Mlp
from bramley.core.packing import (
    cu_seqlens_from_lengths,
    document_ids,
    document_mean,
    lengths_from_cu_seqlens,
    position_ids,
    window_segments,
)
from bramley.core.registry import register_model

__all__ = [
    "BYTEFORMER_CONFIGS",
    "MASK_TOKEN",
    "VOCAB_SIZE",
    "ByteFormer",
    "ByteFormerBlock",
    "TokenMerging",
    "byteformer_base",
    "byteformer_small",
    "byteformer_tiny",
    "conv_output_lengths",
]

#: Byte values are 0..255; 256 is the mask token (corenet's vocabulary of 257).
MASK_TOKEN = 256
VOCAB_SIZE = 257


def conv_output_lengths(lengths: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Tokens left after the strided token-reduction conv: ``(n - k) // (k // 2) + 1`` (0 when ``n < k``)."""
    stride = max(kernel_size // 2, 1)
    return torch.where(lengths >= kernel_size, (lengths - kernel_size) // stride + 1, torch.zeros_like(lengths))


# ------------------------------------------------------------------------------------------------------------ blocks
class ByteFormerBlock(nn.Module):
    """Pre-norm transformer block with (shifted-)window attention: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

    The windows are given to :meth:`forward` as ``windows`` (window ``cu_seqlens``); ``window`` and ``shift`` are
    stored so the model can build them (and for ``repr``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        window: int = 128,
        shift: int = 0,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"window shift must be in [0, window={window}), got {shift}")
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """Packed ``x (total, dim)`` of samples ``cu_seqlens``; attention inside the windows ``windows``."""
        x = x + self.drop_path1(self.attn(self.norm1(x), cu_seqlens=windows), cu_seqlens=cu_seqlens)
        return x + self.drop_path2(self.mlp(self.norm2(x)), cu_seqlens=cu_seqlens)

    def forward_padded(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Dense baseline: ``x (B, L, dim)``, ``valid (B, L)`` bool; same function on the valid tokens."""
        x = x + self.drop_path1(self._windowed_attention_padded(self.norm1(x), valid))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def _windowed_attention_padded(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        # Windows of every row start at p with (p - shift) % window == 0: put `lead` padding slots in front so they
        # start at multiples of `window`, pad the end to a whole window, attend per window with a key mask.
        B, L, C = x.shape
        w, lead = self.window, (self.window - self.shift) % self.window
        width = math.ceil((L + lead) / w) * w
        x = F.pad(x, (0, 0, lead, width - L - lead))
        keys = F.pad(valid, (lead, width - L - lead)).view(B * width // w, 1, 1, w)
        keys = keys | ~keys.any(dim=-1, keepdim=True)  # all-padding windows: any finite result, discarded below
        attn = self.attn
        q, k, v = attn.qkv(x.view(B * width // w, w, C)).view(-1, w, 3, attn.num_heads, attn.head_dim).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=keys)
        out = attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(B, width, C)))
        return out[:, lead : lead + L]

    def extra_repr(self) -> str:
        return f"window={self.window}, shift={self.shift}"


class TokenMerging(nn.Module):
    """Merge consecutive token pairs of each sample: ``LayerNorm(Linear(cat(x[2i], x[2i+1])))``; odd tails: zeros."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(2 * dim, dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed ``x (total, dim)`` -> ``(merged (total', dim), cu_seqlens')`` with ``ceil(n / 2)`` tokens each."""
        lengths = lengths_from_cu_seqlens(cu_seqlens)
        merged_lengths = (lengths + 1) // 2
        odd_before = torch.cumsum(lengths % 2, 0) - lengths % 2  # zero rows inserted before each sample
        rows = torch.arange(x.shape[0], device=x.device) + odd_before[document_ids(cu_seqlens, x.shape[0])]
        even = x.new_zeros(int(2 * merged_lengths.sum()), x.shape[1]).index_copy(0, rows, x)
        merged = self.norm(self.reduction(even.view(-1, 2 * x.shape[1])))
        return merged, cu_seqlens_from_lengths(merged_lengths, device=x.device)

    def forward_padded(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense baseline on ``x (B, L, dim)`` (padding zeroed first, as the packed path pairs odd tails with zeros)."""
        x = x * valid.unsqueeze(-1)
        if x.shape[1] % 2:
            x, valid = F.pad(x, (0, 0, 0, 1)), F.pad(valid, (0, 1))
        B, L, C = x.shape
        return self.norm(self.reduction(x.reshape(B, L // 2, 2 * C))), valid.view(B, L // 2, 2).any(-1)


# ------------------------------------------------------------------------------------------------------------- model
class ByteFormer(nn.Module):
    """ByteFormer classifier on packed byte sequences.

    Args:
        num_classes: classifier outputs (0: :meth:`forward` returns pooled features).
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        conv_kernel_size: kernel ``k`` of the token-reduction Conv1d (stride ``k // 2``).
        window_sizes: attention window per block (one value: all blocks).
        window_shifts: window shift per block (corenet: 0, 64, 0, 64, ...).
        downsample: merge token pairs after block ``i`` when ``downsample[i]``.
        max_num_tokens: rows of the learned position table = the longest sample after the conv.
        drop_rate: dropout after the embeddings, in attention output and MLP (corenet ``dropout``).
        drop_path_rate: stochastic depth, linearly increasing over the blocks to this value.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        conv_kernel_size: int = 32,
        window_sizes: Sequence[int] = (128,),
        window_shifts: Sequence[int] = (0, 64) * 6,
        downsample: Sequence[bool] = (True, True) + (False, True) * 4 + (False, False),
        max_num_tokens: int = 50000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        window_sizes = list(window_sizes) * depth if len(window_sizes) == 1 else list(window_sizes)
        for name, values in (
            ("window_sizes", window_sizes),
            ("window_shifts", window_shifts),
            ("downsample", downsample),
        ):
            if len(values) != depth:
                raise ValueError(f"{name} needs one entry per block (depth={depth}), got {len(values)}")
        if conv_kernel_size < 2:
            raise ValueError(f"conv_kernel_size must be >= 2 (stride k // 2 >= 1), got {conv_kernel_size}")
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.conv_kernel_size = conv_kernel_size
        self.conv_stride = conv_kernel_size // 2
        self.max_num_tokens = max_num_tokens

        self.embeddings = nn.Embedding(VOCAB_SIZE, embed_dim)
        self.token_reduction = nn.Conv1d(embed_dim, embed_dim, conv_kernel_size, stride=self.conv_stride, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(max_num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            ByteFormerBlock(embed_dim, num_heads, mlp_ratio, window_sizes[i], window_shifts[i], drop_rate, rates[i])
            for i in range(depth)
        )
        self.downsamplers = nn.ModuleDict({str(i): TokenMerging(embed_dim) for i in range(depth) if downsample[i]})
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.embeddings.weight, std=self.embed_dim**-0.5)  # corenet: std sqrt(1 / dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.kaiming_uniform_(self.token_reduction.weight)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ input checks
    def _check_packed(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
            raise ValueError(f"tokens must be a packed 1-D tensor (total,), got {getattr(tokens, 'shape', tokens)}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor of byte values, got {tokens.dtype}")
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError("cu_seqlens must be a 1-D tensor of batch + 1 >= 2 offsets")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"cu_seqlens must be int32 (or int64), got {cu_seqlens.dtype}")
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != tokens.numel():
            raise ValueError(
                f"cu_seqlens must run from 0 to the number of tokens ({tokens.numel()}), "
                f"got {int(cu_seqlens[0])}..{int(cu_seqlens[-1])}"
            )
        lengths = lengths_from_cu_seqlens(cu_seqlens)
        if bool((lengths < 0).any()):
            raise ValueError("cu_seqlens must be non-decreasing")
        self._check_lengths(lengths)
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi > MASK_TOKEN:
            bad = lo if lo < 0 else hi
            raise DataError(f"token value {bad} is not a byte: expected 0..255 (or {MASK_TOKEN}, the mask token)")
        return lengths

    def _check_lengths(self, lengths: torch.Tensor) -> None:
        k = self.conv_kernel_size
        if bool((lengths == 0).any()):
            raise DataError(f"sample {int((lengths == 0).nonzero()[0])} is empty: every sample needs >= {k} bytes")
        if bool((lengths < k).any()):
            i = int((lengths < k).nonzero()[0])
            raise DataError(f"sample {i} has {int(lengths[i])} bytes, fewer than the conv kernel size {k}")
        n_tokens = conv_output_lengths(lengths, k)
        if bool((n_tokens > self.max_num_tokens).any()):
            i = int(n_tokens.argmax())
            raise DataError(
                f"sample {i} has {int(lengths[i])} bytes = {int(n_tokens[i])} tokens after the conv (k={k}), more "
                f"than the position table holds (max_num_tokens={self.max_num_tokens}); build the model with a "
                f"larger max_num_tokens (samples are never truncated)"
            )

    # ------------------------------------------------------------------ packed forward
    def reduce_tokens(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding + per-sample strided conv on packed bytes: ``(x (total', dim), cu_seqlens')``."""
        k, s = self.conv_kernel_size, self.conv_stride
        lengths = lengths_from_cu_seqlens(cu_seqlens)
        out_cu = cu_seqlens_from_lengths(conv_output_lengths(lengths, k), device=tokens.device)
        n_out = int(out_cu[-1])
        starts = cu_seqlens.long()[document_ids(out_cu, n_out)] + position_ids(out_cu, n_out) * s
        windows = tokens.long()[starts.unsqueeze(1) + torch.arange(k, device=tokens.device)]  # (total', k)
        return self._embed_windows(windows), out_cu

    def _embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """Embedding + the strided conv on byte windows ``(..., k)`` -> ``(..., dim)``, as one GEMM (``nn.Conv1d``
        with k=32, stride 16 takes several times longer per byte on CPU)."""
        k = self.conv_kernel_size
        weight = self.token_reduction.weight.permute(0, 2, 1).reshape(self.embed_dim, k * self.embed_dim)
        return F.linear(self.embeddings(windows).flatten(-2), weight)

    def forward_features(self, tokens: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, dim)`` of packed samples (see the module docstring)."""
        self._check_packed(tokens, cu_seqlens)
        x, cu = self.reduce_tokens(tokens, cu_seqlens)
        x = self.pos_drop(x + self.pos_embed[position_ids(cu, x.shape[0])])
        windows: dict[tuple[int, int], torch.Tensor] = {}
        for i, block in enumerate(self.blocks):
            key = (block.window, block.shift)
            if key not in windows:
                windows[key] = window_segments(cu, block.window, block.shift)
            x = block(x, cu, windows[key])
            if str(i) in self.downsamplers:
                x, cu = self.downsamplers[str(i)](x, cu)
                windows.clear()
        return document_mean(self.norm(x), cu)

    def forward(
        self, tokens: torch.Tensor, cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None
    ) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of packed samples.

        Args:
            tokens: ``(total,)`` integer byte values 0..255 (256: mask token), the samples concatenated.
            cu_seqlens: int32 ``(B + 1,)`` sample offsets; ``None`` means one sample.
            max_seqlen: accepted for the packed-input convention; unused (lengths come from ``cu_seqlens``).
        """
        if cu_seqlens is None:
            cu_seqlens = torch.tensor([0, tokens.numel()], dtype=torch.int32, device=tokens.device)
        return self.head(self.forward_features(tokens, cu_seqlens))

    # ------------------------------------------------------------------ padded baseline
    def forward_padded(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits of a padded batch ``tokens (B, L)`` whose row ``b`` holds ``lengths[b]`` bytes, then anything.

        The same function as :meth:`forward` computed with padding and masks on the full ``B x L`` grid: the
        baseline that ``bramley byteformer bench`` compares packing with. Not used for training.
        """
        lengths = torch.as_tensor(lengths, device=tokens.device).long()
        if tokens.dim() != 2 or lengths.shape != tokens.shape[:1] or bool((lengths > tokens.shape[1]).any()):
            raise ValueError(f"forward_padded needs tokens (B, L) and lengths (B,) <= L, got {tuple(tokens.shape)}")
        self._check_lengths(lengths)
        arange = torch.arange(tokens.shape[1], device=tokens.device)
        real = arange < lengths.unsqueeze(1)
        if bool(((tokens < 0) | (tokens > MASK_TOKEN))[real].any()):
            raise ValueError(f"token values must be bytes 0..255 (or {MASK_TOKEN}, the mask token)")
        # the same GEMM as the packed path over each row's byte windows (rows never mix): the padded baseline pays
        # for its padding, not for a slower conv
        windows = tokens.clamp(0, MASK_TOKEN).long().unfold(1, self.conv_kernel_size, self.conv_stride)  # (B, L', k)
        x = self._embed_windows(windows)
        n = conv_output_lengths(lengths, self.conv_kernel_size)
        valid = torch.arange(x.shape[1], device=x.device) < n.unsqueeze(1)
        x = self.pos_drop(x + self.pos_embed[: x.shape[1]])
        for i, block in enumerate(self.blocks):
            x = block.forward_padded(x, valid)
            if str(i) in self.downsamplers:
                x, valid = self.downsamplers[str(i)].forward_padded(x, valid)
        x = self.norm(x) * valid.unsqueeze(-1)
        return self.head(x.sum(1) / valid.sum(1, keepdim=True).to(x.dtype))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (``0``: none)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()


# ----------------------------------------------------------------------------------------------------------- configs
#: Sizes of the paper (corenet ``config/byteformer.py``: DeiT-like widths, 12 blocks, MLP ratio 4).
BYTEFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    "byteformer_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "byteformer_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "byteformer_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}


def _packed_bytes() -> tuple[tuple, dict]:
    """Two samples of 100 and 70 random bytes (4 and 3 tokens after the default k=32 conv), packed."""
    tokens = torch.randint(0, 256, (170,))
    return (tokens,), {"cu_seqlens": torch.tensor([0, 100, 170], dtype=torch.int32)}


# --------------------------------------------------------------------------------------------------------- factories
def _create(name: str, **kwargs: Any) -> ByteFormer:
    return ByteFormer(**{**BYTEFORMER_CONFIGS[name], **kwargs})


@register_model(tags=("byte-classification", "byteformer"), example_inputs=_packed_bytes)
def byteformer_tiny(**kwargs: Any) -> ByteFormer:
    """ByteFormer-Ti (BF-Ti): dim 192, 12 blocks, 3 heads; k=32, windows 128 (the ImageNet TIFF config)."""
    return _create("byteformer_tiny", **kwargs)


@register_model(tags=("byte-classification", "byteformer"), example_inputs=_packed_bytes)
def byteformer_small(**kwargs: Any) -> ByteFormer:
    """ByteFormer-S: dim 384, 12 blocks, 6 heads."""
    return _create("byteformer_small", **kwargs)


@register_model(tags=("byte-classification", "byteformer"), example_inputs=_packed_bytes)
def byteformer_base(**kwargs: Any) -> ByteFormer:
    """ByteFormer-B: dim 768, 12 blocks, 12 heads."""
    return _create("byteformer_base", **kwargs)
