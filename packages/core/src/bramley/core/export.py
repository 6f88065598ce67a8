"""ONNX export of any registered model, checked against PyTorch with onnxruntime (``bramley-core[export]``)."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ._optional import optional_import
from .registry import ExampleInputs

__all__ = ["check_onnx", "export_onnx"]


def export_onnx(model: nn.Module, path: str | os.PathLike, inputs: ExampleInputs, opset: int = 17) -> Path:
    """Export ``model`` (a copy, in eval mode) to the ONNX file ``path`` for ``inputs``; returns the path.

    Tensor arguments get a dynamic first (batch) dimension. Modules with a ``use_core_op`` switch run their
    attention through PyTorch's SDPA, which ONNX can express (bramley's Triton custom ops have no ONNX translation).
    """
    with optional_import("export", "ONNX export"):
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if hasattr(module, "use_core_op"):
            module.use_core_op = False
    args, kwargs = inputs
    if kwargs:
        raise ValueError(f"ONNX export takes positional inputs only, got keyword inputs {sorted(kwargs)}")
    names = [f"input{i}" if len(args) > 1 else "input" for i in range(len(args))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = dict(
        input_names=names,
        output_names=["output"],
        dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
        opset_version=opset,
    )
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter: an order of magnitude faster than the dynamo one for these static graphs
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, tuple(args), str(path), dynamo=False, **options)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, inputs: ExampleInputs) -> float:
    """The largest difference between onnxruntime's and PyTorch's outputs on ``inputs``, relative to the largest
    PyTorch output (at least 1)."""
    with optional_import("export", "the ONNX check"):
        import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args, _ = inputs
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    (got,) = session.run(None, feeds)
    with torch.no_grad():
        ref = model.eval()(*args)
    scale = max(1.0, float(ref.abs().max()))
    return float((torch.from_numpy(got) - ref).abs().max()) / scale
