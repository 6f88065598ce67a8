"""Memory layout for running conv nets: channels_last, the layout the CPU convolutions (oneDNN) run fastest in.

A convolution whose weight is in channels_last memory format runs in channels_last whatever the input's layout and
returns a channels_last output, so converting the weights is enough: inputs straight from a data loader (NCHW) are
converted inside the first convolution. Measured on the 2-core development CPU (packages/mobileone/BENCHMARKS.md):
MobileOne's fused models run 1.32-1.69x faster with channels_last weights than in NCHW at batch 16 (1.09-1.26x at
batch 1, one thread), timm's the same; the outputs differ from NCHW's only by float rounding (another summation
order).

For inference only. Training in channels_last on CPU can corrupt memory with torch's bundled oneDNN: the weight
gradient of a 1x1 convolution with stride > 1 and fewer than 16 input channels per group (``jit_1x1``
``backward_weights`` on nhwc) writes past its workspace (oneDNN issue 6035, open; measured here with torch
2.15.0: a 3 -> 12 channel 1x1 stride-2 convolution on 64x64 inputs aborts with "corrupted double-linked list" in the
first few steps, NCHW runs clean). MobileOne's and FastViT's stems have such a branch (``conv_scale``), so
:func:`channels_last_inference` works under ``torch.no_grad()``, where no weight gradient is computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

__all__ = ["channels_last_inference"]


@contextlib.contextmanager
def channels_last_inference(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` with its 4-D parameters (convolution weights) in channels_last, without autograd.

    Inside the block every 4-D parameter holds a channels_last copy of its values and gradients are off
    (``torch.no_grad()``); on exit each parameter gets its original tensor back, so the model leaves exactly as it
    came in (same layout, same values). Consequences of the copies: an in-place change to a weight inside the block
    is dropped on exit, and parameters that shared storage do not share it inside. Parameters that are not plain
    strided tensors (uninitialized lazy parameters, tensor subclasses such as DTensor, sparse or mkldnn tensors) are
    left as they are, and a model without 4-D parameters runs unchanged. Yields ``model``.
    """
    params = [p for p in model.parameters() if _plain(p) and p.dim() == 4]
    originals = [p.data for p in params]
    try:
        for p in params:
            p.data = p.data.to(memory_format=torch.channels_last)  # restrides 1x1 and depthwise kernels too
        with torch.no_grad():
            yield model
    finally:
        for p, original in zip(params, originals):
            p.data = original


def _plain(p: nn.Parameter) -> bool:
    """A materialised, strided, plain ``torch.Tensor`` parameter (what ``.to(memory_format=...)`` can restride)."""
    uninitialized = isinstance(p, nn.parameter.UninitializedParameter)
    return not uninitialized and type(p.data) is torch.Tensor and p.layout is torch.strided
