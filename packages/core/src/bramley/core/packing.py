"""Variable-length sequences <-> packed tensors, document offsets, bin packing and token-budget batching.

The packed layout is the one :func:`bramley.core.ops.attention` takes: tokens of all documents concatenated along
the first dimension, with int32 ``cu_seqlens`` (``batch + 1`` offsets). Typical use::

    packed, cu_seqlens, max_seqlen = pack(padded, lengths=lengths)        # (total, ...) from (batch, seq, ...)
    out = attention(q, k, v, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
    padded_out = unpack(out, cu_seqlens, seq_len=padded.shape[1])         # back to (batch, seq, ...), zeros padded
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .ops._gather import _gather_rows_trusted, _scatter_rows_trusted

__all__ = [
    "BinPacking",
    "TokenBudgetBatchSampler",
    "best_fit_decreasing",
    "bucket_by_length",
    "cu_seqlens_from_lengths",
    "document_ids",
    "document_mean",
    "lengths_from_cu_seqlens",
    "next_power_of_two",
    "pack",
    "position_ids",
    "sampler_replicas",
    "unpack",
    "window_segments",
]


# ----------------------------------------------------------------------------------------------- offsets/positions
def _as_lengths(lengths: torch.Tensor | Sequence[int] | np.ndarray, device=None) -> torch.Tensor:
    t = torch.as_tensor(lengths, device=device)
    if t.numel() == 0 and not isinstance(lengths, torch.Tensor):
        t = t.long()  # an empty Python list would otherwise become float32
    if t.dim() != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(t.shape)}")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise TypeError(f"lengths must be integers, got {t.dtype}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {int(t.min())}")
    return t.long()


def cu_seqlens_from_lengths(lengths: torch.Tensor | Sequence[int], device: torch.device | str | None = None):
    """int32 offsets ``[0, l0, l0 + l1, ...]`` (``batch + 1`` entries) of documents with the given lengths."""
    lengths = _as_lengths(lengths, device)
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=cu[1:])
    if lengths.numel() and int(cu[-1]) > torch.iinfo(torch.int32).max:
        raise OverflowError(f"{int(cu[-1])} tokens do not fit int32 cu_seqlens")
    return cu.to(torch.int32)


def lengths_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Document lengths (int64) from offsets."""
    return (cu_seqlens[1:] - cu_seqlens[:-1]).long()


def document_ids(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """The document of every packed token: ``(total,)`` int64, ``i`` on tokens ``cu_seqlens[i]:cu_seqlens[i + 1]``.

    What per-document operations on packed tensors index with (one random draw per document, a per-document sum).
    Pass ``total`` (the number of packed tokens, e.g. ``x.shape[0]``) when known: ``cu_seqlens`` is then never read on
    the host. Empty documents own no tokens. On CPU in eager mode the ids are one single-threaded numpy ``repeat``
    (see :func:`_token_rows`), after checking that ``cu_seqlens`` runs from 0 to ``total`` without decreasing; on other
    devices and while tracing or compiling, a ``searchsorted`` whose output shape does not depend on tensor values
    (no host sync, no check: :func:`bramley.core.ops.attention` validates the same offsets).
    """
    _check_offsets(cu_seqlens)
    if total is None:
        total = int(cu_seqlens[-1])
    if cu_seqlens.device.type == "cpu" and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
        offsets = cu_seqlens.numpy()
        lengths = np.diff(offsets)
        if offsets[0] != 0 or offsets[-1] != total:
            raise ValueError(f"cu_seqlens must run from 0 to the number of packed tokens ({total}), "
                             f"got {int(offsets[0])}..{int(offsets[-1])}")  # fmt: skip
        if lengths.size and lengths.min() < 0:
            raise ValueError("cu_seqlens must be non-decreasing")
        return torch.from_numpy(np.repeat(np.arange(lengths.size, dtype=np.int64), lengths))
    return _document_ids_static(cu_seqlens, total)


def _document_ids_static(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """:func:`document_ids` as one ``searchsorted`` over the token indices: shape ``(total,)`` whatever the offsets."""
    tokens = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:].contiguous(), tokens, right=True)


def position_ids(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Position of every packed token within its own document: ``(total,)`` int64, restarting at 0 per document.

    ``total`` is the number of packed tokens; give it when known to save a host sync (see :func:`document_ids`).
    """
    _check_offsets(cu_seqlens)
    if total is None:
        total = int(cu_seqlens[-1])
    starts = cu_seqlens.long()[document_ids(cu_seqlens, total)]
    return torch.arange(total, device=cu_seqlens.device) - starts


def document_mean(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Mean over each document's own tokens of packed ``x (total, ...)``: ``(num_docs, ...)`` (mean pooling).

    Differentiable in ``x``. The sum runs in token order (``index_add_``) in ``x``'s dtype, or in float32 for
    float16/bfloat16 inputs, and is divided by the document length; an empty document's mean is NaN, like
    ``torch.mean`` of an empty slice. No host sync: the sizes come from the shapes of ``x`` and ``cu_seqlens``.
    """
    if not x.is_floating_point() or x.dim() < 1:
        raise TypeError(f"x must be a floating-point (total, ...) tensor, got {x.dtype} {tuple(x.shape)}")
    _check_offsets(cu_seqlens)
    accumulate = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    num_docs, total = cu_seqlens.numel() - 1, x.shape[0]
    index = document_ids(cu_seqlens, total).to(x.device)
    sums = x.new_zeros((num_docs, *x.shape[1:]), dtype=accumulate).index_add_(0, index, x.to(accumulate))
    lengths = lengths_from_cu_seqlens(cu_seqlens).to(x.device, accumulate)
    return (sums / lengths.view(num_docs, *(1,) * (x.dim() - 1))).to(x.dtype)


def _check_offsets(cu_seqlens: torch.Tensor) -> None:
    """Dtype and shape of ``cu_seqlens`` (no values: reading them would sync with the device)."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens must be an int32/int64 tensor, got {getattr(cu_seqlens, 'dtype', cu_seqlens)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
        raise ValueError(f"cu_seqlens must be 1-D with num_docs + 1 entries, got shape {tuple(cu_seqlens.shape)}")


def window_segments(cu_seqlens: torch.Tensor, window: int, shift: int = 0) -> torch.Tensor:
    """Split every document into local attention windows, as new ``cu_seqlens`` for varlen attention.

    Windows are ``window`` tokens long and start at positions ``p`` with ``(p - shift) % window == 0``, so with
    ``0 < shift < window`` the first window of a document is ``shift`` tokens long: the shifted windows of Swin /
    ByteFormer, without the cyclic roll and its mask (tokens at the two ends never share a window either way).
    The last window of a document may be shorter. ``attention(q, k, v, cu_seqlens=window_segments(cu, w, s))`` is
    then windowed attention over the original packed tokens.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 0 <= shift < window:
        raise ValueError(f"shift must be in [0, window), got {shift}")
    lengths = lengths_from_cu_seqlens(cu_seqlens).cpu()
    starts = cu_seqlens[:-1].long().cpu()
    bounds = [torch.zeros(1, dtype=torch.int64)]
    for start, length in zip(starts.tolist(), lengths.tolist()):
        if length == 0:
            continue
        first = shift if shift else window
        cuts = torch.tensor(range(first, length, window), dtype=torch.int64)
        bounds.append(start + torch.cat([cuts, torch.tensor([length])]))
    return torch.cat(bounds).to(torch.int32).to(cu_seqlens.device)


# ----------------------------------------------------------------------------------------------- pack / unpack
def _mask_lengths(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if mask.dtype != torch.bool or mask.shape != shape[:2]:
        raise ValueError(f"mask must be a bool (batch, seq) = {tuple(shape[:2])} tensor, got {mask.dtype} "
                         f"{tuple(mask.shape)}")  # fmt: skip
    return mask.sum(1)


def _token_rows(lengths: torch.Tensor, seq: int) -> torch.Tensor:
    """Row of every packed token in the flattened ``(batch * seq, ...)`` padded tensor (documents left-aligned)."""
    if lengths.device.type == "cpu":
        # numpy: one thread, no OpenMP regions. On a busy machine every parallel torch op over the tokens can wait a
        # whole scheduler slice for its second thread; with the torch ops below that cost more than the copy itself.
        lens = lengths.numpy()
        starts = np.arange(lens.size, dtype=np.int64) * seq - (np.cumsum(lens) - lens)
        rows = np.repeat(starts, lens)
        rows += np.arange(rows.size, dtype=np.int64)
        return torch.from_numpy(rows)
    starts = torch.arange(lengths.numel(), device=lengths.device) * seq - (torch.cumsum(lengths, 0) - lengths)
    total = int(lengths.sum())
    return torch.repeat_interleave(starts, lengths, output_size=total) + torch.arange(total, device=lengths.device)


def _mask_rows(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Flat positions of the True entries of a (batch, seq) mask, on ``device``."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy())).to(device)
    return torch.nonzero(mask.reshape(-1)).squeeze(1).to(device)


def pack(
    padded: torch.Tensor,
    *,
    lengths: torch.Tensor | Sequence[int] | None = None,
    mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Gather the valid tokens of a padded ``(batch, seq, ...)`` tensor into ``(total, ...)``.

    Give exactly one of ``lengths`` (document ``b`` is ``padded[b, :lengths[b]]``) or a bool ``mask`` of shape
    ``(batch, seq)`` (its True tokens, in order, any pattern). Any dtype, kept; differentiable (the backward is an
    :func:`unpack` of the gradient). One row gather: Triton on CUDA, ``index_select`` on CPU.

    Returns:
        ``(packed, cu_seqlens, max_seqlen)``.
    """
    if padded.dim() < 2:
        raise ValueError(f"padded must be (batch, seq, ...), got shape {tuple(padded.shape)}")
    if (lengths is None) == (mask is None):
        raise ValueError("give exactly one of lengths or mask")
    batch, seq = padded.shape[:2]
    if mask is not None:
        lens = _mask_lengths(mask, padded.shape)
        index = _mask_rows(mask, padded.device)
    else:
        lens = _as_lengths(lengths, padded.device)
        if lens.numel() != batch:
            raise ValueError(f"got {lens.numel()} lengths for a batch of {batch}")
        if lens.numel() and int(lens.max()) > seq:
            raise ValueError(f"a length ({int(lens.max())}) exceeds the padded sequence length {seq}")
        index = _token_rows(lens, seq)
    cu_seqlens = cu_seqlens_from_lengths(lens)
    max_seqlen = int(lens.max()) if lens.numel() else 0
    flat = padded.reshape(batch * seq, *padded.shape[2:])
    packed = _gather_rows_trusted(flat, index, backend=backend)
    return packed, cu_seqlens, max_seqlen


def unpack(
    packed: torch.Tensor,
    cu_seqlens: torch.Tensor | None = None,
    seq_len: int | None = None,
    *,
    mask: torch.Tensor | None = None,
    fill: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Scatter packed ``(total, ...)`` tokens back to a padded ``(batch, seq, ...)`` tensor (padding = ``fill``).

    Give ``cu_seqlens`` (documents left-aligned, ``seq_len`` defaults to the longest) or the ``mask`` that
    :func:`pack` used. Any dtype, kept (``fill`` must be exact in it); differentiable (the backward is a
    :func:`pack` of the gradient). One Triton gather over the output on CUDA (padding is written, not pre-filled);
    ``new_full`` + ``index_copy_`` on CPU.
    """
    if (cu_seqlens is None) == (mask is None):
        raise ValueError("give exactly one of cu_seqlens or mask")
    if packed.dim() < 1:
        raise ValueError("packed must be (total, ...), got a scalar")
    total = packed.shape[0]
    if mask is not None:
        if mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError(f"mask must be a bool (batch, seq) tensor, got {mask.dtype} {tuple(mask.shape)}")
        if int(mask.sum()) != total:
            raise ValueError(f"mask selects {int(mask.sum())} tokens but packed has {total}")
        batch, seq = mask.shape
        index = _mask_rows(mask, packed.device)
    else:
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise ValueError(f"cu_seqlens must be 1-D with batch + 1 entries, got shape {tuple(cu_seqlens.shape)}")
        if int(cu_seqlens[0]) != 0:
            raise ValueError(f"cu_seqlens must start at 0, got {int(cu_seqlens[0])}")
        if int(cu_seqlens[-1]) != total:
            raise ValueError(f"cu_seqlens covers {int(cu_seqlens[-1])} tokens but packed has {total}")
        lens = lengths_from_cu_seqlens(cu_seqlens).to(packed.device)
        if lens.numel() and int(lens.min()) < 0:
            raise ValueError("cu_seqlens must be non-decreasing")
        longest = int(lens.max()) if lens.numel() else 0
        seq = longest if seq_len is None else seq_len
        if longest > seq:
            raise ValueError(f"seq_len={seq} is shorter than the longest document ({longest})")
        batch = lens.numel()
        index = _token_rows(lens, seq)
    out = _scatter_rows_trusted(packed, index, batch * seq, fill, backend=backend)
    return out.view(batch, seq, *packed.shape[1:])


# ----------------------------------------------------------------------------------------------- bin packing
@dataclass(frozen=True)
class BinPacking:
    """Result of :func:`best_fit_decreasing`: ``bins[i]`` lists item indices; ``fill_ratio`` = tokens / capacity."""

    bins: list[list[int]]
    budget: int
    tokens: int

    @property
    def fill_ratio(self) -> float:
        return self.tokens / (len(self.bins) * self.budget) if self.bins else 1.0

    def __len__(self) -> int:
        return len(self.bins)


def best_fit_decreasing(lengths: Sequence[int] | np.ndarray | torch.Tensor, budget: int) -> BinPacking:
    """Pack items into bins of ``budget`` tokens: longest first, each into the fullest bin it still fits (BFD).

    Exact best-fit decreasing. Items of equal length are taken in input order; among bins with equal room, the one
    that reached that room last is filled first. Zero-length items go into the first bin (or a bin of their own if
    there is none). The work in Python is per distinct length and per bin touched, not per item (see
    :func:`_best_fit_slots`); sorting and grouping the items are numpy passes.

    Raises:
        ValueError: an item is longer than the budget, or the budget is not positive.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
        raise ValueError(f"budget must be a positive int, got {budget!r}")
    budget = int(budget)
    lens = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths)
    if lens.ndim != 1 or (lens.size and not np.issubdtype(lens.dtype, np.integer)):
        raise ValueError(f"lengths must be a 1-D sequence of ints, got dtype {lens.dtype} shape {lens.shape}")
    lens = lens.astype(np.int64, copy=False)
    if lens.size and lens.min() < 0:
        raise ValueError(f"lengths must be >= 0, got {int(lens.min())}")
    if lens.size and lens.max() > budget:
        raise ValueError(f"item {int(lens.argmax())} has length {int(lens.max())} > budget {budget}")
    longest = int(lens.max()) if lens.size else 0
    order = _argsort_stable(longest - lens)  # longest first, equal lengths in input order
    sorted_lens = lens[order]
    placed = int(np.count_nonzero(sorted_lens))
    starts = np.flatnonzero(np.diff(sorted_lens[:placed], prepend=budget + 1))  # first item of each length
    run_lengths, run_counts = sorted_lens[starts].tolist(), np.diff(starts, append=placed).tolist()
    slot_bins, slot_items, num_bins = _best_fit_slots(run_lengths, run_counts, budget)
    # Slot s takes the next slot_items[s] items of `order`; list each bin's items in placement order.
    by_bin = _argsort_stable(slot_bins)
    items = slot_items[by_bin]
    first = (np.cumsum(slot_items) - slot_items)[by_bin]
    flat = order[np.repeat(first - (np.cumsum(items) - items), items) + np.arange(placed)].tolist()
    ends = np.cumsum(np.bincount(slot_bins, weights=slot_items, minlength=num_bins).astype(np.int64)).tolist()
    with _gc_paused():  # a list per bin: the cyclic GC would otherwise rescan them all as they are made
        bins = [flat[start:end] for start, end in zip([0, *ends[:-1]], ends)]
    if placed < lens.size:
        if not bins:
            bins.append([])
        bins[0] += order[placed:].tolist()
    return BinPacking(bins=bins, budget=budget, tokens=int(lens.sum()))


def _best_fit_slots(lengths: list[int], counts: list[int], budget: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Best-fit decreasing of ``counts[i]`` items of length ``lengths[i]`` (lengths decreasing, > 0), as slots.

    A slot is a bin and how many consecutive items (in sorted order) it takes. A run of items of one length ``L``
    fills the bins with room >= ``L`` in ascending room order, each taking ``room // L`` items (its room stays the
    least that fits until it is below ``L``), then new bins: one step per bin touched, not per item. The bins with
    equal room are a stack: the last to reach a room leaves it first.

    Returns:
        ``(slot_bins, slot_items, num_bins)``: int64 arrays in placement order, and the number of bins opened.
    """
    smallest = lengths[-1] if lengths else 1
    fitting: list[tuple[int, list[int]]] = []  # rooms >= the current length and their bins, least room last
    waiting: dict[int, list[int]] = {}  # rooms in [smallest, current length) and their bins
    waiting_heap: list[int] = []  # -room for every room in `waiting`
    slot_bins: list[int] = []
    run_slots: list[int] = []  # the slots come in runs: run_slots[j] slots of run_items[j] items each
    run_items: list[int] = []
    num_bins = 0
    for length, left in zip(lengths, counts):
        while waiting_heap and -waiting_heap[0] >= length:
            room = -heapq.heappop(waiting_heap)
            fitting.append((room, waiting.pop(room)))
        while left:
            if not fitting:  # no bin fits: open as many as the rest of the run needs
                opened = -(-left // (budget // length))
                fitting.append((budget, list(range(num_bins + opened - 1, num_bins - 1, -1))))
                num_bins += opened
            room, stack = fitting[-1]
            per_bin = room // length
            full = min(len(stack), left // per_bin)
            if full:
                taken = stack[len(stack) - full :]
                del stack[len(stack) - full :]
                taken.reverse()
                slot_bins += taken
                run_slots.append(full)
                run_items.append(per_bin)
                left -= full * per_bin
                rest = room - per_bin * length  # below `length`: waits for shorter items
                if rest >= smallest:
                    if rest in waiting:
                        waiting[rest] += taken
                    else:
                        waiting[rest] = taken
                        heapq.heappush(waiting_heap, -rest)
            if left and stack:  # fewer than per_bin items left: all into the next bin of this room
                bin_id = stack.pop()
                slot_bins.append(bin_id)
                run_slots.append(1)
                run_items.append(left)
                if not stack:
                    fitting.pop()
                fitting.append((room - left * length, [bin_id]))  # still fits `length`, below every other room
                left = 0
            elif not stack:
                fitting.pop()
    slot_items = np.repeat(np.asarray(run_items, dtype=np.int64), run_slots)
    return np.asarray(slot_bins, dtype=np.int64), slot_items, num_bins


def _argsort_stable(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integer keys: numpy's radix sort on 16-bit digits (one or two passes)."""
    top = int(keys.max()) if keys.size else 0
    if top >= 1 << 32:
        return np.argsort(keys, kind="stable")
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    if top < 1 << 16:
        return low
    return low[np.argsort((keys[low] >> 16).astype(np.uint16), kind="stable")]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector (if it was on) while many container objects are created."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ----------------------------------------------------------------------------------------------- buckets / sampler
def next_power_of_two(length: int) -> int:
    """Smallest power of two >= ``length`` (1 for 0 and 1)."""
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return 1 << max(0, int(length) - 1).bit_length()


def bucket_by_length(
    lengths: Sequence[int] | np.ndarray | torch.Tensor, min_bucket: int = 1, max_bucket: int | None = None
) -> dict[int, list[int]]:
    """Group item indices by power-of-two length bucket: item ``i`` goes to ``max(min_bucket, 2^ceil(log2 l_i))``.

    Raises:
        ValueError: an item is longer than ``max_bucket`` (it would have to be truncated).
    """
    if min_bucket < 1 or min_bucket & (min_bucket - 1):
        raise ValueError(f"min_bucket must be a power of two, got {min_bucket}")
    if max_bucket is not None and (max_bucket < min_bucket or max_bucket & (max_bucket - 1)):
        raise ValueError(f"max_bucket must be a power of two >= min_bucket, got {max_bucket}")
    lens = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths, dtype=np.int64)
    if lens.size and lens.min() < 0:
        raise ValueError(f"lengths must be >= 0, got {int(lens.min())}")
    if max_bucket is not None and lens.size and lens.max() > max_bucket:
        raise ValueError(f"item {int(lens.argmax())} has length {int(lens.max())} > max_bucket {max_bucket}")
    exps = np.ceil(np.log2(np.maximum(lens, 1))).astype(np.int64)
    # log2 rounding can be off by one for huge values; fix with exact integer checks.
    exps += (np.left_shift(1, exps) < lens).astype(np.int64)
    sizes = np.maximum(np.left_shift(1, exps), min_bucket)
    buckets: dict[int, list[int]] = {}
    for size in np.unique(sizes):
        buckets[int(size)] = np.flatnonzero(sizes == size).tolist()
    return buckets


def sampler_replicas(num_replicas: int | None = None, rank: int | None = None) -> tuple[int, int]:
    """``(num_replicas, rank)`` of a DDP-aware batch sampler: what is not given comes from the initialized process
    group (world size / rank), else ``(1, 0)``; an invalid pair is an error."""
    if num_replicas is None or rank is None:
        dist = torch.distributed
        ready = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if ready else 1)
        rank = rank if rank is not None else (dist.get_rank() if ready else 0)
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"invalid rank {rank} for {num_replicas} replicas")
    return num_replicas, rank


class TokenBudgetBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices whose lengths sum to at most ``max_tokens`` (BFD bins), sharded for DDP.

    With ``shuffle``, each epoch packs the items in a fresh order seeded by ``(seed, epoch)`` (call :meth:`set_epoch`,
    as with ``DistributedSampler``) and shuffles the bins: best-fit decreasing breaks ties between equal lengths in
    input order, so packing a dataset sorted by class once would fill every batch of equal-length files with one
    class. Without ``shuffle`` the bins are packed once, in dataset order. Rank ``r`` of ``R`` takes bins
    ``r, r + R, ...``; so every rank runs the same number of steps, the bin list is made divisible by ``R``: with
    ``drop_last`` the last bins are dropped, otherwise the first bins are repeated (like ``DistributedSampler``).
    The number of bins may differ by one or two between epochs (a different order packs a little differently).
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | torch.Tensor,
        max_tokens: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        num_replicas, rank = sampler_replicas(num_replicas, rank)
        self.lengths = np.array(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths)
        self.max_tokens = max_tokens
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self._packed: tuple[int, BinPacking] | None = None
        self.packing  # noqa: B018  (packs epoch 0 now: bad lengths or budget fail at construction)

    @property
    def packing(self) -> BinPacking:
        """The bins of the current epoch (packed once per epoch with ``shuffle``, once in all otherwise)."""
        key = self.epoch if self.shuffle else 0
        if self._packed is None or self._packed[0] != key:
            if self.shuffle:
                perm = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.lengths))
                packed = best_fit_decreasing(self.lengths[perm], self.max_tokens)
                bins = [perm[b].tolist() for b in packed.bins]
                packed = BinPacking(bins, packed.budget, packed.tokens)
            else:
                packed = best_fit_decreasing(self.lengths, self.max_tokens)
            self._packed = (key, packed)
        return self._packed[1]

    @property
    def num_batches(self) -> int:
        n = len(self.packing.bins)
        return n // self.num_replicas if self.drop_last else math.ceil(n / self.num_replicas)

    @property
    def fill_ratio(self) -> float:
        return self.packing.fill_ratio

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.packing.bins)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator).tolist()
        else:
            order = list(range(n))
        needed = self.num_batches * self.num_replicas
        order = order[:needed] if self.drop_last else (order * math.ceil(needed / max(n, 1)))[:needed]
        for i in order[self.rank :: self.num_replicas]:
            yield list(self.packing.bins[i])
