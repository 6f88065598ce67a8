"""MobileCLIP: fast image-text models through multi-modal reinforced training."""

__version__ = "0.1.0"
