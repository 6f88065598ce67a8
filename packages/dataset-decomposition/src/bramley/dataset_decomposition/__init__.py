"""Dataset Decomposition: Faster LLM Training with Variable Sequence Length Curriculum.

Data (decomposition into power-of-two buckets, on-disk buckets, concat-and-chunk baseline, curricula and the
token-budget sampler) and the model side (a small OpenLM-style GPT, losses and cost accounting for the core trainer).
"""

from .baseline import ConcatChunkDataset, segments_to_cu_seqlens
from .buckets import BucketDataset, Buckets
from .decompose import decompose
from .model import DDGPT, dd_gpt_1b, dd_gpt_410m, dd_gpt_tiny
from .sampling import CURRICULA, BucketBatchSampler
from .train import TrainingMeter, attention_flops, evaluate_lm, lm_loss_fn, loss_by_position

__version__ = "0.1.0"

__all__ = [
    "CURRICULA",
    "DDGPT",
    "BucketBatchSampler",
    "BucketDataset",
    "Buckets",
    "ConcatChunkDataset",
    "TrainingMeter",
    "attention_flops",
    "dd_gpt_1b",
    "dd_gpt_410m",
    "dd_gpt_tiny",
    "decompose",
    "evaluate_lm",
    "lm_loss_fn",
    "loss_by_position",
    "segments_to_cu_seqlens",
]
