"""LRKV: one shared full-rank K/V projection plus a rank-r residual per head, W_h = W_shared + U_h B_hᵀ.

k_h = RMSNorm(x W_shared,k + (x U_k,h) B_k,hᵀ), then RoPE; v_h the same without norm and RoPE.
The cache keeps K_shared, V_shared (T × d_h) and the latents R_k = x U_k, R_v = x U_v (T × H × r):
2·(d_h + H·r) numbers per token. r = 0 is MQA; r = d_h can express MHA exactly. With the spec's
`key_scales` it also keeps each key's 1/rms (H numbers), so decode steps do not recompute norms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Attention
from .cache import DecodeCache, masked_softmax
from .ops import EPS, rms_norm, rope
from .spec import AttentionSpec

RESIDUAL_SCALE = 0.1  # ‖U_h B_hᵀ‖_F at init, relative to ‖W_shared‖_F (the paper's recipe)
# How a training forward rebuilds per-head keys and values from the cached rows (None: `training_path`
# picks; a benchmark may force one): "factored", the plain composition (einsum, norm, RoPE), or
# "fused", the Triton op.
TRAINING_PATH: str | None = None
TRAINING_PATHS = ("factored", "fused")


def reconstruct(shared: torch.Tensor, latent: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Per-head rows shared (B, T, dh) + latent (B, T, H, r) @ up (H, r, dh) -> (B, T, H, dh)."""
    return shared[:, :, None, :] + torch.einsum("bthr,hrd->bthd", latent, up)


def key_scales(k_shared: torch.Tensor, r_k: torch.Tensor, k_up: torch.Tensor) -> torch.Tensor:
    """1/rms of each rebuilt key (B, T, H), the factor RMSNorm applies (computed in fp32 or wider)."""
    work = torch.promote_types(r_k.dtype, torch.float32)
    k = reconstruct(k_shared.to(work), r_k.to(work), k_up.to(work))
    return torch.rsqrt(k.square().mean(-1) + EPS)


class LRKVCache(DecodeCache):
    """The compressed cache; per-head keys and values are rebuilt only inside `attend`."""

    @staticmethod
    def row_shapes(spec: AttentionSpec) -> dict[str, tuple[int, ...]]:
        H, r, dh = spec.n_heads, spec.rank, spec.head_dim
        return {"k_shared": (dh,), "v_shared": (dh,), "r_k": (H, r), "r_v": (H, r)} | (
            {"k_scale": (H,)} if spec.key_scales else {})

    def attend(self, q: torch.Tensor, k_up: torch.Tensor, v_up: torch.Tensor, full: bool = False) -> torch.Tensor:
        """Attention of q (B, H, dh), already normalised and rotated, over the cache: the fused Triton
        kernel on CUDA (no host sync, so a decode step can be captured in a CUDA graph), else the reference."""
        if not q.is_cuda:
            return self.attend_reference(q, k_up, v_up, full)
        from .fused.decode import decode
        t = self.tensors
        return decode(q, t["k_shared"], t["v_shared"], t["r_k"], t["r_v"], k_up.to(t["r_k"].dtype).contiguous(),
                      v_up.contiguous(), self.lengths, norm=self.spec.qk_norm,
                      rope_theta=self.spec.rope_theta, k_scale=t.get("k_scale"))

    def attend_reference(self, q: torch.Tensor, k_up: torch.Tensor, v_up: torch.Tensor,
                         full: bool = False) -> torch.Tensor:
        """Plain-PyTorch attention of q (B, H, dh), already normalised and rotated, over the cache."""
        mask, rows = self.valid(full)
        return attend_compressed(q, rows, mask, k_up, v_up, norm=self.spec.qk_norm, rope_theta=self.spec.rope_theta)


def attend_compressed(q: torch.Tensor, rows: dict[str, torch.Tensor], mask: torch.Tensor, k_up: torch.Tensor,
                      v_up: torch.Tensor, *, norm: bool, rope_theta: float | None) -> torch.Tensor:
    """The reference decode step over compressed rows (B, T, ...) valid where mask (B, T).

    Keys are rebuilt (R_k B_k + K_shared, norm, RoPE) as the model builds them; values use
    associativity, out_h = p·V_shared + (p·R_v,h) B_v,h, so per-head V is never formed.
    rope_theta None skips RoPE. Rows holding "k_scale" (B, T, H) give the norm's 1/rms.
    """
    k = reconstruct(rows["k_shared"], rows["r_k"], k_up)
    if norm and "k_scale" in rows:
        k = k * rows["k_scale"][..., None].to(k.dtype)
    elif norm:
        k = rms_norm(k)
    if rope_theta is not None:
        k = rope(k, torch.arange(k.size(1), device=k.device), rope_theta)
    logits = torch.einsum("bhd,bthd->bht", q, k) * q.size(-1) ** -0.5
    p = masked_softmax(logits, mask)
    shared = torch.einsum("bht,btd->bhd", p, rows["v_shared"])
    latent = torch.einsum("bht,bthr->bhr", p, rows["r_v"])
    return shared + torch.einsum("bhr,hrd->bhd", latent, v_up)


class LowRankKVAttention(Attention):
    cache_type = LRKVCache
    seed_names = {"k_shared": "k", "v_shared": "v"}  # W_shared starts as MQA's K/V: r = 0 trains as MQA

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.spec.rank == 0:
            return
        with torch.no_grad():  # each head's residual U_h B_hᵀ starts at 0.1·‖W_shared‖_F
            for shared, down, up in (("k_shared", "k_down", "k_up"), ("v_shared", "v_down", "v_up")):
                W, U, B = getattr(self, shared), getattr(self, down), getattr(self, up)
                U_h = U.view(self.H, self.spec.rank, -1)
                for h in range(self.H):
                    norm = torch.linalg.matrix_norm(U_h[h].t() @ B[h])
                    scale = (RESIDUAL_SCALE * torch.linalg.matrix_norm(W) / norm).sqrt()
                    U_h[h].mul_(scale)
                    B[h].mul_(scale)

    def _project(self, x: torch.Tensor):
        """x (B, T, d) -> q (B, T, H, dh) and the cached rows."""
        H, r = self.H, self.spec.rank
        q, k_shared, v_shared, r_k, r_v = self.project_in(x, "q", "k_shared", "v_shared", "k_down", "v_down")
        q = q.unflatten(-1, (H, self.dh))
        rows = {"k_shared": k_shared, "v_shared": v_shared,
                "r_k": r_k.unflatten(-1, (H, r)), "r_v": r_v.unflatten(-1, (H, r))}
        return (rms_norm(q) if self.spec.qk_norm else q), rows

    def bilinear_factors(self):
        U = self.k_down.view(self.H, self.spec.rank, self.spec.d_model)
        w_k = self.k_shared + torch.einsum("hrd,hrm->hdm", self.k_up, U)  # W_shared + B_hᵀ U_h
        return self.q.view(self.H, self.dh, -1), w_k

    def training_path(self, x: torch.Tensor) -> str:
        """How this forward rebuilds keys and values: TRAINING_PATH if forced, else by device and mode."""
        if TRAINING_PATH is not None:
            return TRAINING_PATH
        if not x.is_cuda:
            return "factored"
        # Eager CUDA: one Triton pass per K and V. Under torch.compile the plain composition beats the
        # Triton op: Inductor fuses it into the neighbouring kernels (benchmarks/NOTES.md).
        return "factored" if torch.compiler.is_compiling() else "fused"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        positions = torch.arange(x.size(1), device=x.device)
        q, rows = self._project(x)
        if self.training_path(x) == "fused":  # no (B, T, H, dh) intermediates kept for the backward
            from .fused.reconstruct import reconstruct as fused
            dtype = rows["r_k"].dtype
            k = fused(rows["k_shared"], rows["r_k"], self.k_up.to(dtype), norm=s.qk_norm, rope_theta=s.rope_theta)
            v = fused(rows["v_shared"], rows["r_v"], self.v_up.to(dtype), norm=False, rope_theta=None)
        else:
            k = reconstruct(rows["k_shared"], rows["r_k"], self.k_up)
            v = reconstruct(rows["v_shared"], rows["r_v"], self.v_up)
            if s.qk_norm:
                k = rms_norm(k)
            k = rope(k, positions, s.rope_theta)
        q = rope(q, positions, s.rope_theta)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.project_out(out.transpose(1, 2))

    def attend_args(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        return self._random_queries(batch, self.dh, dtype), self.k_up.to(dtype), self.v_up.to(dtype)

    def decode(self, x: torch.Tensor, cache: LRKVCache) -> torch.Tensor:
        q, rows = self._project(x[:, None])
        q = rope(q, cache.lengths[:, None], self.spec.rope_theta)
        if self.spec.key_scales:
            rows["k_scale"] = key_scales(rows["k_shared"], rows["r_k"], self.k_up)
        cache.append(**{name: row[:, 0] for name, row in rows.items()})
        return self.project_out(cache.attend(q[:, 0], self.k_up, self.v_up))
