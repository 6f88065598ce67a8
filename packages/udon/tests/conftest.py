"""Fixtures of bramley-udon's tests: a tiny UnED-layout folder written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

UNED_DOMAINS = {"cars": 3, "inshop": 3}  # inshop: test queries against a separate index split (as in UnED)


@pytest.fixture
def uned_root(tmp_path: Path) -> Path:
    """``info_files/<domain>/<split>.json`` + ``images/<domain>/...`` PNGs: 3 classes per domain, colour-coded."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "uned"
    for domain, classes in UNED_DOMAINS.items():
        splits = (
            {"train": 6, "val": 3, "test": 3} if domain == "cars" else {"train": 6, "val": 3, "test": 2, "index": 3}
        )
        for split, per_class in splits.items():
            entries = []
            for c in range(classes):
                for i in range(per_class):
                    rel = f"{domain}/{split}/{c}_{i}.png"
                    pixels = rng.integers(0, 120, size=(20, 24, 3), dtype=np.uint8)
                    pixels[..., c] = 255
                    (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(pixels).save(root / "images" / rel)
                    entries.append({"path": rel, "class_id": c})
            (root / "info_files" / domain).mkdir(parents=True, exist_ok=True)
            (root / "info_files" / domain / f"{split}.json").write_text(json.dumps(entries))
    return root
