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

    Tensor arguments and outputs get a dynamic first (batch) dimension; a model returning a tuple of tensors (e.g.
    one logits tensor per Matryoshka size) gets outputs ``output0``, ``output1``, ... Modules with a ``use_core_op``
    switch run their attention through PyTorch's SDPA, which ONNX can express (bramley's Triton custom ops have no
    ONNX translation).
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
    with torch.no_grad():
        count = len(_outputs(model(*args)))
    outputs = [f"output{i}" if count > 1 else "output" for i in range(count)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = dict(
        input_names=names,
        output_names=outputs,
        dynamic_axes={n: {0: "batch"} for n in (*names, *outputs)},
        opset_version=opset,
    )
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter: an order of magnitude faster than the dynamo one for these static graphs
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, tuple(args), str(path), dynamo=False, **options)
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, inputs: ExampleInputs) -> float:
    """The largest difference between onnxruntime's and PyTorch's outputs on ``inputs`` (every output), relative
    to the largest PyTorch output (at least 1)."""
    with optional_import("export", "the ONNX check"):
        import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args, _ = inputs
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    got = session.run(None, feeds)
    with torch.no_grad():
        ref = _outputs(model.eval()(*args))
    if len(got) != len(ref):
        raise ValueError(f"the ONNX file has {len(got)} outputs, the model {len(ref)}")
    scale = max(1.0, *(float(r.abs().max()) for r in ref))
    return max(float((torch.from_numpy(g) - r).abs().max()) for g, r in zip(got, ref)) / scale


def _outputs(out: Any) -> list[torch.Tensor]:
    """A model's output as a list of tensors (one tensor, or a tuple / list of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list) and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise ValueError(f"ONNX export needs a tensor or a tuple of tensors as output, got {type(out).__name__}")
