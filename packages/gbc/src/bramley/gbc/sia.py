"""Structure-induced attention (SIA): a graph's captions read at once, attention following the graph's edges.

No official SIA code exists (apple/ml-gbc publishes the data model and the captioning pipeline only); the paper
describes the idea in words. What is decided here, and tested:

1. **Packing.** A graph's captions (vertices in an official order, BFS by default; each vertex's ``descs`` in order)
   are tokenized separately with CLIP's BPE as ``[start, bpe..., end]`` (cut to ``context_length`` as CLIP does)
   and concatenated with no padding between them. Each caption keeps its own positions ``0 .. len - 1``, so a
   caption read alone is exactly what a plain CLIP text tower reads.
2. **Edge-label tokens.** For an edge ``parent -> child`` with text ``t``, every occurrence of ``t`` in every caption
   of ``parent`` (case-insensitive, at word boundaries, and only where the caption's tokens split there, so the span
   is exactly the phrase's own tokens) marks a span of token positions: the phrase that names the child.
3. **Mask.** Token ``q`` may attend token ``k`` when (a) both are in the same caption and ``k <= q`` (CLIP's causal
   text tower; ``causal=False`` drops the order condition); (b) ``q`` is in a caption of the child and ``k`` in an
   edge-label span naming that child (a caption sees its parents through the phrases that name it); (c) ``q`` is in
   such a span and ``k`` anywhere in a caption of the child (the phrase reads its child, and the parent caption's
   end token, which follows the phrase, gets the child's content one layer later through rule (a)).
   Nothing else: captions of unrelated vertices, and non-phrase tokens of a parent, stay invisible.
4. **Pooling.** Each caption's embedding is its end token's, as in CLIP. With no edges, SIA equals encoding each
   caption alone (tested), so one text tower serves plain captions at test time and SIA during training.

Core's :func:`bramley.core.ops.attention` takes documents (``cu_seqlens``), causal and windowed masks, not an
arbitrary boolean mask; SIA runs its attention through ``torch.nn.functional.scaled_dot_product_attention`` with
the boolean mask, on the text tower's own modules (:func:`sia_encode`).

Batches: :func:`collate_packed` lays several graphs in rows of a token budget (best-fit decreasing, core's
:func:`~bramley.core.packing.best_fit_decreasing`), their masks block-diagonal in the row; the baseline
:func:`collate_padded` pads every caption of a graph to the graph's longest caption (the layout of encoding each
caption as its own CLIP sequence) with the same mask rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bramley.core.errors import DataError

from .graph import GbcGraph
from .views import order

__all__ = [
    "PackedBatch",
    "PackedGraph",
    "collate_packed",
    "collate_padded",
    "pack_graph",
    "phrase_spans",
    "sia_encode",
    "sia_mask",
]


# --------------------------------------------------------------------------------------------- phrases in tokens
def phrase_spans(tokenizer, text: str, phrase: str) -> list[tuple[int, int]]:
    """Token spans ``[start, end)`` of ``phrase`` in ``tokenizer.encode(text)`` (no start token), one per occurrence.

    An occurrence counts when it is at word boundaries (case-insensitive) and the caption's tokens split exactly at
    both of its ends (the tokens of the text up to the phrase's end begin with those up to its start); a phrase
    inside a word ("tree" in "trees") has no span.
    """
    if not phrase.strip():
        return []
    tokens = tokenizer.encode(text)
    spans = []
    for match in re.finditer(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text, flags=re.IGNORECASE):
        before = tokenizer.encode(text[: match.start()])
        through = tokenizer.encode(text[: match.end()])
        start, end = len(before), len(through)
        if end > start and through[:start] == before and tokens[:end] == through:
            spans.append((start, end))
    return spans


# ---------------------------------------------------------------------------------------------------- packing
@dataclass
class PackedGraph:
    """One graph's captions as one token sequence, with what SIA needs.

    Attributes:
        tokens: ``(L,)`` int64 ids, the captions back to back.
        positions: ``(L,)`` each token's position inside its caption.
        caption_offsets: ``(C + 1,)`` where each caption starts (and the end).
        caption_vertex: vertex id of each caption.
        caption_label: the ``descs`` label of each caption.
        links: ``(span_start, span_end, child_first_caption, child_end_caption)`` in token / caption indices: the
            edge-label span (in the parent's caption) naming a child, and the child's captions.
        missing_phrases: edges whose text has no usable span in any parent caption (they add no link).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    caption_offsets: torch.Tensor
    caption_vertex: list[str]
    caption_label: list[str]
    links: list[tuple[int, int, int, int]]
    missing_phrases: int

    @property
    def length(self) -> int:
        return int(self.tokens.numel())

    @property
    def eot_index(self) -> torch.Tensor:
        """Position of each caption's end token (its last)."""
        return self.caption_offsets[1:] - 1


def pack_graph(
    graph: GbcGraph,
    tokenizer,
    context_length: int = 77,
    mode: str = "bfs",
    caption_filter=None,
) -> PackedGraph:
    """Tokenize and pack a graph's captions for SIA (see the module notes for the rules).

    Args:
        graph: the graph.
        tokenizer: a :class:`bramley.core.clip_eval.ClipTokenizer` (``encode``, ``sot_token_id``, ``eot_token_id``).
        context_length: longest caption in tokens, start and end included (CLIP truncation beyond it).
        mode: the vertex order.
        caption_filter: ``f(vertex, desc) -> bool`` keeps a caption (default: all).
    """
    by_id = graph.vertex_dict()
    ids: list[int] = []
    positions: list[int] = []
    offsets = [0]
    caption_vertex: list[str] = []
    caption_label: list[str] = []
    first: dict[str, tuple[int, int]] = {}  # vertex -> its captions [first, end)
    bpe_of: list[list[int]] = []
    texts: list[str] = []
    for vid in order(graph, mode):
        v = by_id[vid]
        start = len(caption_vertex)
        for d in v.descs:
            if caption_filter is not None and not caption_filter(v, d):
                continue
            bpe = tokenizer.encode(d.text)[: context_length - 2]
            row = [tokenizer.sot_token_id, *bpe, tokenizer.eot_token_id]
            ids += row
            positions += range(len(row))
            offsets.append(len(ids))
            caption_vertex.append(vid)
            caption_label.append(d.label)
            bpe_of.append(bpe)
            texts.append(d.text)
        if len(caption_vertex) > start:
            first[vid] = (start, len(caption_vertex))
    if not ids:
        raise DataError("graph has no captions to pack (empty graph or every caption filtered out)")
    links: list[tuple[int, int, int, int]] = []
    missing = 0
    for v in graph.vertices:
        if v.vertex_id not in first:
            continue
        for e in v.out_edges:
            if e.target not in first:
                continue
            found = False
            for c in range(*first[v.vertex_id]):
                for s, t in phrase_spans(tokenizer, texts[c], e.text):
                    if t <= len(bpe_of[c]):  # the phrase survived truncation
                        links.append((offsets[c] + 1 + s, offsets[c] + 1 + t, *first[e.target]))
                        found = True
            missing += not found
    return PackedGraph(
        torch.tensor(ids, dtype=torch.long),
        torch.tensor(positions, dtype=torch.long),
        torch.tensor(offsets, dtype=torch.long),
        caption_vertex,
        caption_label,
        links,
        missing,
    )


def sia_mask(packed: PackedGraph, causal: bool = True, structure: bool = True) -> torch.Tensor:
    """The ``(L, L)`` boolean mask (``True``: query row may attend key column) of one packed graph.

    ``structure=False`` keeps only rule (a): each caption alone (the "all captions, no SIA" reading).
    """
    n = packed.length
    offsets = packed.caption_offsets
    caption_of = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets.diff())
    mask = caption_of[:, None] == caption_of[None, :]
    if causal:
        mask &= torch.ones(n, n, dtype=torch.bool).tril()
    if structure:
        for s, t, c0, c1 in packed.links:
            a, b = int(offsets[c0]), int(offsets[c1])
            mask[a:b, s:t] = True  # (b) the child's captions read the phrase naming it
            mask[s:t, a:b] = True  # (c) the phrase reads the child's captions
    return mask


# --------------------------------------------------------------------------------------------------- batches
@dataclass
class PackedBatch:
    """Graphs laid in rows for one SIA forward.

    Attributes:
        tokens, positions: ``(R, S)``.
        mask: ``(R, S, S)`` boolean; padding tokens attend only to themselves (never attended).
        pool_row, pool_col: where each caption's end token is, captions of graph 0 first.
        caption_graph: ``(C,)`` graph index of each caption.
        real_tokens: tokens that are not padding.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor
    pool_row: torch.Tensor
    pool_col: torch.Tensor
    caption_graph: torch.Tensor
    real_tokens: int

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            *(getattr(self, f).to(device) for f in ("tokens", "positions", "mask", "pool_row", "pool_col")),
            self.caption_graph.to(device),
            self.real_tokens,
        )


def _empty_rows(rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = torch.eye(width, dtype=torch.bool).expand(rows, width, width).clone()
    return torch.zeros(rows, width, dtype=torch.long), torch.zeros(rows, width, dtype=torch.long), mask


def collate_packed(
    graphs: Sequence[PackedGraph], budget: int | None = None, causal: bool = True, structure: bool = True
) -> PackedBatch:
    """Lay packed graphs in rows of ``budget`` tokens (best-fit decreasing; default: the longest graph), each graph
    whole in one row, masks block-diagonal."""
    from bramley.core.packing import best_fit_decreasing

    lengths = [g.length for g in graphs]
    budget = max(lengths) if budget is None else budget
    if max(lengths) > budget:
        raise DataError(f"a packed graph has {max(lengths)} tokens, more than the row budget {budget}")
    bins = best_fit_decreasing(lengths, budget)
    rows_of = bins.bins
    tokens, positions, mask = _empty_rows(len(rows_of), budget)
    place = {}
    for r, members in enumerate(rows_of):
        at = 0
        for i in members:
            g = graphs[i]
            tokens[r, at : at + g.length] = g.tokens
            positions[r, at : at + g.length] = g.positions
            mask[r, at : at + g.length, at : at + g.length] = sia_mask(g, causal, structure)
            place[i] = (r, at)
            at += g.length
    pool_row, pool_col, caption_graph = [], [], []
    for i, g in enumerate(graphs):
        r, at = place[i]
        eot = g.eot_index + at
        pool_row += [r] * eot.numel()
        pool_col += eot.tolist()
        caption_graph += [i] * eot.numel()
    return PackedBatch(
        tokens,
        positions,
        mask,
        torch.tensor(pool_row),
        torch.tensor(pool_col),
        torch.tensor(caption_graph),
        sum(lengths),
    )


def collate_padded(graphs: Sequence[PackedGraph], causal: bool = True, structure: bool = True) -> PackedBatch:
    """The padded baseline: every caption of a graph padded to the graph's longest caption, one row per graph (rows
    padded to the longest), the same mask rules on the padded layout."""
    layouts = []
    for g in graphs:
        lengths = g.caption_offsets.diff()
        layouts.append((int(lengths.max()), lengths))
    width = max(w * lengths.numel() for w, lengths in layouts)
    tokens, positions, mask = _empty_rows(len(graphs), width)
    pool_row, pool_col, caption_graph = [], [], []
    real = 0
    for r, (g, (w, lengths)) in enumerate(zip(graphs, layouts)):
        # new index of every packed token: caption c starts at c * w
        caption_of = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        new = caption_of * w + g.positions
        tokens[r, new] = g.tokens
        positions[r, new] = g.positions
        m = sia_mask(g, causal, structure)
        block = mask[r]
        block[new[:, None], new[None, :]] = m
        pool_row += [r] * lengths.numel()
        pool_col += (torch.arange(lengths.numel()) * w + lengths - 1).tolist()
        caption_graph += [r] * lengths.numel()
        real += g.length
    return PackedBatch(
        tokens, positions, mask, torch.tensor(pool_row), torch.tensor(pool_col), torch.tensor(caption_graph), real
    )


# ---------------------------------------------------------------------------------------------------- forward
def sia_encode(text: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Caption embeddings ``(C, output_dim)`` of a batch under its SIA masks, on the weights of a core
    :class:`~bramley.core.layers.clip.TextTransformer` (its token and positional embeddings, blocks, final norm and
    projection): the same computation as ``text(tokens)`` except that attention follows ``batch.mask``."""
    x = text.token_embedding(batch.tokens) + text.positional_embedding[batch.positions]
    mask = batch.mask[:, None]  # (R, 1, S, S), broadcast over heads
    for block in text.blocks:
        attn = block.attn
        h = attn.qkv(block.ln_1(x))
        q, k, v = h.unflatten(-1, (3, attn.num_heads, attn.head_dim)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + attn.proj_drop(attn.proj(out.transpose(1, 2).flatten(-2)))
        x = x + block.mlp(block.ln_2(x))
    x = text.ln_final(x)
    pooled = x[batch.pool_row, batch.pool_col]
    if text.text_projection is not None:
        pooled = pooled @ text.text_projection
    return pooled
