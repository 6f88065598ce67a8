"""Evaluating image-text models: CLIP's tokenizer, zero-shot classification and image-text retrieval (R@K).

The model interface is :class:`bramley.core.layers.clip.CLIP`'s (open_clip's too): ``encode_image(images)`` and
``encode_text(tokens)`` return ``(batch, D)`` features; both are L2-normalized here.

- :class:`ClipTokenizer`: open_clip's bundled BPE tokenizer (CLIP's 49408-token vocabulary), padded with 0 to the
  context length. Captions longer than the context are truncated as CLIP does (first ``context_length - 1`` tokens,
  then end-of-text) unless ``truncate=False``, which refuses them naming the caption.
- :func:`zero_shot_classifier` / :func:`zero_shot_accuracy`: CLIP's prompt ensembling (each class name in every
  template, the normalized text features averaged and renormalized), top-k accuracy in percent.
- :func:`image_text_retrieval`: image->text and text->image recall at K in percent, CLIP's convention for datasets
  with several captions per image (an image query is a hit when any of its captions is in the top K), on
  :func:`bramley.core.retrieval.retrieval_metrics`.

Needs the ``clip`` extra (``pip install 'bramley-core[clip]'``) for the tokenizer only.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._optional import optional_import
from .errors import DataError
from .retrieval import retrieval_metrics

__all__ = [
    "ClipTokenizer",
    "encode_images",
    "encode_texts",
    "image_text_retrieval",
    "zero_shot_accuracy",
    "zero_shot_classifier",
]


class ClipTokenizer:
    """CLIP's BPE tokenizer (open_clip's bundled vocabulary): texts -> ``(len(texts), context_length)`` int64 ids.

    Each row is ``[start-of-text, bpe..., end-of-text, 0, ...]``. The end-of-text id (49407) is the largest id, so a
    text tower pools at ``tokens.argmax(-1)``.

    Args:
        context_length: tokens per row (CLIP: 77).
        truncate: cut captions that do not fit to ``context_length - 1`` tokens + end-of-text (CLIP's documented
            behaviour); ``False`` raises :class:`~bramley.core.errors.DataError` naming the caption instead.
    """

    def __init__(self, context_length: int = 77, truncate: bool = True):
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        self._bpe = _open_clip_tokenizer_module().SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.truncate = truncate
        self.sot_token_id: int = self._bpe.sot_token_id
        self.eot_token_id: int = self._bpe.eot_token_id
        self.vocab_size: int = len(self._bpe.encoder)

    def encode(self, text: str) -> list[int]:
        """The BPE ids of ``text`` without start/end tokens, untruncated."""
        return self._bpe.encode(text)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        result = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"caption {i} is {type(text).__name__}, not a string")
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > self.context_length:
                if not self.truncate:
                    raise DataError(
                        f"caption {i} has {len(ids)} tokens, more than the context length {self.context_length}: "
                        f"{text[:60]!r}..."
                    )
                ids = [*ids[: self.context_length - 1], self.eot_token_id]
            result[i, : len(ids)] = torch.tensor(ids)
        return result

    def __repr__(self) -> str:
        return f"ClipTokenizer(context_length={self.context_length}, truncate={self.truncate})"


@functools.cache
def _open_clip_tokenizer_module() -> ModuleType:
    """open_clip's ``tokenizer`` module, loaded on its own when open_clip is not imported yet.

    ``import open_clip`` executes its whole package (model zoo, timm and Hugging Face glue: 5-30 s on a loaded 2-core
    machine); ``open_clip/tokenizer.py`` imports only ftfy, regex, numpy and torch and reads its bundled vocabulary
    next to itself, so it is loaded from the installed package's folder without running the package.
    """
    loaded = sys.modules.get("open_clip.tokenizer")
    if loaded is not None:
        return loaded
    with optional_import("clip", "bramley.core.clip_eval.ClipTokenizer"):
        spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("No module named 'open_clip'", name="open_clip")
        path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.py"
        module_spec = importlib.util.spec_from_file_location("_bramley_open_clip_tokenizer", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except ImportError:  # a future open_clip whose tokenizer imports its package: load it the normal way
            import open_clip.tokenizer as module
    return module


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_texts(model: nn.Module, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """L2-normalized ``model.encode_text`` of ``tokens`` ``(N, seq)``, in batches, float32 on the CPU."""
    device = _device(model)
    out = [
        model.encode_text(tokens[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(tokens), batch_size)
    ]
    return F.normalize(torch.cat(out) if out else torch.empty(0, 0), dim=-1)


@torch.no_grad()
def encode_images(model: nn.Module, images: Iterable) -> tuple[torch.Tensor, torch.Tensor | None]:
    """L2-normalized image features of a loader of ``images`` or ``(images, labels, ...)`` batches, float32 on the CPU.

    Returns ``(features, labels)``; ``labels`` is ``None`` when the batches carry none.
    """
    device = _device(model)
    features, labels = [], []
    for batch in images:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        features.append(model.encode_image(x.to(device)).float().cpu())
        if isinstance(batch, (tuple, list)) and len(batch) > 1:
            labels.append(torch.as_tensor(batch[1]).cpu())
    if not features:
        raise DataError("no images to encode: the loader is empty")
    return F.normalize(torch.cat(features), dim=-1), torch.cat(labels) if labels else None


@torch.no_grad()
def zero_shot_classifier(
    model: nn.Module, classnames: Sequence[str], templates: Sequence[str], tokenizer: ClipTokenizer
) -> torch.Tensor:
    """CLIP's zero-shot head ``(D, num_classes)``: per class, the renormalized mean of its normalized template features.

    Args:
        model: has ``encode_text``.
        classnames: one name per class.
        templates: format strings with one ``{}`` (e.g. ``"a photo of a {}."``).
        tokenizer: e.g. :class:`ClipTokenizer`.
    """
    if not classnames or not templates:
        raise DataError(f"zero-shot needs class names and templates, got {len(classnames)} and {len(templates)}")
    for template in templates:
        if template.count("{}") != 1:
            raise DataError(f"each template needs exactly one '{{}}' for the class name, got {template!r}")
    texts = [template.format(name) for name in classnames for template in templates]
    features = encode_texts(model, tokenizer(texts)).view(len(classnames), len(templates), -1)
    return F.normalize(features.mean(dim=1), dim=-1).T


def zero_shot_accuracy(
    image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, topk: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy (percent) of normalized image features ``(N, D)`` under a zero-shot head ``(D, C)``.

    ``k`` larger than the number of classes is reported for ``k = C`` (always 100) under its own name.
    """
    if image_features.dim() != 2 or classifier.dim() != 2 or image_features.shape[1] != classifier.shape[0]:
        raise DataError(
            f"image features (N, D) and classifier (D, C) do not fit: {tuple(image_features.shape)} and "
            f"{tuple(classifier.shape)}"
        )
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.numel() != image_features.shape[0]:
        raise DataError(f"{labels.numel()} labels for {image_features.shape[0]} images")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classifier.shape[1]):
        raise DataError(f"labels must lie in [0, {classifier.shape[1]}) (the classifier's classes)")
    logits = image_features.float() @ classifier.float()
    ranked = logits.topk(min(max(topk), classifier.shape[1]), dim=1).indices
    hits = ranked == labels[:, None].to(ranked.device)
    return {f"top{k}": 100.0 * hits[:, :k].any(1).float().mean().item() for k in topk}


def image_text_retrieval(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image->text and text->image recall@K (percent) by cosine similarity.

    Args:
        image_features: ``(N, D)``.
        text_features: ``(T, D)``.
        text_to_image: ``(T,)`` image index of each caption; default ``arange(N)`` (one caption per image).
        ks: the cut-offs K.

    Returns:
        ``{"image_to_text_R@1", ..., "text_to_image_R@1", ..., "mean_recall"}`` (mean over both directions and all K).
    """
    num_images, num_texts = image_features.shape[0], text_features.shape[0]
    groups = torch.arange(num_images) if text_to_image is None else torch.as_tensor(text_to_image).reshape(-1)
    if groups.numel() != num_texts:
        raise DataError(f"{groups.numel()} caption->image indices for {num_texts} captions")
    image_ids = torch.arange(num_images)
    common = dict(metric="cosine", leave_one_out=False)
    i2t = retrieval_metrics(
        image_features, text_features, image_ids, groups, topk=[min(k, num_texts) for k in ks], **common
    )
    t2i = retrieval_metrics(
        text_features, image_features, groups, image_ids, topk=[min(k, num_images) for k in ks], **common
    )
    result = {f"image_to_text_R@{k}": i2t[f"top{min(k, num_texts)}"] for k in ks}
    result |= {f"text_to_image_R@{k}": t2i[f"top{min(k, num_images)}"] for k in ks}
    result["mean_recall"] = sum(result.values()) / len(result)
    return result
