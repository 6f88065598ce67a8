"""``backend="auto"`` of :func:`bramley.core.ops.attention`: the backend measured fastest for the case at hand.

On CUDA the choice is a lookup in ``auto_table.json`` (next to this file), which ``tools/bench_attention.py
--auto-table`` writes from a GPU run: per device capability, dtype, head dim and feature (full, causal, window; GQA or
not), the backend with the shortest forward+backward. Cases the table does not hold get ``flash`` where it runs
(fp16/bf16, head dims that FlashAttention takes) and ``sdpa`` otherwise; the Triton kernels are chosen only through a
measured row, so no CUDA work goes to them before they have been timed on a GPU. On CPU ``auto`` is ``sdpa``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from ._flash_flex import flash_available

__all__ = ["TABLE_PATH", "auto_backend", "feature_of", "table_key"]

TABLE_PATH = Path(__file__).with_name("auto_table.json")


@functools.cache
def _table() -> dict[str, str]:
    return json.loads(TABLE_PATH.read_text())["choices"]


def feature_of(window_left: int, window_right: int, gqa: bool) -> str:
    """``full``, ``causal`` or ``window``, with ``+gqa`` when key/value heads are fewer than query heads."""
    if window_left < 0 and window_right < 0:
        feature = "full"
    elif window_left < 0 and window_right == 0:
        feature = "causal"
    else:
        feature = "window"
    return feature + ("+gqa" if gqa else "")


def table_key(capability: tuple[int, int], dtype: torch.dtype, head_dim: int, feature: str) -> str:
    """The table's key of a case, e.g. ``sm90 bfloat16 d128 causal``."""
    return f"sm{capability[0]}{capability[1]} {str(dtype).removeprefix('torch.')} d{head_dim} {feature}"


def _flash_runs(q: torch.Tensor) -> bool:
    return flash_available() and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0


def auto_backend(q: torch.Tensor, k: torch.Tensor, window_left: int, window_right: int) -> str:
    """The backend ``auto`` runs for these inputs (validated) and window."""
    if not q.is_cuda:
        return "sdpa"
    feature = feature_of(window_left, window_right, k.shape[-2] != q.shape[-2])
    chosen = _table().get(table_key(torch.cuda.get_device_capability(q.device), q.dtype, q.shape[-1], feature))
    if chosen is not None and (chosen != "flash" or _flash_runs(q)):
        return chosen
    return "flash" if _flash_runs(q) else "sdpa"
