import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bramley.core.ops import attention
from bramley.dataset_decomposition.baseline import (
    ConcatChunkDataset,
    causal_attention_pairs,
    segments_to_cu_seqlens,
)


def test_rows_and_accounting():
    doc_lengths = [3, 4, 2, 5]
    stream = np.arange(14)
    ds = ConcatChunkDataset(stream, doc_lengths, 4)
    assert len(ds) == 2  # rows of 5 tokens; 4 tokens left over
    assert ds[0].tolist() == [0, 1, 2, 3, 4] and ds[1].tolist() == [5, 6, 7, 8, 9]
    assert ds[0].dtype == torch.int64
    acc = ds.account
    assert (acc.documents, acc.tokens, acc.stored, acc.targets, acc.dropped) == (4, 14, 10, 8, 4)
    assert acc.dropped_fraction == pytest.approx(4 / 14)
    # row 0 inputs 0..3: doc [0, 1, 2] then doc [3, ...]; row 1 inputs 5..8: doc [.., 5, 6], doc [7, 8]
    assert ds.segment_lengths(0).tolist() == [3, 1] and ds.segment_lengths(1).tolist() == [2, 2]
    assert ds.segments(0).tolist() == [0, 0, 0, 1]
    with pytest.raises(IndexError):
        ds[2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=20), st.integers(1, 16))
def test_segments_follow_document_boundaries(doc_lengths, seq_len):
    total = sum(doc_lengths)
    if total < seq_len + 1:
        return
    doc_of_token = np.repeat(np.arange(len(doc_lengths)), doc_lengths)
    ds = ConcatChunkDataset(np.arange(total), doc_lengths, seq_len, return_segments=True)
    for i in range(len(ds)):
        item = ds[i]
        inputs = item["tokens"][:-1].numpy()
        docs = doc_of_token[inputs]
        expected = np.concatenate([[0], np.cumsum(docs[1:] != docs[:-1])])
        assert item["segments"].tolist() == expected.tolist()
        assert ds.segment_lengths(i).sum() == seq_len


def test_cu_seqlens_and_masked_attention_equal_per_document_attention():
    ds = ConcatChunkDataset(np.arange(40) % 7, [5, 12, 3, 9, 11], 9, return_segments=True)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    cu, max_seqlen = segments_to_cu_seqlens(batch["segments"])
    lengths = np.concatenate([ds.segment_lengths(i) for i in range(len(ds))])
    assert cu.dtype == torch.int32 and cu.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert max_seqlen == lengths.max()
    q, k, v = torch.randn(3, int(cu[-1]), 2, 8, dtype=torch.float64).unbind(0)
    out = attention(q, k, v, cu_seqlens=cu, max_seqlen=max_seqlen, causal=True)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):  # each segment sees only itself
        ref = attention(q[None, a:b], k[None, a:b], v[None, a:b], causal=True)[0]
        torch.testing.assert_close(out[a:b], ref)


def test_from_documents():
    docs = ["abc", "hello world", "x" * 30, "é"]
    a = ConcatChunkDataset.from_documents(docs, 8, seed=1)
    b = ConcatChunkDataset.from_documents(docs, 8, seed=1)
    c = ConcatChunkDataset.from_documents(docs, 8, shuffle=False)
    assert a.tokens.dtype == np.uint16 and np.array_equal(a.tokens, b.tokens)
    assert a.account.tokens == sum(len(d.encode()) + 1 for d in docs) == c.account.tokens
    assert c.tokens[:4].tolist() == [97, 98, 99, 256]
    assert int((a.tokens == 256).sum()) == len(docs)
    with pytest.raises(ValueError, match="no documents"):
        ConcatChunkDataset.from_documents([], 8)


def test_errors_and_helpers():
    with pytest.raises(ValueError, match="sum to"):
        ConcatChunkDataset(np.arange(10), [3, 3], 4)
    with pytest.raises(ValueError, match="one row"):
        ConcatChunkDataset(np.arange(4), [4], 4)
    with pytest.raises(ValueError, match="seq_len"):
        ConcatChunkDataset(np.arange(4), [4], 0)
    with pytest.raises(ValueError, match="integer"):
        ConcatChunkDataset(np.zeros(4), [4], 2)
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        segments_to_cu_seqlens(torch.zeros(4, dtype=torch.long))
    assert causal_attention_pairs([4]) == 10 and causal_attention_pairs([2, 2]) == 6
