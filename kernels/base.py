"""Attention: what every variant module offers the model (training forward, decode step, cache)."""
from __future__ import annotations

import abc

import torch
from torch import nn

from .cache import DecodeCache
from .ops import rms_norm, seeded
from .spec import AttentionSpec


class Attention(nn.Module, abc.ABC):
    cache_type: type[DecodeCache]
    # Weights drawn from another variant's seed, for a weight that plays that variant's part.
    seed_names: dict[str, str] = {}

    def __init__(self, spec: AttentionSpec):
        super().__init__()
        self.spec = spec
        d, H, dh = spec.d_model, spec.n_heads, spec.head_dim
        self.H, self.dh = H, dh
        for name, shape in spec.param_shapes().items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Input projections ~ N(0, 1/fan_in); per-head up-projections ~ N(0, 1/r_or_dc); each drawn from
        its own name's seed, so a projection two variants share starts the same in both."""
        with torch.no_grad():
            for name, p in self.named_parameters(recurse=False):
                fan_in = p.shape[-1] if p.dim() == 2 else p.shape[-2]
                with seeded(self.seed_names.get(name, name)):
                    p.normal_(0.0, max(fan_in, 1) ** -0.5)

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Causal attention over x (B, T, d_model) at positions 0..T-1."""

    @abc.abstractmethod
    def decode(self, x: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        """One new token per sequence, x (B, d_model), at position cache.lengths; appends to the cache."""

    @abc.abstractmethod
    def bilinear_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head query and key maps (H, dh, d_model) whose product W_Q,hᵀ W_K,h is head h's logit form
        (the linear part: norms and RoPE aside). Used for the gauge-invariant head-diversity analysis."""

    @abc.abstractmethod
    def attend_args(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Random inputs of this variant's `cache.attend` for one decode step (queries normalised as the
        model makes them; weights in `dtype`): what a profiler times attention over a cache with."""

    def _random_queries(self, batch: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
        q = torch.randn(batch, self.H, dim, device=self.o.device)
        return (rms_norm(q) if self.spec.qk_norm else q).to(dtype)

    def allocate_cache(self, batch: int, max_len: int, dtype=None, device=None, fill=None) -> DecodeCache:
        ref = self.o
        return self.cache_type.allocate(self.spec, batch, max_len, dtype or ref.dtype, device or ref.device, fill)

    def project_in(self, x: torch.Tensor, *names: str) -> tuple[torch.Tensor, ...]:
        """x @ W_nameᵀ for each named weight, as one GEMM over the stacked weights: x is read once and the
        narrow outputs (LRKV's shared rows and latents) ride in one wide product."""
        weights = [getattr(self, name) for name in names]
        return (x @ torch.cat(weights).t()).split([w.size(0) for w in weights], dim=-1)

    def project_out(self, heads: torch.Tensor) -> torch.Tensor:
        """(..., H, dh) head outputs -> (..., d_model)."""
        return heads.flatten(-2) @ self.o.t()
