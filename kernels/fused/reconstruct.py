"""Fused LRKV key/value reconstruction for training: rope(rms_norm(shared + latent @ up_h)) in one pass.

The unfused composition writes the (B, T, H, dh) sum, reads it back for the norm, and again for RoPE, and
autograd keeps every intermediate. Here the forward writes only the final rows, and the backward rebuilds
the pre-norm rows from the small inputs (shared, latent, up) instead of saving them.

On a GPU the op is a `torch.library.triton_op`, so `torch.compile` sees the kernels themselves. Under
TRITON_INTERPRET=1 kernels cannot run on fake tensors, so the same body is registered as an opaque
`custom_op` with an explicit fake implementation; eager results and autograd are identical either way.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import custom_op, triton_op, wrap_triton

from ..ops import EPS, rope_frequencies
from .tiles import MIN_DOT, dot_tile, interpreted

DEFAULT_BLOCK_T = 64
DEFAULT_NUM_WARPS = 4
DEFAULT_BWD_BLOCK_T = 32
DEFAULT_BWD_NUM_WARPS = 8
BWD_NUM_STAGES = 2  # the backward loops prefetch one iteration ahead; more stages only cost shared memory
UP_PROGRAMS = 512  # target (chunk, head) programs in the d_up pass: a few waves on an H100's 132 SMs
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

__all__ = ["reconstruct"]


@triton.jit
def _mm(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ b in fp32. UPCAST only for the interpreter, which multiplies bf16 bit patterns as integers."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc=acc, input_precision=PRECISION)


@triton.jit
def _halves(ptr, rows, row_ok, cols, col_ok, row_stride, HALF: tl.constexpr):
    """Both halves of a block of rows as fp32 (BLOCK_T, BLOCK_HALF) tiles, zero where padded."""
    ptrs = ptr + rows[:, None] * row_stride + cols[None, :]
    tile_ok = row_ok[:, None] & col_ok[None, :]
    return (tl.load(ptrs, mask=tile_ok, other=0.0).to(tl.float32),
            tl.load(ptrs + HALF, mask=tile_ok, other=0.0).to(tl.float32))


@triton.jit
def _up_tiles(up_ptr, head, ks, k_ok, cols, col_ok, R: tl.constexpr, D: tl.constexpr):
    """up_h's two halves as (BLOCK_R, BLOCK_HALF) tiles in the input dtype."""
    ptrs = up_ptr + head * (R * D) + ks[:, None] * D + cols[None, :]
    ok = k_ok[:, None] & col_ok[None, :]
    return tl.load(ptrs, mask=ok, other=0.0), tl.load(ptrs + D // 2, mask=ok, other=0.0)


@triton.jit
def _add_latent(x1, x2, latent_ptr, up_ptr, rows, row_ok, cols, col_ok, head, n_heads,
                R: tl.constexpr, D: tl.constexpr, BLOCK_R: tl.constexpr, PRECISION: tl.constexpr,
                UPCAST: tl.constexpr):
    """x + latent_h @ up_h for both halves: one dot per half, or, for ranks below the smallest dot tile,
    R rank-one updates on the FMA units."""
    HALF: tl.constexpr = D // 2
    if R >= 16:
        ks = tl.arange(0, BLOCK_R)
        k_ok = ks < R
        lat = tl.load(latent_ptr + (rows * (n_heads * R) + head * R)[:, None] + ks[None, :],
                      mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        u1, u2 = _up_tiles(up_ptr, head, ks, k_ok, cols, col_ok, R, D)
        x1 = _mm(lat, u1, x1, PRECISION, UPCAST)
        x2 = _mm(lat, u2, x2, PRECISION, UPCAST)
    elif R > 0:
        lat_rows = latent_ptr + rows * (n_heads * R) + head * R
        up_head = up_ptr + head * (R * D)
        for k in tl.static_range(R):
            lat_k = tl.load(lat_rows + k, mask=row_ok, other=0.0).to(tl.float32)[:, None]
            x1 += lat_k * tl.load(up_head + k * D + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            x2 += lat_k * tl.load(up_head + k * D + HALF + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return x1, x2


@triton.jit
def _rotation(cos_ptr, sin_ptr, rows, row_ok, seq_len, cols, col_ok, HALF: tl.constexpr):
    """cos and sin of each row's position (its index within its sequence), first-half columns."""
    offs = (rows % seq_len)[:, None] * HALF + cols[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    return tl.load(cos_ptr + offs, mask=ok, other=0.0), tl.load(sin_ptr + offs, mask=ok, other=0.0)


@triton.jit
def _norm_rope_grad(x1, x2, g1, g2, cos, sin, eps, D: tl.constexpr, NORM: tl.constexpr, ROPE: tl.constexpr):
    """Gradient at the pre-norm rows x, given the gradient g at rope(rms_norm(x))."""
    if ROPE:  # the transposed rotation
        g1, g2 = g1 * cos + g2 * sin, g2 * cos - g1 * sin
    if NORM:
        rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / D + eps)[:, None]
        n1 = x1 * rstd
        n2 = x2 * rstd
        proj = ((tl.sum(g1 * n1, axis=1) + tl.sum(g2 * n2, axis=1)) / D)[:, None]
        g1 = (g1 - n1 * proj) * rstd
        g2 = (g2 - n2 * proj) * rstd
    return g1, g2


@triton.jit
def _reconstruct_fwd_kernel(
    shared_ptr, latent_ptr, up_ptr, cos_ptr, sin_ptr, out_ptr,
    n_rows, seq_len, n_heads, eps,
    R: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HALF: tl.constexpr,
    NORM: tl.constexpr, ROPE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """One program per (block of BLOCK_T rows of B*T, head); heads vary fastest so neighbouring programs
    share the shared-row and rotation tiles in L2."""
    HALF: tl.constexpr = D // 2
    pid = tl.program_id(0)
    head = pid % n_heads
    rows = (pid // n_heads).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_HALF)
    row_ok = rows < n_rows
    col_ok = cols < HALF

    x1, x2 = _halves(shared_ptr, rows, row_ok, cols, col_ok, D, HALF)
    x1, x2 = _add_latent(x1, x2, latent_ptr, up_ptr, rows, row_ok, cols, col_ok, head, n_heads,
                         R, D, BLOCK_R, PRECISION, UPCAST)
    if NORM:
        rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / D + eps)[:, None]
        x1 = x1 * rstd
        x2 = x2 * rstd
    if ROPE:
        cos, sin = _rotation(cos_ptr, sin_ptr, rows, row_ok, seq_len, cols, col_ok, HALF)
        x1, x2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos

    o_ptrs = out_ptr + rows[:, None] * (n_heads * D) + head * D + cols[None, :]
    tile_ok = row_ok[:, None] & col_ok[None, :]
    tl.store(o_ptrs, x1.to(out_ptr.dtype.element_ty), mask=tile_ok)
    tl.store(o_ptrs + HALF, x2.to(out_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _reconstruct_bwd_shared_kernel(
    grad_ptr, shared_ptr, latent_ptr, up_ptr, cos_ptr, sin_ptr, d_shared_ptr,
    n_rows, seq_len, n_heads, eps,
    R: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HALF: tl.constexpr,
    NORM: tl.constexpr, ROPE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """d_shared, the sum over heads of the pre-norm gradient: one program per block of rows, looping over
    heads so the sum stays in registers."""
    HALF: tl.constexpr = D // 2
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_HALF)
    row_ok = rows < n_rows
    col_ok = cols < HALF
    s1, s2 = _halves(shared_ptr, rows, row_ok, cols, col_ok, D, HALF)
    if ROPE:
        cos, sin = _rotation(cos_ptr, sin_ptr, rows, row_ok, seq_len, cols, col_ok, HALF)
    else:
        cos, sin = 0.0, 0.0
    ds1 = tl.zeros((BLOCK_T, BLOCK_HALF), dtype=tl.float32)
    ds2 = tl.zeros((BLOCK_T, BLOCK_HALF), dtype=tl.float32)
    for head in range(n_heads):
        x1, x2 = _add_latent(s1, s2, latent_ptr, up_ptr, rows, row_ok, cols, col_ok, head, n_heads,
                             R, D, BLOCK_R, PRECISION, UPCAST)
        g1, g2 = _halves(grad_ptr + head * D, rows, row_ok, cols, col_ok, n_heads * D, HALF)
        g1, g2 = _norm_rope_grad(x1, x2, g1, g2, cos, sin, eps, D, NORM, ROPE)
        ds1 += g1
        ds2 += g2
    ds_ptrs = d_shared_ptr + rows[:, None] * D + cols[None, :]
    tile_ok = row_ok[:, None] & col_ok[None, :]
    tl.store(ds_ptrs, ds1.to(d_shared_ptr.dtype.element_ty), mask=tile_ok)
    tl.store(ds_ptrs + HALF, ds2.to(d_shared_ptr.dtype.element_ty), mask=tile_ok)


@triton.jit
def _reconstruct_bwd_latent_kernel(
    grad_ptr, shared_ptr, latent_ptr, up_ptr, cos_ptr, sin_ptr, d_latent_ptr, d_up_part_ptr,
    n_rows, seq_len, n_heads, eps, blocks_per_chunk,
    R: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HALF: tl.constexpr,
    NORM: tl.constexpr, ROPE: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """d_latent and d_up (R > 0): one program per (chunk of row blocks, head), up_h held throughout and
    latent_hᵀ @ d_pre accumulated in fp32 registers over the chunk, then written as this program's own
    partial, so summing the partials is deterministic."""
    HALF: tl.constexpr = D // 2
    pid = tl.program_id(0)
    head = pid % n_heads
    chunk = pid // n_heads
    cols = tl.arange(0, BLOCK_HALF)
    col_ok = cols < HALF
    ks = tl.arange(0, BLOCK_R)
    k_ok = ks < R
    dot_ty = latent_ptr.dtype.element_ty
    up_head = up_ptr + head * (R * D)
    if R >= 16:
        u1, u2 = _up_tiles(up_ptr, head, ks, k_ok, cols, col_ok, R, D)
    acc1 = tl.zeros((BLOCK_R, BLOCK_HALF), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_R, BLOCK_HALF), dtype=tl.float32)
    for i in range(blocks_per_chunk):
        rows = (chunk * blocks_per_chunk + i).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        row_ok = rows < n_rows
        x1, x2 = _halves(shared_ptr, rows, row_ok, cols, col_ok, D, HALF)
        g1, g2 = _halves(grad_ptr + head * D, rows, row_ok, cols, col_ok, n_heads * D, HALF)
        if ROPE:
            cos, sin = _rotation(cos_ptr, sin_ptr, rows, row_ok, seq_len, cols, col_ok, HALF)
        else:
            cos, sin = 0.0, 0.0
        lat_offs = rows * (n_heads * R) + head * R
        if R >= 16:
            lat_ok = row_ok[:, None] & k_ok[None, :]
            lat = tl.load(latent_ptr + lat_offs[:, None] + ks[None, :], mask=lat_ok, other=0.0)
            x1 = _mm(lat, u1, x1, PRECISION, UPCAST)
            x2 = _mm(lat, u2, x2, PRECISION, UPCAST)
            g1, g2 = _norm_rope_grad(x1, x2, g1, g2, cos, sin, eps, D, NORM, ROPE)
            g1 = g1.to(dot_ty)
            g2 = g2.to(dot_ty)
            d_lat = _mm(g1, tl.trans(u1), tl.zeros((BLOCK_T, BLOCK_R), dtype=tl.float32), PRECISION, UPCAST)
            d_lat = _mm(g2, tl.trans(u2), d_lat, PRECISION, UPCAST)
            tl.store(d_latent_ptr + lat_offs[:, None] + ks[None, :], d_lat.to(d_latent_ptr.dtype.element_ty),
                     mask=lat_ok)
            lat_t = tl.trans(lat)
            acc1 = _mm(lat_t, g1, acc1, PRECISION, UPCAST)
            acc2 = _mm(lat_t, g2, acc2, PRECISION, UPCAST)
        else:
            x1, x2 = _add_latent(x1, x2, latent_ptr, up_ptr, rows, row_ok, cols, col_ok, head, n_heads,
                                 R, D, BLOCK_R, PRECISION, UPCAST)
            g1, g2 = _norm_rope_grad(x1, x2, g1, g2, cos, sin, eps, D, NORM, ROPE)
            for k in tl.static_range(R):
                lat_k = tl.load(latent_ptr + lat_offs + k, mask=row_ok, other=0.0).to(tl.float32)[:, None]
                u1_k = tl.load(up_head + k * D + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
                u2_k = tl.load(up_head + k * D + HALF + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
                d_lat_k = tl.sum(g1 * u1_k, axis=1) + tl.sum(g2 * u2_k, axis=1)
                tl.store(d_latent_ptr + lat_offs + k, d_lat_k.to(d_latent_ptr.dtype.element_ty), mask=row_ok)
                row_k = ks[:, None] == k
                acc1 = tl.where(row_k, acc1 + tl.sum(lat_k * g1, axis=0)[None, :], acc1)
                acc2 = tl.where(row_k, acc2 + tl.sum(lat_k * g2, axis=0)[None, :], acc2)
    p_ptrs = d_up_part_ptr + (chunk.to(tl.int64) * n_heads + head) * (R * D) + ks[:, None] * D + cols[None, :]
    p_ok = k_ok[:, None] & col_ok[None, :]
    tl.store(p_ptrs, acc1, mask=p_ok)
    tl.store(p_ptrs + HALF, acc2, mask=p_ok)


_INTERPRETED = interpreted(_reconstruct_fwd_kernel)


def _runner(kernel):
    return kernel if _INTERPRETED else wrap_triton(kernel)


def _rotation_tables(seq_len: int, half: int, rope_theta: float, device: torch.device):
    """fp32 cos and sin (T, dh/2), computed exactly as `ops.rope` does, so the kernels rotate identically."""
    inv_freq = rope_frequencies(half, rope_theta, torch.float32, device)
    angles = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def _meta(shared: torch.Tensor, latent: torch.Tensor, norm: bool, rope_theta: Optional[float], block_t: int):
    dh, rank = shared.size(-1), latent.size(-1)
    return dict(R=rank, D=dh, BLOCK_T=block_t, BLOCK_R=dot_tile(rank), BLOCK_HALF=dot_tile(dh // 2),
                NORM=norm, ROPE=rope_theta is not None,
                PRECISION="ieee" if shared.dtype == torch.float32 else "tf32",
                UPCAST=_INTERPRETED and shared.dtype != torch.float32)


def _tables_or_dummy(shared: torch.Tensor, rope_theta: Optional[float]):
    if rope_theta is None:
        return shared, shared  # never read
    return _rotation_tables(shared.size(1), shared.size(-1) // 2, rope_theta, shared.device)


def _forward_into(out: torch.Tensor, shared: torch.Tensor, latent: torch.Tensor, up: torch.Tensor, norm: bool,
                  rope_theta: Optional[float], block_t: int, num_warps: int) -> None:
    """Write every element of `out` (B, T, H, dh), contiguous; inputs must be contiguous."""
    B, T, H, _ = latent.shape
    n_rows = B * T
    if n_rows == 0 or H == 0:
        return
    cos, sin = _tables_or_dummy(shared, rope_theta)
    grid = (triton.cdiv(n_rows, block_t) * H,)
    _runner(_reconstruct_fwd_kernel)[grid](
        shared, latent, up, cos, sin, out, n_rows, T, H, EPS,
        **_meta(shared, latent, norm, rope_theta, block_t), num_warps=num_warps)


def _up_chunks(n_rows: int, n_heads: int, block_t: int, programs: int = UP_PROGRAMS) -> tuple[int, int]:
    """(chunks, blocks per chunk) for the d_up pass: about `programs` programs over (chunk, head), so
    the fp32 partials stay small; a function of the shapes alone, so the summation order is fixed."""
    n_blocks = triton.cdiv(n_rows, block_t)
    n_chunks = max(1, min(n_blocks, triton.cdiv(programs, max(n_heads, 1))))
    per_chunk = max(1, triton.cdiv(n_blocks, n_chunks))
    return triton.cdiv(n_blocks, per_chunk), per_chunk


def _backward_into(d_shared: torch.Tensor, d_latent: torch.Tensor, d_up_partial: torch.Tensor,
                   blocks_per_chunk: int, grad: torch.Tensor, shared: torch.Tensor, latent: torch.Tensor,
                   up: torch.Tensor, norm: bool, rope_theta: Optional[float], block_t: int, num_warps: int) -> None:
    """Write all of d_shared, d_latent and the fp32 d_up partials (chunks, H, r, dh) of `_up_chunks`."""
    B, T, H, r = latent.shape
    n_rows = B * T
    if n_rows == 0:
        return
    cos, sin = _tables_or_dummy(shared, rope_theta)
    meta = _meta(shared, latent, norm, rope_theta, block_t)
    _runner(_reconstruct_bwd_shared_kernel)[(triton.cdiv(n_rows, block_t),)](
        grad, shared, latent, up, cos, sin, d_shared, n_rows, T, H, EPS,
        **meta, num_warps=num_warps, num_stages=BWD_NUM_STAGES)
    if r > 0 and H > 0:
        _runner(_reconstruct_bwd_latent_kernel)[(d_up_partial.size(0) * H,)](
            grad, shared, latent, up, cos, sin, d_latent, d_up_partial, n_rows, T, H, EPS, blocks_per_chunk,
            **meta, num_warps=num_warps, num_stages=BWD_NUM_STAGES)


def _register(name: str, fake):
    """A triton_op normally; an opaque custom_op with `fake` when the kernels are interpreted."""
    def wrap(fn):
        if not _INTERPRETED:
            return triton_op(name, mutates_args=())(fn)
        op = custom_op(name, mutates_args=())(fn)
        op.register_fake(fake)
        return op
    return wrap


def _fake_forward(shared, latent, up, norm, rope_theta, block_t, num_warps, bwd_block_t, bwd_num_warps):
    return shared.new_empty((*latent.shape[:3], shared.size(-1)))


def _fake_backward(grad, shared, latent, up, norm, rope_theta, block_t, num_warps):
    return shared.new_empty(shared.shape), latent.new_empty(latent.shape), up.new_empty(up.shape)


@_register("lrkv::reconstruct", _fake_forward)
def _reconstruct_op(shared: torch.Tensor, latent: torch.Tensor, up: torch.Tensor, norm: bool,
                    rope_theta: Optional[float], block_t: int, num_warps: int, bwd_block_t: int,
                    bwd_num_warps: int) -> torch.Tensor:
    shared, latent, up = shared.contiguous(), latent.contiguous(), up.contiguous()
    out = shared.new_empty((*latent.shape[:3], shared.size(-1)))
    _forward_into(out, shared, latent, up, norm, rope_theta, block_t, num_warps)
    return out


@_register("lrkv::reconstruct_backward", _fake_backward)
def _reconstruct_backward_op(grad: torch.Tensor, shared: torch.Tensor, latent: torch.Tensor, up: torch.Tensor,
                             norm: bool, rope_theta: Optional[float], block_t: int,
                             num_warps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad, shared, latent, up = grad.contiguous(), shared.contiguous(), latent.contiguous(), up.contiguous()
    B, T, H, r = latent.shape
    d_shared = shared.new_empty(shared.shape)
    d_latent = latent.new_empty(latent.shape)
    n_chunks, per_chunk = _up_chunks(B * T, H, block_t)
    partial = torch.empty((n_chunks, H, r, shared.size(-1)), device=up.device, dtype=torch.float32)
    _backward_into(d_shared, d_latent, partial, per_chunk, grad, shared, latent, up, norm, rope_theta, block_t,
                   num_warps)
    return d_shared, d_latent, partial.sum(0).to(up.dtype)


def _setup_context(ctx, inputs, output):
    shared, latent, up, norm, rope_theta, _, _, bwd_block_t, bwd_num_warps = inputs
    ctx.save_for_backward(shared, latent, up)
    ctx.config = (norm, rope_theta, bwd_block_t, bwd_num_warps)


def _backward(ctx, grad):
    shared, latent, up = ctx.saved_tensors
    d_shared, d_latent, d_up = _reconstruct_backward_op(grad, shared, latent, up, *ctx.config)
    return d_shared, d_latent, d_up, None, None, None, None, None, None


_reconstruct_op.register_autograd(_backward, setup_context=_setup_context)


def _check(shared: torch.Tensor, latent: torch.Tensor, up: torch.Tensor, block_t: int, bwd_block_t: int) -> None:
    if shared.dim() != 3:
        raise ValueError(f"shared must be (B, T, dh); got shape {tuple(shared.shape)}")
    B, T, dh = shared.shape
    if latent.dim() != 4 or tuple(latent.shape[:2]) != (B, T):
        raise ValueError(f"latent must be (B, T, H, r) with (B, T) = {(B, T)} from shared; "
                         f"got shape {tuple(latent.shape)}")
    H, r = latent.shape[2:]
    if tuple(up.shape) != (H, r, dh):
        raise ValueError(f"up must be (H, r, dh) = {(H, r, dh)} from latent and shared; got shape {tuple(up.shape)}")
    if dh % 2:
        raise ValueError(f"shared: head dim dh must be even; got {dh}")
    for name, t in (("shared", shared), ("latent", latent), ("up", up)):
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16 or float32; got {t.dtype}")
        if t.dtype != shared.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but shared has {shared.dtype}; cast them to one dtype")
        if t.device != shared.device:
            raise ValueError(f"{name} is on {t.device} but shared is on {shared.device}")
    for name, b in (("block_t", block_t), ("bwd_block_t", bwd_block_t)):
        if b < MIN_DOT or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= {MIN_DOT}; got {b}")


def reconstruct(shared: torch.Tensor, latent: torch.Tensor, up: torch.Tensor, *, norm: bool,
                rope_theta: Optional[float], block_t: int = DEFAULT_BLOCK_T, num_warps: int = DEFAULT_NUM_WARPS,
                bwd_block_t: int = DEFAULT_BWD_BLOCK_T, bwd_num_warps: int = DEFAULT_BWD_NUM_WARPS) -> torch.Tensor:
    """Per-head rows rope(rms_norm(shared + latent @ up)) as (B, T, H, dh), contiguous.

    shared (B, T, dh), latent (B, T, H, r), up (H, r, dh), one dtype. `norm` applies the parameter-free
    RMSNorm; `rope_theta` None skips RoPE, otherwise row t of each sequence is rotated by position t.
    Equal to `ops.rope(ops.rms_norm(lrkv.reconstruct(shared, latent, up)), arange(T), rope_theta)`, computed
    in fp32 and stored once in the input dtype. Differentiable in shared, latent and up; the backward
    recomputes the pre-norm rows, and its d_up reduction is deterministic. The tile sizes only tune speed.
    """
    _check(shared, latent, up, block_t, bwd_block_t)
    return _reconstruct_op(shared, latent, up, bool(norm), None if rope_theta is None else float(rope_theta),
                           int(block_t), int(num_warps), int(bwd_block_t), int(bwd_num_warps))
