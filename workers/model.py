"""A small modern GPT whose attention layer is chosen by an AttentionSpec, and its exact accounting.

Pre-norm blocks with parameter-free RMSNorm, RoPE and QK-norm inside attention, a ReLU² MLP and an
untied output head. Residual-branch output projections start at zero, so every variant starts from
the same function (the identity residual stream) and differs only in what it learns; every other weight
is drawn from a seed of its own name, so the weights variants share start equal too.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lrkv.kernels import AttentionSpec, ConfigError, build_attention
from lrkv.kernels.ops import rms_norm, seeded


@dataclass(frozen=True)
class ModelConfig:
    attention: AttentionSpec
    n_layers: int
    mlp_ratio: int = 4
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        for name in ("n_layers", "mlp_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(name, "a positive integer", value)

    @property
    def d_model(self) -> int:
        return self.attention.d_model

    def params(self, vocab_size: int) -> int:
        d = self.d_model
        return 2 * vocab_size * d + self.n_layers * (self.attention.params() + 2 * self.mlp_ratio * d * d)

    def forward_flops_per_token(self, vocab_size: int, seq_len: int) -> int:
        """Matmul FLOPs of one forward per token (the embedding lookup is not a product)."""
        d = self.d_model
        mlp = 2 * 2 * self.mlp_ratio * d * d
        return self.n_layers * (self.attention.forward_flops_per_token(seq_len) + mlp) + 2 * d * vocab_size

    def train_flops_per_token(self, vocab_size: int, seq_len: int) -> int:
        return 3 * self.forward_flops_per_token(vocab_size, seq_len)

    def kv_cache_bytes_per_token(self, dtype: torch.dtype = torch.bfloat16) -> int:
        return self.attention.kv_cache_bytes_per_token(dtype, self.n_layers)


class MLP(nn.Module):
    def __init__(self, d: int, ratio: int):
        super().__init__()
        self.fc = nn.Linear(d, ratio * d, bias=False)
        self.proj = nn.Linear(ratio * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn = build_attention(cfg.attention)
        self.mlp = MLP(cfg.d_model, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x))
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        # Each weight is drawn from its own name's seed (common random numbers across variants).
        with torch.no_grad():
            with seeded("embed"):
                nn.init.normal_(self.embed.weight)
            with seeded("head"):
                nn.init.normal_(self.head.weight, std=cfg.d_model ** -0.5)
            for i, block in enumerate(self.blocks):
                with seeded(f"blocks.{i}.mlp.fc"):
                    nn.init.normal_(block.mlp.fc.weight, std=cfg.d_model ** -0.5)
                with seeded(f"blocks.{i}.attn"):
                    block.attn.reset_parameters()
                block.mlp.proj.weight.zero_()
                block.attn.o.zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V), or the mean cross-entropy in nats when targets are given."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.head(rms_norm(x)).float()
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def attention_layers(self) -> list:
        return [block.attn for block in self.blocks]
