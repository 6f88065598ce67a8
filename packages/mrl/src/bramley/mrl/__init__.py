"""Matryoshka Representation Learning (Kusupati et al., NeurIPS 2022): one embedding, accurate at every prefix size.

>>> from bramley.mrl import MatryoshkaLinear, MatryoshkaLoss, MatryoshkaIndex
"""

from bramley.core.retrieval import ranking_metrics as retrieval_metrics  # kept under the name the README lists

from .embeddings import EmbeddingFile, load_embeddings, save_embeddings, truncate_normalize
from .losses import MatryoshkaContrastiveLoss, MatryoshkaLoss
from .model import MatryoshkaLinear, MatryoshkaModel, build_backbone, build_mrl_model, load_mrl_model, save_mrl_model
from .nesting import check_nesting, default_nesting
from .retrieval import MatryoshkaIndex, SearchResult, exact_search, funnel_mflops, neighbor_recall

__version__ = "0.1.0"

__all__ = [
    "EmbeddingFile",
    "MatryoshkaContrastiveLoss",
    "MatryoshkaIndex",
    "MatryoshkaLinear",
    "MatryoshkaLoss",
    "MatryoshkaModel",
    "SearchResult",
    "build_backbone",
    "build_mrl_model",
    "check_nesting",
    "default_nesting",
    "exact_search",
    "funnel_mflops",
    "load_embeddings",
    "load_mrl_model",
    "neighbor_recall",
    "retrieval_metrics",
    "save_embeddings",
    "save_mrl_model",
    "truncate_normalize",
]
