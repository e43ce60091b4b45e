"""MLA (DeepSeek-V2 style): keys and values come from a shared normalised latent c (d_c) plus one shared
decoupled RoPE key (d_r). Training reconstructs per-head keys/values; decode absorbs W_uk into the
query and W_uv into the output, so it works on the latent cache alone (d_c + d_r numbers per token).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Attention
from .cache import DecodeCache, masked_softmax
from .ops import rms_norm, rope
from .spec import AttentionSpec


class LatentCache(DecodeCache):
    @staticmethod
    def row_shapes(spec: AttentionSpec) -> dict[str, tuple[int, ...]]:
        return {"c_kv": (spec.kv_latent_dim,), "k_rope": (spec.rope_dim,)}

    def attend(self, q_nope: torch.Tensor, q_rope: torch.Tensor, k_up: torch.Tensor, v_up: torch.Tensor,
               full: bool = False) -> torch.Tensor:
        """q_nope (B, H, dh), q_rope (B, H, dr, rotated); k_up, v_up (H, d_c, dh). Returns (B, H, dh)."""
        mask, rows = self.valid(full)
        c, kr = rows["c_kv"], rows["k_rope"]
        q_latent = torch.einsum("bhd,hcd->bhc", q_nope, k_up)  # absorb W_uk
        scale = (q_nope.size(-1) + q_rope.size(-1)) ** -0.5
        logits = (torch.einsum("bhc,btc->bht", q_latent, c) + torch.einsum("bhr,btr->bht", q_rope, kr)) * scale
        p = masked_softmax(logits, mask)
        out_latent = torch.einsum("bht,btc->bhc", p, c)
        return torch.einsum("bhc,hcd->bhd", out_latent, v_up)  # absorb W_uv


class MultiHeadLatentAttention(Attention):
    cache_type = LatentCache

    def _project(self, x: torch.Tensor, positions: torch.Tensor):
        s = self.spec
        q, c, k_rope = self.project_in(x, "q", "kv_down", "k_rope")
        q_nope, q_rope = q.unflatten(-1, (self.H, self.dh + s.rope_dim)).split([self.dh, s.rope_dim], dim=-1)
        c = rms_norm(c)
        k_rope = rope(k_rope[:, :, None, :], positions, s.rope_theta)  # (B, T, 1, dr)
        return q_nope, rope(q_rope, positions, s.rope_theta), c, k_rope

    def bilinear_factors(self):
        w_q = self.q.view(self.H, self.dh + self.spec.rope_dim, -1)[:, : self.dh]
        return w_q, torch.einsum("hcd,cm->hdm", self.k_up, self.kv_down)  # the content (no-RoPE) part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q_nope, q_rope, c, k_rope = self._project(x, torch.arange(x.size(1), device=x.device))
        k_nope = torch.einsum("btc,hcd->bthd", c, self.k_up)
        v = torch.einsum("btc,hcd->bthd", c, self.v_up)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(-1, -1, self.H, -1)), dim=-1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.project_out(out.transpose(1, 2))

    def attend_args(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        q_rope = torch.randn(batch, self.H, self.spec.rope_dim, device=self.o.device, dtype=dtype)
        return (self._random_queries(batch, self.dh, dtype), q_rope, self.k_up.to(dtype), self.v_up.to(dtype))

    def decode(self, x: torch.Tensor, cache: LatentCache) -> torch.Tensor:
        q_nope, q_rope, c, k_rope = self._project(x[:, None], cache.lengths[:, None])
        cache.append(c_kv=c[:, 0], k_rope=k_rope[:, 0, 0])
        return self.project_out(cache.attend(q_nope[:, 0], q_rope[:, 0], self.k_up, self.v_up))
