"""Hardness labels from the training history: which width each training sample should be routed to.

SHARCS (Salehi et al., Findings of EMNLP 2023, Sec. 3) measures how hard a sample is by what the network itself does
with it during training: the probability of the ground-truth class (``"probability"``, the paper's choice) or the
entropy of the prediction (``"entropy"``), recorded each epoch at the width the sample was trained at. Over the last
``window`` epochs, a sample belongs to the bucket of width ``w`` when every recorded value lies in ``w``'s range::

    thresholds = {0.25: (0.5, 1.0), 1.0: (0.0, 0.5)}    # confident samples -> quarter width, the rest -> full width

The router is trained on the multi-hot vector of all the buckets a sample is in (binary cross-entropy), and the
sample itself is trained at one of them: a sample in no bucket goes to full width, a sample in several to one of
them drawn at random (seeded). The first ``warmup_epochs`` epochs (at least ``window``: there is no history before)
train every sample at full width.

Rules for the ranges (checked by :func:`check_thresholds`, every error names the width at fault):

- every width of the model has a range and every range belongs to a width;
- a range ``(lo, hi)`` has ``lo < hi``; probabilities lie in ``[0, 1]``, entropies in ``[0, inf)``;
- a range is half-open, ``lo <= value < hi``, except that a range reaching the top of the scale (``hi >= 1`` for
  probabilities) includes it: a sample predicted with probability exactly 1 is easy, not "in no bucket" (the
  official code drops it to full width because its ranges are all half-open);
- ranges may overlap (the paper's main config does: a sample in the overlap gets both labels), but they must be
  ordered: a narrower width takes easier samples, so with probabilities both ends of the ranges must not increase as
  the width grows (with entropies, not decrease), and no two widths may share the same range (their labels could
  never differ).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from bramley.core.errors import ConfigError

__all__ = ["HARDNESS", "HardnessTracker", "assign_widths", "check_thresholds", "hardness_of"]

HARDNESS = ("probability", "entropy")
Hardness = Literal["probability", "entropy"]


def check_thresholds(
    thresholds: Mapping[Any, Sequence[float]], widths: Sequence[float], hardness: Hardness = "probability"
) -> dict[float, tuple[float, float]]:
    """Check ``{width: (lo, hi)}`` against the model's ``widths`` (see the module rules); returns it with float keys
    in the order of ``widths``.

    Raises:
        ConfigError: naming the width and the rule it breaks.
    """
    if hardness not in HARDNESS:
        raise ConfigError(f"hardness must be one of {HARDNESS}, got {hardness!r}")
    ranges: dict[float, tuple[float, float]] = {}
    for key, bounds in thresholds.items():
        try:
            width = float(key)
        except (TypeError, ValueError):
            raise ConfigError(f"threshold key {key!r} is not a width (a number in (0, 1])") from None
        if not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2:
            raise ConfigError(f"thresholds[{width:g}] must be a [low, high] pair, got {bounds!r}")
        lo, hi = (float(b) for b in bounds)
        if not (math.isfinite(lo) and (math.isfinite(hi) or hi == math.inf)) or not lo < hi:
            raise ConfigError(f"thresholds[{width:g}] = [{lo:g}, {hi:g}] needs low < high")
        top = 1.0 if hardness == "probability" else math.inf
        if lo < 0 or hi > top:
            scale = "[0, 1]" if hardness == "probability" else "[0, inf)"
            raise ConfigError(f"thresholds[{width:g}] = [{lo:g}, {hi:g}] leaves the {hardness} scale {scale}")
        ranges[width] = (lo, hi)
    missing = [w for w in widths if w not in ranges]
    extra = [w for w in ranges if w not in widths]
    if missing or extra:
        allowed = ", ".join(f"{w:g}" for w in widths)
        what = f"no range for width {missing[0]:g}" if missing else f"a range for width {extra[0]:g}, not a model width"
        raise ConfigError(f"thresholds: {what}; give one [low, high] range per width ({allowed})")
    ordered = [(w, ranges[w]) for w in widths]
    sign = 1.0 if hardness == "probability" else -1.0  # probability: narrower widths take higher values
    for (w_small, (lo_s, hi_s)), (w_big, (lo_b, hi_b)) in itertools.pairwise(ordered):
        if (lo_s, hi_s) == (lo_b, hi_b):
            raise ConfigError(f"thresholds: widths {w_small:g} and {w_big:g} share the range [{lo_s:g}, {hi_s:g}]")
        if sign * (lo_s - lo_b) < 0 or sign * (hi_s - hi_b) < 0:
            easier = "higher" if hardness == "probability" else "lower"
            raise ConfigError(
                f"thresholds: width {w_small:g} has [{lo_s:g}, {hi_s:g}] but the wider {w_big:g} has "
                f"[{lo_b:g}, {hi_b:g}]: a narrower width must take easier samples ({easier} {hardness}; ranges may "
                "overlap but must be ordered)"
            )
    return dict(ordered)


def hardness_of(logits: torch.Tensor, labels: torch.Tensor, hardness: Hardness = "probability") -> torch.Tensor:
    """Per-sample hardness value of a batch: the ground-truth class probability, or the prediction's entropy."""
    logp = torch.log_softmax(logits.detach().float(), dim=-1)
    if hardness == "probability":
        return logp.gather(1, labels.long().unsqueeze(1)).squeeze(1).exp()
    return -(logp.exp() * logp).sum(-1)


def assign_widths(
    history: torch.Tensor,
    thresholds: Mapping[float, tuple[float, float]],
    widths: Sequence[float],
    hardness: Hardness = "probability",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Buckets from a hardness history.

    Args:
        history: ``(epochs, samples)`` recorded values, the window to judge by (NaN: not recorded; such a sample is
            judged by the values it has, and a sample with none goes to full width).
        thresholds: checked ``{width: (lo, hi)}`` (:func:`check_thresholds`).
        widths: the model's widths, ascending.
        hardness: what the history holds.
        generator: draws the training width of a sample in several buckets.

    Returns:
        ``(labels, train_index)``: the router's multi-hot targets ``(samples, len(widths))`` (float) and the index
        into ``widths`` each sample is trained at ``(samples,)`` (long).
    """
    seen = ~torch.isnan(history)
    any_seen = seen.any(0)
    low = torch.where(seen, history, torch.inf).amin(0)
    high = torch.where(seen, history, -torch.inf).amax(0)
    top = 1.0 if hardness == "probability" else math.inf
    labels = torch.zeros(history.shape[1], len(widths))
    for i, w in enumerate(widths):
        lo, hi = thresholds[w]
        below_top = high <= hi if hi >= top else high < hi
        labels[:, i] = (any_seen & (low >= lo) & below_top).float()
    labels[labels.sum(1) == 0, -1] = 1.0  # in no bucket: full width
    # one of the sample's buckets, uniformly: the argmax of random scores restricted to them
    scores = torch.rand(labels.shape, generator=generator) * labels
    return labels, scores.argmax(1)


class HardnessTracker:
    """Records every training sample's hardness each epoch and turns the history into width buckets.

    The loss calls :meth:`record` with the batch's sample indices; the trainer calls the tracker (a trainer callback)
    after every optimizer step, and at the end of each epoch it computes the next epoch's buckets. Its state (the
    history and the current buckets) is saved in trainer checkpoints, so a resumed run routes exactly as before.

    Args:
        num_samples: training set size (indices are ``0 .. num_samples - 1``).
        widths: the model's widths, ascending (full width last).
        thresholds: ``{width: (lo, hi)}`` (:func:`check_thresholds`).
        window: the last ``window`` epochs decide a sample's buckets.
        warmup_epochs: epochs trained at full width only (at least ``window``).
        hardness: ``"probability"`` or ``"entropy"``.
        seed: seeds the draw among several buckets (combined with the epoch).
    """

    def __init__(
        self,
        num_samples: int,
        widths: Sequence[float],
        thresholds: Mapping[Any, Sequence[float]],
        window: int = 1,
        warmup_epochs: int = 1,
        hardness: Hardness = "probability",
        seed: int = 0,
    ) -> None:
        if window < 1:
            raise ConfigError(f"window must be >= 1 epoch, got {window}")
        if warmup_epochs < window:
            raise ConfigError(
                f"warmup_epochs ({warmup_epochs}) must be >= window ({window}): buckets need {window} epochs of history"
            )
        self.widths = tuple(float(w) for w in widths)
        self.thresholds = check_thresholds(thresholds, self.widths, hardness)
        self.window = window
        self.warmup_epochs = warmup_epochs
        self.hardness = hardness
        self.seed = seed
        self.epoch = 0
        self.history = torch.full((window, num_samples), math.nan)  # a ring: row epoch % window
        self.labels = torch.zeros(num_samples, len(self.widths))
        self.labels[:, -1] = 1.0
        self.train_index = torch.full((num_samples,), len(self.widths) - 1, dtype=torch.long)

    @property
    def num_samples(self) -> int:
        return self.history.shape[1]

    def targets(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(router labels, training width index)`` of the samples ``indices`` for the current epoch."""
        indices = indices.long().cpu()
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise IndexError(f"sample index out of range for {self.num_samples} tracked samples")
        return self.labels[indices], self.train_index[indices]

    def record(self, indices: torch.Tensor, values: torch.Tensor) -> None:
        """Store this epoch's hardness ``values`` of the samples ``indices``."""
        self.history[self.epoch % self.window, indices.long().cpu()] = values.detach().float().cpu()

    def end_epoch(self) -> None:
        """Close the current epoch: gather the history across processes and compute the next epoch's buckets."""
        row = self.epoch % self.window
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            values = self.history[row]
            seen = (~torch.isnan(values)).float()
            total = torch.stack([torch.nan_to_num(values), seen])
            torch.distributed.all_reduce(total)  # each sample is seen by one rank (DistributedSampler semantics)
            self.history[row] = torch.where(total[1] > 0, total[0] / total[1].clamp(min=1), math.nan)
        self.epoch += 1
        if self.epoch >= self.warmup_epochs:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self.labels, self.train_index = assign_widths(
                self.history, self.thresholds, self.widths, self.hardness, generator
            )
        self.history[self.epoch % self.window] = math.nan  # the slot of the coming epoch

    def __call__(self, trainer: Any) -> None:
        """Trainer callback: after the last optimizer step of an epoch, compute the next epoch's buckets."""
        if trainer.batch_in_epoch >= trainer.batches_in_epoch(trainer.epoch):
            self.end_epoch()

    def bucket_sizes(self) -> dict[str, int]:
        """How many samples train at each width this epoch."""
        counts = torch.bincount(self.train_index, minlength=len(self.widths))
        return {f"{w:g}": int(c) for w, c in zip(self.widths, counts)}

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "history": self.history.clone(),
            "labels": self.labels.clone(),
            "train_index": self.train_index.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if tuple(state["history"].shape) != tuple(self.history.shape):
            raise ConfigError(
                f"the checkpoint's hardness history has shape {tuple(state['history'].shape)}, this run "
                f"{tuple(self.history.shape)} (another window or training set)"
            )
        self.epoch = int(state["epoch"])
        self.history = state["history"].clone()
        self.labels = state["labels"].clone()
        self.train_index = state["train_index"].clone()
