"""lrkv.kernels: attention variants (MHA, GQA, MQA, MLA, LRKV), their decode caches, and exact accounting.

Imports nothing else of the project, so any part of it may use the accounting. The spec and its accounting
load without torch; the modules load on first use, so a command that only prices or reads specs skips
torch's import (about 2 s).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .spec import KINDS, AttentionSpec, ConfigError

if TYPE_CHECKING:
    from .base import Attention
    from .cache import DecodeCache
    from .lrkv import LowRankKVAttention, LRKVCache
    from .mha import GroupedQueryAttention, KVCache
    from .mla import LatentCache, MultiHeadLatentAttention

_LAZY = {"Attention": "base", "DecodeCache": "cache", "LowRankKVAttention": "lrkv", "LRKVCache": "lrkv",
         "GroupedQueryAttention": "mha", "KVCache": "mha", "LatentCache": "mla", "MultiHeadLatentAttention": "mla"}
_MODULES = {"mha": "GroupedQueryAttention", "gqa": "GroupedQueryAttention", "mqa": "GroupedQueryAttention",
            "mla": "MultiHeadLatentAttention", "lrkv": "LowRankKVAttention"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def build_attention(spec: AttentionSpec) -> Attention:
    return __getattr__(_MODULES[spec.kind])(spec)


__all__ = ["KINDS", "AttentionSpec", "ConfigError", "build_attention", *_LAZY]
