"""AttentionSpec: the one description of an attention layer, and the exact accounting derived from it.

Cache bytes, parameters and FLOPs are computed here from the shape alone, so the orchestrator can
price a configuration (and reject it against a budget) before any GPU time is spent. Tests hold
these numbers to the bytes a real cache allocates and to what `torch.utils.flop_counter` counts.

FLOP convention: one multiply-add is 2 FLOPs; only matrix products are counted (norms, RoPE and
softmax are not), and attention over a training sequence of length T is counted as the full T×T
score matrix, as `torch.utils.flop_counter` counts SDPA. Training = forward + backward = 3× forward.
"""
from __future__ import annotations

import dataclasses
import reprlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch is not imported here: pricing a spec must not cost torch's import
    import torch

Kind = Literal["mha", "gqa", "mqa", "mla", "lrkv"]
KINDS: tuple[str, ...] = ("mha", "gqa", "mqa", "mla", "lrkv")


# `got` may be anything a hostile file holds (a YAML alias bomb is a 1 KB file and a million-element list):
# its repr in a message is bounded in cost (reprlib) and in length.
_GOT = reprlib.Repr()
_GOT.maxlevel, _GOT.maxstring, _GOT.maxother, _GOT.maxlong = 3, 200, 200, 200
GOT_CHARS = 200


class ConfigError(ValueError):
    """A value that breaks a constraint; `field` names it so callers can print its full path."""

    def __init__(self, field: str, expected: str, got: object):
        self.field, self.expected, self.got = field, expected, got
        shown = _GOT.repr(got)
        if len(shown) > GOT_CHARS:
            shown = shown[:GOT_CHARS - 1] + "…"
        super().__init__(f"{field}: expected {expected}, got {shown}")


@dataclass(frozen=True)
class AttentionSpec:
    """Shape of one attention layer. Unset dims take the usual defaults for their kind.

    kind: mha | gqa | mqa | mla | lrkv
    n_kv_heads: K/V heads (gqa; mha uses n_heads, mqa 1)
    rank: LRKV per-head residual rank r (0 ≤ r ≤ head_dim)
    kv_latent_dim, rope_dim: MLA's latent d_c (default 4·head_dim) and decoupled RoPE dim d_r (default head_dim/2)
    qk_norm: RMSNorm on queries and (reconstructed) keys after projection. MLA normalises its latent
        instead, as DeepSeek-V2 does: a norm on reconstructed keys would defeat weight absorption.
    key_scales: LRKV with qk_norm and r > 0 only: the decode cache also keeps each head's key 1/rms
        (H more values per token), computed once when the token is appended, so a decode step does not
        recompute every cached key's norm. Off by default: the paper's cache is 2·(d_h + H·r) values.
    """

    kind: Kind
    d_model: int
    n_heads: int
    head_dim: int | None = None
    n_kv_heads: int | None = None
    rank: int = 0
    kv_latent_dim: int | None = None
    rope_dim: int | None = None
    qk_norm: bool = True
    rope_theta: float = 10000.0
    key_scales: bool = False

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(name, "a positive integer", value)

        if self.kind not in KINDS:
            raise ConfigError("kind", f"one of {', '.join(KINDS)}", self.kind)
        positive("d_model")
        positive("n_heads")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ConfigError("n_heads", f"a divisor of d_model ({self.d_model})", self.n_heads)
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        positive("head_dim")
        if self.head_dim % 2:
            raise ConfigError("head_dim", "an even number (RoPE rotates pairs)", self.head_dim)
        kv = {"mha": self.n_heads, "mqa": 1, "lrkv": 1, "mla": 1}.get(self.kind, self.n_kv_heads)
        if kv is None:
            raise ConfigError("n_kv_heads", "a positive integer for kind gqa", None)
        if self.kind != "gqa" and self.n_kv_heads not in (None, kv):
            raise ConfigError("n_kv_heads", f"unset or {kv} for kind {self.kind}", self.n_kv_heads)
        object.__setattr__(self, "n_kv_heads", kv)
        positive("n_kv_heads")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError("n_kv_heads", f"a divisor of n_heads ({self.n_heads})", self.n_kv_heads)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 0 <= self.rank <= self.head_dim:
            raise ConfigError("rank", f"an integer in [0, head_dim={self.head_dim}]", self.rank)
        if self.kind != "lrkv" and self.rank:
            raise ConfigError("rank", "0 unless kind is lrkv", self.rank)
        if self.kind == "mla":
            if self.kv_latent_dim is None:
                object.__setattr__(self, "kv_latent_dim", 4 * self.head_dim)
            if self.rope_dim is None:
                object.__setattr__(self, "rope_dim", max(2, self.head_dim // 2))
            positive("kv_latent_dim")
            positive("rope_dim")
            if self.rope_dim % 2:
                raise ConfigError("rope_dim", "an even number (RoPE rotates pairs)", self.rope_dim)
        else:
            for name in ("kv_latent_dim", "rope_dim"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, "unset unless kind is mla", getattr(self, name))
        if not self.rope_theta > 0:
            raise ConfigError("rope_theta", "a positive number", self.rope_theta)
        if not isinstance(self.key_scales, bool):
            raise ConfigError("key_scales", "true or false", self.key_scales)
        if self.key_scales and not (self.kind == "lrkv" and self.qk_norm and self.rank > 0):
            raise ConfigError("key_scales", "false unless kind is lrkv with qk_norm and rank > 0", self.key_scales)

    # -- shape helpers -------------------------------------------------------------------------
    def replace(self, **changes) -> AttentionSpec:
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        """Short human name: mha, gqa4, mqa, mla512, lrkv64."""
        return {
            "gqa": f"gqa{self.n_kv_heads}",
            "mla": f"mla{self.kv_latent_dim}",
            "lrkv": f"lrkv{self.rank}",
        }.get(self.kind, self.kind)

    # -- cache -------------------------------------------------------------------------------------
    def cache_values_per_token(self) -> int:
        """Numbers one layer caches per token."""
        H, dh = self.n_heads, self.head_dim
        if self.kind == "lrkv":
            return 2 * (dh + H * self.rank) + H * self.key_scales  # K_shared, V_shared, R_k, R_v (, 1/rms)
        if self.kind == "mla":
            return self.kv_latent_dim + self.rope_dim  # c_kv and the shared RoPE key
        return 2 * self.n_kv_heads * dh

    def kv_cache_bytes_per_token(self, dtype: torch.dtype | None = None, n_layers: int = 1) -> int:
        itemsize = 2 if dtype is None else dtype.itemsize  # bf16 unless told
        return n_layers * self.cache_values_per_token() * itemsize

    def mha_equivalent(self) -> AttentionSpec:
        """The MHA layer of the same width: the reference for cache ratios."""
        return AttentionSpec("mha", self.d_model, self.n_heads, self.head_dim, rope_theta=self.rope_theta)

    def cache_ratio_vs_mha(self) -> float:
        return self.cache_values_per_token() / self.mha_equivalent().cache_values_per_token()

    # -- parameters --------------------------------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight of the layer by name (no biases): the layout the modules allocate."""
        d, H, dh = self.d_model, self.n_heads, self.head_dim
        shapes = {"q": (H * (dh + (self.rope_dim or 0)), d), "o": (d, H * dh)}
        if self.kind == "lrkv":
            r = self.rank
            shapes |= {"k_shared": (dh, d), "v_shared": (dh, d), "k_down": (H * r, d), "v_down": (H * r, d),
                       "k_up": (H, r, dh), "v_up": (H, r, dh)}
        elif self.kind == "mla":
            dc = self.kv_latent_dim
            shapes |= {"kv_down": (dc, d), "k_rope": (self.rope_dim, d), "k_up": (H, dc, dh), "v_up": (H, dc, dh)}
        else:
            shapes |= {"k": (self.n_kv_heads * dh, d), "v": (self.n_kv_heads * dh, d)}
        return shapes

    def params(self) -> int:
        return sum(_prod(s) for s in self.param_shapes().values())

    # -- FLOPs -------------------------------------------------------------------------------------
    def forward_flops_per_token(self, seq_len: int) -> int:
        """One training-style forward over a causal sequence of `seq_len`, per token.

        Every weight is applied once per token (2·params), plus QKᵀ and PV over the full T×T square.
        """
        H, dh = self.n_heads, self.head_dim
        d_qk = dh + (self.rope_dim or 0)
        return 2 * self.params() + 2 * seq_len * H * (d_qk + dh)

    def train_flops_per_token(self, seq_len: int) -> int:
        return 3 * self.forward_flops_per_token(seq_len)

    def decode_flops(self, context: int) -> int:
        """One decode step for one sequence, attending over `context` cached tokens (the new one included).

        Counts the reference decode path: LRKV rebuilds each cached key (R_k·B_k) and applies B_v once
        after the probabilities (associativity); MLA absorbs W_uk into the query and W_uv into the output.
        """
        H, dh, T = self.n_heads, self.head_dim, context
        if self.kind == "lrkv":
            r = self.rank
            # B_k is applied to every cached R_k row, and to the new token only to cache its key's 1/rms.
            return 2 * (self.params() - H * r * dh * (not self.key_scales)) + 2 * T * H * (r * dh + 2 * dh + r)
        if self.kind == "mla":
            dc, dr = self.kv_latent_dim, self.rope_dim
            return 2 * self.params() + 2 * T * H * (2 * dc + dr)
        return 2 * self.params() + 4 * T * H * dh


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
