"""One LRKV decode step straight from the compressed cache, split over the sequence (flash-decoding).

A split kernel streams a chunk of one sequence for a group of heads and never writes per-head K/V;
values use associativity, so a split keeps `p·V_shared` and `p·R_v,h` per head, and the reduce kernel
merges the splits' online-softmax partials and applies B_v,h once. Three split kernels compute the logit:

- "rebuilt": the key tile is rebuilt on chip (`R_k tile @ B_k,h` on the tensor cores, plus K_shared),
  RoPE enters as a rotated query and the norm as a 1/rms scale: O(d_h) elementwise work per (token, head).
- "folded": the logit is linear in each cached row, so no key is rebuilt. With k_h = K_shared + R_k,h B_k,h,
  RoPE as the rotation R_t and the norm as 1/rms(k_h):

      q·R_t k_h = q·RoPE_t(K_shared) + rowsum(R_k,h ⊙ ([cos_t | sin_t] M_h)),
      ‖k_h‖²    = ‖K_shared‖² + rowsum(R_k,h ⊙ (2 K_shared B_k,hᵀ + R_k,h B_k,h B_k,hᵀ)),

  where M_h (d_h × r) folds q_h into B_k,h. Every product runs on the tensor cores, the elementwise work
  per (token, head) is O(r), and the O(d_h) work (RoPE of K_shared, ‖K_shared‖²) is done once per token
  for the group. A prepare kernel builds M_h per (sequence, head), 2B_k,hᵀ and B_k,h B_k,hᵀ per head;
  the split programs stream those from L2 for every tile, which is what costs at large r. With cached key
  scales and small r, one product serves the logit terms of a chunk of heads side by side (LOGIT_COLS).
- "grouped": the folded logit without norm work, for a group of heads whose M_h stay loaded in the program;
  one product per tile serves the group, and per-head row sums are a product with a 0/1 matrix. The O(d_h)
  work per token is repeated for every group, so it pays only at small r, where groups are large: the launcher
  picks it at r ≤ 16 for short contexts with key scales (folded with pipelined head loops is faster over long ones).

Given the keys' cached 1/rms (`k_scale`, a spec's `key_scales`), every kernel scales the logit by it and
skips the norm's work: the sums of squares (rebuilt) or the norm's two products per head (folded); grouped
takes the norm only this way.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..ops import EPS, rope_frequencies
from .tiles import dot_tile, interpreted

LOG2E = 1.4426950408889634


@triton.jit
def _mma(a, b, acc, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    # acc + a @ b; the interpreter multiplies raw bf16 bit patterns, so it gets fp32 operands (DOT_FP32)
    if DOT_FP32:
        a, b = a.to(tl.float32), b.to(tl.float32)
    return tl.dot(a, b, acc=acc, input_precision=PRECISION)


@triton.jit
def _program_chunk(LENGTHS, split_len, HEADS: tl.constexpr):
    # A split program's sequence, split, first head and token range [start, end) (empty past the length).
    g, split, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = split * split_len
    end = tl.minimum(start + split_len, tl.load(LENGTHS + b).to(tl.int32))
    return b, split, g * HEADS, start, end


@triton.jit
def _rope_rows(INV_FREQ, COS, SIN, offs_t, offs_d, d_ok, HALF: tl.constexpr):
    # RoPE frequencies and the cos/sin of a tile's row offsets (the tile's own angle is added per tile)
    inv_freq = tl.load(INV_FREQ + offs_d, mask=d_ok, other=0.0)
    table = offs_t[:, None] * HALF + offs_d[None, :]
    return (inv_freq, tl.load(COS + table, mask=d_ok[None, :], other=0.0),
            tl.load(SIN + table, mask=d_ok[None, :], other=0.0))


@triton.jit
def _half_rows(X, b, t, tile, offs_d, sx_b, sx_t, HALF: tl.constexpr):
    # A tile's K_shared or V_shared rows, first and second half of d_h (zero outside the tile's mask)
    x = X + b * sx_b + t[:, None] * sx_t + offs_d[None, :]
    return tl.load(x, mask=tile, other=0.0), tl.load(x + HALF, mask=tile, other=0.0)


@triton.jit
def _key_scales(KSC, b, t, t_ok, h0, offs_h, h_ok, ssc_b, ssc_t):
    # A tile's cached 1/rms of each key, (BLOCK_T, HEADS_P)
    return tl.load(KSC + b * ssc_b + t[:, None] * ssc_t + (h0 + offs_h)[None, :],
                   mask=t_ok[:, None] & h_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _online_softmax(s, m, l):
    # One tile's online-softmax step over logits s (BLOCK_T, HEADS_P): p, the factor alpha that rescales the
    # earlier partials, and the new running max and sum per head
    m_new = tl.maximum(m, tl.max(s, axis=0))
    alpha = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[None, :])
    return p, alpha, m_new, l * alpha + tl.sum(p, axis=0)


@triton.jit
def _shared_values(p, alpha, acc1, acc2, v1, v2, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    # p·V_shared for every head of the group (V_shared's rows v1, v2); returns p as (HEADS_P, BLOCK_T) rows
    # in the cache's dtype, for the caller's p·R_v,h.
    pv = tl.trans(p).to(v1.dtype)
    acc1 = _mma(pv, v1, acc1 * alpha[:, None], DOT_FP32, PRECISION)
    acc2 = _mma(pv, v2, acc2 * alpha[:, None], DOT_FP32, PRECISION)
    return pv, acc1, acc2


@triton.jit
def _shared_logits(ks1_raw, ks2_raw, t0, inv_freq, cos_off, sin_off, no_turn, q1, q2, BLOCK_T: tl.constexpr,
                   HEADS_P: tl.constexpr, ROPE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    # q·RoPE_t(K_shared) for every head of the group as a (BLOCK_T, HEADS_P) product, from the tile's K_shared
    # rows (by halves) and its cos/sin by angle addition (without RoPE: cos 1, and sin never read).
    ks1, ks2 = ks1_raw.to(tl.float32), ks2_raw.to(tl.float32)
    cos_t, sin_t = no_turn, no_turn
    if ROPE:
        base = t0 * inv_freq
        c0, s0 = tl.cos(base), tl.sin(base)
        cos_t = cos_off * c0[None, :] - sin_off * s0[None, :]
        sin_t = sin_off * c0[None, :] + cos_off * s0[None, :]
        ks1, ks2 = ks1 * cos_t - ks2 * sin_t, ks1 * sin_t + ks2 * cos_t
    op = q1.dtype
    s = _mma(ks1.to(op), q1, tl.zeros((BLOCK_T, HEADS_P), tl.float32), DOT_FP32, PRECISION)
    s = _mma(ks2.to(op), q2, s, DOT_FP32, PRECISION)
    return s, cos_t, sin_t


@triton.jit
def _store_partials(M, L, ACC_S, ACC_R, m, l, acc1, acc2, acc_r, b, n_heads, h0, split, n_splits, offs_h, h_ok,
                    offs_d, d_ok, rank_cols, acc_r_ok, HALF: tl.constexpr, R: tl.constexpr):
    # Partials of head h, split s of sequence b live at row (b·H + h)·n_splits + s; acc_r's column c holds
    # rank rank_cols[c] of the latent, where acc_r_ok holds.
    row = (b * n_heads + h0 + offs_h) * n_splits + split
    tl.store(M + row, m, mask=h_ok)
    tl.store(L + row, l, mask=h_ok)
    acc = ACC_S + row[:, None] * (2 * HALF) + offs_d[None, :]
    hd_ok = h_ok[:, None] & d_ok[None, :]
    tl.store(acc, acc1, mask=hd_ok)
    tl.store(acc + HALF, acc2, mask=hd_ok)
    if R > 0:
        tl.store(ACC_R + row[:, None] * R + rank_cols[None, :], acc_r, mask=acc_r_ok)


@triton.jit
def _prepare_kernel(Q, KUP, MQ, BT2, GRAM, sq_b, sq_h, sup_h, sup_r, n_heads,
                    HALF: tl.constexpr, HALF_P: tl.constexpr, R: tl.constexpr, R_P: tl.constexpr,
                    NORM_FACTORS: tl.constexpr):
    # M_h = [M_cos; M_sin] (d_h × r) with q_h folded into B_k,h, from q·R_t(x) for x = r B_k,h:
    # M_cos[i, j] = q1_i B1_ji + q2_i B2_ji and M_sin[i, j] = q2_i B1_ji - q1_i B2_ji (half-split RoPE).
    h, b = tl.program_id(0), tl.program_id(1)
    offs_d = tl.arange(0, HALF_P)
    offs_r = tl.arange(0, R_P)
    d_ok = offs_d < HALF
    r_ok = offs_r < R
    dr_ok = d_ok[:, None] & r_ok[None, :]
    q = Q + b * sq_b + h * sq_h + offs_d
    q1 = tl.load(q, mask=d_ok, other=0.0).to(tl.float32)[:, None]
    q2 = tl.load(q + HALF, mask=d_ok, other=0.0).to(tl.float32)[:, None]
    up = KUP + h * sup_h + offs_r[None, :] * sup_r + offs_d[:, None]  # B_k,hᵀ, by halves of d_h
    b1 = tl.load(up, mask=dr_ok, other=0.0).to(tl.float32)
    b2 = tl.load(up + HALF, mask=dr_ok, other=0.0).to(tl.float32)
    mq = MQ + ((b * n_heads + h) * 2 * HALF + offs_d[:, None]) * R + offs_r[None, :]
    tl.store(mq, (q1 * b1 + q2 * b2).to(MQ.dtype.element_ty), mask=dr_ok)
    tl.store(mq + HALF * R, (q2 * b1 - q1 * b2).to(MQ.dtype.element_ty), mask=dr_ok)
    if NORM_FACTORS and b == 0:  # the per-head factors of the norm, shared by every sequence
        bt = BT2 + (h * 2 * HALF + offs_d[:, None]) * R + offs_r[None, :]
        tl.store(bt, (2 * b1).to(BT2.dtype.element_ty), mask=dr_ok)
        tl.store(bt + HALF * R, (2 * b2).to(BT2.dtype.element_ty), mask=dr_ok)
        gram = tl.dot(tl.trans(b1), b1, input_precision="ieee")
        gram = tl.dot(tl.trans(b2), b2, acc=gram, input_precision="ieee")
        tl.store(GRAM + (h * R + offs_r[:, None]) * R + offs_r[None, :], gram.to(GRAM.dtype.element_ty),
                 mask=r_ok[:, None] & r_ok[None, :])


@triton.jit
def _split_folded_kernel(Q, KS, VS, RK, RV, KSC, MQ, BT2, GRAM, LENGTHS, INV_FREQ, COS, SIN, M, L, ACC_S, ACC_R,
                         sq_b, sq_h, sks_b, sks_t, svs_b, svs_t, srk_b, srk_t, srk_h, srv_b, srv_t, srv_h,
                         ssc_b, ssc_t, split_len, n_splits, n_heads, qk_scale,
                         HEADS: tl.constexpr, HEADS_P: tl.constexpr,
                         HALF: tl.constexpr, HALF_P: tl.constexpr, R: tl.constexpr, R_P: tl.constexpr,
                         BLOCK_T: tl.constexpr, NORM: tl.constexpr, SCALED: tl.constexpr, ROPE: tl.constexpr,
                         DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, EPSILON: tl.constexpr,
                         SUMS_BY_DOT: tl.constexpr, EXACT_SUMS: tl.constexpr, HEAD_STAGES: tl.constexpr,
                         VALUE_COLS: tl.constexpr, LOGIT_COLS: tl.constexpr, EARLY_LOADS: tl.constexpr):
    # One program streams a chunk of one sequence for a group of HEADS heads. Per-head tensors are
    # (BLOCK_T, HEADS_P) with one column per head, or (HEADS_P, ·) with one row per head.
    b, split, h0, start, end = _program_chunk(LENGTHS, split_len, HEADS)
    op = MQ.dtype.element_ty  # fp16 beside a 16-bit cache: RoPE terms in [-1, 1] keep 11 bits

    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HALF_P)
    offs_r = tl.arange(0, R_P)
    offs_h = tl.arange(0, HEADS_P)
    d_ok = offs_d < HALF
    r_ok = offs_r < R
    h_ok = offs_h < HEADS  # the host picks HEADS dividing the head count

    q = Q + b * sq_b + (h0 + offs_h)[None, :] * sq_h + offs_d[:, None]  # the group's queries as columns
    q1 = tl.load(q, mask=d_ok[:, None] & h_ok[None, :], other=0.0).to(op)
    q2 = tl.load(q + HALF, mask=d_ok[:, None] & h_ok[None, :], other=0.0).to(op)
    # cos/sin of a tile's rows by angle addition: the tile's own angle plus cached row offsets; without
    # rotation cos is 1 and sin 0, so [cos | sin] M_h sums M_cos's rows
    inv_freq, cos_off, sin_off = _rope_rows(INV_FREQ, COS, SIN, offs_t, offs_d, d_ok, HALF)
    no_turn = tl.zeros((BLOCK_T, HALF_P), tl.float32) + 1.0

    m = tl.full((HEADS_P,), float("-inf"), tl.float32)
    l = tl.zeros((HEADS_P,), tl.float32)
    acc1 = tl.zeros((HEADS_P, HALF_P), tl.float32)  # p·V_shared, first and second half of d_h
    acc2 = tl.zeros((HEADS_P, HALF_P), tl.float32)
    # p·R_v,h, one row per head: R_P columns from a loop over heads, or every head's latent side by side
    # (column c: head c // R_P, rank c % R_P) from one product, of which each row keeps its own head's block
    offs_v = tl.arange(0, VALUE_COLS)
    v_head, v_rank = offs_v // R_P, offs_v % R_P
    v_ok = (v_head < HEADS) & (v_rank < R)
    acc_r = tl.zeros((HEADS_P, VALUE_COLS), tl.float32)
    mr_ok = d_ok[:, None] & r_ok[None, :]
    offs_k = tl.arange(0, LOGIT_COLS)  # a chunk's logit columns: head c + k // R_P, rank k % R_P
    k_head, k_rank = offs_k // R_P, offs_k % R_P

    for t0 in range(start, end, BLOCK_T):
        t = t0 + offs_t
        t_ok = t < end
        tile = t_ok[:, None] & d_ok[None, :]
        ks1_raw, ks2_raw = _half_rows(KS, b, t, tile, offs_d, sks_b, sks_t, HALF)
        s, cos_t, sin_t = _shared_logits(ks1_raw, ks2_raw, t0, inv_freq, cos_off, sin_off, no_turn, q1, q2,
                                         BLOCK_T, HEADS_P, ROPE, DOT_FP32, PRECISION)
        ks1, ks2 = ks1_raw.to(tl.float32), ks2_raw.to(tl.float32)
        if EARLY_LOADS:  # in flight during the head loops, which keep the compiler from pipelining this loop
            v1, v2 = _half_rows(VS, b, t, tile, offs_d, svs_b, svs_t, HALF)
            if SCALED:
                k_scale = _key_scales(KSC, b, t, t_ok, h0, offs_h, h_ok, ssc_b, ssc_t)
        if NORM and not SCALED:
            sq = tl.zeros((BLOCK_T, HEADS_P), tl.float32) + tl.sum(ks1 * ks1 + ks2 * ks2, axis=1)[:, None]
        if R > 0:  # ranks below 16 ride zero-padded on the tensor cores (the padding adds exact zeros)
            cos_op = cos_t.to(op)
            if ROPE:
                sin_op = sin_t.to(op)
        if R > 0 and SUMS_BY_DOT:  # the logit terms of a chunk of heads side by side, summed per head by a product
            tl.static_assert(SCALED or not NORM, "chunks of heads compute no norm: key scales only")
            for c in tl.range(0, HEADS, LOGIT_COLS // R_P, num_stages=HEAD_STAGES):
                k_ok = (c + k_head < HEADS) & (k_rank < R)
                rk = tl.load(RK + b * srk_b + t[:, None] * srk_t + ((h0 + c + k_head) * srk_h + k_rank)[None, :],
                             mask=t_ok[:, None] & k_ok[None, :], other=0.0)
                mq = MQ + ((b * n_heads + h0 + c + k_head)[None, :] * 2 * HALF + offs_d[:, None]) * R + k_rank[None, :]
                mk_ok = d_ok[:, None] & k_ok[None, :]
                w = _mma(cos_op, tl.load(mq, mask=mk_ok, other=0.0), tl.zeros((BLOCK_T, LOGIT_COLS), tl.float32),
                         DOT_FP32, PRECISION)
                if ROPE:
                    w = _mma(sin_op, tl.load(mq + HALF * R, mask=mk_ok, other=0.0), w, DOT_FP32, PRECISION)
                to_head = tl.where(k_ok[:, None] & (offs_h[None, :] == c + k_head[:, None]), 1.0, 0.0)
                s += _head_sums(rk.to(tl.float32) * w, to_head.to(tl.bfloat16), EXACT_SUMS)
        elif R > 0:  # one head at a time
            for j in tl.range(HEADS, num_stages=HEAD_STAGES):  # the next heads' loads in flight
                h = h0 + j
                rk = tl.load(RK + b * srk_b + t[:, None] * srk_t + h * srk_h + offs_r[None, :],
                             mask=t_ok[:, None] & r_ok[None, :], other=0.0)
                mq = MQ + ((b * n_heads + h) * 2 * HALF + offs_d[:, None]) * R + offs_r[None, :]
                w = _mma(cos_op, tl.load(mq, mask=mr_ok, other=0.0), tl.zeros((BLOCK_T, R_P), tl.float32),
                         DOT_FP32, PRECISION)
                if ROPE:
                    w = _mma(sin_op, tl.load(mq + HALF * R, mask=mr_ok, other=0.0), w, DOT_FP32, PRECISION)
                rk32 = rk.to(tl.float32)
                s = tl.where(offs_h[None, :] == j, s + tl.sum(rk32 * w, axis=1)[:, None], s)
                if NORM and not SCALED:
                    bt = BT2 + (h * 2 * HALF + offs_d[:, None]) * R + offs_r[None, :]
                    n = _mma(ks1_raw, tl.load(bt, mask=mr_ok, other=0.0), tl.zeros((BLOCK_T, R_P), tl.float32),
                             DOT_FP32, PRECISION)
                    n = _mma(ks2_raw, tl.load(bt + HALF * R, mask=mr_ok, other=0.0), n, DOT_FP32, PRECISION)
                    gram = tl.load(GRAM + (h * R + offs_r[:, None]) * R + offs_r[None, :],
                                   mask=r_ok[:, None] & r_ok[None, :], other=0.0)
                    n = _mma(rk, gram, n, DOT_FP32, PRECISION)
                    sq = tl.where(offs_h[None, :] == j, sq + tl.sum(rk32 * n, axis=1)[:, None], sq)
        if SCALED:
            if not EARLY_LOADS:
                k_scale = _key_scales(KSC, b, t, t_ok, h0, offs_h, h_ok, ssc_b, ssc_t)
            s *= k_scale
        elif NORM:
            s *= tl.rsqrt(sq / (2 * HALF) + EPSILON)
        s = tl.where(t_ok[:, None], s * qk_scale, float("-inf"))

        p, alpha, m, l = _online_softmax(s, m, l)
        if not EARLY_LOADS:
            v1, v2 = _half_rows(VS, b, t, tile, offs_d, svs_b, svs_t, HALF)
        pv, acc1, acc2 = _shared_values(p, alpha, acc1, acc2, v1, v2, DOT_FP32, PRECISION)
        if R > 0:
            acc_r = acc_r * alpha[:, None]
            if VALUE_COLS > R_P:
                rv = tl.load(RV + b * srv_b + t[:, None] * srv_t + ((h0 + v_head) * srv_h + v_rank)[None, :],
                             mask=t_ok[:, None] & v_ok[None, :], other=0.0)
                acc_r = _mma(pv, rv, acc_r, DOT_FP32, PRECISION)
            else:  # each head's row of p against its own R_v,h (the other rows are zero)
                for j in tl.range(HEADS, num_stages=HEAD_STAGES):
                    rv = tl.load(RV + b * srv_b + t[:, None] * srv_t + (h0 + j) * srv_h + offs_r[None, :],
                                 mask=t_ok[:, None] & r_ok[None, :], other=0.0)
                    acc_r = _mma(tl.where(offs_h[:, None] == j, pv, 0.0), rv, acc_r, DOT_FP32, PRECISION)

    own = h_ok[:, None] & v_ok[None, :]
    if VALUE_COLS > R_P:
        own = own & (offs_h[:, None] == v_head[None, :])
    _store_partials(M, L, ACC_S, ACC_R, m, l, acc1, acc2, acc_r, b, n_heads, h0, split, n_splits, offs_h, h_ok,
                    offs_d, d_ok, v_rank, own, HALF, R)


@triton.jit
def _head_sums(x, ones, EXACT: tl.constexpr):
    # Per-head sums of x's columns as a product with the 0/1 matrix `ones` (column → head), in fp32 when
    # EXACT, else as bf16 high and low parts: 16 significant bits, and fp32's range, so the terms of large
    # pre-norm keys cannot overflow
    if EXACT:
        return tl.dot(x, ones.to(x.dtype), input_precision="ieee")
    high = x.to(tl.bfloat16)
    low = (x - high.to(tl.float32)).to(tl.bfloat16)
    return tl.dot(low, ones, acc=tl.dot(high, ones))


@triton.jit
def _split_grouped_kernel(Q, KS, VS, RK, RV, KSC, MQ, LENGTHS, INV_FREQ, COS, SIN, M, L, ACC_S, ACC_R,
                          sq_b, sq_h, sks_b, sks_t, svs_b, svs_t, srk_b, srk_t, srk_h, srv_b, srv_t, srv_h,
                          ssc_b, ssc_t, split_len, n_splits, n_heads, qk_scale,
                          HEADS: tl.constexpr, HEADS_P: tl.constexpr, COLS: tl.constexpr,
                          HALF: tl.constexpr, HALF_P: tl.constexpr, R: tl.constexpr, R_P: tl.constexpr,
                          BLOCK_T: tl.constexpr, SCALED: tl.constexpr, ROPE: tl.constexpr,
                          DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, EXACT_SUMS: tl.constexpr):
    # The folded logit for a group of HEADS heads whose latents side by side are COLS columns wide (column c:
    # head c // R_P, rank c % R_P): the group's M_h are loaded once per program and every tile takes one
    # product [cos | sin] (BLOCK_T, d_h) @ M_group (d_h, COLS), with the per-head row sums and p·R_v for
    # the whole group as one product each. No norm work: cached key scales, or no norm.
    b, split, h0, start, end = _program_chunk(LENGTHS, split_len, HEADS)
    op = MQ.dtype.element_ty

    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HALF_P)
    offs_h = tl.arange(0, HEADS_P)
    offs_c = tl.arange(0, COLS)
    col_head, col_rank = offs_c // R_P, offs_c % R_P
    d_ok = offs_d < HALF
    h_ok = offs_h < HEADS
    c_ok = (col_head < HEADS) & (col_rank < R)

    q = Q + b * sq_b + (h0 + offs_h)[None, :] * sq_h + offs_d[:, None]
    q1 = tl.load(q, mask=d_ok[:, None] & h_ok[None, :], other=0.0).to(op)
    q2 = tl.load(q + HALF, mask=d_ok[:, None] & h_ok[None, :], other=0.0).to(op)
    inv_freq, cos_off, sin_off = _rope_rows(INV_FREQ, COS, SIN, offs_t, offs_d, d_ok, HALF)
    no_turn = tl.zeros((BLOCK_T, HALF_P), tl.float32) + 1.0
    if R > 0:
        mq = MQ + ((b * n_heads + h0 + col_head)[None, :] * 2 * HALF + offs_d[:, None]) * R + col_rank[None, :]
        m_cos = tl.load(mq, mask=d_ok[:, None] & c_ok[None, :], other=0.0)
        m_sin = tl.load(mq + HALF * R, mask=d_ok[:, None] & c_ok[None, :], other=0.0)
        ones = tl.where(col_head[:, None] == offs_h[None, :], 1.0, 0.0).to(tl.bfloat16)
        rk_cols = (h0 + col_head) * srk_h + col_rank
        rv_cols = (h0 + col_head) * srv_h + col_rank

    m = tl.full((HEADS_P,), float("-inf"), tl.float32)
    l = tl.zeros((HEADS_P,), tl.float32)
    acc1 = tl.zeros((HEADS_P, HALF_P), tl.float32)
    acc2 = tl.zeros((HEADS_P, HALF_P), tl.float32)
    acc_r = tl.zeros((HEADS_P, COLS), tl.float32)  # row j against every head's R_v; its own block is kept

    for t0 in range(start, end, BLOCK_T):
        t = t0 + offs_t
        t_ok = t < end
        tile = t_ok[:, None] & d_ok[None, :]
        ks1, ks2 = _half_rows(KS, b, t, tile, offs_d, sks_b, sks_t, HALF)
        s, cos_t, sin_t = _shared_logits(ks1, ks2, t0, inv_freq, cos_off, sin_off, no_turn, q1, q2, BLOCK_T,
                                         HEADS_P, ROPE, DOT_FP32, PRECISION)
        if R > 0:
            w = _mma(cos_t.to(op), m_cos, tl.zeros((BLOCK_T, COLS), tl.float32), DOT_FP32, PRECISION)
            if ROPE:
                w = _mma(sin_t.to(op), m_sin, w, DOT_FP32, PRECISION)
            rk = tl.load(RK + b * srk_b + t[:, None] * srk_t + rk_cols[None, :], mask=t_ok[:, None] & c_ok[None, :],
                         other=0.0)
            s += _head_sums(rk.to(tl.float32) * w, ones, EXACT_SUMS)
        if SCALED:
            s *= _key_scales(KSC, b, t, t_ok, h0, offs_h, h_ok, ssc_b, ssc_t)
        s = tl.where(t_ok[:, None], s * qk_scale, float("-inf"))

        p, alpha, m, l = _online_softmax(s, m, l)
        v1, v2 = _half_rows(VS, b, t, tile, offs_d, svs_b, svs_t, HALF)
        pv, acc1, acc2 = _shared_values(p, alpha, acc1, acc2, v1, v2, DOT_FP32, PRECISION)
        if R > 0:
            rv = tl.load(RV + b * srv_b + t[:, None] * srv_t + rv_cols[None, :], mask=t_ok[:, None] & c_ok[None, :],
                         other=0.0)
            acc_r = _mma(pv, rv, acc_r * alpha[:, None], DOT_FP32, PRECISION)

    own = (offs_h[:, None] == col_head[None, :]) & h_ok[:, None] & c_ok[None, :]
    _store_partials(M, L, ACC_S, ACC_R, m, l, acc1, acc2, acc_r, b, n_heads, h0, split, n_splits, offs_h, h_ok,
                    offs_d, d_ok, col_rank, own, HALF, R)


@triton.jit
def _split_rebuilt_kernel(Q, KS, VS, RK, RV, KSC, KUP, LENGTHS, INV_FREQ, COS, SIN, M, L, ACC_S, ACC_R,
                          sq_b, sq_h, sks_b, sks_t, svs_b, svs_t, srk_b, srk_t, srk_h, srv_b, srv_t, srv_h,
                          ssc_b, ssc_t, sup_h, sup_r, split_len, n_splits, n_heads, qk_scale,
                          HEADS: tl.constexpr, HEADS_P: tl.constexpr,
                          HALF: tl.constexpr, HALF_P: tl.constexpr, R: tl.constexpr, R_P: tl.constexpr,
                          BLOCK_T: tl.constexpr, NORM: tl.constexpr, SCALED: tl.constexpr, ROPE: tl.constexpr,
                          DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, EPSILON: tl.constexpr):
    # The key tile is rebuilt per head (R_k tile @ B_k,h on the tensor cores, plus K_shared); RoPE
    # enters as a query rotated per row and the norm as a logit scale: O(d_h) elementwise work per
    # (token, head). The HEADS heads of a group are unrolled and share the K_shared/V_shared tiles.
    b, split, h0, start, end = _program_chunk(LENGTHS, split_len, HEADS)

    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HALF_P)
    offs_r = tl.arange(0, R_P)
    offs_h = tl.arange(0, HEADS_P)
    d_ok = offs_d < HALF
    r_ok = offs_r < R
    h_ok = offs_h < HEADS  # the host picks HEADS dividing the head count

    if ROPE:  # rotations by a tile's row offsets; the tile's own angle is added per tile (angle addition)
        inv_freq, cos_off, sin_off = _rope_rows(INV_FREQ, COS, SIN, offs_t, offs_d, d_ok, HALF)

    # Online-softmax state per head of the group (rows of padding heads stay finite and unused).
    m = tl.where(h_ok, float("-inf"), 0.0)
    l = tl.zeros((HEADS_P,), tl.float32)
    acc1 = tl.zeros((HEADS_P, HALF_P), tl.float32)  # p·V_shared, first and second half of d_h
    acc2 = tl.zeros((HEADS_P, HALF_P), tl.float32)
    acc_r = tl.zeros((HEADS_P, R_P), tl.float32)    # p·R_v,h
    s_pad = tl.where(h_ok, float("-inf"), 0.0)

    for t0 in range(start, end, BLOCK_T):
        t = t0 + offs_t
        t_ok = t < end
        tile = t_ok[:, None] & d_ok[None, :]
        ks1, ks2 = _half_rows(KS, b, t, tile, offs_d, sks_b, sks_t, HALF)
        ks1, ks2 = ks1.to(tl.float32), ks2.to(tl.float32)
        if ROPE:
            base = t0 * inv_freq
            c0, s0 = tl.cos(base), tl.sin(base)
        s_all = tl.zeros((BLOCK_T, HEADS_P), tl.float32) + s_pad[None, :]
        for j in tl.static_range(HEADS):
            h = h0 + j
            q = Q + b * sq_b + h * sq_h + offs_d
            q1 = tl.load(q, mask=d_ok, other=0.0).to(tl.float32)
            q2 = tl.load(q + HALF, mask=d_ok, other=0.0).to(tl.float32)
            k1, k2 = ks1, ks2
            if R > 0:  # ranks below 16 ride zero-padded on the tensor cores (the padding adds exact zeros)
                up = KUP + h * sup_h + offs_r[:, None] * sup_r + offs_d[None, :]
                up_ok = r_ok[:, None] & d_ok[None, :]
                up1 = tl.load(up, mask=up_ok, other=0.0)
                up2 = tl.load(up + HALF, mask=up_ok, other=0.0)
                rk = tl.load(RK + b * srk_b + t[:, None] * srk_t + h * srk_h + offs_r[None, :],
                             mask=t_ok[:, None] & r_ok[None, :], other=0.0)
                if DOT_FP32:
                    up1, up2, rk = up1.to(tl.float32), up2.to(tl.float32), rk.to(tl.float32)
                k1 = tl.dot(rk, up1, acc=k1, input_precision=PRECISION)
                k2 = tl.dot(rk, up2, acc=k2, input_precision=PRECISION)
            # RoPE and the norm act on the key, but the logit only needs q·RoPE_t(k)/rms(k): rotate q
            # instead (q·R_t k = k·R_tᵀ q) and scale the logit by 1/rms.
            if ROPE:
                a0, b0 = q1 * c0 + q2 * s0, q2 * c0 - q1 * s0
                qa = cos_off * a0[None, :] + sin_off * b0[None, :]
                qb = cos_off * b0[None, :] - sin_off * a0[None, :]
                s = tl.sum(k1 * qa + k2 * qb, axis=1)
            else:
                s = tl.sum(k1 * q1[None, :] + k2 * q2[None, :], axis=1)
            if SCALED:
                s *= tl.load(KSC + b * ssc_b + t * ssc_t + h, mask=t_ok, other=0.0).to(tl.float32)
            elif NORM:
                s *= tl.rsqrt(tl.sum(k1 * k1 + k2 * k2, axis=1) / (2 * HALF) + EPSILON)
            s = tl.where(t_ok, s * qk_scale, float("-inf"))
            s_all = tl.where(offs_h[None, :] == j, s[:, None], s_all)

        p, alpha, m, l = _online_softmax(s_all, m, l)
        v1, v2 = _half_rows(VS, b, t, tile, offs_d, svs_b, svs_t, HALF)
        pv, acc1, acc2 = _shared_values(p, alpha, acc1, acc2, v1, v2, DOT_FP32, PRECISION)
        if R > 0:  # each head's row of p against its own R_v,h (the other rows are zero)
            acc_r = acc_r * alpha[:, None]
            for j in tl.static_range(HEADS):
                h = h0 + j
                rv = tl.load(RV + b * srv_b + t[:, None] * srv_t + h * srv_h + offs_r[None, :],
                             mask=t_ok[:, None] & r_ok[None, :], other=0.0)
                acc_r = _mma(tl.where(offs_h[:, None] == j, pv, 0.0), rv, acc_r, DOT_FP32, PRECISION)

    _store_partials(M, L, ACC_S, ACC_R, m, l, acc1, acc2, acc_r, b, n_heads, h0, split, n_splits, offs_h, h_ok,
                    offs_d, d_ok, offs_r, h_ok[:, None] & r_ok[None, :], HALF, R)


@triton.jit
def _reduce_kernel(M, L, ACC_S, ACC_R, VUP, LENGTHS, OUT, so_b, so_h, sup_h, sup_r, split_len, n_splits,
                   HALF: tl.constexpr, HALF_P: tl.constexpr, R: tl.constexpr, R_P: tl.constexpr,
                   BLOCK_S: tl.constexpr):
    h, b = tl.program_id(0), tl.program_id(1)
    n_heads = tl.num_programs(0)
    n_valid = tl.cdiv(tl.load(LENGTHS + b).to(tl.int32), split_len)  # splits past the length hold nothing
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HALF_P)
    offs_r = tl.arange(0, R_P)
    d_ok = offs_d < HALF
    r_ok = offs_r < R

    m = tl.full([], float("-inf"), tl.float32)
    l = tl.zeros([], tl.float32)
    acc1 = tl.zeros((HALF_P,), tl.float32)
    acc2 = tl.zeros((HALF_P,), tl.float32)
    acc_r = tl.zeros((R_P,), tl.float32)
    first = (b * n_heads + h) * n_splits
    for s0 in range(0, n_valid, BLOCK_S):  # a block of splits at a time: loads in flight together
        s_ok = s0 + offs_s < n_valid
        rows = first + s0 + offs_s
        m_s = tl.load(M + rows, mask=s_ok, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(m_s, axis=0))
        old = tl.exp2(m - m_new)
        w = tl.where(s_ok, tl.exp2(m_s - m_new), 0.0)
        m = m_new
        l = l * old + tl.sum(w * tl.load(L + rows, mask=s_ok, other=0.0), axis=0)
        acc = ACC_S + rows[:, None] * (2 * HALF) + offs_d[None, :]
        sd_ok = s_ok[:, None] & d_ok[None, :]
        acc1 = acc1 * old + tl.sum(w[:, None] * tl.load(acc, mask=sd_ok, other=0.0), axis=0)
        acc2 = acc2 * old + tl.sum(w[:, None] * tl.load(acc + HALF, mask=sd_ok, other=0.0), axis=0)
        if R > 0:
            acc_lat = ACC_R + rows[:, None] * R + offs_r[None, :]
            acc_r = acc_r * old + tl.sum(w[:, None] * tl.load(acc_lat, mask=s_ok[:, None] & r_ok[None, :],
                                                               other=0.0), axis=0)

    out1, out2 = acc1 / l, acc2 / l
    if R > 0:  # (p·R_v,h) B_v,h, applied once per head instead of once per token
        latent = (acc_r / l)[:, None]
        up = VUP + h * sup_h + offs_r[:, None] * sup_r + offs_d[None, :]
        up_ok = r_ok[:, None] & d_ok[None, :]
        out1 += tl.sum(latent * tl.load(up, mask=up_ok, other=0.0).to(tl.float32), axis=0)
        out2 += tl.sum(latent * tl.load(up + HALF, mask=up_ok, other=0.0).to(tl.float32), axis=0)
    out = OUT + b * so_b + h * so_h + offs_d
    tl.store(out, out1.to(OUT.dtype.element_ty), mask=d_ok)
    tl.store(out + HALF, out2.to(OUT.dtype.element_ty), mask=d_ok)


@functools.lru_cache(maxsize=64)
def _rope_tables(device: torch.device, half: int, theta: float | None, block_t: int):
    """inv_freq (half,) and cos/sin of row offsets (block_t, half), made once per shape (fp64, then fp32);
    cached so a decode step launches nothing but its kernels (and can be graph-captured)."""
    if theta is None:
        return tuple(torch.zeros(n, device=device) for n in (half, block_t * half, block_t * half))
    inv_freq = rope_frequencies(half, theta, torch.float32).double()  # the fp32 frequencies the model rotates by
    angle = torch.arange(block_t, dtype=torch.float64)[:, None] * inv_freq
    return tuple(t.float().contiguous().to(device) for t in (inv_freq, angle.cos(), angle.sin()))


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to fill (a nominal few under the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2


# Tilings (block_t, num_warps, num_stages, min_tiles, waves, heads_per_program): the fastest of
# benchmarks/decode.py's candidates on an H100 (benchmarks/NOTES.md). The folded kernel takes wider
# tiles from r > 32 on, so the per-head matrices it streams are amortised over more tokens; with cached
# key scales it streams one matrix per head instead of three, and wide tiles pay only from r > 64 (H200),
# and at r ≤ 16, where a product takes four heads' logit terms (LOGIT_COLS; 5–19 % faster on an H200).
# A wide program fills its multiprocessor alone, so it streams at least 4 tiles, 4 programs a multiprocessor
# (H100, r = 16 with key scales, against 2 tiles and 8: 6–7 % faster at B·T = 256K, equal at 64K, 1 % slower at
# 1M; r = 128: within 1 %).
# "grouped" takes heads_per_program None as: as many heads as fill GROUP_COLS latent columns.
TILINGS = {"rebuilt": (32, 2, 2, 4, 32, 1), "folded": (64, 4, 3, 4, 8, None), "folded-wide": (128, 8, 3, 4, 4, None),
           "grouped": (64, 4, 3, 2, 8, None)}
GROUP_COLS = 128
# Launch-bound contexts: two heads per program share the K_shared/V_shared tiles, and one tile per split
# makes more, shorter programs. H100, B = 1, T = 2K: 5–10 % faster at r ≤ 32 with key scales, 1 % without,
# slower at r ≥ 64; at T = 4K, 1.4–1.5× slower (twice the programs of one wave).
SHORT_TOKENS = 2048
SHORT_REBUILT = (32, 2, 2, 1, 32, 2)
# Programs per multiprocessor that short contexts still get, with fewer than min_tiles tiles each if need be
# (H200, T = 2K: folded at B = 8 went from 8 to 32 splits and 26–31 % faster; where min_tiles already gave
# two programs per SM, a tile a split was no faster).
FILL = 2
# Folded with cached key scales sums each head's logit terms as a product with a 0/1 matrix up to this rank
# (padded to the tensor-core tile, so at least 16):
# 4–8 % faster at r ≤ 32 on an H200, 9–13 % slower at r ≥ 64, and 14–34 % slower where it also sums the norm.
SUMS_BY_DOT_MAX_RANK = 32
# Folded takes p·R_v for the whole group as one product, every head's latent side by side, up to this padded
# rank, not a loop over heads (the same tensor-core work for a power-of-two group: the loop zeroes all rows of p
# but one). At r = 16 on an H100, 16 heads a program: 3.5–7 % faster with key scales, 6–10 % without; at
# r = 32 its accumulator is too wide (1.39–1.42× slower).
VALUES_AT_ONCE_MAX_RANK = 16
# With cached key scales, folded takes the logit terms of as many heads as fill this many latent columns in one
# product a chunk (each head's rank padded to the tensor-core tile), summed per head by a product; where one head
# fills them, one head at a time. On an H200: r = 32 4–10 % faster (two heads a product), r = 16 5–19 % with
# 128-token tiles (four heads); 128 columns were slower at every rank.
LOGIT_COLS = 64
# Folded's tile loop holds loops over heads, so the compiler does not software-pipeline it: each tile's
# K_shared, key-scale and V_shared rows are waited for where they are used. Up to this padded rank the later
# two are issued with K_shared's and wait during the head loops instead: on an H100 with key scales, r = 16
# (128-token tiles, one program per multiprocessor either way) 6–7 % faster; at r = 32 and 64 the rows' staging
# takes the shared memory of a second program per multiprocessor (up to 1.5× slower), and r = 128 does not fit.
EARLY_LOADS_MAX_RANK = 16
# split_count rounds each row's share of the programs down, so they never spill into a barely begun wave
# (B = 32, 2 programs per multiprocessor: 256 programs where rounding up makes 288 for 264 places). Off: not yet
# timed (benchmarks/NOTES.md gives the run).
WHOLE_WAVES = False
METHODS = ("folded", "grouped", "rebuilt")


# With key scales, folded's head-loop pipeline stages for tiles of up to 64 tokens and for 128-token tiles.
HEAD_STAGES = (4, 3)


def head_stages(block_t: int, scaled: bool) -> int | None:
    """Software-pipeline stages of folded's loops over the group's heads, so the next heads' latent rows and
    folded queries load while this head's products run. On an H100 with key scales (B = 8, T = 32K): 4 stages
    made 64-token tiles 8 % faster at r = 32 and r = 64 (3: 0–6 %); 128-token tiles gained 11 % at r = 128 with
    3 and do not fit 4 in shared memory. Elsewhere None leaves the compiler's own pipelining: on an H100 the
    norm-computing kernel ran 1.28–1.95× faster that way than with its head loops pinned to one stage."""
    if not scaled or block_t > 128:
        return None
    return HEAD_STAGES[0] if block_t <= 64 else HEAD_STAGES[1]


def logit_cols(heads: int, rank_p: int, scaled: bool) -> int:
    """Columns of folded's logit product per chunk of heads: as many heads' rank_p as fit LOGIT_COLS, in a power
    of two no larger than the group's next one, or one head's where the norm is computed per head."""
    chunk = min(LOGIT_COLS // rank_p, triton.next_power_of_2(heads)) if scaled else 1
    return rank_p << (max(chunk, 1).bit_length() - 1)


def sums_by_dot(heads: int, rank_p: int, scaled: bool) -> bool:
    """Whether folded sums each head's logit terms as a product with a 0/1 matrix (in chunks of logit_cols
    columns) rather than row by row: with key scales, up to SUMS_BY_DOT_MAX_RANK or where a chunk holds two heads."""
    return scaled and (rank_p <= SUMS_BY_DOT_MAX_RANK or logit_cols(heads, rank_p, scaled) > rank_p)


def logit_method(batch: int, max_len: int, rank: int, scaled: bool = False) -> str:
    """The split kernel for a shape, from the H100 and H200 grids in benchmarks/NOTES.md (grouped, once 9–12 %
    faster at r ≤ 16 over 256K tokens, fell behind folded there once folded pipelined its head loops):
    - with cached key scales, folded from 8K tokens at every rank (1.1–1.6× faster than rebuilt on an H100
      down to there, at r = 128 too); below, grouped at r ≤ 16 (7–9 % faster than rebuilt at B = 1, T = 2K
      and 4K, the shapes measured) and keys rebuilt above;
    - without, folded while its per-head matrices stay small (r ≤ 64) over batches that fill the card
      (B·T ≥ 32K), and from 16K tokens at r ≤ 32, 20–37 % faster there once FILL gave it enough programs;
    - else keys rebuilt."""
    tokens = batch * max_len
    if scaled:
        return "folded" if tokens >= 8192 else "grouped" if rank <= 16 else "rebuilt"
    return "folded" if (rank <= 64 and tokens >= 32768) or (rank <= 32 and tokens >= 16384) else "rebuilt"


def split_count(rows: int, n_tiles: int, waves: int, min_tiles: int, sms: int) -> int:
    """Chunks per (sequence, head group) row: `waves` programs per multiprocessor, of at least `min_tiles`
    tiles each, unless that leaves fewer than FILL programs per multiprocessor (each row's share rounded down
    under WHOLE_WAVES, else up)."""
    def per_row(programs: int) -> int:
        return max(1, programs * sms // rows) if WHOLE_WAVES else triton.cdiv(programs * sms, rows)

    return min(per_row(waves), max(triton.cdiv(n_tiles, min_tiles), per_row(FILL)), n_tiles)


def group_size(method: str, n_heads: int, rank: int, heads_per_program: int | None) -> int:
    """Heads per program: the largest divisor of H up to heads_per_program (None: all heads, at most 16;
    for grouped, as many as fill GROUP_COLS latent columns)."""
    if heads_per_program is None:
        heads_per_program = max(1, GROUP_COLS // dot_tile(rank)) if method == "grouped" else 16
    return max(d for d in range(1, min(heads_per_program, n_heads) + 1) if n_heads % d == 0)


def default_tiling(method: str, rank: int, scaled: bool = False, tokens: int | None = None) -> tuple:
    """The tiling of TILINGS for a method and rank; for a cache of at most SHORT_TOKENS slots (B·T_max), rebuilt at
    r ≤ 32 takes SHORT_REBUILT."""
    if method == "rebuilt" and rank <= 32 and tokens is not None and tokens <= SHORT_TOKENS:
        return SHORT_REBUILT
    # with key scales, wide at r ≤ 16 where a logit product can take four heads (LOGIT_COLS), and over r = 64
    wide = (rank > 64 or (0 < rank and LOGIT_COLS // dot_tile(rank) >= 4)) if scaled else rank > 32
    return TILINGS["folded-wide" if method == "folded" and wide else method]


def decode(q: torch.Tensor, k_shared: torch.Tensor, v_shared: torch.Tensor, r_k: torch.Tensor,
           r_v: torch.Tensor, k_up: torch.Tensor, v_up: torch.Tensor, lengths: torch.Tensor, *,
           norm: bool, rope_theta: float | None, method: str | None = None, block_t: int | None = None,
           num_warps: int | None = None, num_stages: int | None = None, min_tiles: int | None = None,
           waves: int | None = None, splits: int | None = None, heads_per_program: int | None = None,
           k_scale: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention output (B, H, d_h) of q (B, H, d_h), already normalised and rotated, over an LRKV cache.

    k_shared, v_shared: (B, T_max, d_h); r_k, r_v: (B, T_max, H, r); k_up, v_up: (H, r, d_h);
    lengths (B,): rows at or past a sequence's length are never read. rope_theta None skips RoPE.
    `method` picks the split kernel, one of METHODS (None: `logit_method`); the tiling arguments
    default to `default_tiling`:
    `splits` caps the number of sequence chunks (by default: `waves` programs per multiprocessor, so
    enough loads are in flight, each streaming at least `min_tiles` tiles of `block_t` tokens, unless
    that leaves fewer than FILL programs per multiprocessor);
    `heads_per_program` heads share one program (`group_size`);
    `k_scale` (B, T_max, H), the keys' cached 1/rms, stands in for computing the norm (norm=True only);
    `out`, if given, receives the result.
    """
    B, H, dh = q.shape
    T_max, r = r_k.shape[1], r_k.shape[-1]
    if dh % 2:
        raise ValueError(f"q: expected an even head dim, got {dh}")
    for name, t, shape in (("k_shared", k_shared, (B, T_max, dh)), ("v_shared", v_shared, (B, T_max, dh)),
                           ("r_k", r_k, (B, T_max, H, r)), ("r_v", r_v, (B, T_max, H, r)),
                           ("k_up", k_up, (H, r, dh)), ("v_up", v_up, (H, r, dh)), ("lengths", lengths, (B,)),
                           *([("k_scale", k_scale, (B, T_max, H))] if k_scale is not None else [])):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
        if t.numel() and t.stride(-1) != 1:
            raise ValueError(f"{name}: expected a unit stride in its last dim")
    if k_scale is not None and not norm:
        raise ValueError("k_scale: expected None when norm is False")
    scaled = k_scale is not None
    method = method or logit_method(B, T_max, r, scaled)
    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(map(repr, METHODS))}, got {method!r}")
    if method == "grouped" and norm and not scaled:
        raise ValueError("method: 'grouped' computes no norm, so it needs k_scale or norm=False")
    given = (block_t, num_warps, num_stages, min_tiles, waves, heads_per_program)
    block_t, num_warps, num_stages, min_tiles, waves, heads_per_program = (
        d if v is None else v for v, d in zip(given, default_tiling(method, r, scaled, B * T_max)))

    half = dh // 2
    heads = group_size(method, H, r, heads_per_program)
    n_groups = H // heads
    n_tiles = triton.cdiv(max(T_max, 1), block_t)
    if splits is None:
        splits = split_count(B * n_groups, n_tiles, waves, min_tiles, _sm_count(q.device))
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(splits, n_tiles)))
    n_splits = triton.cdiv(n_tiles, tiles_per_split)
    split_len = tiles_per_split * block_t

    wide = r_k.dtype in (torch.float32, torch.float64)
    meta = dict(HALF=half, HALF_P=dot_tile(half), R=r, R_P=dot_tile(r))
    inv_freq, cos_off, sin_off = _rope_tables(q.device, half, rope_theta, block_t)
    rows = B * H * n_splits
    m = torch.empty(rows, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc_s = torch.empty(rows, dh, device=q.device, dtype=torch.float32)
    acc_r = torch.empty(rows, max(r, 1), device=q.device, dtype=torch.float32)
    out = torch.empty_like(q) if out is None else out
    common = (q.stride(0), q.stride(1), k_shared.stride(0), k_shared.stride(1), v_shared.stride(0),
              v_shared.stride(1), r_k.stride(0), r_k.stride(1), r_k.stride(2), r_v.stride(0), r_v.stride(1),
              r_v.stride(2), *(k_scale.stride()[:2] if k_scale is not None else (0, 0)))
    scales = r_k if k_scale is None else k_scale  # any tensor stands in for an absent pointer
    consts = dict(HEADS=heads, HEADS_P=dot_tile(heads), BLOCK_T=block_t, SCALED=scaled, ROPE=rope_theta is not None,
                  PRECISION="ieee" if wide else None, num_warps=num_warps, num_stages=num_stages, **meta)
    norm_consts = dict(NORM=norm, EPSILON=EPS)  # grouped computes no norm
    grid = (n_groups, n_splits, B)
    if method in ("folded", "grouped"):
        # The RoPE products' operands: fp16 beside a 16-bit cache (cos/sin in [-1, 1] keep 11 bits).
        mq = torch.empty(B, H, dh, max(r, 1), device=q.device, dtype=r_k.dtype if wide else torch.float16)
        factors = norm and not scaled and method == "folded"
        bt2 = torch.empty(H, dh, max(r, 1) if factors else 1, device=q.device, dtype=r_k.dtype)
        gram = torch.empty(H, max(r, 1), max(r, 1) if factors else 1, device=q.device, dtype=r_k.dtype)
        if r > 0:
            _prepare_kernel[(H, B)](q, k_up, mq, bt2, gram, q.stride(0), q.stride(1), k_up.stride(0),
                                    k_up.stride(1), H, NORM_FACTORS=factors, **meta)
    if method == "folded":
        dot_fp32 = interpreted(_split_folded_kernel) and not wide
        _split_folded_kernel[grid](
            q, k_shared, v_shared, r_k, r_v, scales, mq, bt2, gram, lengths, inv_freq, cos_off, sin_off, m, l, acc_s,
            acc_r, *common, split_len, n_splits, H, dh ** -0.5 * LOG2E,
            DOT_FP32=dot_fp32, SUMS_BY_DOT=sums_by_dot(heads, meta["R_P"], scaled),
            EXACT_SUMS=dot_fp32 or wide, HEAD_STAGES=head_stages(block_t, scaled),
            VALUE_COLS=meta["R_P"] * (triton.next_power_of_2(heads) if meta["R_P"] <= VALUES_AT_ONCE_MAX_RANK else 1),
            LOGIT_COLS=logit_cols(heads, meta["R_P"], scaled), EARLY_LOADS=meta["R_P"] <= EARLY_LOADS_MAX_RANK,
            **consts, **norm_consts)
    elif method == "grouped":
        dot_fp32 = interpreted(_split_grouped_kernel) and not wide
        _split_grouped_kernel[grid](
            q, k_shared, v_shared, r_k, r_v, scales, mq, lengths, inv_freq, cos_off, sin_off, m, l, acc_s, acc_r,
            *common, split_len, n_splits, H, dh ** -0.5 * LOG2E, COLS=triton.next_power_of_2(heads) * meta["R_P"],
            DOT_FP32=dot_fp32, EXACT_SUMS=dot_fp32 or wide, **consts)
    else:
        _split_rebuilt_kernel[grid](
            q, k_shared, v_shared, r_k, r_v, scales, k_up, lengths, inv_freq, cos_off, sin_off, m, l, acc_s, acc_r,
            *common, k_up.stride(0), k_up.stride(1), split_len, n_splits, H, dh ** -0.5 * LOG2E,
            DOT_FP32=interpreted(_split_rebuilt_kernel) and r_k.dtype == torch.bfloat16, **consts, **norm_consts)
    _reduce_kernel[(H, B)](m, l, acc_s, acc_r, v_up, lengths, out, out.stride(0), out.stride(1),
                           v_up.stride(0), v_up.stride(1), split_len, n_splits, BLOCK_S=32, **meta)
    return out
