"""CLIP parts shared by the image-text methods (MobileCLIP, GBC): the text transformer, the two-tower wrapper and the
contrastive losses.

:class:`TextTransformer` is open_clip's ``TextTransformer`` (CLIP's text tower) built on core layers: token and
learned positional embedding, pre-norm blocks (:class:`TextBlock`: LayerNorm, :class:`~bramley.core.layers.Attention`
on :func:`bramley.core.ops.attention`, LayerNorm, GELU :class:`~bramley.core.layers.Mlp`), causal or bidirectional,
a final LayerNorm, pooling at the end-of-text token and a bias-free projection. Its parameters have open_clip's names
and shapes except inside the blocks; :func:`text_from_open_clip` / :func:`text_to_open_clip` rename them
(``transformer.resblocks.{i}`` <-> ``blocks.{i}``, ``attn.in_proj_*`` <-> ``attn.qkv.*``, ``attn.out_proj`` <->
``attn.proj``, ``mlp.c_fc`` / ``mlp.c_proj`` <-> ``mlp.fc1`` / ``mlp.fc2``); no tensor changes.

:class:`CLIP` holds any image tower, a text tower, and ``logit_scale`` with open_clip's ``CustomTextCLIP`` names
(``visual``, ``text``, ``logit_scale``).

Losses (all take L2-normalized features and the *multiplier* ``logit_scale.exp()``, as open_clip's ``ClipLoss``):
:func:`clip_loss` is the symmetric InfoNCE of CLIP; :func:`multi_positive_clip_loss` allows several captions per
image (caption ``j`` belongs to image ``groups[j]``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import is_traced
from .transformer import Attention, Mlp

__all__ = [
    "CLIP",
    "TextBlock",
    "TextTransformer",
    "clip_logits",
    "clip_loss",
    "multi_positive_clip_loss",
    "text_from_open_clip",
    "text_to_open_clip",
]


# ----------------------------------------------------------------------------------------------------------- blocks
class TextBlock(nn.Module):
    """Pre-norm transformer block of CLIP's text tower: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    Args:
        dim: width.
        num_heads: attention heads.
        mlp_ratio: hidden width of the MLP over ``dim``.
        causal: each token attends only to itself and earlier tokens (CLIP, MobileCLIP-B) or to all (MobileCLIP-S).
        act_layer: MLP activation (CLIP: ``nn.GELU``; OpenAI's checkpoints: QuickGELU).
        eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        causal: bool = True,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.causal = causal
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias=True, proj_bias=True)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=self.causal)
        return x + self.mlp(self.ln_2(x))

    def extra_repr(self) -> str:
        return f"causal={self.causal}"


# ------------------------------------------------------------------------------------------------------------ model
class TextTransformer(nn.Module):
    """CLIP's text tower: tokens ``(batch, seq)`` -> features ``(batch, output_dim)``.

    The pooled token is the end-of-text token, found as open_clip and the official CLIP / MobileCLIP code find it:
    ``tokens.argmax(-1)`` (the end-of-text id is the largest id of CLIP's BPE vocabulary; with padding id 0 the first
    occurrence of the largest id is taken). ``seq`` may be shorter than ``context_length`` (the first ``seq``
    positional embeddings are used, as open_clip does); longer inputs are an error, never truncated here (the
    tokenizer truncates, see :class:`bramley.core.clip_eval.ClipTokenizer`).

    Args:
        context_length: positions (CLIP: 77).
        vocab_size: token ids (CLIP BPE: 49408).
        width: model width.
        heads: attention heads.
        layers: number of blocks.
        output_dim: projection width; ``None`` or 0: no projection (features are ``width`` wide).
        mlp_ratio: MLP hidden width over ``width``.
        causal: causal attention in every :class:`TextBlock` (open_clip's ``no_causal_mask=False``).
        act_layer: MLP activation.
        eps: LayerNorm epsilon.
        block_fn: ``block_fn(i)`` builds block ``i`` instead of a :class:`TextBlock` (e.g. MobileCLIP-S0's RepMixer
            blocks). A block maps ``(batch, seq, width)`` to the same shape.
    """

    def __init__(
        self,
        context_length: int = 77,
        vocab_size: int = 49408,
        width: int = 512,
        heads: int = 8,
        layers: int = 12,
        output_dim: int | None = 512,
        mlp_ratio: float = 4.0,
        causal: bool = True,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        eps: float = 1e-5,
        block_fn: Callable[[int], nn.Module] | None = None,
    ):
        super().__init__()
        for name, value in (("context_length", context_length), ("vocab_size", vocab_size), ("width", width)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.output_dim = output_dim or width
        self.causal = causal
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        if block_fn is None:

            def block_fn(i: int) -> nn.Module:
                return TextBlock(width, heads, mlp_ratio, causal=causal, act_layer=act_layer, eps=eps)

        self.blocks = nn.ModuleList([block_fn(i) for i in range(layers)])
        self.ln_final = nn.LayerNorm(width, eps=eps)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim)) if output_dim else None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """open_clip's initialization (embeddings N(0, 0.02) / N(0, 0.01), depth-scaled attention and MLP stds)."""
        layers = max(len(self.blocks), 1)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = self.width**-0.5 * (2 * layers) ** -0.5
        for block in self.blocks:
            if isinstance(block, TextBlock):
                nn.init.normal_(block.attn.qkv.weight, std=self.width**-0.5)
                nn.init.zeros_(block.attn.qkv.bias)
                nn.init.normal_(block.attn.proj.weight, std=proj_std)
                nn.init.zeros_(block.attn.proj.bias)
                nn.init.normal_(block.mlp.fc1.weight, std=(2 * self.width) ** -0.5)
                nn.init.normal_(block.mlp.fc2.weight, std=proj_std)
        if self.text_projection is not None:
            nn.init.normal_(self.text_projection, std=self.width**-0.5)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token features after the final LayerNorm, ``(batch, seq, width)``."""
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript compiles both sides of an `and`)
            if not is_traced(tokens):
                self._check_tokens(tokens)
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)

    def pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The end-of-text token's features (``tokens.argmax(-1)``), projected."""
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        if self.text_projection is not None:
            pooled = pooled @ self.text_projection
        return pooled

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_tokens(tokens), tokens)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"text tokens must be integer (batch, seq), got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] > self.context_length or tokens.shape[1] == 0:
            raise ValueError(
                f"text tokens have {tokens.shape[1]} positions; this text tower takes 1 to {self.context_length}"
                " (tokenize with truncation to the context length)"
            )
        if tokens.numel() and not torch.compiler.is_compiling():  # a host sync: eager only
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self.vocab_size:
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{low}, {high}]")

    def extra_repr(self) -> str:
        return f"context_length={self.context_length}, vocab_size={self.vocab_size}, causal={self.causal}"


class CLIP(nn.Module):
    """Two towers and a learned temperature: ``encode_image``, ``encode_text`` and the (normalized) pair.

    Names follow open_clip's ``CustomTextCLIP``: ``visual`` (any module mapping images to ``(batch, embed_dim)``
    features; put a projection inside it), ``text`` (e.g. :class:`TextTransformer`), ``logit_scale`` (log of the
    multiplier, init ``log(1 / 0.07)``).

    Args:
        visual: image tower.
        text: text tower.
        init_logit_scale: initial ``logit_scale`` (a log).
    """

    def __init__(self, visual: nn.Module, text: nn.Module, init_logit_scale: float = math.log(1 / 0.07)):
        super().__init__()
        self.visual = visual
        self.text = text
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features ``(batch, embed_dim)``, L2-normalized if ``normalize``."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Text features ``(batch, embed_dim)``, L2-normalized if ``normalize``."""
        features = self.text(tokens)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image_features, text_features, logit_scale.exp())``, features L2-normalized (open_clip's order)."""
        return (
            self.encode_image(images, normalize=True),
            self.encode_text(tokens, normalize=True),
            self.logit_scale.exp(),
        )


# ----------------------------------------------------------------------------------------------------------- losses
def _check_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    if image_features.dim() != 2 or text_features.dim() != 2 or image_features.shape[1] != text_features.shape[1]:
        raise ValueError(
            f"features must be (images, D) and (texts, D), got {tuple(image_features.shape)} and "
            f"{tuple(text_features.shape)}"
        )


def clip_logits(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits_per_image, logits_per_text)`` = ``logit_scale * image @ text.T`` and its transpose."""
    _check_pair(image_features, text_features)
    logits_per_image = logit_scale * image_features @ text_features.T
    return logits_per_image, logits_per_image.T


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: the mean of image->text and text->image cross-entropy, pair ``i`` is positive.

    Args:
        image_features: ``(N, D)``, L2-normalized.
        text_features: ``(N, D)``, L2-normalized; row ``i`` is image ``i``'s caption.
        logit_scale: the multiplier (``model.logit_scale.exp()``).
    """
    _check_pair(image_features, text_features)
    if image_features.shape[0] != text_features.shape[0]:
        raise ValueError(
            f"clip_loss needs one caption per image, got {image_features.shape[0]} images and "
            f"{text_features.shape[0]} captions (use multi_positive_clip_loss)"
        )
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale)
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def multi_positive_clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    groups: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE with several captions per image.

    Caption ``j`` is a positive of image ``groups[j]`` only. text->image: cross-entropy of each caption's softmax over
    the images against its image. image->text: cross-entropy of each image's softmax over all captions against the
    uniform distribution on its own captions (so each image weighs the same however many captions it has). The loss is
    the mean of the two directions, each averaged over its queries; with one caption per image in order it equals
    :func:`clip_loss`.

    Args:
        image_features: ``(N, D)``, L2-normalized.
        text_features: ``(T, D)``, L2-normalized.
        logit_scale: the multiplier.
        groups: ``(T,)`` integer image index of each caption; every image needs at least one caption.
    """
    _check_pair(image_features, text_features)
    num_images, num_texts = image_features.shape[0], text_features.shape[0]
    if groups.shape != (num_texts,) or groups.is_floating_point():
        raise ValueError(f"groups must be an integer ({num_texts},) tensor, got {groups.dtype} {tuple(groups.shape)}")
    groups = groups.to(image_features.device).long()
    positives = groups[None, :] == torch.arange(num_images, device=groups.device)[:, None]  # (N, T)
    counts = positives.sum(1)
    out_of_range = num_texts > 0 and (int(groups.min()) < 0 or int(groups.max()) >= num_images)
    if out_of_range or bool((counts == 0).any()):
        raise ValueError(f"groups must give every one of the {num_images} images at least one caption, all in range")
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale)
    targets = positives.to(logits_per_image.dtype) / counts[:, None]
    image_to_text = -(targets * logits_per_image.log_softmax(dim=1)).sum(1).mean()
    text_to_image = F.cross_entropy(logits_per_text, groups)
    return (image_to_text + text_to_image) / 2


# ------------------------------------------------------------------------------------------------------ converters
_OPEN_CLIP_RENAMES = (
    (r"^transformer\.resblocks\.(\d+)\.", r"blocks.\1."),
    (r"\.attn\.in_proj_weight$", ".attn.qkv.weight"),
    (r"\.attn\.in_proj_bias$", ".attn.qkv.bias"),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
)


def text_from_open_clip(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """An open_clip ``TextTransformer`` state dict (keys under ``prefix``, e.g. ``"text."``) in our names.

    Keys outside ``prefix`` are dropped; tensors are unchanged (nn.MultiheadAttention's ``in_proj`` rows are
    ``[q | k | v]`` with heads contiguous, exactly :class:`~bramley.core.layers.Attention`'s ``qkv`` layout).
    """
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        for pattern, repl in _OPEN_CLIP_RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def text_to_open_clip(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The inverse of :func:`text_from_open_clip`: our names -> open_clip's, under ``prefix``."""
    inverse = (
        (r"^blocks\.(\d+)\.", r"transformer.resblocks.\1."),
        (r"\.attn\.qkv\.weight$", ".attn.in_proj_weight"),
        (r"\.attn\.qkv\.bias$", ".attn.in_proj_bias"),
        (r"\.attn\.proj\.", ".attn.out_proj."),
        (r"\.mlp\.fc1\.", ".mlp.c_fc."),
        (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    )
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in inverse:
            key = re.sub(pattern, repl, key)
        out[prefix + key] = value
    return out
