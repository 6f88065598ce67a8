"""Training image-text models plain and reinforced, and building reinforced datasets (``reinforce``).

Data (the ``data`` recipe section, :class:`ImageTextData`):

- ``source: synthetic``: core's procedural shape images (:class:`bramley.core.data.SyntheticDataset`) with captions
  made from each image's class factors (shape, color, texture, count). :func:`web_caption` stands in for alt-text: a
  fraction ``caption_noise`` of captions name only some of the factors (seeded per image), as web captions are
  partial. :class:`TemplateCaptioner` stands in for the paper's CoCa captioner: full descriptions in varied
  phrasings. Zero-shot classes are the class names; retrieval pairs test images with full captions.
- ``source: shards``: reinforced webdataset shards holding their images (``reinforce`` writes them).

Modes (the ``loss`` section, :class:`ReinforcedLossSection`):

- ``clip``: plain CLIP training on the original captions, fresh augmentations every epoch;
- ``reinforced``: stored augmentations replayed bit for bit, the original and one stored synthetic caption, the loss
  of :func:`~bramley.mobileclip.losses.reinforced_loss` against the stored teacher embeddings (no teacher runs);
- ``online``: the same loss with the teacher ensemble run in the loop on the same inputs (the baseline whose cost
  reinforcement removes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from bramley.core.clip_eval import ClipTokenizer, image_text_retrieval, zero_shot_accuracy, zero_shot_classifier
from bramley.core.data.reinforced import AugmentConfig, ReplayableAugment, augmentation_seed
from bramley.core.errors import ConfigError, DataError
from bramley.core.layers.clip import clip_loss
from bramley.core.recipe import RecipeSchema

from .data import IndexedShards, ReinforcedSample
from .losses import reinforced_loss

__all__ = [
    "RECIPES",
    "ImageTextData",
    "PlainImageText",
    "ReinforcedImageText",
    "ReinforcedLossSection",
    "ShardImageText",
    "TemplateCaptioner",
    "clamp_logit_scale",
    "evaluate_image_text",
    "reinforce",
    "synthetic_image_text",
    "train",
    "web_caption",
]

TEMPLATES = ("a photo of {}.", "an image of {}.", "{}.")
MAX_LOGIT_SCALE = math.log(100.0)


# ----------------------------------------------------------------------------------------------------- sections
@dataclass
class ImageTextData:
    """``data``: where image-text pairs come from (see the module docstring)."""

    source: str = "synthetic"
    shards: str | None = None
    image_size: int = 32
    train_size: int = 2000
    test_size: int = 640
    caption_noise: float = 0.5
    data_seed: int = 0
    context_length: int = 77
    scale: tuple[float, float] = (0.35, 1.0)
    rand_augment: float = 0.0
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    textures: tuple[str, ...] = ("solid", "striped")
    counts: tuple[int, ...] = (1, 2)
    clutter: int = 4

    def __post_init__(self) -> None:
        if self.source not in ("synthetic", "shards"):
            raise ConfigError(f"data.source must be 'synthetic' or 'shards', got {self.source!r}")
        if self.source == "shards" and not self.shards:
            raise ConfigError("data.source=shards needs data.shards (a tar path or a brace pattern)")
        if not 0.0 <= self.caption_noise <= 1.0:
            raise ConfigError(f"data.caption_noise must be in [0, 1], got {self.caption_noise}")
        self.scale = tuple(float(s) for s in self.scale)
        for name in ("shapes", "colors", "textures", "counts"):
            setattr(self, name, tuple(getattr(self, name)))

    def augment(self) -> ReplayableAugment:
        """The replayable augmentation of this data (RandomResizedCrop + flip [+ RandAugment], no erasing)."""
        return ReplayableAugment(
            AugmentConfig(
                size=self.image_size,
                scale=self.scale,
                rand_augment=self.rand_augment,
                erase=0.0,
                mean=(0.0, 0.0, 0.0),  # MobileCLIP's input: [0, 1] pixels, no normalization
                std=(1.0, 1.0, 1.0),
            )
        )


@dataclass
class ReinforcedLossSection:
    """``loss``: ``mode`` (``clip``, ``reinforced``, ``online``), ``weights`` ``(w0 CLIP, w1 distillation)``, one
    ``teacher_scales`` entry per teacher, ``teacher_dims`` (their widths, concatenated in the stored embeddings) and,
    for ``online``, ``teachers`` (checkpoints)."""

    mode: str = "clip"
    weights: tuple[float, float] = (0.0, 1.0)
    teacher_scales: list[float] = field(default_factory=lambda: [100.0])
    teacher_dims: list[int] | None = None
    teachers: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("clip", "reinforced", "online"):
            raise ConfigError(f"loss.mode must be clip, reinforced or online, got {self.mode!r}")
        self.weights = tuple(float(w) for w in self.weights)
        if len(self.weights) != 2 or min(self.weights) < 0:
            raise ConfigError(f"loss.weights must be two non-negative numbers (w0, w1), got {list(self.weights)}")
        if self.teacher_dims is not None and len(self.teacher_dims) != len(self.teacher_scales):
            raise ConfigError(
                f"loss.teacher_scales ({len(self.teacher_scales)}) needs one scale per teacher "
                f"(loss.teacher_dims has {len(self.teacher_dims)})"
            )


RECIPES = RecipeSchema("mobileclip", data=ImageTextData, loss=ReinforcedLossSection, default_recipe="smoke")


# ---------------------------------------------------------------------------------------------------- captions
def _noun(shape: str, count: int) -> str:
    return shape if count == 1 else ("crosses" if shape == "cross" else shape + "s")


def web_caption(attributes: dict[str, Any], noise: float, rng: np.random.Generator) -> str:
    """An alt-text-like caption: the full class description, or (with probability ``noise``) a partial one."""
    a = attributes
    full = f"{a['count']} {a['color']} {a['texture']} {_noun(a['shape'], a['count'])}"
    if rng.random() >= noise:
        return full
    partial = [
        f"{a['color']} {_noun(a['shape'], a['count'])}",
        f"{a['texture']} {a['shape']} picture",
        f"something {a['color']}",
        "a picture i took",
    ]
    return partial[int(rng.integers(len(partial)))]


class TemplateCaptioner:
    """A stand-in for CoCa: ``n`` full descriptions of an image's factors in varied phrasings (seeded per image).

    The captioner is pluggable: ``reinforce`` accepts any ``captioner(index, image, caption, n) -> list[str]``.
    """

    PHRASES = (
        "{count} {color} {texture} {noun}",
        "an image with {count} {texture} {color} {noun}",
        "{count} {noun}, {color} and {texture}",
        "a {texture} pattern on {count} {color} {noun}",
        "there are {count} {color} {noun} with a {texture} fill",
    )

    def __init__(self, attributes: Sequence[dict[str, Any]], seed: int = 0):
        self.attributes, self.seed = list(attributes), seed

    def __call__(self, index: int, image: torch.Tensor, caption: str, n: int) -> list[str]:
        a = self.attributes[index]
        rng = np.random.default_rng([self.seed, index, 7])
        phrases = rng.permutation(len(self.PHRASES))[:n]
        noun = _noun(a["shape"], a["count"])
        return [self.PHRASES[p].format(noun=noun, **a) for p in phrases]


@dataclass
class ImageTextSplit:
    """Images (uint8 ``(N, C, H, W)``), captions, per-image class factors, labels and class names."""

    images: torch.Tensor
    captions: list[str]
    attributes: list[dict[str, Any]]
    labels: torch.Tensor
    classes: tuple[str, ...]


def synthetic_image_text(data: ImageTextData, split: str, full_captions: bool = False) -> ImageTextSplit:
    """Core's procedural images with captions (web-style partial ones unless ``full_captions``)."""
    from bramley.core.data import SyntheticDataset

    size = data.train_size if split == "train" else data.test_size
    dataset = SyntheticDataset(
        split,
        seed=data.data_seed,
        image_size=data.image_size,
        imbalance=1.0,
        train_size=max(size, 64),
        val_size=0,
        test_size=size if split == "test" else 0,
        shapes=data.shapes,
        colors=data.colors,
        textures=data.textures,
        counts=data.counts,
        clutter=data.clutter,
    )
    images, labels = dataset.tensors()
    images = (images[:size] * 255).round().to(torch.uint8)
    labels = labels[:size]
    attributes = [dataset.config.attributes[int(y)] for y in labels]
    noise = 0.0 if full_captions else data.caption_noise
    captions = [web_caption(a, noise, np.random.default_rng([data.data_seed, i, 3])) for i, a in enumerate(attributes)]
    return ImageTextSplit(images, captions, attributes, labels, dataset.classes)


# ----------------------------------------------------------------------------------------------------- datasets
class PlainImageText(Dataset):
    """Plain CLIP training pairs: a fresh (seeded per epoch and index) augmentation and the tokenized caption."""

    def __init__(self, images: torch.Tensor, captions: Sequence[str], augment: ReplayableAugment, tokenizer, seed: int):
        if len(images) != len(captions):
            raise DataError(f"{len(images)} images but {len(captions)} captions")
        self.images, self.augment, self.seed, self.epoch = images, augment, seed, 0
        self.tokens = tokenizer(list(captions))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, _ = self.augment.sample(self.images[index], augmentation_seed(self.seed, index, self.epoch))
        return {"image": image, "tokens": self.tokens[index]}


class ReinforcedImageText(Dataset):
    """Reinforced pairs: a stored augmentation replayed, the caption, one synthetic caption and their teacher
    embeddings; which augmentation and which synthetic caption is drawn from ``(seed, index, epoch)``."""

    def __init__(self, samples: Sequence[ReinforcedSample], augment: ReplayableAugment, tokenizer, seed: int):
        self.augment, self.seed, self.epoch, self.tokenizer = augment, seed, 0, tokenizer
        # samples on disk (IndexedShards) are checked and tokenized as they are read; a list in memory up front
        self.lazy = isinstance(samples, IndexedShards)
        self.samples = samples if self.lazy else list(samples)
        if not self.lazy:
            for sample in self.samples:
                _check_reinforced(sample)
            self.tokens = tokenizer([s.caption for s in self.samples])
            self.syn_tokens = [tokenizer(s.syn_text) for s in self.samples]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples[index]
        rng = np.random.default_rng([self.seed, index, self.epoch, 11])
        if self.lazy:
            _check_reinforced(s)
        a, j = int(rng.integers(len(s.param_aug))), int(rng.integers(len(s.syn_text)))
        try:
            image = self.augment.replay(s.image, s.param_aug[a])
        except DataError as e:
            raise DataError(f"sample {s.key!r}, augmentation {a}: {e}") from None
        if self.lazy:
            tokens, syn_tokens = self.tokenizer([s.caption, s.syn_text[j]]).unbind(0)
        else:
            tokens, syn_tokens = self.tokens[index], self.syn_tokens[index][j]
        return {
            "image": image,
            "tokens": tokens,
            "syn_tokens": syn_tokens,
            "teacher_image": s.image_emb[a],
            "teacher_text": s.text_emb[0],
            "teacher_syn": s.text_emb[1 + j],
        }


def _check_reinforced(sample: ReinforcedSample) -> None:
    if sample.image is None:
        raise DataError(f"sample {sample.key!r} holds no image; reinforced training replays its augmentations")
    if not sample.syn_text:
        raise DataError(f"sample {sample.key!r} holds no synthetic caption")


class ShardImageText(Dataset):
    """Plain CLIP pairs read from shards as they are needed: each sample's image (a fresh seeded augmentation, as
    :class:`PlainImageText`) and its original caption."""

    def __init__(self, samples: IndexedShards, augment: ReplayableAugment, tokenizer, seed: int):
        self.samples, self.augment, self.tokenizer, self.seed, self.epoch = samples, augment, tokenizer, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        image, _ = self.augment.sample(sample.image, augmentation_seed(self.seed, index, self.epoch))
        return {"image": image, "tokens": self.tokenizer([sample.caption])[0]}


# ---------------------------------------------------------------------------------------------------- reinforce
def _teacher_dims(teachers: Sequence[nn.Module], example: torch.Tensor, tokens: torch.Tensor) -> list[int]:
    dims = []
    with torch.no_grad():
        for t, teacher in enumerate(teachers):
            image_dim, text_dim = teacher.encode_image(example).shape[-1], teacher.encode_text(tokens).shape[-1]
            if image_dim != text_dim:
                raise ConfigError(f"teacher {t}: image embeddings are {image_dim}-d but text embeddings {text_dim}-d")
            dims.append(image_dim)
    return dims


@torch.no_grad()
def teacher_embeddings(
    teachers: Sequence[nn.Module], images: torch.Tensor | None, tokens: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The ensemble's embeddings, each member's L2-normalized, concatenated in member order (None: no input)."""

    def embed(encode: str, x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        return torch.cat([nn.functional.normalize(getattr(t, encode)(x).float(), dim=-1) for t in teachers], dim=1)

    return embed("encode_image", images), embed("encode_text", tokens)


def reinforce(
    images: torch.Tensor,
    captions: Sequence[str],
    teachers: Sequence[nn.Module],
    captioner: Callable[[int, torch.Tensor, str, int], list[str]],
    tokenizer: ClipTokenizer,
    augment: ReplayableAugment,
    num_augmentations: int = 5,
    num_synthetic: int = 3,
    seed: int = 0,
    urls: Sequence[str] | None = None,
    batch_size: int = 64,
    keep_images: bool = True,
) -> list[ReinforcedSample]:
    """Reinforce image-text pairs: per image ``num_augmentations`` stored augmentations with the teachers' image
    embeddings of each, ``num_synthetic`` captions from ``captioner`` and the teachers' text embeddings of the
    original then synthetic captions. Teachers run in eval mode on the augmented tensors as replay rebuilds them.

    Args:
        images: uint8 ``(N, C, H, W)``.
        captions: ``N`` original captions.
        teachers: models with ``encode_image`` / ``encode_text`` (bramley or open_clip CLIPs).
        captioner: ``captioner(index, image, caption, n) -> n captions``.
        tokenizer: tokenizes for the teachers.
        augment: the replayable augmentation (its parameters are stored).
        num_augmentations, num_synthetic: per image.
        seed: augmentation seed (``augmentation_seed(seed, index, a)``).
        urls: the images' sources (default ``local://<index>``).
        batch_size: teacher batch.
        keep_images: store each image in its record (needed to train from the shards alone).
    """
    if len(images) != len(captions):
        raise DataError(f"{len(images)} images but {len(captions)} captions")
    if num_augmentations < 1 or num_synthetic < 1:
        raise ConfigError("reinforce needs at least one augmentation and one synthetic caption per image")
    for teacher in teachers:
        teacher.eval()
    samples = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        augmented, params, syn = [], [], []
        for i in range(start, stop):
            for a in range(num_augmentations):
                x, p = augment.sample(images[i], augmentation_seed(seed, i, a))
                augmented.append(x)
                params.append(p)
            captions_i = captioner(i, images[i], captions[i], num_synthetic)
            if len(captions_i) != num_synthetic:
                raise DataError(f"the captioner gave {len(captions_i)} captions for image {i}, not {num_synthetic}")
            syn.append(captions_i)
        texts = [t for i in range(start, stop) for t in (captions[i], *syn[i - start])]
        image_emb, text_emb = teacher_embeddings(teachers, torch.stack(augmented), tokenizer(texts))
        image_emb = image_emb.view(stop - start, num_augmentations, -1)
        text_emb = text_emb.view(stop - start, 1 + num_synthetic, -1)
        for k, i in enumerate(range(start, stop)):
            samples.append(
                ReinforcedSample(
                    key=f"{i:08d}",
                    url=urls[i] if urls is not None else f"local://{i}",
                    caption=captions[i],
                    param_aug=params[k * num_augmentations : (k + 1) * num_augmentations],
                    syn_text=syn[k],
                    image_emb=image_emb[k].clone(),
                    text_emb=text_emb[k].clone(),
                    image=images[i].clone() if keep_images else None,
                )
            )
    return samples


# ----------------------------------------------------------------------------------------------------- training
def clamp_logit_scale(trainer: Any) -> None:
    """open_clip's rule after every step: ``logit_scale`` stays in ``[0, log(100)]``."""
    with torch.no_grad():
        trainer.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


class ClipTrainLoss:
    """``loss_fn(model, batch)`` of the three modes (see the module docstring)."""

    def __init__(self, section: ReinforcedLossSection, teachers: Sequence[nn.Module] = ()):
        self.section, self.teachers = section, list(teachers)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        images, tokens = batch["image"], batch["tokens"]
        if self.section.mode == "clip":
            img, txt, scale = model(images, tokens)
            loss = clip_loss(img, txt, scale)
            return loss, {"clip_loss": float(loss.detach())}
        img, txt, scale = model(images, tokens)
        syn = nn.functional.normalize(_unwrap(model).encode_text(batch["syn_tokens"]), dim=-1)
        if self.section.mode == "online":
            t_img, t_txt = teacher_embeddings(self.teachers, images, tokens)
            _, t_syn = teacher_embeddings(self.teachers, None, batch["syn_tokens"])
        else:
            t_img, t_txt, t_syn = batch["teacher_image"], batch["teacher_text"], batch["teacher_syn"]
        dims = self.section.teacher_dims or [t_img.shape[1]]
        return reinforced_loss(
            img, txt, syn, scale, t_img, t_txt, t_syn, dims, self.section.teacher_scales, self.section.weights
        )


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


@torch.no_grad()
def evaluate_image_text(
    model: nn.Module, split: ImageTextSplit, tokenizer: ClipTokenizer, augment: ReplayableAugment, batch_size: int = 256
) -> dict[str, float]:
    """Zero-shot top-1 (class names in :data:`TEMPLATES`) and image->text / text->image R@1, R@5 with full captions."""
    model.eval()
    device = next(model.parameters()).device
    images = torch.stack([_center(augment, x) for x in split.images])
    feats = torch.cat(
        [
            model.encode_image(images[i : i + batch_size].to(device), normalize=True).float().cpu()
            for i in range(0, len(images), batch_size)
        ]
    )
    head = zero_shot_classifier(model, list(split.classes), TEMPLATES, tokenizer)
    metrics = {"zero_shot_top1": zero_shot_accuracy(feats, split.labels, head.cpu(), topk=(1,))["top1"]}
    full = [f"{a['count']} {a['color']} {a['texture']} {_noun(a['shape'], a['count'])}" for a in split.attributes]
    from bramley.core.clip_eval import encode_texts

    text = encode_texts(model, tokenizer(full))
    retrieval = image_text_retrieval(feats, text, ks=(1, 5))
    metrics |= {k: v for k, v in retrieval.items() if k != "mean_recall"}
    return metrics


def _center(augment: ReplayableAugment, image: torch.Tensor) -> torch.Tensor:
    """The evaluation view: the whole image resized, normalized like training."""
    h, w = image.shape[-2:]
    return augment.replay(image, {"src": [h, w], "crop": [0, 0, h, w], "flip": 0, "ops": []})


def train(recipe: Any, out_dir: str | os.PathLike) -> dict[str, Any]:
    """``bramley mobileclip train``: the recipe's model trained in its loss mode with core's trainer."""
    from bramley.core.recipe import build_model
    from bramley.core.train import Trainer

    data, section = recipe.data, recipe.loss
    model = build_model(recipe.model.name, recipe.model.kwargs)
    context = model.text.context_length
    tokenizer = ClipTokenizer(context_length=context)
    augment = data.augment()
    test = synthetic_image_text(data, "test", full_captions=True) if data.source == "synthetic" else None
    teachers = [_load_teacher(path) for path in section.teachers]
    if section.mode == "online" and not teachers:
        raise ConfigError("loss.mode=online needs loss.teachers (checkpoints of the teacher ensemble)")
    if data.source == "synthetic":
        train_split = synthetic_image_text(data, "train")
        if section.mode == "clip":
            dataset: Dataset = PlainImageText(
                train_split.images, train_split.captions, augment, tokenizer, recipe.train.seed
            )
        else:
            if not teachers:
                raise ConfigError(f"loss.mode={section.mode} on synthetic data needs loss.teachers to reinforce it")
            captioner = TemplateCaptioner(train_split.attributes, data.data_seed)
            samples = reinforce(
                train_split.images,
                train_split.captions,
                teachers,
                captioner,
                tokenizer,
                augment,
                num_augmentations=4,
                num_synthetic=3,
                seed=data.data_seed,
            )
            dataset = ReinforcedImageText(samples, augment, tokenizer, recipe.train.seed)
    else:
        dims = sum(section.teacher_dims) if section.teacher_dims else None
        samples = IndexedShards(data.shards, embed_dim=dims, require_image=True)  # the index only; samples stay on disk
        if not len(samples):
            raise DataError(f"{data.shards} holds no samples")
        if section.mode == "clip":
            dataset = ShardImageText(samples, augment, tokenizer, recipe.train.seed)
        else:
            dataset = ReinforcedImageText(samples, augment, tokenizer, recipe.train.seed)
    if teachers and section.teacher_dims is not None:
        example = dataset[0]
        dims = _teacher_dims(teachers, example["image"][None], example["tokens"][None])
        if dims != list(section.teacher_dims):
            raise ConfigError(
                f"the teachers' embedding widths {dims} differ from loss.teacher_dims {section.teacher_dims}"
            )

    def eval_fn(model: nn.Module, loader: Any) -> dict[str, float]:
        return evaluate_image_text(_unwrap(model), test, tokenizer, augment) if test is not None else {}

    trainer = Trainer(
        model,
        recipe.train_config(out_dir),
        dataset,
        ClipTrainLoss(section, teachers),
        eval_data=dataset if test is not None else None,
        eval_fn=eval_fn if test is not None else None,
        callbacks=[clamp_logit_scale],
    )
    return trainer.fit()


def _load_teacher(path: str) -> nn.Module:
    from bramley.core.checkpoint import load_model

    model = load_model(path)
    if not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
        raise ConfigError(f"teacher {path} is not an image-text model (no encode_image / encode_text)")
    return model.eval()
