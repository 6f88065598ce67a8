"""UDON: universal image embeddings by dynamic online distillation, with the UnED evaluation protocol.

``UdonModel`` (registered as ``udon``) trains per-domain teachers and one universal student on a shared backbone;
``JointEmbeddingModel`` (``udon_joint``) is the one-head joint baseline and, with one domain, a specialist.
"""

from .losses import LossWeights, udon_loss
from .model import ConvNet, CosineClassifier, JointEmbeddingModel, UdonModel, build_backbone
from .sampler import DomainBatchSampler, DynamicWeights
from .uned import evaluate_descriptors, knn_metrics, load_descriptors, save_descriptors, uned_eval

__version__ = "0.1.0"

__all__ = [
    "ConvNet",
    "CosineClassifier",
    "DomainBatchSampler",
    "DynamicWeights",
    "JointEmbeddingModel",
    "LossWeights",
    "UdonModel",
    "build_backbone",
    "evaluate_descriptors",
    "knn_metrics",
    "load_descriptors",
    "save_descriptors",
    "udon_loss",
    "uned_eval",
]
