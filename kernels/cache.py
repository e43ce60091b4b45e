"""DecodeCache: preallocated per-sequence storage that a decode step appends to and attends over.

Each variant names the rows it stores per token (`row_shapes`) and how a query attends over them
(`attend`). Sequences in a batch may have different lengths (ragged): row t of sequence b is valid
while t < lengths[b]; slots past a length are never read as data (tests fill them with NaN).
"""
from __future__ import annotations

import abc

import torch

from .spec import AttentionSpec


class DecodeCache(abc.ABC):
    def __init__(self, spec: AttentionSpec, tensors: dict[str, torch.Tensor], lengths: torch.Tensor):
        self.spec, self.tensors, self.lengths = spec, tensors, lengths

    @staticmethod
    @abc.abstractmethod
    def row_shapes(spec: AttentionSpec) -> dict[str, tuple[int, ...]]:
        """Per-token rows this variant caches, by name."""

    @classmethod
    def allocate(cls, spec: AttentionSpec, batch: int, max_len: int, dtype=torch.bfloat16, device="cpu",
                 fill: float | None = None) -> DecodeCache:
        """Room for `max_len` tokens per sequence; `fill` poisons the slots (e.g. NaN in tests)."""
        make = torch.empty if fill is None else (lambda *s, **kw: torch.full(s, fill, **kw))
        tensors = {name: make(batch, max_len, *shape, dtype=dtype, device=device)
                   for name, shape in cls.row_shapes(spec).items()}
        return cls(spec, tensors, torch.zeros(batch, dtype=torch.long, device=device))

    @property
    def batch(self) -> int:
        return self.lengths.numel()

    @property
    def max_len(self) -> int:
        return next(iter(self.tensors.values())).size(1)

    @property
    def nbytes(self) -> int:
        """Bytes of cached rows (what the spec's kv_cache_bytes_per_token accounts for)."""
        return sum(t.nbytes for t in self.tensors.values())

    def append(self, **rows: torch.Tensor) -> None:
        """Write one new token per sequence (each row shaped (batch, *row_shape)) at its length."""
        if set(rows) != set(self.tensors):
            raise ValueError(f"append expects rows {sorted(self.tensors)}, got {sorted(rows)}")
        if int(self.lengths.max()) >= self.max_len:
            raise ValueError(f"cache is full: max_len {self.max_len}")
        b = torch.arange(self.batch, device=self.lengths.device)
        for name, row in rows.items():
            self.tensors[name][b, self.lengths] = row.to(self.tensors[name].dtype)
        self.lengths += 1

    def valid(self, full: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(mask (B, T), rows cut to the longest sequence with invalid slots zeroed) for references.
        full=True promises every sequence fills the cache: no host sync, so a CUDA graph can hold it."""
        if full:
            return torch.ones(self.batch, self.max_len, dtype=torch.bool, device=self.lengths.device), self.tensors
        T = int(self.lengths.max())
        mask = torch.arange(T, device=self.lengths.device)[None, :] < self.lengths[:, None]
        if bool(mask.all()):  # nothing to hide: views, not copies of the cache
            return mask, {name: t[:, :T] for name, t in self.tensors.items()}
        rows = {}
        for name, t in self.tensors.items():
            m = mask.view(*mask.shape, *([1] * (t.dim() - 2)))
            rows[name] = torch.where(m, t[:, :T], torch.zeros((), dtype=t.dtype, device=t.device))
        return mask, rows

    @abc.abstractmethod
    def attend(self, *args: torch.Tensor, full: bool = False) -> torch.Tensor:
        """Attention output (B, H, head_dim) of one query per sequence over its cached rows
        (full: as in `valid`)."""


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of (B, H, T) logits, with invalid positions (mask (B, T) False) excluded."""
    return logits.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=-1)
