"""lrkv.kernels: attention variants (MHA, GQA, MQA, MLA, LRKV), their decode caches, and exact accounting.

Imports nothing else of the project, so any part of it may use the accounting.
"""
from .base import Attention
from .cache import DecodeCache
from .lrkv import LowRankKVAttention, LRKVCache
from .mha import GroupedQueryAttention, KVCache
from .mla import LatentCache, MultiHeadLatentAttention
from .spec import KINDS, AttentionSpec, ConfigError

_MODULES: dict[str, type[Attention]] = {
    "mha": GroupedQueryAttention,
    "gqa": GroupedQueryAttention,
    "mqa": GroupedQueryAttention,
    "mla": MultiHeadLatentAttention,
    "lrkv": LowRankKVAttention,
}


def build_attention(spec: AttentionSpec) -> Attention:
    return _MODULES[spec.kind](spec)


__all__ = ["KINDS", "Attention", "AttentionSpec", "ConfigError", "DecodeCache", "GroupedQueryAttention", "KVCache",
           "LRKVCache", "LatentCache", "LowRankKVAttention", "MultiHeadLatentAttention", "build_attention"]
