"""TrialConfig: everything one trial needs, as frozen dataclasses, loadable from a plain mapping (YAML).

Validation errors name the full field path (`model.attention.rank: expected ...`) so the CLI and the
sweep spec can print one clear line.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from lrkv.kernels import ConfigError

from .data import DataConfig
from .model import ModelConfig


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
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        for name in ("tokens", "batch_size", "eval_every", "eval_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(name, "a positive integer", value)
        for name in ("lr", "matrix_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, "a positive number", getattr(self, name))
        for name in ("weight_decay", "warmup_frac", "min_lr_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(name, "a number in [0, 1]", getattr(self, name))


@dataclass(frozen=True)
class TrialConfig:
    model: ModelConfig
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    __pydantic_config__ = {"extra": "forbid"}

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
