"""FastViT: a fast hybrid vision transformer using structural reparameterization.

Importing the package registers the variants (``fastvit_t8`` ... ``fastvit_ma36``, ``fastvit_mci0..2``) with
:func:`bramley.core.create_model`.
"""

from .model import FASTVIT_CONFIGS, FastVit, reparameterize

__version__ = "0.1.0"

__all__ = ["FASTVIT_CONFIGS", "FastVit", "__version__", "reparameterize"]
