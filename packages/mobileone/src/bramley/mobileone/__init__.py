"""MobileOne: an improved one millisecond mobile backbone (Vasu et al., CVPR 2023).

>>> from bramley.mobileone import mobileone_s0, reparameterize
>>> model = mobileone_s0(num_classes=10).eval()
>>> fast = reparameterize(model)  # single-branch inference model, same outputs
"""

from bramley.core.layers import reparameterize_model as reparameterize  # the README's name for core's fusion

from .model import (
    VARIANTS,
    MobileOne,
    MobileOneConfig,
    build_mobileone,
    mobileone_s0,
    mobileone_s1,
    mobileone_s2,
    mobileone_s3,
    mobileone_s4,
)

__version__ = "0.1.0"


def register_timm() -> list[str]:
    """Register the variants with timm as ``bramley_mobileone_s0`` .. ``bramley_mobileone_s4``."""
    from bramley.core.registry import register_timm as _register

    return _register(package="mobileone")


__all__ = [
    "VARIANTS",
    "MobileOne",
    "MobileOneConfig",
    "__version__",
    "build_mobileone",
    "mobileone_s0",
    "mobileone_s1",
    "mobileone_s2",
    "mobileone_s3",
    "mobileone_s4",
    "register_timm",
    "reparameterize",
]
