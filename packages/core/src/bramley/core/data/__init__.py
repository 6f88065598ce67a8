"""Bundled datasets, real-data loaders, text corpora and samplers shared by every bramley package."""

from .digits import DigitsDataset, digits_splits, digits_tensors
from .splits import stratified_split

__all__ = [
    "DigitsDataset",
    "digits_splits",
    "digits_tensors",
    "stratified_split",
]
