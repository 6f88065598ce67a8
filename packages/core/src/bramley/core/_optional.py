"""Optional dependencies of bramley-core: a missing one fails with one line naming the extra that installs it.

The extras (see packages/core/README.md): ``vision`` (torchvision, pillow, timm), ``bundled`` (scikit-learn and
pillow for the bundled digits and sample photos), ``plot`` (matplotlib), ``export`` (onnx, onnxruntime).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# import name -> distribution name, where they differ
_DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn"}


def missing_extra(module: str, extra: str, feature: str) -> ModuleNotFoundError:
    """The error for ``feature`` when ``module`` (provided by the bramley-core extra ``extra``) is not installed."""
    top = module.split(".")[0]
    dist = _DISTRIBUTIONS.get(top, top)
    return ModuleNotFoundError(f"{feature} needs {dist} (not installed): pip install 'bramley-core[{extra}]'", name=top)


@contextlib.contextmanager
def optional_import(extra: str, feature: str) -> Iterator[None]:
    """Turn a missing third-party module imported inside the block into :func:`missing_extra`'s error.

    Args:
        extra: the bramley-core extra that installs what the block imports (``"vision"``, ``"bundled"``, ``"plot"``).
        feature: what needs it, as a user knows it (``"bramley.core.report.figure"``).
    """
    try:
        yield
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] == "bramley":  # our own bug, not a missing dependency
            raise
        raise missing_extra(err.name, extra, feature) from err
