"""Deterministic, stratified train/val/test splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """Raise ``ValueError`` unless both fractions lie in [0, 1) and leave a non-empty train share."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got {val_fraction} + {test_fraction}"
        )


def stratified_split(
    labels: Sequence[int] | np.ndarray, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, np.ndarray]:
    """Split sample indices into disjoint ``train`` / ``val`` / ``test`` sets, class by class.

    Each class's indices are shuffled with ``numpy.random.default_rng(seed)`` and cut so that every split holds
    ``round(fraction * class_count)`` of that class (train takes the rest). The result depends only on
    ``(labels, fractions, seed)``, never on global RNG state.

    Args:
        labels: integer class label per sample.
        val_fraction: share of each class that goes to ``val``.
        test_fraction: share of each class that goes to ``test``.
        seed: seed of the shuffle.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, each a sorted ``int64`` array.
    """
    check_fractions(val_fraction, test_fraction)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = round(test_fraction * len(idx))
        n_val = round(val_fraction * len(idx))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}
