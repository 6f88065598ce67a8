"""SHARCS: routing each sample to a dynamic-width sub-network (Salehi et al., Findings of EMNLP 2023)."""

from .hardness import HardnessTracker, assign_widths, check_thresholds, hardness_of
from .hf import SharcsHF, sharcs_hf
from .model import (
    DEFAULT_WIDTHS,
    Router,
    SharcsModel,
    SharcsTimmViT,
    SharcsViT,
    load_timm_vit_state_dict,
    sharcs_timm_vit,
    sharcs_vit_digits,
    sharcs_vit_tiny,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_WIDTHS",
    "HardnessTracker",
    "Router",
    "SharcsHF",
    "SharcsModel",
    "SharcsTimmViT",
    "SharcsViT",
    "assign_widths",
    "check_thresholds",
    "hardness_of",
    "load_timm_vit_state_dict",
    "sharcs_hf",
    "sharcs_timm_vit",
    "sharcs_vit_digits",
    "sharcs_vit_tiny",
]
