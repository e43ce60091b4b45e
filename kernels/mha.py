"""Multi-head attention and its K/V-sharing relatives: GQA (n_kv_heads groups) and MQA (one K/V head)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Attention
from .cache import DecodeCache
from .ops import rms_norm, rope
from .spec import AttentionSpec


class KVCache(DecodeCache):
    """Full per-KV-head keys (normalised and rotated) and values."""

    @staticmethod
    def row_shapes(spec: AttentionSpec) -> dict[str, tuple[int, ...]]:
        return {"k": (spec.n_kv_heads, spec.head_dim), "v": (spec.n_kv_heads, spec.head_dim)}

    def attend(self, q: torch.Tensor, full: bool = False) -> torch.Tensor:
        mask, rows = self.valid(full)
        k, v = rows["k"].transpose(1, 2), rows["v"].transpose(1, 2)  # (B, kv, T, dh)
        unmasked = full or bool(mask.all())  # no mask lets SDPA take its flash kernel
        attn_mask = None if unmasked else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=attn_mask, enable_gqa=k.size(1) != q.size(1))
        return out[:, :, 0]


class GroupedQueryAttention(Attention):
    cache_type = KVCache

    def _qkv(self, x: torch.Tensor, positions: torch.Tensor):
        s = self.spec
        q, k, v = self.project_in(x, "q", "k", "v")
        q = q.unflatten(-1, (self.H, self.dh))
        k, v = k.unflatten(-1, (s.n_kv_heads, self.dh)), v.unflatten(-1, (s.n_kv_heads, self.dh))
        if s.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        return rope(q, positions, s.rope_theta), rope(k, positions, s.rope_theta), v

    def bilinear_factors(self):
        w_q = self.q.view(self.H, self.dh, -1)
        w_k = self.k.view(self.spec.n_kv_heads, self.dh, -1)
        return w_q, w_k.repeat_interleave(self.H // self.spec.n_kv_heads, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x, torch.arange(x.size(1), device=x.device))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=True, enable_gqa=self.spec.n_kv_heads != self.H)
        return self.project_out(out.transpose(1, 2))

    def attend_args(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return (self._random_queries(batch, self.dh, dtype),)

    def decode(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        q, k, v = self._qkv(x[:, None], cache.lengths[:, None])
        cache.append(k=k[:, 0], v=v[:, 0])
        return self.project_out(cache.attend(q[:, 0]))
