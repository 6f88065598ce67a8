"""bramley-core: the shared runtime of every bramley method package."""

from .checkpoint import CheckpointError, from_pretrained, load_checkpoint, save_checkpoint, save_pretrained
from .registry import create_model, list_models, register_model, register_timm

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "__version__",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_checkpoint",
    "register_model",
    "register_timm",
    "save_checkpoint",
    "save_pretrained",
]
