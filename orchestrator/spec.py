"""SweepSpec: what a sweep tries, what it optimises, what it may spend, and where it keeps its state.

Loaded from YAML and validated whole before anything touches a store: every error names its field
path (`space.rank.fractions.2: expected ...`). `SweepSpec.trial_config` turns one point of the search
space into the worker's TrialConfig, so the orchestrator never builds models itself.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lrkv.kernels import AttentionSpec, ConfigError
from lrkv.workers.config import TrainConfig, TrialConfig, config_error
from lrkv.workers.data import DataConfig

# Objective name -> key of the worker's metrics record.
OBJECTIVES = {"val_bpb": "val_bpb", "kv_cache_bytes": "kv_cache_bytes_per_token",
              "flops_per_token": "flops_per_token", "params": "params", "decode_ms": "decode_ms"}
COSTS = tuple(k for k in OBJECTIVES if k != "val_bpb")  # known before training, except decode_ms
BASELINE = re.compile(r"^(mha|mqa|mla|gqa(\d+))$")
PositiveInt = Annotated[int, Field(gt=0, strict=True)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Size(Strict):
    """One model size: the attention shape and depth; every variant of the sweep uses it."""
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    d_model: PositiveInt
    n_layers: PositiveInt
    n_heads: PositiveInt
    head_dim: PositiveInt | None = None

    @model_validator(mode="after")
    def _shape(self):
        AttentionSpec("mha", self.d_model, self.n_heads, self.head_dim)  # raises ConfigError on a bad shape
        return self

    @property
    def d_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


class RankSpace(Strict):
    """LRKV ranks: integers (`values`, or `low`..`high` by `step`) or fractions of d_h (`fractions`)."""
    values: list[Annotated[int, Field(ge=0, strict=True)]] | None = Field(default=None, min_length=1)
    fractions: list[Annotated[float, Field(ge=0, le=1)]] | None = Field(default=None, min_length=1)
    low: Annotated[int, Field(ge=0, strict=True)] | None = None
    high: Annotated[int, Field(ge=0, strict=True)] | None = None
    step: PositiveInt = 1

    @model_validator(mode="after")
    def _one_form(self):
        forms = [self.values is not None, self.fractions is not None, self.low is not None or self.high is not None]
        if sum(forms) != 1:
            raise ValueError("exactly one of values, fractions or low/high")
        if forms[2] and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError("low ≤ high, both set")
        return self

    def param(self) -> str:
        return "rank_frac" if self.fractions is not None else "rank"

    def choices(self) -> list:
        if self.fractions is not None:
            return sorted(set(self.fractions))
        if self.values is not None:
            return sorted(set(self.values))
        return list(range(self.low, self.high + 1, self.step))

    def rank(self, choice: float | int, head_dim: int) -> int:
        return round(choice * head_dim) if self.fractions is not None else int(choice)

    def anchors(self, head_dim: int) -> list:
        """The reference points r ∈ {0, d_h/4, d_h/2, d_h}, in this space's own units, where it has them."""
        if self.fractions is not None:
            wanted = [0.0, 0.25, 0.5, 1.0]
        else:
            wanted = [0, head_dim // 4, head_dim // 2, head_dim]
        have = self.choices()
        return [w for w in wanted if any(abs(w - c) < 1e-9 for c in have)]


class LrSpace(Strict):
    low: Annotated[float, Field(gt=0)]
    high: Annotated[float, Field(gt=0)]
    log: bool = True

    @model_validator(mode="after")
    def _order(self):
        if self.low > self.high:
            raise ValueError("low ≤ high")
        return self


class Space(Strict):
    sizes: list[Size] = Field(min_length=1)
    rank: RankSpace
    lr: Annotated[float, Field(gt=0)] | LrSpace | None = None  # None: the train section's lr

    @field_validator("sizes")
    @classmethod
    def _unique(cls, sizes):
        names = [s.name for s in sizes]
        if len(set(names)) != len(names):
            raise ValueError(f"unique size names ({', '.join(sorted({n for n in names if names.count(n) > 1}))} repeated)")
        return sizes

    @field_validator("lr", mode="before")
    @classmethod
    def _lr(cls, lr):
        """One path for both forms (a union would report `space.lr.constrained-float` for a bad range)."""
        if lr is None or isinstance(lr, LrSpace):
            return lr
        if isinstance(lr, dict):
            try:
                return LrSpace.model_validate(lr)
            except ValidationError as exc:
                err = config_error(exc)
                raise ConfigError("" if err.field == "config" else err.field, err.expected, err.got) from None
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise ConfigError("", "a positive number or a range {low, high}", lr)
        return float(lr)


class Budget(Strict):
    tokens_per_trial: PositiveInt
    trials: PositiveInt
    concurrency: PositiveInt = 1


class Constraints(Strict):
    """Checked from the spec alone, before a trial is scheduled."""
    max_cache_fraction_of_mha: Annotated[float, Field(gt=0)] | None = None
    max_cache_bytes_per_token: PositiveInt | None = None
    max_params: PositiveInt | None = None


class Pruning(Strict):
    """Frontier-fair early stopping (see orchestrator.pruning)."""
    enabled: bool = True
    margin: Annotated[float, Field(ge=0)] = 0.05     # bits per byte
    grace: Annotated[float, Field(ge=0, le=1)] = 0.3  # fraction of the budget before any stop


class Sampler(Strict):
    kind: Literal["tpe", "nsga2", "gp", "grid", "random"] = "tpe"
    seed: int = 0
    startup_trials: PositiveInt = 8


class Resources(Strict):
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0  # fractional packs several trials on a card
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0
    max_retries: Annotated[int, Field(ge=0, strict=True)] = 2  # re-runs of a trial whose node died


class Storage(Strict):
    study: str | None = None         # SQLAlchemy URL or journal file; default: <workspace>/optuna.journal
    tracking_uri: str | None = None  # MLflow; default: sqlite:///<workspace>/mlflow.db


class SweepSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    objectives: dict[Literal["val_bpb", "kv_cache_bytes", "flops_per_token", "params", "decode_ms"],
                     Literal["min", "max"]]
    space: Space
    baselines: list[str] = []
    anchors: bool = True
    budget: Budget
    constraints: Constraints = Constraints()
    pruning: Pruning = Pruning()
    sampler: Sampler = Sampler()
    resources: Resources = Resources()
    storage: Storage = Storage()
    data: dict[str, Any] = {}
    train: dict[str, Any] = {}
    seed: int = 0

    @field_validator("objectives", mode="before")
    @classmethod
    def _known_objectives(cls, objectives):
        if isinstance(objectives, dict):  # name the unknown key itself, not pydantic's `objectives.<key>.[key]`
            for name in objectives:
                if name not in OBJECTIVES:
                    raise ConfigError(str(name), f"one of {', '.join(OBJECTIVES)}", name)
        return objectives

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, objectives):
        if "decode_ms" in objectives:
            raise ValueError("no decode_ms (it needs the decode profiler, which this version does not have)")
        if "val_bpb" not in objectives or len(objectives) < 2:
            raise ValueError("val_bpb and at least one cost (kv_cache_bytes, flops_per_token, params)")
        return objectives

    @field_validator("baselines")
    @classmethod
    def _baselines(cls, baselines):
        for b in baselines:
            if not BASELINE.match(b):
                raise ConfigError("", "baselines among mha, mqa, mla, gqa<N>", b)
        return list(dict.fromkeys(baselines))

    @field_validator("train")
    @classmethod
    def _no_tokens(cls, train):
        if "tokens" in train:
            raise ConfigError("tokens", "no train.tokens (set budget.tokens_per_trial)", train["tokens"])
        return train

    @field_validator("data", "train")
    @classmethod
    def _known_fields(cls, section, info):
        """Unknown keys read `no such field`, as everywhere else (the dataclasses say `unexpected keyword argument`)."""
        known = {f.name for f in dataclasses.fields(DataConfig if info.field_name == "data" else TrainConfig)}
        for key, value in section.items():
            if key not in known:
                raise ConfigError(str(key), "no such field", value)
        return section

    @model_validator(mode="after")
    def _trials_build(self):
        """Every size × variant must make a valid trial: build each once (cheap, analytic)."""
        rank = self.space.rank
        if rank.fractions is None:
            smallest = min(s.d_head for s in self.space.sizes)
            for i, r in enumerate(rank.choices() if rank.values is None else rank.values):
                if r > smallest:
                    where = f"space.rank.values.{i}" if rank.values is not None else "space.rank.high"
                    raise ConfigError(where, f"a rank ≤ head_dim of every size ({smallest}); use fractions "
                                      "to scale ranks with size", r if rank.values is not None else rank.high)
        for i, size in enumerate(self.space.sizes):
            for variant in self.variants():
                try:
                    self.trial_config(size.name, variant, rank.choices()[0], None)
                except ConfigError as exc:
                    raise ConfigError(_spec_path(exc.field, i), exc.expected, exc.got) from None
        return self

    # -- the search space -----------------------------------------------------------------------
    def variants(self) -> list[str]:
        return ["lrkv", *self.baselines]

    def size(self, name: str) -> Size:
        return next(s for s in self.space.sizes if s.name == name)

    def attention(self, size: Size, variant: str, rank: int) -> dict:
        attention = {"kind": variant, "d_model": size.d_model, "n_heads": size.n_heads}
        if size.head_dim:
            attention["head_dim"] = size.head_dim
        if variant == "lrkv":
            attention["rank"] = rank
        elif variant.startswith("gqa"):
            attention |= {"kind": "gqa", "n_kv_heads": int(variant[3:])}
        return attention

    def trial_config(self, size_name: str, variant: str, rank_choice, lr: float | None) -> TrialConfig:
        size = self.size(size_name)
        train = {**self.train, "tokens": self.budget.tokens_per_trial}
        if lr is not None:
            train["lr"] = lr
        rank = self.space.rank.rank(rank_choice, size.d_head) if variant == "lrkv" else 0
        return TrialConfig.from_dict({
            "model": {"n_layers": size.n_layers, "attention": self.attention(size, variant, rank)},
            "data": self.data, "train": train, "seed": self.seed,
        })

    def data_config(self) -> DataConfig:
        return self.trial_config(self.space.sizes[0].name, "lrkv", self.space.rank.choices()[0], None).data

    @property
    def directions(self) -> list[str]:
        return ["minimize" if d == "min" else "maximize" for d in self.objectives.values()]

    def digest(self) -> str:
        """Stable hash of the spec (storage locations aside): same digest, same sweep."""
        body = self.model_dump(exclude={"storage"}, mode="json")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def _spec_path(trial_field: str, size_index: int) -> str:
    """Map a TrialConfig field path back to where the user wrote it in the spec."""
    head = trial_field.partition(".")[0]
    if trial_field.endswith("n_kv_heads"):
        return "baselines"
    if head == "model":
        return f"space.sizes.{size_index}.{trial_field.split('.')[-1]}"
    return trial_field  # train.lr too: these checks build with lr=None, so a bad lr is the train section's


def load_spec(path: Path | str) -> SweepSpec:
    """Read and validate a sweep spec; raises ConfigError naming the file or the field path."""
    import yaml
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "an existing sweep spec (YAML file)", "missing")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), "UTF-8 text", "undecodable bytes") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(str(path), "valid YAML", f"a syntax error{where}") from None
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Any, source: str = "spec") -> SweepSpec:
    if not isinstance(raw, dict):
        raise ConfigError(source, "a YAML mapping at the top level", type(raw).__name__)
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc) from None
