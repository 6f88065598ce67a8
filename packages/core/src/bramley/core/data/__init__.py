"""Bundled datasets, real-data loaders, text corpora and samplers shared by every bramley package.

- :class:`DigitsDataset` / :func:`digits_tensors`: scikit-learn digits with stratified seeded splits (``bundled``
  extra).
- :class:`SamplePhotosDataset`: crops of scikit-learn's two sample photos, leakage-free split regions (``bundled``).
- :class:`ImageFolder`, :func:`train_transform`, :func:`eval_transform`: real datasets on disk (``vision`` extra).
- :class:`TextDocuments`, :func:`python_stdlib_documents`, :class:`ByteTokenizer`: local text corpora.
- :class:`VariableBatchSampler`, :class:`MultiScaleDataset`, :func:`multiscale_collate`: multi-scale training.
- :func:`seeded_rng`, :class:`SeededTransformDataset`: augmentations reproducible per (seed, epoch, sample).
- :class:`SyntheticDataset` / :func:`synthetic_tensors`: procedural shape x color x texture x count images with
  difficulty knobs; :class:`SceneDataset`: composed scenes with objects, boxes and relations (numpy only).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .digits import DigitsDataset, digits_splits, digits_tensors
from .photos import SamplePhotosDataset, split_regions
from .sampler import MultiScaleDataset, VariableBatchSampler, make_scales, multiscale_collate
from .seeded import SeededTransformDataset, SharedEpoch, sample_seed, seeded_rng
from .splits import stratified_split
from .synthetic import COLORS, SHAPES, TEXTURES, SyntheticConfig, SyntheticDataset, synthetic_splits, synthetic_tensors
from .synthetic_scenes import (
    PREDICATES,
    Relation,
    Scene,
    SceneConfig,
    SceneDataset,
    SceneObject,
    collate_scenes,
    scene_relations,
)
from .text import ByteTokenizer, ReadStats, TextDocuments, python_stdlib_documents

if TYPE_CHECKING:
    from .folder import IMAGENET_MEAN, IMAGENET_STD, ImageFolder, eval_transform, image_folder_splits, train_transform

# torchvision costs seconds to import and is optional (the vision extra): load the ImageFolder side only when one of
# its names is used.
_LAZY_FOLDER = (
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageFolder",
    "eval_transform",
    "image_folder_splits",
    "train_transform",
)


def __getattr__(name: str) -> Any:
    if name in _LAZY_FOLDER:
        return getattr(importlib.import_module(".folder", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COLORS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREDICATES",
    "SHAPES",
    "TEXTURES",
    "ByteTokenizer",
    "DigitsDataset",
    "ImageFolder",
    "MultiScaleDataset",
    "ReadStats",
    "Relation",
    "SamplePhotosDataset",
    "Scene",
    "SceneConfig",
    "SceneDataset",
    "SceneObject",
    "SeededTransformDataset",
    "SharedEpoch",
    "SyntheticConfig",
    "SyntheticDataset",
    "TextDocuments",
    "VariableBatchSampler",
    "collate_scenes",
    "digits_splits",
    "digits_tensors",
    "eval_transform",
    "image_folder_splits",
    "make_scales",
    "multiscale_collate",
    "python_stdlib_documents",
    "sample_seed",
    "scene_relations",
    "seeded_rng",
    "split_regions",
    "stratified_split",
    "synthetic_splits",
    "synthetic_tensors",
    "train_transform",
]
