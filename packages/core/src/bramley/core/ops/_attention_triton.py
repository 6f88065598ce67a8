"""Triton varlen flash attention: forward and recompute-based backward over packed documents.

Layout: packed ``(total, heads, dim)`` tensors with int32 ``cu_seqlens``; the dense layout is packed with uniform
offsets by the caller. One program handles one block of rows of one (document, head): grid axis 0 enumerates
``batch * cdiv(max_seqlen, BLOCK)`` blocks (blocks past the end of a short document exit at once), axis 1 the heads.

- Forward: online softmax in the log2 domain; saves only ``O`` and the LSE (natural log, ``(heads, total)`` fp32).
- Backward: ``delta = rowsum(dO * O) - dLSE`` (preprocess kernel), then by default one fused kernel per key block
  and query head (the five matmuls; dQ accumulated in fp32 with atomics and converted at the end; GQA heads in
  parallel, adding dK/dV with atomics). ``deterministic=True`` runs the split backward instead, bit-identical across
  runs: one kernel per key block and query head computing dK/dV (summed over each GQA group afterwards) and one per
  query block computing dQ. The probabilities are recomputed from Q, K and the LSE, so memory stays O(total).
- Masking: query ``i`` sees key ``j`` iff ``i - left <= j <= i + right`` (``-1`` = unbounded; causal is
  ``right = 0``). Key (or query) blocks outside the band are skipped. The forward splits its key loop into the tiles
  every row sees whole (no mask, no bounds checks) and the boundary tiles (masked); the backward kernels mask only
  the blocks that straddle the band edge or the document end.
- Head dims that are not powers of two are padded to ``BLOCK_D`` with masked loads and stores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._triton import device_function, interpreting, jit, tl, triton

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# ----------------------------------------------------------------------------------------------------- kernels
@device_function
def _fwd_tiles(
    acc, l_i, m_i, q, k_base, v_base, length, m0, lo, hi, stride_kt, stride_vt, qk_scale_log2, window_left,
    window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, MASK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    """Online softmax over the key tiles ``lo, lo + BLOCK_N, ... < hi``. ``MASK``: 0 = every key of every tile is
    visible to every row (no mask, no bounds checks on keys), 1 = mask every tile, 2 = decide per tile at run time
    (the single loop of the design before the split)."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + offs_n
        if MASK == 0:
            if HEAD_DIM == BLOCK_D:
                k = tl.load(k_base + cols[None, :] * stride_kt + offs_d[:, None])
                v = tl.load(v_base + cols[:, None] * stride_vt + offs_d[None, :])
            else:
                k = tl.load(k_base + cols[None, :] * stride_kt + offs_d[:, None], mask=d_ok[:, None], other=0.0)
                v = tl.load(v_base + cols[:, None] * stride_vt + offs_d[None, :], mask=d_ok[None, :], other=0.0)
        else:
            col_ok = cols < length
            k = tl.load(k_base + cols[None, :] * stride_kt + offs_d[:, None],
                        mask=col_ok[None, :] & d_ok[:, None], other=0.0)  # fmt: skip
            v = tl.load(v_base + cols[:, None] * stride_vt + offs_d[None, :],
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale_log2
        if MASK == 1:
            visible = col_ok[None, :]
            if HAS_LEFT:
                visible = visible & (cols[None, :] >= offs_m[:, None] - window_left)
            if HAS_RIGHT:
                visible = visible & (cols[None, :] <= offs_m[:, None] + window_right)
            s = tl.where(visible, s, float("-inf"))
        elif MASK == 2:
            need_mask = n0 + BLOCK_N > length
            if HAS_LEFT:
                need_mask = need_mask | (n0 < m0 + BLOCK_M - 1 - window_left)
            if HAS_RIGHT:
                need_mask = need_mask | (n0 + BLOCK_N - 1 > m0 + window_right)
            if need_mask:
                visible = col_ok[None, :]
                if HAS_LEFT:
                    visible = visible & (cols[None, :] >= offs_m[:, None] - window_left)
                if HAS_RIGHT:
                    visible = visible & (cols[None, :] <= offs_m[:, None] + window_right)
                s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(k_base.dtype.element_ty).to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@device_function
def _fwd_block(
    Q, K, V, O, LSE, doc_start, length, m0, head,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lh,
    group, qk_scale_log2, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    SPLIT_LOOP: tl.constexpr,
):  # fmt: skip
    """The forward of one query block (rows ``m0 ..``, ``m0 < length``) of one head of one document."""
    kv_head = head // group
    start64 = doc_start.to(tl.int64)
    # 64-bit document offsets go into the base pointers once; tile offsets stay 32-bit (fewer registers).
    Q = Q + start64 * stride_qt
    K = K + start64 * stride_kt
    V = V + start64 * stride_vt
    O = O + start64 * stride_ot
    LSE = LSE + head.to(tl.int64) * stride_lh + start64  # heads x tokens may exceed 2**31

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < length
    rows = offs_m
    q = tl.load(Q + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # fmt: skip
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + kv_head * stride_kh
    v_base = V + kv_head * stride_vh

    lo = 0
    hi = length
    if HAS_LEFT:
        lo = (tl.maximum(m0 - window_left, 0) // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(m0 + BLOCK_M + window_right, length)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if SPLIT_LOOP:
        # Key tiles [full_lo, full_hi) are visible to every row of the block: no mask, no key bounds checks. The
        # tiles before them (left window edge) and after them (diagonal, right window edge, document end) are masked.
        full_lo = lo
        if HAS_LEFT:
            full_lo = lo + tl.cdiv(tl.maximum(m0 + BLOCK_M - 1 - window_left - lo, 0), BLOCK_N) * BLOCK_N
        full_lo = tl.minimum(full_lo, hi)
        limit = length
        if HAS_RIGHT:
            limit = tl.minimum(limit, m0 + window_right + 1)
        full_hi = full_lo + (tl.maximum(limit - full_lo, 0) // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, k_base, v_base, length, m0, lo, full_lo, stride_kt, stride_vt, qk_scale_log2,
            window_left, window_right, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT, 1, DOT_PRECISION,
            UPCAST,
        )  # fmt: skip
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, k_base, v_base, length, m0, full_lo, full_hi, stride_kt, stride_vt, qk_scale_log2,
            window_left, window_right, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT, 0, DOT_PRECISION,
            UPCAST,
        )  # fmt: skip
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, k_base, v_base, length, m0, full_hi, hi, stride_kt, stride_vt, qk_scale_log2,
            window_left, window_right, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT, 1, DOT_PRECISION,
            UPCAST,
        )  # fmt: skip
    else:
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, k_base, v_base, length, m0, lo, hi, stride_kt, stride_vt, qk_scale_log2, window_left,
            window_right, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT, 2, DOT_PRECISION, UPCAST,
        )  # fmt: skip

    empty = l_i == 0.0  # no visible key: output 0, LSE -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
    tl.store(O + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])  # fmt: skip
    tl.store(LSE + rows, lse, mask=row_ok)


def _fwd_kernel(
    Q, K, V, O, LSE, CU,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lh,
    max_seqlen, group, qk_scale_log2, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    SPLIT_LOOP: tl.constexpr,
):  # fmt: skip
    num_m = tl.cdiv(max_seqlen, BLOCK_M)
    pid = tl.program_id(0)
    doc = pid // num_m
    m0 = (num_m - 1 - pid % num_m) * BLOCK_M  # last query blocks first: under a causal mask they have the most work
    head = tl.program_id(1)
    start = tl.load(CU + doc)
    length = tl.load(CU + doc + 1) - start
    if m0 < length:
        _fwd_block(
            Q, K, V, O, LSE, start, length, m0, head,
            stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lh,
            group, qk_scale_log2, window_left, window_right,
            HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT, DOT_PRECISION, UPCAST, SPLIT_LOOP,
        )  # fmt: skip


def _fwd_persistent_kernel(
    Q, K, V, O, LSE, CU, TILES, NUM_TILES,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lh,
    max_seqlen, heads, group, qk_scale_log2, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    SPLIT_LOOP: tl.constexpr,
):  # fmt: skip
    """Design step (4): a fixed number of programs walk a device-side list of ``(document, query block)`` tiles,
    longest first (:func:`forward_tiles`), each tile times every head; no program starts on an empty block."""
    num_m = tl.cdiv(max_seqlen, BLOCK_M)
    num_tiles = tl.load(NUM_TILES) * heads
    for t in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        tile = tl.load(TILES + t // heads)
        head = t % heads
        doc = tile // num_m
        m0 = (tile % num_m) * BLOCK_M
        start = tl.load(CU + doc)
        length = tl.load(CU + doc + 1) - start
        _fwd_block(
            Q, K, V, O, LSE, start, length, m0, head,
            stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh, stride_lh,
            group, qk_scale_log2, window_left, window_right,
            HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, HAS_LEFT, HAS_RIGHT, DOT_PRECISION, UPCAST, SPLIT_LOOP,
        )  # fmt: skip


def _bwd_preprocess_kernel(
    O, DO, DLSE, DELTA, total,
    stride_ot, stride_oh, stride_dot, stride_doh, stride_dlh, stride_delh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, HAS_DLSE: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(1).to(tl.int64)  # heads x tokens may exceed 2**31
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    t_ok = offs_t < total
    mask = t_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    rows = offs_t.to(tl.int64)
    o = tl.load(O + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + rows[:, None] * stride_dot + head * stride_doh + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + head * stride_dlh + rows, mask=t_ok, other=0.0).to(tl.float32)
    tl.store(DELTA + head * stride_delh + rows, delta, mask=t_ok)


def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lh,
    max_seqlen, group, heads_per_program, qk_scale_log2, sm_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    num_n = tl.cdiv(max_seqlen, BLOCK_N)
    pid = tl.program_id(0)
    doc = pid // num_n
    n0 = (pid % num_n) * BLOCK_N
    # Program slot s sums the query heads [s * heads_per_program, (s + 1) * heads_per_program) into row s of DK/DV:
    # heads_per_program = group loops over a GQA group (DK/DV are the outputs), 1 runs one program per query head
    # (DK/DV are fp32 per-query-head buffers that the launcher sums over each group, in a fixed order).
    slot = tl.program_id(1)
    first_head = slot * heads_per_program
    kv_head = first_head // group
    start = tl.load(CU + doc)
    length = tl.load(CU + doc + 1) - start
    if n0 >= length:
        return
    start64 = start.to(tl.int64)
    Q = Q + start64 * stride_qt
    K = K + start64 * stride_kt
    V = V + start64 * stride_vt
    DO = DO + start64 * stride_dot
    DK = DK + start64 * stride_dkt
    DV = DV + start64 * stride_dvt
    LSE = LSE + start64
    DELTA = DELTA + start64

    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    col_ok = offs_n < length
    keys = offs_n
    kv_mask = col_ok[:, None] & d_ok[None, :]
    k = tl.load(K + keys[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + keys[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Queries that see key j: i in [j - right, j + left].
    lo = 0
    hi = length
    if HAS_RIGHT:
        lo = (tl.maximum(n0 - window_right, 0) // BLOCK_M) * BLOCK_M
    if HAS_LEFT:
        hi = tl.minimum(n0 + BLOCK_N + window_left, length)
    # LSE/delta rows of the program's query heads, from the first one on: heads x tokens may exceed 2**31 (64-bit).
    LSE = LSE + first_head.to(tl.int64) * stride_lh
    DELTA = DELTA + first_head.to(tl.int64) * stride_lh
    for head in range(first_head, first_head + heads_per_program):
        for m0 in range(lo, hi, BLOCK_M):
            qrows = m0 + offs_m
            row_ok = qrows < length
            rows = qrows
            q_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(Q + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)
            do = tl.load(DO + rows[:, None] * stride_dot + head * stride_doh + offs_d[None, :], mask=q_mask,
                         other=0.0)  # fmt: skip
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
            lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
            delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
            # Transposed scores (keys x queries), so the dK/dV products need no transposes of large tiles.
            st = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale_log2
            pt = tl.exp2(st - lse2[None, :])
            need_mask = m0 + BLOCK_M > length
            if HAS_RIGHT:
                need_mask = need_mask | (m0 < n0 + BLOCK_N - 1 - window_right)
            if HAS_LEFT:
                need_mask = need_mask | (m0 + BLOCK_M - 1 > n0 + window_left)
            if need_mask:
                visible = row_ok[None, :] & col_ok[:, None]
                if HAS_LEFT:
                    visible = visible & (offs_n[:, None] >= qrows[None, :] - window_left)
                if HAS_RIGHT:
                    visible = visible & (offs_n[:, None] <= qrows[None, :] + window_right)
                pt = tl.where(visible, pt, 0.0)
            dv += tl.dot(pt.to(Q.dtype.element_ty).to(do.dtype), do, input_precision=DOT_PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(Q.dtype.element_ty).to(q.dtype), q, input_precision=DOT_PRECISION)
        LSE += stride_lh
        DELTA += stride_lh

    tl.store(DK + keys[:, None] * stride_dkt + slot * stride_dkh + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)  # fmt: skip
    tl.store(DV + keys[:, None] * stride_dvt + slot * stride_dvh + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=kv_mask)  # fmt: skip


def _bwd_fused_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, DK, DV, CU,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_lh,
    max_seqlen, group, qk_scale_log2, sm_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    KV_ATOMIC: tl.constexpr,
):  # fmt: skip
    """The whole backward of one key block and one query head: S^T, dV += P^T dO, dP^T, dK += dS^T Q, and
    dQ += dS K added with fp32 atomics into ``DQ`` (zeroed fp32). One program per query head, so the heads of a GQA
    group run in parallel; with ``KV_ATOMIC`` (group > 1) they add their dK/dV into zeroed fp32 ``DK``/``DV``."""
    num_n = tl.cdiv(max_seqlen, BLOCK_N)
    pid = tl.program_id(0)
    doc = pid // num_n
    n0 = (pid % num_n) * BLOCK_N
    head = tl.program_id(1)
    kv_head = head // group
    start = tl.load(CU + doc)
    length = tl.load(CU + doc + 1) - start
    if n0 >= length:
        return
    start64 = start.to(tl.int64)
    Q = Q + start64 * stride_qt + head * stride_qh
    K = K + start64 * stride_kt + kv_head * stride_kh
    V = V + start64 * stride_vt + kv_head * stride_vh
    DO = DO + start64 * stride_dot + head * stride_doh
    DQ = DQ + start64 * stride_dqt + head * stride_dqh
    DK = DK + start64 * stride_dkt + kv_head * stride_dkh
    DV = DV + start64 * stride_dvt + kv_head * stride_dvh
    LSE = LSE + head.to(tl.int64) * stride_lh + start64  # heads x tokens may exceed 2**31
    DELTA = DELTA + head.to(tl.int64) * stride_lh + start64

    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    col_ok = offs_n < length
    kv_mask = col_ok[:, None] & d_ok[None, :]
    k = tl.load(K + offs_n[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Queries that see key j: i in [j - right, j + left].
    lo = 0
    hi = length
    if HAS_RIGHT:
        lo = (tl.maximum(n0 - window_right, 0) // BLOCK_M) * BLOCK_M
    if HAS_LEFT:
        hi = tl.minimum(n0 + BLOCK_N + window_left, length)
    for m0 in range(lo, hi, BLOCK_M):
        qrows = m0 + offs_m
        row_ok = qrows < length
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + qrows[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + qrows[:, None] * stride_dot + offs_d[None, :], mask=q_mask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + qrows, mask=row_ok, other=0.0)
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
        delta = tl.load(DELTA + qrows, mask=row_ok, other=0.0)
        # Transposed scores (keys x queries), so the dK/dV products need no transposes of large tiles.
        st = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale_log2
        pt = tl.exp2(st - lse2[None, :])
        need_mask = m0 + BLOCK_M > length
        if HAS_RIGHT:
            need_mask = need_mask | (m0 < n0 + BLOCK_N - 1 - window_right)
        if HAS_LEFT:
            need_mask = need_mask | (m0 + BLOCK_M - 1 > n0 + window_left)
        if need_mask:
            visible = row_ok[None, :] & col_ok[:, None]
            if HAS_LEFT:
                visible = visible & (offs_n[:, None] >= qrows[None, :] - window_left)
            if HAS_RIGHT:
                visible = visible & (offs_n[:, None] <= qrows[None, :] + window_right)
            pt = tl.where(visible, pt, 0.0)
        dv += tl.dot(pt.to(Q.dtype.element_ty).to(do.dtype), do, input_precision=DOT_PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        dst = (pt * (dpt - delta[None, :])).to(Q.dtype.element_ty).to(q.dtype)
        dk += tl.dot(dst, q, input_precision=DOT_PRECISION)
        dq = tl.dot(tl.trans(dst), k, input_precision=DOT_PRECISION) * sm_scale
        tl.atomic_add(DQ + qrows[:, None] * stride_dqt + offs_d[None, :], dq, mask=q_mask, sem="relaxed")

    dk_ptrs = DK + offs_n[:, None] * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + offs_n[:, None] * stride_dvt + offs_d[None, :]
    if KV_ATOMIC:
        tl.atomic_add(dk_ptrs, dk * sm_scale, mask=kv_mask, sem="relaxed")
        tl.atomic_add(dv_ptrs, dv, mask=kv_mask, sem="relaxed")
    else:
        tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, stride_lh,
    max_seqlen, group, qk_scale_log2, sm_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    num_m = tl.cdiv(max_seqlen, BLOCK_M)
    pid = tl.program_id(0)
    doc = pid // num_m
    m0 = (num_m - 1 - pid % num_m) * BLOCK_M  # last query blocks first: under a causal mask they have the most work
    head = tl.program_id(1)
    kv_head = head // group
    start = tl.load(CU + doc)
    length = tl.load(CU + doc + 1) - start
    if m0 >= length:
        return
    start64 = start.to(tl.int64)
    Q = Q + start64 * stride_qt
    K = K + start64 * stride_kt
    V = V + start64 * stride_vt
    DO = DO + start64 * stride_dot
    DQ = DQ + start64 * stride_dqt
    LSE = LSE + head.to(tl.int64) * stride_lh + start64  # heads x tokens may exceed 2**31
    DELTA = DELTA + head.to(tl.int64) * stride_lh + start64

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < length
    rows = offs_m
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + rows[:, None] * stride_dot + head * stride_doh + offs_d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
    k_base = K + kv_head * stride_kh
    v_base = V + kv_head * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo = 0
    hi = length
    if HAS_LEFT:
        lo = (tl.maximum(m0 - window_left, 0) // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(m0 + BLOCK_M + window_right, length)
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + offs_n
        col_ok = cols < length
        keys = cols
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + keys[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
        p = tl.exp2(s - lse2[:, None])
        need_mask = n0 + BLOCK_N > length
        if HAS_LEFT:
            need_mask = need_mask | (n0 < m0 + BLOCK_M - 1 - window_left)
        if HAS_RIGHT:
            need_mask = need_mask | (n0 + BLOCK_N - 1 > m0 + window_right)
        if need_mask:
            visible = col_ok[None, :] & row_ok[:, None]
            if HAS_LEFT:
                visible = visible & (cols[None, :] >= offs_m[:, None] - window_left)
            if HAS_RIGHT:
                visible = visible & (cols[None, :] <= offs_m[:, None] + window_right)
            p = tl.where(visible, p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(Q.dtype.element_ty).to(k.dtype), k, input_precision=DOT_PRECISION)

    tl.store(DQ + rows[:, None] * stride_dqt + head * stride_dqh + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_mask)  # fmt: skip


# ------------------------------------------------------------------------------------------------ launch configs
def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, element size and padded head dim, for sm_90; sm_80 and
# sm_86/89 (less shared memory, other register allocation) override some. Every entry compiles without register spills
# and within the architecture's shared memory, with the specialization of a real launch, for both a GQA two-sided
# window launch and an MHA causal one (checked on CPU by tests/test_ops_attention_compile.py, which runs Triton's real
# compiler and ptxas); the largest spill-free tiles of a small candidate set (FA2-on-Triton shapes: big query tiles
# for forward and dQ, big key tiles for dK/dV). Their speed has not been measured on a GPU yet.
_HALF_CONFIGS = {
    "fwd": {16: (128, 64, 4, 3), 32: (128, 64, 4, 3), 64: (128, 64, 8, 3), 128: (128, 32, 8, 3), 256: (64, 32, 8, 2)},
    "dkdv": {16: (32, 128, 8, 3), 32: (32, 128, 8, 3), 64: (32, 128, 8, 3), 128: (32, 64, 8, 2), 256: (32, 32, 8, 2)},
    "dq": {16: (128, 32, 8, 3), 32: (128, 32, 8, 3), 64: (128, 32, 8, 3), 128: (64, 64, 4, 3), 256: (32, 32, 8, 2)},
    "bwd": {16: (32, 128, 8, 3), 32: (32, 128, 8, 3), 64: (32, 128, 8, 3), 128: (32, 64, 8, 2), 256: (32, 32, 8, 2)},
}
_FP32_CONFIGS = {
    # d16: 1 stage since the split forward loop (2 stages leave an 8-byte spill stack on sm_90)
    "fwd": {16: (64, 32, 8, 1), 32: (64, 32, 8, 2), 64: (64, 32, 8, 2), 128: (64, 16, 8, 2), 256: (32, 32, 8, 2)},
    "dkdv": {16: (16, 32, 4, 1), 32: (16, 32, 4, 1), 64: (16, 32, 4, 1), 128: (16, 16, 8, 1), 256: (16, 32, 8, 1)},
    "dq": {16: (64, 32, 8, 2), 32: (64, 32, 8, 2), 64: (64, 32, 8, 1), 128: (64, 32, 8, 2), 256: (32, 16, 8, 1)},
    "bwd": {16: (16, 32, 4, 1), 32: (16, 32, 4, 1), 64: (16, 32, 4, 1), 128: (16, 16, 8, 1), 256: (16, 32, 8, 1)},
}
# (architecture, fp32, kind, BLOCK_D) -> config where the sm_90 entry spills or overflows shared memory there.
_ARCH_CONFIGS = {
    ("sm80", False, "dkdv", 64): (16, 128, 8, 3),
    ("sm80", False, "dq", 256): (32, 32, 8, 1),
    ("sm80", True, "fwd", 32): (64, 32, 8, 1),
    ("sm80", True, "fwd", 256): (32, 32, 8, 1),
    ("sm80", True, "dkdv", 32): (16, 64, 4, 1),
    ("sm80", True, "dq", 128): (32, 32, 8, 2),
    ("sm86", False, "dkdv", 64): (16, 128, 8, 3),
    ("sm86", False, "dq", 128): (64, 64, 4, 2),
    ("sm86", False, "dq", 256): (32, 32, 8, 1),
    ("sm86", True, "fwd", 128): (32, 32, 4, 2),
    ("sm86", True, "fwd", 256): (32, 16, 8, 2),
    ("sm86", True, "dkdv", 64): (16, 16, 4, 1),
    ("sm86", True, "dkdv", 256): (16, 16, 8, 1),
    ("sm86", True, "dq", 16): (64, 32, 8, 1),
    ("sm86", True, "dq", 128): (64, 16, 8, 2),
}
# Design step (3): forward configs with two resident 8-warp blocks per SM, (BLOCK_M, BLOCK_N, warps, stages, maxnreg)
# per (architecture, fp32, BLOCK_D). 2 x 256 threads x 128 registers fill the 64K register file; the one-block sm_90
# d128 config takes 143 registers. Of the candidates compiled for sm_90 d128 bf16 under a 128-register cap,
# 128 x 32 tiles spill (8-16 bytes of stack at 1-3 stages) and 128 x 64 spill more (144+ bytes); 128 x 16 at
# 2 stages does not (124 registers, 48 KiB shared). Whether 16-key tiles at twice the occupancy beat 32-key tiles at
# one block per SM is for the GPU to say (tools/bench_attention.py times both: "bramley (triton, before)").
_TWO_BLOCK_CONFIGS = {("sm90", False, 128): (128, 16, 8, 2, 128)}
# Shared memory per block (bytes) that a kernel may use, per compute capability (CUDA programming guide).
MAX_SHARED = {(8, 0): 166_912, (8, 6): 101_376, (8, 9): 101_376, (9, 0): 232_448}


def architecture(capability: tuple[int, int]) -> str:
    """The config table of a compute capability: ``sm80`` (A100), ``sm86`` (sm_86/87/89 and older, 99 KiB of shared
    memory) or ``sm90`` (H100/H200 and newer)."""
    if capability >= (9, 0):
        return "sm90"
    return "sm80" if capability == (8, 0) else "sm86"


def _configs(kind: str, block_d: int, dtype: torch.dtype, capability: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps, num_stages)``; small tiles under the interpreter keep CPU runs fast while
    still covering documents that span several blocks."""
    if interpreting():
        return (16, 16, 1, 1)
    fp32 = dtype == torch.float32
    default = (_FP32_CONFIGS if fp32 else _HALF_CONFIGS)[kind][block_d]
    return _ARCH_CONFIGS.get((architecture(capability), fp32, kind, block_d), default)


def _dot_flags(dtype: torch.dtype) -> dict[str, object]:
    """``DOT_PRECISION`` and ``UPCAST`` for a dtype.

    fp32 inputs use IEEE products (not TF32): the function is the fp32 one. The CPU interpreter's ``tl.dot`` mishandles
    bf16 operands, so there tiles are widened to fp32 right before each product: bf16 x bf16 products are exact in
    fp32, so this is the same arithmetic as the GPU's bf16 MMA with fp32 accumulation (P and dS are still rounded
    to bf16 first, as on the GPU).
    """
    upcast = interpreting() and dtype == torch.bfloat16
    return {"DOT_PRECISION": "ieee" if dtype == torch.float32 or upcast else "tf32", "UPCAST": upcast}


def _as_packed(q, k, v, cu_seqlens):
    """Dense (batch, seq, heads, dim) -> packed views plus uniform offsets; packed inputs pass through."""
    if cu_seqlens is not None:
        return q, k, v, cu_seqlens
    batch, seq = q.shape[:2]
    cu = torch.arange(batch + 1, dtype=torch.int32, device=q.device) * seq
    return (
        q.reshape(batch * seq, *q.shape[2:]),
        k.reshape(batch * seq, *k.shape[2:]),
        v.reshape(batch * seq, *v.shape[2:]),
        cu,
    )


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_tile_offsets(max_seqlen: int, *tensors: torch.Tensor) -> None:
    """Offsets inside one document are 32-bit in the kernels (document starts and head rows of the LSE are 64-bit);
    so are window bounds such as ``m0 + BLOCK_M + window_right`` (windows are clamped below ``max_seqlen``)."""
    largest = max_seqlen * max(t.stride(0) for t in tensors)
    if largest >= 2**31 or max_seqlen >= 2**30:
        raise ValueError(
            f"a document of {max_seqlen} tokens with token stride {largest // max(max_seqlen, 1)} exceeds the "
            "kernels' 32-bit in-document offsets; split the document or use another backend"
        )


def clamp_window(window_left: int, window_right: int, max_seqlen: int) -> tuple[int, int]:
    """A window side that reaches past every document (``>= max_seqlen``) is unbounded (``-1``): same function,
    no masking work, and no 32-bit overflow of block bounds for sides near 2**31."""
    return tuple(-1 if side >= max_seqlen else side for side in (window_left, window_right))


def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (9, 0)


# --------------------------------------------------------------------------------------------------- launches
@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``jit(kernel)[grid](*args, **meta)``. Built apart from launching so that the compile test
    compiles exactly what a launch would (same arguments, hence the same specialization and configs)."""

    kernel: Callable[..., None]
    grid: tuple[int, int]
    args: tuple[Any, ...]
    meta: dict[str, Any]

    def __call__(self) -> None:
        jit(self.kernel)[self.grid](*self.args, **self.meta)


@dataclass(frozen=True)
class Design:
    """Which design of each kernel the launchers build. The defaults are the design steps of issue 15; ``before()``
    is the design they replaced, kept so that the GPU benchmark times both in one run (``bramley (triton, before)``
    in tools/bench_attention.py) until the new one has been measured.

    Attributes:
        split_loop: forward KV loop split into unmasked full tiles and masked boundary tiles (else one loop that
            decides per tile whether to mask).
        gqa_parallel: the backward runs one program per query head (else one program loops over its GQA group).
        two_blocks_per_sm: forward configs of ``_TWO_BLOCK_CONFIGS`` (registers capped so that two 8-warp blocks
            are resident per SM) where the table has one, else the one-block configs of ``_HALF_CONFIGS``.
        persistent_forward: the forward as a persistent kernel over a longest-first tile list
            (:func:`forward_tiles`). Off by default until a GPU run shows it pays (``bramley (triton,
            persistent)`` in tools/bench_attention.py).
    """

    split_loop: bool = True
    gqa_parallel: bool = True
    two_blocks_per_sm: bool = True
    persistent_forward: bool = False

    @staticmethod
    def before() -> Design:
        return Design(split_loop=False, gqa_parallel=False, two_blocks_per_sm=False)


DESIGN = Design()


def forward_launch(
    q, k, v, out, lse, cu, max_seqlen, scale, window_left, window_right, capability, design: Design | None = None
) -> Launch:
    """The forward kernel's launch on packed, validated tensors (``out``/``lse`` preallocated)."""
    design = design or DESIGN
    heads, head_dim = q.shape[1:]
    block_d = _block_d(head_dim)
    block_m, block_n, warps, stages = _configs("fwd", block_d, q.dtype, capability)
    extra = {}
    two_blocks = _TWO_BLOCK_CONFIGS.get((architecture(capability), q.dtype == torch.float32, block_d))
    # The persistent kernel's tile loop needs more registers than the 128-register cap leaves (16 bytes spill at d128).
    if design.two_blocks_per_sm and not design.persistent_forward and two_blocks is not None and not interpreting():
        block_m, block_n, warps, stages, extra["maxnreg"] = two_blocks
    args = (
        q, k, v, out, lse, cu,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), lse.stride(0),
        max_seqlen, heads // k.shape[1], scale * LOG2E, window_left, window_right,
    )  # fmt: skip
    meta = dict(
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        HAS_LEFT=window_left >= 0, HAS_RIGHT=window_right >= 0, **_dot_flags(q.dtype), SPLIT_LOOP=design.split_loop,
        num_warps=warps, num_stages=stages, **extra,
    )  # fmt: skip
    if not design.persistent_forward:
        return Launch(_fwd_kernel, ((cu.numel() - 1) * math.ceil(max_seqlen / block_m), heads), args, meta)
    tiles, count = forward_tiles(cu, max_seqlen, block_m, block_n, window_left, window_right)
    if interpreting() or q.device.type != "cuda":
        programs = 4
    else:
        programs = torch.cuda.get_device_properties(q.device).multi_processor_count
    programs = max(1, min(programs, tiles.numel() * heads))
    args = (*args[:6], tiles, count, *args[6:16], heads, *args[16:])
    return Launch(_fwd_persistent_kernel, (programs, 1), args, meta)


def forward_tiles(
    cu: torch.Tensor, max_seqlen: int, block_m: int, block_n: int, window_left: int, window_right: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The persistent forward's work list, built on the device (no host sync, capturable in a CUDA graph).

    Returns ``(tiles, count)``: int32 ids ``document * cdiv(max_seqlen, BLOCK_M) + block`` of the query blocks that
    hold rows, sorted by the number of keys they visit (most first, so the longest tiles start first and the short
    ones fill in at the end), then the empty blocks; ``count`` (int32, 1 element) is the number of non-empty ones.
    """
    num_m = max(1, math.ceil(max_seqlen / block_m))
    lengths = (cu[1:] - cu[:-1]).to(torch.int64)[:, None]
    m0 = (torch.arange(num_m, device=cu.device, dtype=torch.int64) * block_m)[None, :]
    lo = ((m0 - window_left).clamp(min=0) // block_n) * block_n if window_left >= 0 else torch.zeros_like(m0)
    hi = torch.minimum(m0 + block_m + window_right, lengths) if window_right >= 0 else lengths
    valid = m0 < lengths
    work = torch.where(valid, (hi - lo).clamp(min=0), -1)
    order = torch.argsort(work.flatten(), descending=True, stable=True)
    return order.to(torch.int32), valid.sum().to(torch.int32).reshape(1)


def _copy(dst: torch.Tensor, src: torch.Tensor) -> Callable[[], None]:
    """The final convert of an fp32 accumulator into its output (dtype cast, one pass)."""
    return lambda: dst.copy_(src)


def _group_sum(dst: torch.Tensor, src: torch.Tensor, group: int) -> Callable[[], None]:
    """Per-query-head fp32 ``(total, heads, d)`` -> the GQA group sums in ``dst`` ``(total, kv_heads, d)`` (a
    reduction in a fixed order: deterministic)."""
    return lambda: dst.copy_(src.view(src.shape[0], dst.shape[1], group, src.shape[2]).sum(2))


def _zero(*tensors: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        for t in tensors:
            t.zero_()

    return run


def backward_launches(
    grad_out, grad_lse, q, k, v, out, lse, delta, dq, dk, dv, cu, max_seqlen, scale, window_left, window_right,
    capability, deterministic: bool = False, design: Design | None = None,
) -> list[Callable[[], None]]:  # fmt: skip
    """The backward on packed, validated tensors, as a list of steps to run in order (kernel launches are
    :class:`Launch` objects; the rest are fp32-accumulator converts). Always first: the delta preprocess.

    ``deterministic=False``: one fused kernel per key block and query head (five matmuls; dQ, and dK/dV under GQA,
    added with fp32 atomics, so the summation order varies from run to run), then the converts. ``True``: the split
    backward, bit-identical across runs: a dK/dV kernel per key block (per query head, summed over each GQA group
    afterwards in a fixed order; or looping over the group with ``design.gqa_parallel=False``) and a dQ kernel per
    query block.
    """
    design = design or DESIGN
    total, heads, head_dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    batch = cu.numel() - 1
    block_d = _block_d(head_dim)
    dlse = grad_lse if grad_lse is not None else lse
    block_t = 16 if interpreting() else 32
    preprocess = Launch(
        _bwd_preprocess_kernel,
        (math.ceil(total / block_t), heads),
        (out, grad_out, dlse, delta, total, out.stride(0), out.stride(1), grad_out.stride(0), grad_out.stride(1),
         dlse.stride(0), delta.stride(0)),
        dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_T=block_t, HAS_DLSE=grad_lse is not None),
    )  # fmt: skip
    common = dict(
        HEAD_DIM=head_dim, BLOCK_D=block_d, HAS_LEFT=window_left >= 0, HAS_RIGHT=window_right >= 0,
        **_dot_flags(q.dtype),
    )  # fmt: skip
    steps: list[Callable[[], None]] = [preprocess]
    window = (window_left, window_right)
    strides_in = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), grad_out.stride(0),
                  grad_out.stride(1))  # fmt: skip
    if not deterministic:
        fp32 = torch.float32
        dq_acc = dq if dq.dtype == fp32 else torch.empty(dq.shape, dtype=fp32, device=dq.device)
        kv_atomic = group > 1
        dk_acc = dk if dk.dtype == fp32 or not kv_atomic else torch.empty(dk.shape, dtype=fp32, device=dk.device)
        dv_acc = dv if dv.dtype == fp32 or not kv_atomic else torch.empty(dv.shape, dtype=fp32, device=dv.device)
        steps.append(_zero(dq_acc, *((dk_acc, dv_acc) if kv_atomic else ())))
        block_m, block_n, warps, stages = _configs("bwd", block_d, q.dtype, capability)
        steps.append(Launch(
            _bwd_fused_kernel,
            (batch * math.ceil(max_seqlen / block_n), heads),
            (q, k, v, grad_out, lse, delta, dq_acc, dk_acc, dv_acc, cu, *strides_in,
             dq_acc.stride(0), dq_acc.stride(1), dk_acc.stride(0), dk_acc.stride(1), dv_acc.stride(0),
             dv_acc.stride(1), lse.stride(0), max_seqlen, group, scale * LOG2E, scale, *window),
            dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, KV_ATOMIC=kv_atomic,
                 **common),
        ))  # fmt: skip
        steps += [_copy(dst, src) for dst, src in ((dq, dq_acc), (dk, dk_acc), (dv, dv_acc)) if dst is not src]
        return steps

    per_head = group > 1 and design.gqa_parallel
    if per_head:
        dk_out = torch.empty((total, heads, head_dim), dtype=torch.float32, device=dk.device)
        dv_out = torch.empty((total, heads, head_dim), dtype=torch.float32, device=dv.device)
    else:
        dk_out, dv_out = dk, dv
    heads_per_program = 1 if per_head else group
    block_m, block_n, warps, stages = _configs("dkdv", block_d, q.dtype, capability)
    steps.append(Launch(
        _bwd_dkdv_kernel,
        (batch * math.ceil(max_seqlen / block_n), heads // heads_per_program),
        (q, k, v, grad_out, lse, delta, dk_out, dv_out, cu, *strides_in,
         dk_out.stride(0), dk_out.stride(1), dv_out.stride(0), dv_out.stride(1), lse.stride(0),
         max_seqlen, group, heads_per_program, scale * LOG2E, scale, *window),
        dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, **common),
    ))  # fmt: skip
    if per_head:
        steps += [_group_sum(dk, dk_out, group), _group_sum(dv, dv_out, group)]
    block_m, block_n, warps, stages = _configs("dq", block_d, q.dtype, capability)
    steps.append(Launch(
        _bwd_dq_kernel,
        (batch * math.ceil(max_seqlen / block_m), heads),
        (q, k, v, grad_out, lse, delta, dq, cu, *strides_in, dq.stride(0), dq.stride(1), lse.stride(0),
         max_seqlen, group, scale * LOG2E, scale, *window),
        dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps, num_stages=stages, **common),
    ))  # fmt: skip
    return steps


# --------------------------------------------------------------------------------------------------- launchers
def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int,
    scale: float,
    window_left: int,
    window_right: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward on validated inputs; returns ``(out, lse)`` like the reference path (dense or packed)."""
    dense_shape = q.shape if cu_seqlens is None else None
    q, k, v, cu = _as_packed(q, k, v, cu_seqlens)
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    total, heads, _ = q.shape
    _check_tile_offsets(max_seqlen, q, k, v)
    window_left, window_right = clamp_window(window_left, window_right, max_seqlen)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    if total > 0 and cu.numel() > 1 and max_seqlen > 0:
        forward_launch(q, k, v, out, lse, cu, max_seqlen, scale, window_left, window_right, _capability(q.device))()
    if dense_shape is not None:
        batch, seq = dense_shape[:2]
        return out.view(dense_shape), lse.view(heads, batch, seq).transpose(0, 1).contiguous()
    return out, lse


def backward(
    grad_out: torch.Tensor,
    grad_lse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int,
    scale: float,
    window_left: int,
    window_right: int,
    deterministic: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward: ``(dq, dk, dv)`` from the saved output and LSE (nothing of size length^2 is stored); fused
    with fp32 atomics, or split and bit-reproducible with ``deterministic`` (see :func:`backward_launches`)."""
    dense_shapes = (q.shape, k.shape) if cu_seqlens is None else None
    if dense_shapes is not None:
        batch, seq = q.shape[:2]
        lse = lse.transpose(0, 1).reshape(q.shape[2], batch * seq)
        if grad_lse is not None:
            grad_lse = grad_lse.transpose(0, 1).reshape(q.shape[2], batch * seq)
        grad_out = grad_out.reshape(batch * seq, *grad_out.shape[2:])
        out = out.reshape(batch * seq, *out.shape[2:])
    q, k, v, cu = _as_packed(q, k, v, cu_seqlens)
    q, k, v, out, grad_out = (_last_dim_contiguous(t) for t in (q, k, v, out, grad_out))
    lse = lse.contiguous()
    total = q.shape[0]
    _check_tile_offsets(max_seqlen, q, k, v, out, grad_out)
    window_left, window_right = clamp_window(window_left, window_right, max_seqlen)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if total > 0 and cu.numel() > 1 and max_seqlen > 0:
        grad_lse = grad_lse.to(torch.float32).contiguous() if grad_lse is not None else None
        delta = torch.empty_like(lse)
        steps = backward_launches(grad_out, grad_lse, q, k, v, out, lse, delta, dq, dk, dv, cu, max_seqlen, scale,
                                  window_left, window_right, _capability(q.device), deterministic)  # fmt: skip
        for step in steps:
            step()
    else:
        dq.zero_(), dk.zero_(), dv.zero_()
    if dense_shapes is not None:
        return dq.view(dense_shapes[0]), dk.view(dense_shapes[1]), dv.view(dense_shapes[1])
    return dq, dk, dv
