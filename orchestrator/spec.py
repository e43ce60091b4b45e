"""SweepSpec: what a sweep tries, what it optimises, what it may spend, and where it keeps its state.

Loaded from YAML and validated whole before anything touches a store: every error names its field
path (`space.rank.fractions.2: expected ...`). `SweepSpec.trial_config` turns one point of the search
space into the worker's TrialConfig, so the orchestrator never builds models itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from lrkv.kernels import AttentionSpec, ConfigError
from lrkv.orchestrator.stores import STUDY_FORMS, TRACKING_FORMS, redact, valid_study_url, valid_tracking_uri
from lrkv.workers.config import INT64, TrainConfig, TrialConfig, config_error
from lrkv.workers.data import DataConfig

# Objective name -> key of the worker's metrics record.
OBJECTIVES = {"val_bpb": "val_bpb", "kv_cache_bytes": "kv_cache_bytes_per_token",
              "flops_per_token": "flops_per_token", "params": "params", "decode_ms": "decode_ms"}
BASELINE = re.compile(r"^(mha|mqa|mla|gqa(\d+))$")
MAX_DEPTH = 100   # YAML nesting (a spec is 4 deep)
MAX_RANKS = 4096  # choices of a low/high rank range: a bigger grid is a typo (and a list not worth building)


def _yaml_number(value):
    """PyYAML reads `1e-3` (no dot) as the string '1e-3': where a float goes, a numeric string is a number."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value


# Integers are strict (no True, 2.0 or '16') and within int64, except upper limits, where large means "no limit";
# floats are finite numbers (Strict's allow_inf_nan=False), never bools.
PositiveInt = Annotated[int, Field(gt=0, lt=INT64, strict=True)]
Count = Annotated[int, Field(ge=0, lt=INT64, strict=True)]
Limit = Annotated[int, Field(gt=0, strict=True)]
Number = Annotated[float, BeforeValidator(_yaml_number), Field(strict=True)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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
    values: list[Count] | None = Field(default=None, min_length=1)
    fractions: list[Annotated[Number, Field(ge=0, le=1)]] | None = Field(default=None, min_length=1)
    low: Count | None = None
    high: Count | None = None
    step: PositiveInt = 1

    @model_validator(mode="after")
    def _one_form(self):
        forms = [self.values is not None, self.fractions is not None, self.low is not None or self.high is not None]
        if sum(forms) != 1:
            raise ValueError("exactly one of values, fractions or low/high")
        if forms[2] and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError("low ≤ high, both set")
        if forms[2] and (self.high - self.low) // self.step >= MAX_RANKS:
            raise ConfigError("high", f"at most {MAX_RANKS} ranks from low to high by step", self.high)
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
    low: Annotated[Number, Field(gt=0)]
    high: Annotated[Number, Field(gt=0)]
    log: bool = True

    @model_validator(mode="after")
    def _order(self):
        if self.low > self.high:
            raise ValueError("low ≤ high")
        return self


class Space(Strict):
    sizes: list[Size] = Field(min_length=1)
    rank: RankSpace
    lr: float | LrSpace | None = None  # None: the train section's lr
    key_scales: bool = False  # LRKV trials at r > 0 cache each key's 1/rms (kernels.spec.AttentionSpec)

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
        number = _yaml_number(lr)
        if isinstance(number, bool) or not isinstance(number, int | float) or not 0 < number < math.inf:
            raise ConfigError("", "a positive finite number or a range {low, high}", lr)
        return float(number)


class Budget(Strict):
    tokens_per_trial: PositiveInt
    trials: PositiveInt
    concurrency: PositiveInt = 1


class Constraints(Strict):
    """Checked from the spec alone, before a trial is scheduled."""
    max_cache_fraction_of_mha: Annotated[Number, Field(gt=0)] | None = None
    max_cache_bytes_per_token: Limit | None = None
    max_params: Limit | None = None


class Pruning(Strict):
    """Frontier-fair early stopping (see orchestrator.pruning)."""
    enabled: bool = True
    margin: Annotated[Number, Field(ge=0)] = 0.05     # bits per byte
    grace: Annotated[Number, Field(ge=0, le=1)] = 0.3  # fraction of the budget before any stop


class Sampler(Strict):
    kind: Literal["tpe", "nsga2", "gp", "grid", "random"] = "tpe"
    seed: Annotated[int, Field(ge=0, lt=2**32, strict=True)] = 0  # numpy's RandomState, under every Optuna sampler
    startup_trials: PositiveInt = 8


class Resources(Strict):
    gpus_per_trial: Annotated[Number, Field(ge=0)] = 0.0  # fractional packs several trials on a card
    cpus_per_trial: Annotated[Number, Field(gt=0)] = 1.0
    max_retries: Count = 2  # re-runs of a trial whose node died
    mps: bool = False  # share each card through CUDA MPS: a local driver runs the daemon (orchestrator.mps)


class Storage(Strict):
    study: str | None = None         # SQLAlchemy URL or journal file; default: <workspace>/optuna.journal
    tracking_uri: str | None = None  # MLflow; default: sqlite:///<workspace>/mlflow.db

    @field_validator("study")
    @classmethod
    def _study(cls, url):
        if url is not None and not valid_study_url(url):
            raise ConfigError("", STUDY_FORMS, redact(url))
        return url

    @field_validator("tracking_uri")
    @classmethod
    def _tracking(cls, uri):
        if uri is not None and not valid_tracking_uri(uri):
            raise ConfigError("", TRACKING_FORMS, redact(uri))
        return uri


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
    seed: Annotated[int, Field(ge=-INT64, lt=INT64, strict=True)] = 0  # the trials' torch seed

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
        if "val_bpb" not in objectives or len(objectives) < 2:
            raise ValueError("val_bpb and at least one cost (kv_cache_bytes, flops_per_token, params, decode_ms)")
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
    def _decode_profiled(self):
        if "decode_ms" in self.objectives and not self.train.get("profile_contexts"):
            raise ConfigError("train.profile_contexts", "at least one context when decode_ms is an objective",
                              self.train.get("profile_contexts"))
        return self

    @model_validator(mode="after")
    def _mps_shares_gpus(self):
        if self.resources.mps and not self.resources.gpus_per_trial:
            raise ConfigError("resources.mps", "false when trials take no GPU (gpus_per_trial: 0)", True)
        return self

    @model_validator(mode="after")
    def _trials_build(self):
        """Every size × variant must make a valid trial: build each once (cheap, analytic)."""
        rank = self.space.rank
        if rank.fractions is None:
            smallest = min(s.d_head for s in self.space.sizes)
            for i, r in enumerate(rank.values or [rank.high]):  # a range is checked at its end, whatever its step
                if r > smallest:
                    where = f"space.rank.values.{i}" if rank.values is not None else "space.rank.high"
                    raise ConfigError(where, f"a rank ≤ head_dim of every size ({smallest}); use fractions "
                                      "to scale ranks with size", r)
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
            if self.space.key_scales and rank > 0:
                attention["key_scales"] = True
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
        for section, key in (("space", "key_scales"), ("resources", "mps")):
            if not body[section][key]:  # added later: a spec that leaves it off keeps its digest
                del body[section][key]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def _spec_path(trial_field: str, size_index: int) -> str:
    """Map a TrialConfig field path back to where the user wrote it in the spec."""
    head = trial_field.partition(".")[0]
    if trial_field.endswith("n_kv_heads"):
        return "baselines"
    if head == "model":
        return f"space.sizes.{size_index}.{trial_field.split('.')[-1]}"
    return trial_field  # train.lr too: these checks build with lr=None, so a bad lr is the train section's


class _Refused(yaml.YAMLError):
    """YAML that parses but that a spec must not be: `expected` and `got` for the ConfigError naming the file."""

    def __init__(self, expected: str, got: str):
        super().__init__(f"expected {expected}, got {got}")
        self.expected, self.got = expected, got


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses what PyYAML would keep silently or die on: a key given twice (the last one would
    win) and nesting deeper than MAX_DEPTH (its composer recurses once per level: RecursionError)."""

    depth = 0

    def compose_node(self, parent, index):
        if self.depth >= MAX_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise _Refused(f"YAML nested at most {MAX_DEPTH} deep", f"deeper nesting at line {line}")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        first = {}  # key -> its line
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden: not duplicates
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            with contextlib.suppress(TypeError):  # an unhashable key: SafeLoader reports it below
                if key in first:
                    raise _Refused("each key once per mapping", f"{key} again at line {line} (first at {first[key]})")
                first[key] = line
        return super().construct_mapping(node, deep)


def load_spec(path: Path | str) -> SweepSpec:
    """Read and validate a sweep spec; raises ConfigError naming the file or the field path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "an existing sweep spec (YAML file)", "missing")
    try:
        raw = yaml.load(path.read_bytes().decode("utf-8"), Loader=_SpecLoader)  # noqa: S506 - a SafeLoader
    except UnicodeDecodeError:
        raise ConfigError(str(path), "UTF-8 text", "undecodable bytes") from None
    except _Refused as exc:
        raise ConfigError(str(path), exc.expected, exc.got) from None
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
