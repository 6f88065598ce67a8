"""MatFormer: nested transformers with Mix'n'Match sub-models.

``MatViT`` / ``MatLM`` hold nested FFNs (granularities ``h/8 .. h``); ``model(x, ffn=spec)`` runs a sub-model,
:func:`extract` makes it a standalone model, :func:`select_for_budget` picks one for a parameter or FLOP budget.
"""

from .model import (
    DEFAULT_GRANULARITIES,
    MatLM,
    MatViT,
    check_granularities,
    matlm,
    matlm_180m,
    matvit,
    matvit_s16,
    matvit_ti16,
)
from .nested import extract, flops, granularity_specs, mix_n_match_specs, num_parameters, select_for_budget
from .train import JointLoss, granularity_eval

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GRANULARITIES",
    "JointLoss",
    "MatLM",
    "MatViT",
    "check_granularities",
    "extract",
    "flops",
    "granularity_eval",
    "granularity_specs",
    "matlm",
    "matlm_180m",
    "matvit",
    "matvit_s16",
    "matvit_ti16",
    "mix_n_match_specs",
    "num_parameters",
    "select_for_budget",
]
