"""Small shared pieces: parameter-free RMSNorm, rotary position embedding (half-split layout), and
initialisation seeded by a parameter's name."""
from __future__ import annotations

import contextlib
import zlib

import torch
import torch.nn.functional as F

EPS = 1e-6


@contextlib.contextmanager
def seeded(name: str):
    """Draw from a CPU generator seeded by (the current seed, name), leaving the outer stream untouched.

    A parameter initialised inside starts the same in every model built under one seed, whatever other
    parameters were drawn before it. Variants of one sweep then share their embeddings, MLPs and the
    projections they have in common (common random numbers), so their losses differ by what the
    variants change and not by a different random start."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{torch.initial_seed()}/{name}".encode()))
        yield


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),), eps=EPS)


def rope_frequencies(half: int, theta: float, dtype: torch.dtype, device=None) -> torch.Tensor:
    """theta^(-i/half) for i < half: the rotation speed of each pair of RoPE dims."""
    return theta ** (-torch.arange(0, half, device=device, dtype=dtype) / half)


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate x (B, T, heads, D) by its positions: (T,) shared by the batch, or (B, T) per sequence."""
    half = x.size(-1) // 2
    # fp64 stays fp64 so references are exact; everything else rotates in fp32.
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = rope_frequencies(half, theta, work, x.device)
    angles = positions.to(work)[..., None] * inv_freq  # (T, half) or (B, T, half)
    if angles.dim() == 2:
        angles = angles[None]
    cos, sin = angles.cos()[:, :, None, :], angles.sin()[:, :, None, :]
    x1, x2 = x[..., :half].to(work), x[..., half:].to(work)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)
