"""MobileCLIP: fast image-text models through multi-modal reinforced training.

Importing the package registers ``mobileclip_s0``, ``mobileclip_s1``, ``mobileclip_s2`` and ``mobileclip_b`` with
:func:`bramley.core.create_model`.

>>> from bramley.core import create_model
>>> model = create_model("mobileclip_s0").eval()
>>> image_features, text_features, scale = model(images, tokens)
"""

from .model import MOBILECLIP_CONFIGS, MobileCLIP, TextRepMixerBlock

__version__ = "0.1.0"

__all__ = ["MOBILECLIP_CONFIGS", "MobileCLIP", "TextRepMixerBlock", "__version__"]
