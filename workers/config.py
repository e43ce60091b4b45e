"""TrialConfig: everything one trial needs, as frozen dataclasses, loadable from a plain mapping (YAML).

Validation errors name the full field path (`model.attention.rank: expected ...`) so the CLI and the
sweep spec can print one clear line.
"""
from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError

from lrkv.kernels import ConfigError

from .data import DataConfig
from .model import ModelConfig

MAX_PROFILE_CONTEXT = 1 << 20  # tokens per profiled sequence: more is a typo that would allocate terabytes
INT64 = 2**63  # what torch, numpy and SQL integers hold: a larger count or seed is a typo that overflows later


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite(value: object) -> bool:
    """A real number that is neither a bool nor inf / nan."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: object) -> bool:
    """A positive integer within int64."""
    return is_int(value) and 0 < value < INT64


def strict_numbers(cls) -> BeforeValidator:
    """pydantic's lax mode reads True as 1 and '16' as 16 before __post_init__ sees the value: refuse both for an
    `int` field of `cls`, and a bool for a `float` one. A numeric string stays a float: PyYAML reads `1e-3` (no
    dot) as the string '1e-3', and pydantic turns it into 0.001."""
    hints = typing.get_type_hints(cls)

    def check(raw):
        for name, value in raw.items() if isinstance(raw, dict) else ():
            hint = hints.get(name)
            if hint in (int, int | None) and value is not None and not is_int(value):
                raise ConfigError(str(name), "an integer", value)
            if hint is float and isinstance(value, bool):
                raise ConfigError(str(name), "a number", value)
        return raw
    return BeforeValidator(check)


@dataclass(frozen=True)
class TrainConfig:
    tokens: int = 400_000          # training budget; steps = tokens // (batch_size · seq_len)
    batch_size: int = 16
    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: float = 3e-3               # AdamW, and Muon's embedding / head / per-head-tensor group
    matrix_lr: float = 0.02        # Muon's 2-D matrices (the paper's setting)
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1       # cosine decay ends at this fraction of the peak
    grad_clip: float = 1.0
    eval_every: int = 50           # steps between validation reports (and one at the end)
    eval_blocks: int = 64          # validation blocks per evaluation (fixed, the first ones)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: Literal["auto", "on", "off"] = "auto"   # auto: on for CUDA, off for CPU
    profile_contexts: tuple[int, ...] = ()           # decode profiler after training: decode_ms at each context
    profile_batch: int = 8                           # sequences per profiled decode step
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        for name in ("tokens", "batch_size", "eval_every", "eval_blocks", "profile_batch"):
            if not is_count(getattr(self, name)):
                raise ConfigError(name, "a positive integer below 2**63", getattr(self, name))
        for i, context in enumerate(self.profile_contexts):
            if not (is_int(context) and 0 < context <= MAX_PROFILE_CONTEXT):
                raise ConfigError(f"profile_contexts.{i}", f"a positive integer ≤ {MAX_PROFILE_CONTEXT}", context)
        for name in ("lr", "matrix_lr", "grad_clip"):
            if not (is_finite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(name, "a positive finite number", getattr(self, name))
        for name in ("weight_decay", "warmup_frac", "min_lr_frac"):
            if not (is_finite(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise ConfigError(name, "a number in [0, 1]", getattr(self, name))


@dataclass(frozen=True)
class TrialConfig:
    model: ModelConfig
    data: Annotated[DataConfig, strict_numbers(DataConfig)] = field(default_factory=DataConfig)
    train: Annotated[TrainConfig, strict_numbers(TrainConfig)] = field(default_factory=TrainConfig)
    seed: Annotated[int, Field(strict=True)] = 0
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if not (is_int(self.seed) and -INT64 <= self.seed < INT64):
            raise ConfigError("seed", "an integer within int64", self.seed)

    @classmethod
    def from_dict(cls, raw: Any) -> TrialConfig:
        """Validate a nested mapping; raises ConfigError naming the first bad field's full path."""
        try:
            return _ADAPTER.validate_python(raw)
        except ValidationError as exc:
            raise config_error(exc) from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ADAPTER = TypeAdapter(TrialConfig)


def config_error(exc: ValidationError, prefix: str = "") -> ConfigError:
    """The first pydantic error as a ConfigError whose field is the full dotted path."""
    err = exc.errors()[0]
    path = [str(p) for p in err["loc"]]
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        return ConfigError(".".join([prefix, *path, cause.field]).strip("."), cause.expected, cause.got)
    where = ".".join([prefix, *path]).strip(".") or "config"
    if err["type"] == "missing":
        return ConfigError(where, "a value (required)", None)
    if err["type"] == "extra_forbidden":
        return ConfigError(where, "no such field", err.get("input"))
    msg = err["msg"].removeprefix("Value error, ")
    return ConfigError(where, msg[:1].lower() + msg[1:], err.get("input"))
