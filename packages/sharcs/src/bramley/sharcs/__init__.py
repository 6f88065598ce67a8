"""SHARCS: routing each sample to a dynamic-width sub-network."""

__version__ = "0.1.0"
