"""ONNX export of the fused (reparameterized) model, checked against PyTorch with onnxruntime.

Needs the ``onnx`` extra: ``pip install bramley-fastvit[onnx]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .model import Attention, reparameterize

__all__ = ["export_onnx"]


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    image_size: int = 256,
    batch_size: int = 1,
    check: bool = True,
    opset: int = 18,
) -> dict[str, Any]:
    """Fuse (a copy of) ``model`` and export it to ``path``; with ``check``, compare onnxruntime's logits to PyTorch's.

    Returns ``{"path", "image_size", "max_abs_diff"}`` (``max_abs_diff`` only when checked). Raises
    ``ImportError`` naming the extra if onnx/onnxruntime are missing.
    """
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx extra: pip install 'bramley-fastvit[onnx]'") from e
    fused = reparameterize(model)
    for module in fused.modules():  # the core attention custom op has no ONNX translation; SDPA does
        if isinstance(module, Attention):
            module.use_core_op = False
    x = torch.randn(batch_size, fused.in_chans, image_size, image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the TorchScript-based exporter: an order of magnitude faster than the dynamo one for this static graph
    torch.onnx.export(
        fused, (x,), str(path), input_names=["image"], output_names=["logits"], opset_version=opset, dynamo=False
    )
    info: dict[str, Any] = {"path": str(path), "image_size": image_size}
    if check:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("the ONNX check needs onnxruntime: pip install 'bramley-fastvit[onnx]'") from e
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (ort_out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = fused(x)
        info["max_abs_diff"] = float((torch.from_numpy(ort_out) - ref).abs().max())
    return info
