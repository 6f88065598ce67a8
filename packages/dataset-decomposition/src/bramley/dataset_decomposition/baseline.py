"""The concat-and-chunk baseline: documents concatenated into one stream and cut into rows of ``seq_len + 1`` tokens.

Row ``i`` is stream tokens ``[i * (seq_len + 1), (i + 1) * (seq_len + 1))``: ``seq_len`` inputs and the shifted
targets, rows not overlapping (the same ``+1`` convention as the decomposition buckets, so both store every kept
token once and train on ``seq_len`` targets per row). The tail shorter than a row is dropped and counted.

Document boundaries are recorded when the stream is built, so the same rows train either way:

- plain causal attention over the whole row (documents attend to the ones before them, the classic baseline);
- document masking: per-row ``segments`` (document number of every input position, from 0) turn into
  ``cu_seqlens`` for core varlen attention with :func:`segments_to_cu_seqlens`; a document's end-of-text token
  stays with that document and predicts the first token of the next one, as in the unmasked baseline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .buckets import TokenAccount, token_dtype
from .make_buckets import load_tokenizer

__all__ = [
    "ConcatChunkDataset",
    "TokenAccount",
    "causal_attention_pairs",
    "segments_to_cu_seqlens",
]


class ConcatChunkDataset(torch.utils.data.Dataset):
    """Concat-and-chunk rows with recorded document boundaries.

    Args:
        stream: 1-D token stream (documents back to back, each ending with its end-of-text token).
        doc_lengths: tokens of every document in the stream, in order (sum = stream length).
        seq_len: input tokens per row (a row holds ``seq_len + 1``).
        return_segments: items are ``{"tokens": (seq_len + 1,), "segments": (seq_len,)}`` (int64) instead of the
            bare row, for document masking; the default collate stacks both.
    """

    def __init__(
        self,
        stream: np.ndarray | torch.Tensor | Sequence[int],
        doc_lengths: np.ndarray | Sequence[int],
        seq_len: int,
        *,
        return_segments: bool = False,
    ) -> None:
        tokens = stream.cpu().numpy() if isinstance(stream, torch.Tensor) else np.asarray(stream)
        lengths = np.asarray(doc_lengths, dtype=np.int64)
        if tokens.ndim != 1 or (tokens.size and not np.issubdtype(tokens.dtype, np.integer)):
            raise ValueError(f"stream must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
        if lengths.ndim != 1 or (lengths.size and lengths.min() < 1):
            raise ValueError("doc_lengths must be a 1-D list of lengths >= 1")
        if int(lengths.sum()) != tokens.size:
            raise ValueError(f"doc_lengths sum to {int(lengths.sum())} but the stream has {tokens.size} tokens")
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ValueError(f"seq_len must be an int >= 1, got {seq_len!r}")
        self.tokens = tokens
        self.doc_ends = np.cumsum(lengths)
        self.seq_len = int(seq_len)
        self.return_segments = return_segments
        self.num_rows = tokens.size // (self.seq_len + 1)
        if self.num_rows == 0:
            raise ValueError(f"{tokens.size} tokens do not fill one row of {self.seq_len + 1}")

    @classmethod
    def from_documents(
        cls,
        documents: Iterable[str],
        seq_len: int,
        *,
        tokenizer: str = "byte",
        eot_token: str | None = None,
        shuffle: bool = True,
        seed: int = 0,
        return_segments: bool = False,
    ) -> ConcatChunkDataset:
        """Tokenize documents (end-of-text appended), shuffle their order with ``seed`` (concat-and-chunk concatenates
        documents in random order), concatenate and chunk. The stream is held in memory in ``uint16``/``uint32``."""
        tok = load_tokenizer(tokenizer, eot_token)
        dtype = token_dtype(tok.vocab_size)
        docs = [tok.encode(text).astype(dtype) for text in documents]
        if not docs:
            raise ValueError("no documents")
        order = np.random.default_rng(seed).permutation(len(docs)) if shuffle else np.arange(len(docs))
        docs = [docs[i] for i in order]
        return cls(np.concatenate(docs), [d.size for d in docs], seq_len, return_segments=return_segments)

    # ------------------------------------------------------------------ accounting
    @property
    def account(self) -> TokenAccount:
        stored = self.num_rows * (self.seq_len + 1)
        return TokenAccount(
            documents=int(self.doc_ends.size),
            tokens=int(self.tokens.size),
            stored=stored,
            targets=self.num_rows * self.seq_len,
            dropped=int(self.tokens.size) - stored,
        )

    def segment_lengths(self, index: int) -> np.ndarray:
        """Lengths of the document pieces that make up the inputs of row ``index`` (sum = ``seq_len``)."""
        start = self._check(index) * (self.seq_len + 1)
        lo, hi = np.searchsorted(self.doc_ends, [start, start + self.seq_len], side="right")
        cuts = self.doc_ends[lo:hi] - start
        bounds = np.concatenate([[0], cuts[(cuts > 0) & (cuts < self.seq_len)], [self.seq_len]])
        return np.diff(bounds)

    def segments(self, index: int) -> np.ndarray:
        """Document number (from 0 within the row) of every input position of row ``index``: ``(seq_len,)`` int64."""
        return np.repeat(np.arange(len(lengths := self.segment_lengths(index))), lengths)

    # ------------------------------------------------------------------ dataset
    def _check(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.num_rows:
            raise IndexError(f"row {index} out of range ({self.num_rows} rows)")
        return index

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> torch.Tensor | dict[str, torch.Tensor]:
        start = self._check(index) * (self.seq_len + 1)
        row = torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))
        if not self.return_segments:
            return row
        return {"tokens": row, "segments": torch.from_numpy(self.segments(index))}


def segments_to_cu_seqlens(segments: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(batch, seq)`` per-row document numbers -> int32 ``cu_seqlens`` over the flattened ``batch * seq`` tokens and
    ``max_seqlen``: every maximal run of equal numbers within a row is one attention segment (rows never merge)."""
    if segments.dim() != 2:
        raise ValueError(f"segments must be (batch, seq), got shape {tuple(segments.shape)}")
    batch, seq = segments.shape
    starts = torch.ones_like(segments, dtype=torch.bool)
    if seq > 1:
        starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    positions = torch.nonzero(starts.reshape(-1)).squeeze(1)
    total = torch.tensor([batch * seq], device=segments.device)
    cu = torch.cat([positions, total]).to(torch.int32)
    max_seqlen = int((cu[1:] - cu[:-1]).max()) if batch * seq else 0
    return cu, max_seqlen


def causal_attention_pairs(segment_lengths: Iterable[int]) -> int:
    """Query-key pairs a causal attention computes over segments of these lengths: ``sum l (l + 1) / 2``."""
    return sum(int(n) * (int(n) + 1) // 2 for n in segment_lengths)
