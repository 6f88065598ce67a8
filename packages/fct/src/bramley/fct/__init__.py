"""Forward Compatible Training for large-scale embedding retrieval (Ramanujan et al., CVPR 2022)."""

from bramley.core.retrieval import retrieval_metrics  # re-exported: the README's quickstart imports it from here

from .backfill import BackfillError, BackfillResult, gallery_metrics, load_gallery, save_gallery, transform_gallery
from .models import (
    ConvEmbeddingNet,
    EmbeddingNet,
    FCTTransformation,
    SideInfoModel,
    TimmEmbeddingNet,
    TransformedOldModel,
    convert_official,
)
from .pipeline import evaluate, train_chain, train_stage
from .recipe import SCHEMA
from .train import (
    BCTLoss,
    embed_dataset,
    synthesized_class_weights,
    train_backbone,
    train_side_info,
    train_transformation,
)

__version__ = "0.1.0"

__all__ = [
    "SCHEMA",
    "BCTLoss",
    "BackfillError",
    "BackfillResult",
    "ConvEmbeddingNet",
    "EmbeddingNet",
    "FCTTransformation",
    "SideInfoModel",
    "TimmEmbeddingNet",
    "TransformedOldModel",
    "__version__",
    "convert_official",
    "embed_dataset",
    "evaluate",
    "gallery_metrics",
    "load_gallery",
    "retrieval_metrics",
    "save_gallery",
    "synthesized_class_weights",
    "train_backbone",
    "train_chain",
    "train_side_info",
    "train_stage",
    "train_transformation",
    "transform_gallery",
]
