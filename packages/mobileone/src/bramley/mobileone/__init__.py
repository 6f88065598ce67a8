"""MobileOne: an improved one millisecond mobile backbone."""

__version__ = "0.1.0"
