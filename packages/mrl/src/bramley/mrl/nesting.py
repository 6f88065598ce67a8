"""Nesting lists: the representation sizes a Matryoshka embedding is trained and used at."""

from __future__ import annotations

from collections.abc import Sequence

from bramley.core.errors import ConfigError

__all__ = ["check_nesting", "default_nesting"]


def default_nesting(feature_dim: int, start: int = 8) -> list[int]:
    """Powers of two from ``start`` up to ``feature_dim``, with ``feature_dim`` itself always last.

    ``default_nesting(2048)`` is the paper's ``[8, 16, ..., 1024, 2048]``; a feature dimension that is not a power
    of two ends the list with itself (``default_nesting(768) == [8, ..., 512, 768]``).

    Raises:
        ConfigError: ``feature_dim`` or ``start`` out of range.
    """
    if feature_dim < 1:
        raise ConfigError(f"feature_dim must be >= 1, got {feature_dim}")
    if start < 1 or start & (start - 1):
        raise ConfigError(f"start must be a power of two >= 1, got {start}")
    if start > feature_dim:
        raise ConfigError(f"start size {start} is larger than the feature dim {feature_dim}")
    sizes = []
    size = start
    while size < feature_dim:
        sizes.append(size)
        size *= 2
    sizes.append(feature_dim)
    return sizes


def check_nesting(sizes: Sequence[int], feature_dim: int | None = None, name: str = "nesting sizes") -> list[int]:
    """Validate a nesting list: non-empty, positive ints, strictly increasing, none above ``feature_dim``.

    Returns the sizes as a list of ints. Unsorted or duplicate sizes are an error rather than silently sorted, so a
    list of per-size weights or outputs can never be paired with the wrong size.

    Raises:
        ConfigError: naming the offending sizes.
    """
    if isinstance(sizes, str) or not isinstance(sizes, Sequence):
        raise ConfigError(f"{name} must be a list of positive integers, got {sizes!r}")
    sizes = list(sizes)
    if not sizes:
        raise ConfigError(f"{name} must not be empty")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ConfigError(f"{name} must be positive integers, got {s!r} in {sizes}")
    if len(set(sizes)) != len(sizes):
        dupes = sorted({s for s in sizes if sizes.count(s) > 1})
        raise ConfigError(f"{name} contain duplicates {dupes}: {sizes}")
    if sizes != sorted(sizes):
        raise ConfigError(f"{name} must be sorted in increasing order, got {sizes}")
    if feature_dim is not None and sizes[-1] > feature_dim:
        too_big = [s for s in sizes if s > feature_dim]
        raise ConfigError(f"{name} {too_big} are larger than the feature dim {feature_dim}: {sizes}")
    return sizes
