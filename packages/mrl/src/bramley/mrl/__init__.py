"""Matryoshka Representation Learning (Kusupati et al., NeurIPS 2022): one embedding, accurate at every prefix size.

>>> from bramley.mrl import MatryoshkaLinear, MatryoshkaLoss, MatryoshkaIndex

Importing the package registers its models (``mrl_resnet50``, ``mrl_backbone``, ``mrl_mlp``) with
``bramley.core.create_model``.
"""

from bramley.core.retrieval import ranking_metrics as retrieval_metrics  # kept under the name the README lists

from .convert import convert_official
from .embeddings import EmbeddingFile, embed_dataset, load_embeddings, save_embeddings, truncate_normalize
from .losses import MatryoshkaContrastiveLoss, MatryoshkaLoss
from .model import (
    MatryoshkaLinear,
    MatryoshkaModel,
    apply_blurpool,
    build_backbone,
    mrl_backbone,
    mrl_mlp,
    mrl_resnet50,
)
from .nesting import check_nesting, default_nesting
from .retrieval import MatryoshkaIndex, SearchResult, exact_search, funnel_mflops, neighbor_recall
from .train import MatryoshkaTrainLoss, nesting_eval

__version__ = "0.1.0"

__all__ = [
    "EmbeddingFile",
    "MatryoshkaContrastiveLoss",
    "MatryoshkaIndex",
    "MatryoshkaLinear",
    "MatryoshkaLoss",
    "MatryoshkaModel",
    "MatryoshkaTrainLoss",
    "SearchResult",
    "apply_blurpool",
    "build_backbone",
    "check_nesting",
    "convert_official",
    "default_nesting",
    "embed_dataset",
    "exact_search",
    "funnel_mflops",
    "load_embeddings",
    "mrl_backbone",
    "mrl_mlp",
    "mrl_resnet50",
    "neighbor_recall",
    "nesting_eval",
    "retrieval_metrics",
    "save_embeddings",
    "truncate_normalize",
]
