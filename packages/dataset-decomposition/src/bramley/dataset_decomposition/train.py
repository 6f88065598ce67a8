"""Losses, cost accounting and evaluation for training :class:`~.model.DDGPT` with the core trainer.

Batches (what ``loss_fn`` receives):

- **dense** ``(batch, L + 1)`` int64: a Dataset Decomposition batch (one bucket length ``L``) or a concat-and-chunk
  batch without document masking. Inputs are ``[:, :-1]``, targets ``[:, 1:]``, causal attention over each row.
- **document-masked** ``{"tokens": (batch, L + 1), "segments": (batch, L)}`` (what
  :class:`~.baseline.ConcatChunkDataset` yields with ``return_segments=True``): concat-and-chunk rows with the document
  number of every input position. They become ``cu_seqlens`` over the flattened inputs
  (:func:`~.baseline.segments_to_cu_seqlens`); the model runs packed varlen attention, so no token attends across a
  document boundary, and RoPE positions restart per document.

Cost accounting (all counts are for one training step, forward + backward, summed over the global batch):

- **tokens**: input tokens (= predicted targets).
- **attention FLOPs**: the score and value matmuls, the part that grows with sequence length. A causal sequence of
  ``l`` tokens has ``l (l + 1) / 2`` visible (query, key) pairs; each costs ``2 d`` FLOPs in ``q k^T`` and ``2 d`` in
  ``p v`` (``d`` = model width = heads x head size), so ``2 d l (l + 1)`` FLOPs per layer forward, times 3 for
  forward + backward, times ``depth``: ``attention_flops = 6 * depth * d * sum_sequences l (l + 1)``. The sequences
  are the rows (dense batches) or the documents (document-masked batches). This counts useful pairs only: the CPU
  reference kernel also computes the masked half, the Triton kernel skips most of it.
- **model FLOPs**: ``6 * N`` per token with ``N`` the parameters without the input embedding table (the usual
  ``6 N D`` rule: the weight matmuls, the output head included), plus the attention FLOPs above.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.packing import lengths_from_cu_seqlens

from .baseline import segments_to_cu_seqlens

__all__ = [
    "TrainingMeter",
    "attention_flops",
    "batch_sequence_lengths",
    "evaluate_lm",
    "lm_loss_fn",
    "loss_by_position",
    "model_flops_per_token",
    "split_batch",
]


# ---------------------------------------------------------------------------------------------------- accounting
def attention_flops(lengths: Sequence[int] | torch.Tensor, dim: int, depth: int, *, training: bool = True) -> int:
    """Causal attention FLOPs of sequences of the given lengths: ``(6 or 2) * depth * dim * sum l (l + 1)``."""
    lengths = torch.as_tensor(lengths, dtype=torch.int64)
    pairs2 = int((lengths * (lengths + 1)).sum())  # twice the number of visible (query, key) pairs
    return (3 if training else 1) * 2 * depth * dim * pairs2


def model_flops_per_token(model: nn.Module, *, training: bool = True) -> int:
    """``6 N`` (training) or ``2 N`` (forward) FLOPs per token, ``N`` = parameters without the input embedding."""
    n = (
        model.num_parameters(embedding=False)
        if hasattr(model, "num_parameters")
        else sum(p.numel() for p in model.parameters())
    )
    return (6 if training else 2) * n


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int | None]:
    """``(inputs, targets, cu_seqlens, max_seqlen)`` of a batch; the last two are ``None`` for dense batches."""
    if isinstance(batch, Mapping):
        if "tokens" not in batch or "segments" not in batch:
            raise TypeError(f"a document-masked batch needs 'tokens' and 'segments', got keys {sorted(batch)}")
        tokens, segments = batch["tokens"], batch["segments"]
    elif isinstance(batch, torch.Tensor):
        tokens, segments = batch, None
    else:
        raise TypeError(f"batch must be a (batch, L + 1) tensor or a dict with tokens/segments, got {type(batch)}")
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be (batch, L + 1) with L >= 1, got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point:
        raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    if segments is None:
        return inputs, targets, None, None
    if segments.shape != inputs.shape:
        raise ValueError(f"segments {tuple(segments.shape)} must match the inputs {tuple(inputs.shape)}")
    cu_seqlens, max_seqlen = segments_to_cu_seqlens(segments)
    return inputs, targets, cu_seqlens, max_seqlen


def batch_sequence_lengths(batch: Any) -> torch.Tensor:
    """Lengths of the attention sequences of a batch: the rows (dense) or the documents (document-masked)."""
    inputs, _, cu_seqlens, _ = split_batch(batch)
    if cu_seqlens is None:
        return torch.full((inputs.shape[0],), inputs.shape[1], dtype=torch.int64)
    return lengths_from_cu_seqlens(cu_seqlens.cpu())


class TrainingMeter:
    """Trainer callback counting tokens, attention / model FLOPs and training wall-clock, with resumable state.

    ``loss_fn`` (from :func:`lm_loss_fn`) reports each training micro-batch with :meth:`add_batch`; the trainer calls
    the meter after every optimizer step, which closes the step. Counts are per process; :meth:`totals` multiplies
    them by the data-parallel world size. Wall-clock runs from the first training batch (evaluation time spent in
    other callbacks can be excluded with :meth:`pause`).

    Args:
        dim, depth: the model's width and depth (for the attention FLOPs).
        flops_per_token: ``6 N`` (see :func:`model_flops_per_token`).
        world_size: data-parallel processes.
    """

    def __init__(self, dim: int, depth: int, flops_per_token: int, world_size: int = 1) -> None:
        self.dim, self.depth, self.flops_per_token, self.world_size = dim, depth, flops_per_token, world_size
        self.tokens = 0
        self.attention_flops = 0
        self.steps = 0
        self.elapsed = 0.0
        self.seq_len_tokens: dict[int, int] = {}  # attention length -> tokens trained in sequences of that length
        self._start: float | None = None

    @classmethod
    def for_model(cls, model: nn.Module, world_size: int = 1) -> TrainingMeter:
        return cls(model.dim, model.depth, model_flops_per_token(model), world_size)

    def start(self) -> None:
        """Start the clock if it is stopped (called before each training forward)."""
        if self._start is None:
            self._start = time.perf_counter()

    def add_batch(self, lengths: torch.Tensor) -> None:
        """Count one training micro-batch whose attention sequences have these lengths."""
        self.start()
        self.tokens += int(lengths.sum())
        self.attention_flops += attention_flops(lengths, self.dim, self.depth)
        for length, count in zip(*torch.unique(lengths, return_counts=True)):
            self.seq_len_tokens[int(length)] = self.seq_len_tokens.get(int(length), 0) + int(length * count)

    def pause(self) -> None:
        """Stop the clock (e.g. before an evaluation); the next training batch restarts it."""
        if self._start is not None:
            self.elapsed += time.perf_counter() - self._start
            self._start = None

    def __call__(self, trainer: Any = None) -> None:
        self.steps += 1
        if self._start is not None:
            now = time.perf_counter()
            self.elapsed += now - self._start
            self._start = now

    def totals(self) -> dict[str, float]:
        """Global counts so far: ``steps``, ``tokens``, ``attention_flops``, ``model_flops``, ``wall_s``."""
        tokens = self.tokens * self.world_size
        attn = self.attention_flops * self.world_size
        return {
            "steps": self.steps,
            "tokens": tokens,
            "attention_flops": attn,
            "model_flops": tokens * self.flops_per_token + attn,
            "wall_s": self.elapsed,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "attention_flops": self.attention_flops,
            "steps": self.steps,
            "elapsed": self.elapsed,
            "seq_len_tokens": dict(self.seq_len_tokens),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tokens, self.attention_flops = int(state["tokens"]), int(state["attention_flops"])
        self.steps, self.elapsed = int(state["steps"]), float(state["elapsed"])
        self.seq_len_tokens = {int(k): int(v) for k, v in state["seq_len_tokens"].items()}
        self._start = None


# ------------------------------------------------------------------------------------------------------------ loss
def _token_losses(model: nn.Module, batch: Any, z_loss: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross entropy ``(batch, L)`` and the mean z-loss term of a dense or document-masked batch."""
    inputs, targets, cu_seqlens, max_seqlen = split_batch(batch)
    if cu_seqlens is None:
        logits = model(inputs)
    else:
        logits = model(inputs.reshape(-1), cu_seqlens=cu_seqlens, max_seqlen=max_seqlen).view(*inputs.shape, -1)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # the softmax in float32 under AMP
    losses = F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), reduction="none").view(targets.shape)
    z = logits.logsumexp(-1).pow(2).mean() * z_loss if z_loss else logits.new_zeros(())
    return losses, z


def lm_loss_fn(z_loss: float = 0.0, meter: TrainingMeter | None = None) -> Callable[[nn.Module, Any], Any]:
    """``loss_fn(model, batch) -> (loss, {"seq_len": L})`` for the core trainer: mean next-token cross entropy.

    Args:
        z_loss: coefficient of OpenLM's z-loss ``mean(logsumexp(logits)^2)`` (the paper's runs: 1e-4).
        meter: a :class:`TrainingMeter` told about every training batch (not evaluation batches).
    """
    if z_loss < 0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss}")

    def loss_fn(model: nn.Module, batch: Any):
        if meter is not None and model.training:
            meter.start()
        losses, z = _token_losses(model, batch, z_loss)
        if meter is not None and model.training:
            meter.add_batch(batch_sequence_lengths(batch))
        return losses.mean() + z, {"seq_len": float(losses.shape[1])}

    return loss_fn


# ------------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate_lm(model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """Token-weighted mean loss (nats/token) and bits per token over dense or document-masked batches."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            losses, _ = _token_losses(model, batch)
            total += float(losses.sum())
            count += losses.numel()
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate_lm got no batches")
    loss = total / count
    return {"loss": loss, "bits_per_token": loss / math.log(2), "tokens": float(count)}


@torch.no_grad()
def loss_by_position(model: nn.Module, rows: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Mean loss at each context position ``0 .. L - 1`` over ``rows`` ``(n, L + 1)`` (each row one document span).

    Position ``i`` is the prediction of token ``i + 1`` from the ``i + 1`` tokens before it: how well the model uses
    long context.
    """
    if rows.dim() != 2 or rows.shape[0] == 0:
        raise ValueError(f"rows must be a non-empty (n, L + 1) tensor, got shape {tuple(rows.shape)}")
    was_training = model.training
    model.eval()
    total = torch.zeros(rows.shape[1] - 1, dtype=torch.float64)
    device = next(model.parameters()).device
    try:
        for start in range(0, rows.shape[0], batch_size):
            losses, _ = _token_losses(model, rows[start : start + batch_size].to(device))
            total += losses.double().sum(0).cpu()
    finally:
        model.train(was_training)
    return total / rows.shape[0]
