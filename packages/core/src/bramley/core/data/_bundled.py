"""Read scikit-learn's bundled data files directly.

Importing ``sklearn.datasets`` costs seconds (it pulls in scipy and most of scikit-learn); the files themselves are
tiny. We locate the installed package without importing it and read the files, falling back to the public loaders
if a future scikit-learn moves them. Both paths give identical arrays (tested). scikit-learn and pillow come with the
``bundled`` extra of bramley-core.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .._optional import missing_extra, optional_import


def _sklearn_datasets_dir(feature: str) -> Path | None:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise missing_extra("sklearn", "bundled", feature)
    path = Path(spec.origin).parent / "datasets"
    return path if path.is_dir() else None


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float64 in 0..16, targets (1797,) int64)``, as ``sklearn.datasets.load_digits``."""
    root = _sklearn_datasets_dir("loading the bundled digits")
    csv = root / "data" / "digits.csv.gz" if root else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    with optional_import("bundled", "loading the bundled digits"):
        from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target.astype(np.int64)


def load_sample_photo(name: str) -> np.ndarray:
    """One of scikit-learn's sample photos (``"china"`` or ``"flower"``) as a uint8 ``(H, W, 3)`` array."""
    root = _sklearn_datasets_dir("loading the bundled sample photos")
    jpg = root / "images" / f"{name}.jpg" if root else None
    if jpg is not None and jpg.is_file():
        with optional_import("bundled", "loading the bundled sample photos"):
            from PIL import Image

        with Image.open(jpg) as image:
            return np.asarray(image.convert("RGB")).copy()
    with optional_import("bundled", "loading the bundled sample photos"):
        from sklearn.datasets import load_sample_image

    return load_sample_image(f"{name}.jpg")
