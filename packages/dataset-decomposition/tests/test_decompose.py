import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bramley.dataset_decomposition.decompose import (
    bucket_lengths,
    cut_probabilities,
    decompose,
    decompose_length,
)


def reference_greedy(n: int, min_log2: int) -> list[int]:
    """Largest 2^k + 1 that fits, repeatedly (what the official loop does below 2^(max + 1) + 1 tokens)."""
    out = []
    while n >= (1 << min_log2) + 1:
        k = int(np.floor(np.log2(n - 1)))
        out.append(k)
        n -= (1 << k) + 1
    return out


@st.composite
def configs(draw):
    min_log2 = draw(st.integers(0, 5))
    max_log2 = draw(st.integers(min_log2, min_log2 + 4))
    n = draw(st.integers(0, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    return n, min_log2, max_log2, seed


@settings(max_examples=300, deadline=None)
@given(configs())
def test_chunks_tile_the_kept_prefix(cfg):
    n, min_log2, max_log2, seed = cfg
    chunks, dropped = decompose_length(n, min_log2, max_log2, rng=np.random.default_rng(seed))
    position = 0
    for start, k in chunks:
        assert min_log2 <= k <= max_log2
        assert start == position  # contiguous, no overlap, no gap
        position += (1 << k) + 1
    assert position + dropped == n
    assert 0 <= dropped <= 1 << min_log2  # a chunk needs 2^min_log2 + 1 tokens: at most 2^min_log2 are left
    # random cuts only while >= 2^(max_log2 + 1) + 1 tokens remain, then the official greedy decomposition exactly
    first_greedy = next((i for i, (s, _) in enumerate(chunks) if n - s < (1 << (max_log2 + 1)) + 1), len(chunks))
    rest = n - (chunks[first_greedy][0] if first_greedy < len(chunks) else position)
    assert [k for _, k in chunks[first_greedy:]] == reference_greedy(rest, min_log2)


@settings(max_examples=150, deadline=None)
@given(configs())
def test_every_kept_token_appears_exactly_once(cfg):
    n, min_log2, max_log2, seed = cfg
    tokens = np.random.default_rng(seed).permutation(n).astype(np.int64)  # distinct ids: positions are traceable
    rows, dropped = decompose(tokens, min_log2, max_log2, rng=np.random.default_rng(seed))
    seen = np.concatenate([r.reshape(-1) for r in rows.values()]) if rows else np.zeros(0, np.int64)
    assert seen.size == n - dropped
    assert np.array_equal(np.sort(seen), np.sort(tokens[: n - dropped]))  # each kept token once, tail dropped
    for k, block in rows.items():
        assert block.shape[1] == (1 << k) + 1
        for row in block:  # each row is a contiguous piece of the document
            start = int(np.flatnonzero(tokens == row[0])[0])
            assert np.array_equal(row, tokens[start : start + row.size])


def test_worked_example():
    # 1000 tokens, buckets 2^4..2^9 (tokens left -> row): 1000 -> 2^9 (513), 487 -> 2^8 (257), 230 -> 2^7 (129),
    # 101 -> 2^6 (65), 36 -> 2^5 (33), 3 left (< 17): dropped
    chunks, dropped = decompose_length(1000, 4, 9)
    assert chunks == [(0, 9), (513, 8), (770, 7), (899, 6), (964, 5)]
    assert dropped == 3
    assert decompose_length(2**7 + 1, 4, 9) == ([(0, 7)], 0)
    assert decompose_length(2**7, 4, 9) == ([(0, 6), (65, 5), (98, 4)], 13)  # 128 = 65 + 33 + 17 + 13: no 2^7 + 1
    assert decompose_length(16, 4, 9) == ([], 16)  # exactly 2^min_log2 tokens: all dropped


def test_random_cuts_start_exactly_where_the_official_k_exceeds_max_log2():
    # official: k = int(log2(len - 1)); random only if k > max_log2, i.e. len >= 2^(max_log2 + 1) + 1
    chunks, dropped = decompose_length(2**10, 4, 9)  # log2(1023) < 10: greedy, no generator needed
    assert [k for _, k in chunks] == [9, 8, 7, 6, 5, 4] and dropped == 10
    with pytest.raises(ValueError, match="rng"):
        decompose_length(2**10 + 1, 4, 9)  # log2(1024) = 10 > 9: the first cut is drawn
    fixed, dropped = decompose_length(2**10 + 1, 4, 9, randomize=False)
    assert [k for _, k in fixed] == [9, 8, 7, 6, 5, 4] and dropped == 11
    assert decompose([], 4, 9) == ({}, 0)  # an empty document (not even an end-of-text token) gives nothing


def test_long_documents_need_a_generator_and_are_deterministic():
    with pytest.raises(ValueError, match="rng"):
        decompose_length(10_000, 4, 6)
    a = decompose_length(10_000, 4, 6, rng=np.random.default_rng(3))
    b = decompose_length(10_000, 4, 6, rng=np.random.default_rng(3))
    c = decompose_length(10_000, 4, 6, rng=np.random.default_rng(4))
    assert a == b and a != c
    fixed, _ = decompose_length(10_000, 4, 6, randomize=False)
    assert [k for _, k in fixed[:-3]] == [6] * (len(fixed) - 3)


def test_cut_probabilities_give_equal_expected_tokens():
    p = cut_probabilities(8, 13)
    assert p.sum() == pytest.approx(1.0)
    expected_tokens = p * np.exp2(np.arange(8, 14))
    assert np.allclose(expected_tokens, expected_tokens[0])
    assert bucket_lengths(8, 13) == [256, 512, 1024, 2048, 4096, 8192]


def test_per_bucket_statistics_of_long_documents():
    # 400 documents of 2^14 + 17 tokens, buckets 2^4..2^8: the random cuts put equal expected tokens in every
    # bucket; the last <= 2^9 + 1 tokens of each document follow the deterministic greedy rule.
    min_log2, max_log2, n = 4, 8, 2**14 + 17
    rng = np.random.default_rng(0)
    random_tokens = np.zeros(max_log2 - min_log2 + 1)
    for _ in range(400):
        chunks, dropped = decompose_length(n, min_log2, max_log2, rng=rng)
        remaining = n
        for _start, k in chunks:
            if remaining - 1 >= 1 << (max_log2 + 1):  # this cut was drawn at random
                random_tokens[k - min_log2] += 1 << k
            remaining -= (1 << k) + 1
        assert remaining == dropped
    share = random_tokens / random_tokens.sum()
    assert np.allclose(share, 1 / len(share), atol=0.02), share


def test_per_bucket_counts_on_known_lengths():
    # documents of exactly 2^k + 1 tokens land whole in bucket k; 2^k + 1 + 2^j + 1 split into k and j
    for k in range(3, 9):
        rows, dropped = decompose(np.arange((1 << k) + 1), 3, 8)
        assert list(rows) == [k] and rows[k].shape == (1, (1 << k) + 1) and dropped == 0
    rows, dropped = decompose(np.arange(2**8 + 1 + 2**3 + 1), 3, 8)
    assert sorted(rows) == [3, 8] and dropped == 0


def test_decompose_inputs():
    rows, dropped = decompose(torch.arange(30), 3, 4)  # 29 -> 2^4 + 1, 12 -> 2^3 + 1, 4 dropped
    assert rows[4].dtype == np.int64 and rows[4].tolist() == [list(range(17))]
    assert rows[3].tolist() == [list(range(17, 26))] and dropped == 4
    with pytest.raises(ValueError, match="1-D"):
        decompose(np.zeros((2, 3), dtype=np.int64), 1, 2)
    with pytest.raises(ValueError, match="integers"):
        decompose(np.zeros(5), 1, 2)
    with pytest.raises(ValueError, match="min_log2"):
        decompose_length(10, 5, 4)
    with pytest.raises(ValueError, match="num_tokens"):
        decompose_length(-1, 1, 2)
