"""One LRKV decode step straight from the compressed cache, split over the sequence (flash-decoding).

The split kernel streams a chunk of one sequence for a group of heads (one by default); the programs
of all heads of a chunk run side by side, so K_shared/V_shared come from HBM once and from L2 for the
others. The key tile is rebuilt on chip (`R_k tile @ B_k,h` on the tensor cores, plus K_shared), and
RoPE and the norm enter the logit there; per-head K/V never reach HBM. Values use associativity, so a
split keeps `p·V_shared` (d_h) and `p·R_v,h` (r) per head. The reduce kernel merges the splits'
online-softmax partials and applies B_v,h once.
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
def _split_kernel(Q, KS, VS, RK, RV, KUP, LENGTHS, INV_FREQ, COS, SIN, M, L, ACC_S, ACC_R,
                  sq_b, sq_h, sks_b, sks_t, svs_b, svs_t,
                  srk_b, srk_t, srk_h, srv_b, srv_t, srv_h, sup_h, sup_r,
                  split_len, n_splits, n_heads, qk_scale,
                  HEADS: tl.constexpr, HEADS_P: tl.constexpr,
                  HALF: tl.constexpr, HALF_P: tl.constexpr, R: tl.constexpr, R_P: tl.constexpr,
                  BLOCK_T: tl.constexpr, NORM: tl.constexpr, ROPE: tl.constexpr,
                  DOT_FP32: tl.constexpr, PRECISION: tl.constexpr, EPSILON: tl.constexpr):
    # One program streams a chunk of one sequence for a group of HEADS heads: K_shared/V_shared tiles
    # are loaded once for the group, and p·V_shared, p·R_v,h run on the tensor cores with the
    # group's probabilities as a (HEADS_P, BLOCK_T) matrix (one row per head).
    g, split, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    h0 = g * HEADS
    length = tl.load(LENGTHS + b).to(tl.int32)
    start = split * split_len
    end = tl.minimum(start + split_len, length)

    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HALF_P)
    offs_r = tl.arange(0, R_P)
    offs_h = tl.arange(0, HEADS_P)
    d_ok = offs_d < HALF
    r_ok = offs_r < R
    h_ok = offs_h < HEADS  # the host picks HEADS dividing the head count

    if ROPE:  # rotations by a tile's row offsets; the tile's own angle is added per tile (angle addition)
        inv_freq = tl.load(INV_FREQ + offs_d, mask=d_ok, other=0.0)
        table = offs_t[:, None] * HALF + offs_d[None, :]
        cos_off = tl.load(COS + table, mask=d_ok[None, :], other=0.0)
        sin_off = tl.load(SIN + table, mask=d_ok[None, :], other=0.0)

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
        ks = KS + b * sks_b + t[:, None] * sks_t + offs_d[None, :]
        ks1 = tl.load(ks, mask=tile, other=0.0).to(tl.float32)
        ks2 = tl.load(ks + HALF, mask=tile, other=0.0).to(tl.float32)
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
            if NORM:
                s *= tl.rsqrt(tl.sum(k1 * k1 + k2 * k2, axis=1) / (2 * HALF) + EPSILON)
            s = tl.where(t_ok, s * qk_scale, float("-inf"))
            s_all = tl.where(offs_h[None, :] == j, s[:, None], s_all)

        m_new = tl.maximum(m, tl.max(s_all, axis=0))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s_all - m_new[None, :])  # (BLOCK_T, HEADS_P)
        m = m_new
        l = l * alpha + tl.sum(p, axis=0)
        pt = tl.trans(p)  # (HEADS_P, BLOCK_T)
        vs = VS + b * svs_b + t[:, None] * svs_t + offs_d[None, :]
        v1 = tl.load(vs, mask=tile, other=0.0)
        v2 = tl.load(vs + HALF, mask=tile, other=0.0)
        if DOT_FP32:
            v1, v2 = v1.to(tl.float32), v2.to(tl.float32)
        pv = pt.to(v1.dtype)
        acc1 = tl.dot(pv, v1, acc=acc1 * alpha[:, None], input_precision=PRECISION)
        acc2 = tl.dot(pv, v2, acc=acc2 * alpha[:, None], input_precision=PRECISION)
        if R > 0:  # each head's row of p against its own R_v,h (the other rows are zero)
            acc_r = acc_r * alpha[:, None]
            for j in tl.static_range(HEADS):
                h = h0 + j
                rv = tl.load(RV + b * srv_b + t[:, None] * srv_t + h * srv_h + offs_r[None, :],
                             mask=t_ok[:, None] & r_ok[None, :], other=0.0)
                if DOT_FP32:
                    rv = rv.to(tl.float32)
                acc_r = tl.dot(tl.where(offs_h[:, None] == j, pt, 0.0).to(rv.dtype), rv, acc=acc_r,
                               input_precision=PRECISION)

    # Partials of head h, split s of sequence b live at row (b·H + h)·n_splits + s.
    row = (b * n_heads + h0 + offs_h) * n_splits + split
    tl.store(M + row, m, mask=h_ok)
    tl.store(L + row, l, mask=h_ok)
    acc = ACC_S + row[:, None] * (2 * HALF) + offs_d[None, :]
    hd_ok = h_ok[:, None] & d_ok[None, :]
    tl.store(acc, acc1, mask=hd_ok)
    tl.store(acc + HALF, acc2, mask=hd_ok)
    if R > 0:
        tl.store(ACC_R + row[:, None] * R + offs_r[None, :], acc_r, mask=h_ok[:, None] & r_ok[None, :])


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
    cached so a decode step launches nothing but its two kernels (and can be graph-captured)."""
    if theta is None:
        return tuple(torch.zeros(n, device=device) for n in (half, block_t * half, block_t * half))
    inv_freq = rope_frequencies(half, theta, torch.float32).double()  # the fp32 frequencies the model rotates by
    angle = torch.arange(block_t, dtype=torch.float64)[:, None] * inv_freq
    return tuple(t.float().contiguous().to(device) for t in (inv_freq, angle.cos(), angle.sin()))


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors to fill (a nominal few under the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2


def decode(q: torch.Tensor, k_shared: torch.Tensor, v_shared: torch.Tensor, r_k: torch.Tensor,
           r_v: torch.Tensor, k_up: torch.Tensor, v_up: torch.Tensor, lengths: torch.Tensor, *,
           norm: bool, rope_theta: float | None, block_t: int = 32, num_warps: int = 2, num_stages: int = 2,
           min_tiles: int = 4, waves: int = 32, splits: int | None = None, heads_per_program: int | None = 1,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention output (B, H, d_h) of q (B, H, d_h), already normalised and rotated, over an LRKV cache.

    k_shared, v_shared: (B, T_max, d_h); r_k, r_v: (B, T_max, H, r); k_up, v_up: (H, r, d_h);
    lengths (B,): rows at or past a sequence's length are never read. rope_theta None skips RoPE.
    `splits` fixes the number of sequence chunks (by default: `waves` programs per multiprocessor, so
    enough loads are in flight, each streaming at least `min_tiles` tiles of `block_t` tokens so it
    amortises loading B_k,h);
    `heads_per_program` heads share one program (a divisor of H at most this; None: as many as keep
    their B_k within ~128 KB of shared memory, at most 16), so K_shared/V_shared tiles are read once per
    group. The defaults (one head, 2 warps, 32 waves) were fastest at every cell of benchmarks/decode.py
    on an H100: the unrolled head groups spill registers;
    `out`, if given, receives the result.
    """
    B, H, dh = q.shape
    T_max, r = r_k.shape[1], r_k.shape[-1]
    if dh % 2:
        raise ValueError(f"q: expected an even head dim, got {dh}")
    for name, t, shape in (("k_shared", k_shared, (B, T_max, dh)), ("v_shared", v_shared, (B, T_max, dh)),
                           ("r_k", r_k, (B, T_max, H, r)), ("r_v", r_v, (B, T_max, H, r)),
                           ("k_up", k_up, (H, r, dh)), ("v_up", v_up, (H, r, dh)), ("lengths", lengths, (B,))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
        if t.numel() and t.stride(-1) != 1:
            raise ValueError(f"{name}: expected a unit stride in its last dim")

    half = dh // 2
    if heads_per_program is None:  # B_k of the group's heads stays in shared memory: keep it to ~128 KB
        b_k_bytes = dot_tile(r) * dot_tile(half) * 2 * k_up.element_size()
        heads_per_program = max(1, min(16, (128 << 10) // b_k_bytes))
    heads = max(d for d in range(1, max(1, min(heads_per_program, H)) + 1) if H % d == 0)  # a divisor of H
    n_groups = triton.cdiv(H, heads)
    n_tiles = triton.cdiv(max(T_max, 1), block_t)
    if splits is None:
        splits = min(triton.cdiv(waves * _sm_count(q.device), B * n_groups), triton.cdiv(n_tiles, min_tiles))
    tiles_per_split = triton.cdiv(n_tiles, max(1, min(splits, n_tiles)))
    n_splits = triton.cdiv(n_tiles, tiles_per_split)
    split_len = tiles_per_split * block_t

    inv_freq, cos_off, sin_off = _rope_tables(q.device, half, rope_theta, block_t)
    rows = B * H * n_splits
    m = torch.empty(rows, device=q.device, dtype=torch.float32)
    l = torch.empty_like(m)
    acc_s = torch.empty(rows, dh, device=q.device, dtype=torch.float32)
    acc_r = torch.empty(rows, max(r, 1), device=q.device, dtype=torch.float32)
    out = torch.empty_like(q) if out is None else out
    precision = "ieee" if r_k.dtype in (torch.float32, torch.float64) else None
    _split_kernel[(n_groups, n_splits, B)](
        q, k_shared, v_shared, r_k, r_v, k_up, lengths, inv_freq, cos_off, sin_off, m, l, acc_s, acc_r,
        q.stride(0), q.stride(1), k_shared.stride(0), k_shared.stride(1), v_shared.stride(0), v_shared.stride(1),
        r_k.stride(0), r_k.stride(1), r_k.stride(2), r_v.stride(0), r_v.stride(1), r_v.stride(2),
        k_up.stride(0), k_up.stride(1), split_len, n_splits, H, dh ** -0.5 * LOG2E,
        HEADS=heads, HEADS_P=dot_tile(heads), HALF=half, HALF_P=dot_tile(half), R=r, R_P=dot_tile(r),
        BLOCK_T=block_t, NORM=norm, ROPE=rope_theta is not None,
        DOT_FP32=interpreted(_split_kernel) and r_k.dtype == torch.bfloat16,
        PRECISION=precision, EPSILON=EPS,
        num_warps=num_warps, num_stages=num_stages)
    _reduce_kernel[(H, B)](m, l, acc_s, acc_r, v_up, lengths, out, out.stride(0), out.stride(1),
                           v_up.stride(0), v_up.stride(1), split_len, n_splits,
                           HALF=half, HALF_P=dot_tile(half), R=r, R_P=dot_tile(r), BLOCK_S=32)
    return out
