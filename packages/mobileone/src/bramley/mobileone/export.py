"""ONNX export of (fused) MobileOne models, checked with onnxruntime (``pip install 'bramley-mobileone[onnx]'``)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["check_onnx", "export_onnx"]


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"ONNX export needs {module!r}: pip install 'bramley-mobileone[onnx]'") from e


def export_onnx(
    model: nn.Module, path: str | os.PathLike, image_size: int = 224, in_chans: int | None = None, opset: int = 17
) -> Path:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch dimension; returns the file path.

    Reparameterize first (:func:`bramley.mobileone.reparameterize`) to export the single-branch inference graph.
    """
    _require("onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chans = in_chans or getattr(model, "in_chans", 3)
    x = torch.randn(2, chans, image_size, image_size)
    model.eval()
    kwargs = dict(
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=opset,
    )
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter: seconds instead of tens of seconds for this plain conv net
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(model, (x,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the legacy exporter
            torch.onnx.export(model, (x,), str(path), **kwargs)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, x: torch.Tensor, rtol: float = 1e-4) -> float:
    """Run the ONNX file with onnxruntime on ``x`` and compare with ``model(x)``.

    Returns the largest absolute difference divided by the largest absolute PyTorch output (at least 1); raises
    ``AssertionError`` when it exceeds ``rtol``.
    """
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    model.eval()
    with torch.no_grad():
        ref = model(x)
    scale = max(1.0, float(ref.abs().max()))
    error = float((torch.from_numpy(onnx_out) - ref).abs().max()) / scale
    if not error <= rtol:
        raise AssertionError(f"onnxruntime output differs from PyTorch by {error:.3g} relative (> {rtol})")
    return error
