"""Dataset Reinforcement: reinforce a dataset once, train any model better (Faghri et al., ICCV 2023).

``reinforce`` a dataset with a teacher ensemble (NS stored augmentations per image, top-k probabilities), then train
any classifier on :class:`ReinforcedDataset` with :class:`SoftTargetLoss`. The storage and replay machinery is
core's (:mod:`bramley.core.data.reinforced`).
"""

from . import model  # noqa: F401  (registers dr_convnet, dr_convnet_wide)
from .data import EvalImages, RawImages, ReinforcedDataset, raw_images
from .losses import OnlineDistillationLoss, SoftTargetLoss, kl_to_targets
from .metrics import CalibrationMeter, evaluate
from .reinforce import TeacherEnsemble, load_teacher, reinforce

__version__ = "0.1.0"

__all__ = [
    "CalibrationMeter",
    "EvalImages",
    "OnlineDistillationLoss",
    "RawImages",
    "ReinforcedDataset",
    "SoftTargetLoss",
    "TeacherEnsemble",
    "evaluate",
    "kl_to_targets",
    "load_teacher",
    "raw_images",
    "reinforce",
]
