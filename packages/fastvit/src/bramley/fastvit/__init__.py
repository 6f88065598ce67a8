"""FastViT: a fast hybrid vision transformer using structural reparameterization.

Importing the package registers the variants (``fastvit_t8`` ... ``fastvit_ma36``, ``fastvit_mci0..2``) with
:func:`bramley.core.create_model`.

>>> from bramley.core import create_model
>>> from bramley.fastvit import reparameterize
>>> fused = reparameterize(create_model("fastvit_t8").eval())  # one conv per RepMixer / RepCPE / MobileOne block
"""

from .model import FASTVIT_CONFIGS, FastVit, reparameterize

__version__ = "0.1.0"


def register_timm() -> list[str]:
    """Register the variants with timm as ``bramley_fastvit_t8`` .. ``bramley_fastvit_mci2`` (timm owns the plain
    names); ``features_only=True`` works."""
    from bramley.core.registry import register_timm as _register

    return _register(package="fastvit")


__all__ = ["FASTVIT_CONFIGS", "FastVit", "__version__", "register_timm", "reparameterize"]
