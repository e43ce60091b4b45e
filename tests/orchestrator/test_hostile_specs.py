"""Hostile sweep specs, generated (hypothesis): whatever is wrong with a spec, `load_spec` answers with one
`ConfigError` line `<path>: expected …` naming where the user wrote it (the file's own path for a file that
is no spec at all), `lrkv sweep run` exits 2 with that line as `error: …`, and no store is touched.

Each case starts from the valid quickstart spec and breaks exactly one thing, or is a file that is not a spec:
- a wrong type: a bool or a non-numeric string where a number goes (and, for an integer, a fraction or a
  numeric string: the spec's integers are strict), a number or an arbitrary string where a bool goes, a scalar
  where a mapping or a list goes, null where a value is required. A numeric string is a number where a float
  goes: PyYAML reads `1e-3` as the string '1e-3';
- a required field deleted, or a value emptied;
- a number out of its field's range: below its lower bound (negatives), above its upper bound (fractions > 1),
  and huge: an integer beyond int64 (≥ 2**63, also what torch, numpy and SQL integers hold) or a float that is
  not finite (inf, nan) — except upper limits, where any large value means "no limit" (`constraints.*`,
  `pruning.margin`, `data.max_bytes`). `sampler.seed` must lie in [0, 2**32), as every Optuna sampler requires;
- a rank above d_h (of the smallest size), an unknown attention kind in `baselines`, an unknown sampler,
  an unknown key at any depth, a bad storage URI (`storage.study`, `storage.tracking_uri`);
- a document that is not a mapping, YAML that does not parse, bytes that are not UTF-8.
Most cases run in-process; a few run through the real `lrkv sweep run FILE --workspace DIR`.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from lrkv.kernels import ConfigError
from lrkv.orchestrator import spec as S
from lrkv.orchestrator.spec import BASELINE, OBJECTIVES, load_spec
from lrkv.workers.config import TrainConfig
from lrkv.workers.data import DataConfig

from .test_spec import DELETE
from .test_spec import edited as edited_copy

ROOT = Path(__file__).parents[2]
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
BASE = yaml.safe_load(QUICKSTART.read_text())
LRKV = str(Path(sys.executable).parent / "lrkv")
SMALLEST_HEAD_DIM = min(s.get("head_dim") or s["d_model"] // s["n_heads"] for s in BASE["space"]["sizes"])
N_HEADS = {s["n_heads"] for s in BASE["space"]["sizes"]}
FILE = "<the spec file>"   # expected field: the file's own path
INT64 = 2**63


def config(n: int) -> settings:
    """n examples per category; the same examples every run (CI stays reproducible), no example database."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# -- cases ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    what: str                  # one line saying what is broken (what a failure reports)
    body: bytes                # the spec file
    fields: frozenset          # the error may name any of these (FILE: the file's path) ...
    deeper: bool = False       # ... or a field below one of them (a replaced mapping names its first bad key)
    phrase: str = ""           # the message says this after `<path>: `

    def __repr__(self) -> str:
        return f"Case({self.what!r})"


def edited(path: str, value) -> dict:
    """A deep copy of the quickstart spec with the dotted `path` set to `value` (or removed: DELETE)."""
    return edited_copy(BASE, path, value)


def dump(raw) -> bytes:
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True).encode()


def broken(what: str, path: str, value, fields=None, deeper=None) -> Case:
    if deeper is None:
        deeper = isinstance(value, dict) and bool(value)
    return Case(what, dump(edited(path, value)), frozenset(fields or {path}), deeper)


def rejected(case: Case) -> ConfigError:
    """load_spec refuses the case with one line naming the expected field, and writes nothing."""
    with contextlib.suppress(InvalidArgument):  # outside a @given test there is nothing to note
        note(case.what)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_bytes(case.body)
        try:
            load_spec(path)
        except ConfigError as exc:
            err = exc
        except Exception as exc:  # noqa: BLE001 - any other exception is the failure being looked for
            pytest.fail(f"{case.what}: {type(exc).__name__} instead of a ConfigError: {str(exc)[:300]}")
        else:
            pytest.fail(f"{case.what}: accepted")
        assert sorted(os.listdir(folder)) == ["spec.yaml"], f"{case.what}: load_spec wrote beside the spec"
        check_message(case, err, str(path))
    return err


def check_message(case: Case, err: ConfigError, spec_path: str) -> None:
    message = str(err)
    assert len(message) <= 1000, f"{case.what}: a {len(message):,}-character message"
    assert "\n" not in message and "\r" not in message, f"{case.what}: {message!r}"
    expected = {spec_path if f == FILE else f for f in case.fields}
    assert err.field in expected or (case.deeper and any(err.field.startswith(f"{f}.") for f in expected)), \
        f"{case.what}: the error names {err.field!r}, not {sorted(expected)}: {message}"
    assert message.startswith(f"{err.field}: expected {case.phrase}"), f"{case.what}: {message}"


# -- the fields and what breaks them ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Leaf:
    path: str
    kind: str                   # int | float | bool | enum | str
    low: float | None = None    # the smallest valid value ...
    low_open: bool = False      # ... itself invalid (the value must be > low)
    high: float | None = None   # the largest valid value ...
    high_open: bool = False     # ... itself invalid
    nullable: bool = False      # null is valid (the default)
    limit: bool = False         # an upper limit: any large value means "no limit"


LEAVES = [
    Leaf("name", "str"),
    Leaf("objectives.val_bpb", "enum"), Leaf("objectives.kv_cache_bytes", "enum"),
    *[Leaf(f"space.sizes.{i}.name", "str") for i in (0, 1)],
    *[Leaf(f"space.sizes.{i}.{f}", "int", low=1) for i in (0, 1) for f in ("d_model", "n_layers", "n_heads")],
    Leaf("space.sizes.0.head_dim", "int", low=1, nullable=True),
    Leaf("space.rank.fractions.0", "float", low=0, high=1),
    Leaf("space.lr", "float", low=0, low_open=True, nullable=True),
    Leaf("anchors", "bool"),
    *[Leaf(f"budget.{f}", "int", low=1) for f in ("tokens_per_trial", "trials", "concurrency")],
    Leaf("constraints.max_cache_fraction_of_mha", "float", low=0, low_open=True, nullable=True, limit=True),
    Leaf("constraints.max_cache_bytes_per_token", "int", low=1, nullable=True, limit=True),
    Leaf("constraints.max_params", "int", low=1, nullable=True, limit=True),
    Leaf("pruning.enabled", "bool"),
    Leaf("pruning.margin", "float", low=0, limit=True),
    Leaf("pruning.grace", "float", low=0, high=1),
    Leaf("sampler.kind", "enum"),
    Leaf("sampler.seed", "int", low=0, high=2**32 - 1),  # numpy's RandomState, under every Optuna sampler
    Leaf("sampler.startup_trials", "int", low=1),
    Leaf("resources.gpus_per_trial", "float", low=0),
    Leaf("resources.cpus_per_trial", "float", low=0, low_open=True),
    Leaf("resources.max_retries", "int", low=0),
    Leaf("seed", "int", low=-INT64, high=INT64 - 1),   # the trials' torch seed: any int64
    Leaf("data.source", "str"), Leaf("data.text_field", "str"), Leaf("data.cache_dir", "str"),
    Leaf("data.tokenizer", "enum"),
    Leaf("data.seq_len", "int", low=1), Leaf("data.vocab_size", "int", low=1),
    Leaf("data.max_bytes", "int", low=1, nullable=True, limit=True),
    Leaf("data.val_fraction", "float", low=0, low_open=True, high=1, high_open=True),
    *[Leaf(f"train.{f}", "int", low=1) for f in ("batch_size", "eval_every", "eval_blocks")],
    *[Leaf(f"train.{f}", "float", low=0, low_open=True) for f in ("lr", "matrix_lr", "grad_clip")],
    *[Leaf(f"train.{f}", "float", low=0, high=1) for f in ("weight_decay", "warmup_frac", "min_lr_frac")],
    *[Leaf(f"train.{f}", "enum") for f in ("optimizer", "device", "compile")],
]
NUMBERS = [leaf for leaf in LEAVES if leaf.kind in ("int", "float")]
NESTED_FIRST = sorted(LEAVES, key=lambda leaf: -leaf.path.count("."))
# Mappings and lists of the spec, by what they must be.
CONTAINERS = {"objectives": dict, "space": dict, "space.sizes": list, "space.sizes.0": dict, "space.sizes.1": dict,
              "space.rank": dict, "space.rank.fractions": list, "baselines": list, "budget": dict,
              "constraints": dict, "pruning": dict, "sampler": dict, "resources": dict, "storage": dict,
              "data": dict, "train": dict}
NULLABLE_CONTAINERS = {"space.rank.fractions"}  # null there is the default: the rank takes another form

BOOL_WORDS = {"0", "1", "true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"}  # pydantic reads these as bools
FLOAT_WORDS = {"inf", "infinity", "nan"}
words = st.text(alphabet=string.ascii_letters + "_ ", min_size=1, max_size=12).filter(
    lambda s: s.strip().lower().lstrip("+-") not in BOOL_WORDS | FLOAT_WORDS)
containers = st.one_of(st.lists(st.integers(0, 9), min_size=1, max_size=3),
                       st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), min_size=1, max_size=2))
fractional = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda x: not x.is_integer())


def wrong_types(leaf: Leaf) -> st.SearchStrategy:
    nulls = [] if leaf.nullable else [st.none()]
    if leaf.kind == "int":
        return st.one_of(st.booleans(), fractional, st.integers(-1000, 10**6).map(str), words, containers, *nulls)
    if leaf.kind == "float":
        return st.one_of(st.booleans(), words, containers, *nulls)
    if leaf.kind == "bool":
        return st.one_of(words, fractional, st.integers().filter(lambda i: i not in (0, 1)), containers, *nulls)
    return st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), containers, *nulls)  # enum, str


def out_of_range(leaf: Leaf) -> st.SearchStrategy:
    """Finite values below the lower bound or above the upper one (the boundary itself where it is open)."""
    options = []
    if leaf.low is not None:
        if leaf.kind == "int":
            below = int(leaf.low) - (0 if leaf.low_open else 1)
            extremes = [v for v in (below, -INT64, -(2**64)) if v <= below]  # -INT64 is `seed`'s own low bound
            options.append(st.one_of(st.integers(below - 1000, below), st.sampled_from(extremes)))
        else:
            options.append(st.floats(max_value=leaf.low, exclude_max=not leaf.low_open, allow_nan=False,
                                     allow_infinity=False))
    if leaf.high is not None:
        if leaf.kind == "int":
            above = int(leaf.high) + (0 if leaf.high_open else 1)
            options.append(st.one_of(st.integers(above, above + 1000), st.just(above)))
        else:
            options.append(st.floats(min_value=leaf.high, exclude_min=not leaf.high_open, allow_nan=False,
                                     allow_infinity=False))
    return st.one_of(*options)


def huge(leaf: Leaf) -> st.SearchStrategy:
    if leaf.kind == "int":
        return st.one_of(st.sampled_from([INT64, 2**64, 10**30, 1e30]), st.integers(INT64, 2**200))
    return st.sampled_from([math.inf, -math.inf, math.nan])


@st.composite
def leaf_cases(draw, leaves, breaker, label):
    leaf = draw(st.sampled_from(leaves))
    value = draw(breaker(leaf))
    return broken(f"{label}: {leaf.path} = {value!r}", leaf.path, value)


@st.composite
def container_cases(draw):
    path, kind = draw(st.sampled_from(sorted(CONTAINERS.items())))
    other = st.dictionaries(st.sampled_from("xyz"), st.integers(), min_size=1, max_size=2) if kind is list \
        else st.lists(st.integers(), min_size=1, max_size=2)
    nulls = [] if path in NULLABLE_CONTAINERS else [st.none()]
    value = draw(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), words, other, *nulls))
    return broken(f"wrong type: {path} = {value!r} (a {kind.__name__} goes there)", path, value)


wrong_type_cases = st.one_of(leaf_cases(LEAVES, wrong_types, "wrong type"), container_cases())

# A deleted required field, and where the error must say so.
MISSING = [*[(p, p) for p in ("name", "objectives", "space", "budget", "space.sizes", "space.rank",
                              "budget.tokens_per_trial", "budget.trials")],
           *[(f"space.sizes.{i}.{f}", f"space.sizes.{i}.{f}") for i in (0, 1) for f in ("name", "d_model", "n_layers", "n_heads")],
           ("objectives.val_bpb", "objectives"), ("objectives.kv_cache_bytes", "objectives"),
           ("space.rank.fractions", "space.rank")]
missing_cases = st.sampled_from(MISSING).map(lambda m: broken(f"missing: {m[0]}", m[0], DELETE, {m[1]}))
# An emptied value (a mapping emptied may be reported at its first required key).
EMPTY = [("name", ""), ("space.sizes.1.name", ""), ("objectives", {}), ("space", {}), ("space.sizes", []),
         ("space.sizes.0", {}), ("space.rank", {}), ("space.rank.fractions", []), ("budget", {}), ("data.source", ""),
         ("data.text_field", ""), ("data.cache_dir", ""), ("data.tokenizer", ""), ("sampler.kind", ""),
         ("train.optimizer", ""), ("objectives.val_bpb", "")]
empty_cases = st.sampled_from(EMPTY).map(lambda e: broken(f"empty: {e[0]} = {e[1]!r}", e[0], e[1], deeper=True))


@st.composite
def rank_above_head_dim(draw):
    d = SMALLEST_HEAD_DIM
    form = draw(st.sampled_from(["values", "range", "fractions"]))
    if form == "values":
        good = draw(st.lists(st.integers(0, d), max_size=4))
        bad = draw(st.one_of(st.integers(d + 1, 4 * d), st.integers(d + 1, 2**62), st.sampled_from([INT64, 10**30])))
        i = draw(st.integers(0, len(good)))
        values = [*good[:i], bad, *good[i:]]
        return broken(f"rank > d_h ({d}): space.rank.values = {values}", "space.rank", {"values": values},
                      {f"space.rank.values.{i}"}, deeper=False)
    if form == "range":
        low, step = draw(st.integers(0, d)), draw(st.integers(1, 8))
        steps = draw(st.integers((d - low) // step + 1, (d - low) // step + 1000))  # the last choice passes d
        rank = {"low": low, "high": low + steps * step, "step": step}
        return broken(f"rank > d_h ({d}): space.rank = {rank}", "space.rank", rank, {"space.rank.high"}, deeper=False)
    good = draw(st.lists(st.floats(0, 1), max_size=4))
    bad = draw(st.one_of(st.floats(1, 1e6, exclude_min=True), st.just(1e30)))
    i = draw(st.integers(0, len(good)))
    fractions = [*good[:i], bad, *good[i:]]
    return broken(f"rank > d_h: space.rank.fractions = {fractions}", "space.rank", {"fractions": fractions},
                  {f"space.rank.fractions.{i}"}, deeper=False)


def valid_baseline(b) -> bool:
    m = isinstance(b, str) and BASELINE.match(b)
    return bool(m) and (m.group(2) is None or (int(m.group(2)) > 0 and all(h % int(m.group(2)) == 0 for h in N_HEADS)))


@st.composite
def unknown_baselines(draw):
    good = draw(st.lists(st.sampled_from(["mha", "mqa", "mla", "gqa1", "gqa2", "gqa4"]), max_size=3))
    bad = draw(st.one_of(
        st.sampled_from(["gqa", "GQA2", "Mha", " mha", "mha ", "gqa3", "gqa0", "gqa8", "gqa-1", "gqa2.0", "gqa02x",
                         "lrkv", "mla2", "dense", "", "gqa" + "9" * 40]),
        st.text(alphabet=string.ascii_letters + string.digits + "-_ .", max_size=10).filter(lambda s: not valid_baseline(s)),
        st.integers(), st.none(), st.lists(st.just("mha"), min_size=1, max_size=2)))
    i = draw(st.integers(0, len(good)))
    baselines = [*good[:i], bad, *good[i:]]
    return broken(f"unknown attention kind: baselines = {baselines}", "baselines", baselines,
                  {"baselines", f"baselines.{i}"}, deeper=False)


SAMPLERS = {"tpe", "nsga2", "gp", "grid", "random"}
unknown_samplers = st.one_of(
    st.sampled_from(["TPE", "cmaes", "nsga-2", "nsgaii", "bayes", "grid ", " tpe", "qmc", "bruteforce", "Random"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=12).filter(lambda s: s not in SAMPLERS),
).map(lambda kind: broken(f"unknown sampler: sampler.kind = {kind!r}", "sampler.kind", kind))

# The keys each mapping of the spec knows.
KNOWN = {"": S.SweepSpec.model_fields, "space": S.Space.model_fields, "space.sizes.0": S.Size.model_fields,
         "space.sizes.1": S.Size.model_fields, "space.rank": S.RankSpace.model_fields, "budget": S.Budget.model_fields,
         "constraints": S.Constraints.model_fields, "pruning": S.Pruning.model_fields, "sampler": S.Sampler.model_fields,
         "resources": S.Resources.model_fields, "storage": S.Storage.model_fields, "objectives": OBJECTIVES,
         "data": {f.name for f in dataclasses.fields(DataConfig)}, "train": {f.name for f in dataclasses.fields(TrainConfig)}}


@st.composite
def unknown_keys(draw):
    node = draw(st.sampled_from(sorted(KNOWN)))
    key = draw(st.one_of(st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,19}", fullmatch=True),
                         st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="."),
                                 min_size=1, max_size=8),
                         st.integers(0, 99)).filter(lambda k: str(k) not in KNOWN[node] and str(k).strip() == str(k)))
    value = draw(st.one_of(st.integers(), words, st.none(), st.lists(st.integers(), max_size=2)))
    path = f"{node}.{key}".lstrip(".")
    return broken(f"unknown key: {path} = {value!r}", path, value, {path}, deeper=False)


# Bad storage URIs. A journal file path is any path, so only what cannot be one of the documented forms is here:
# a SQLAlchemy URL without host or database, with a bad port, of an unknown dialect, a scheme-looking prefix that
# is neither URL nor path, an empty value; for MLflow, a URL without host, a scheme it does not know.
BAD_STUDY = ["postgresql://u:p@", "postgresql://u:p@:5432/optuna", "postgresql://u:p@host:notaport/optuna",
             "postgresql://", "postgresql:///", "postgres://u:p@host/optuna", "notascheme:/x", "notascheme://host/db",
             "mysql://u:p@host:99999/db", "postgresql+nodriver://host/db", "http://mlflow:5000", "sqlite://", "", " "]
BAD_TRACKING = ["notascheme:/x", "http://", "http://:5000", "https://host:notaport", "mlflow:5000", "localhost:5000",
                "htp://mlflow:5000", "postgresql://u:p@", "ftp://host/x", "", " "]
KNOWN_SCHEMES = {"postgresql", "postgres", "sqlite", "mysql", "mariadb", "oracle", "mssql", "http", "https", "file",
                 "databricks", "uc", "s3", "gs", "wasbs", "hdfs", "mlflow-artifacts", "dbfs", "runs", "models"}
junk_uris = st.builds(lambda scheme, rest: f"{scheme}:{rest}",
                      st.from_regex(r"[a-z][a-z0-9+.-]{1,10}", fullmatch=True).filter(
                          lambda s: s.split("+")[0] not in KNOWN_SCHEMES),
                      st.text(alphabet=string.ascii_letters + string.digits + "/@:._-", max_size=20))


@st.composite
def bad_uris(draw):
    field = draw(st.sampled_from(["study", "tracking_uri"]))
    uri = draw(st.one_of(st.sampled_from(BAD_STUDY if field == "study" else BAD_TRACKING), junk_uris))
    return broken(f"bad URI: storage.{field} = {uri!r}", f"storage.{field}", uri)


# Files that are no spec.
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
not_mappings = st.one_of(
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6).map(dump),
    st.lists(st.dictionaries(st.text(max_size=5), scalars, max_size=2), min_size=1, max_size=2).map(dump),
    st.sampled_from([dump([BASE]), b"", b"---\n", b"# only a comment\n", b"~\n", b"- name: quickstart\n"]),
).map(lambda body: Case(f"not a mapping: {body[:60]!r}", body, frozenset({FILE}), phrase="a YAML mapping"))

QUICKSTART_TEXT = QUICKSTART.read_text()
BREAKERS = ["budget: [unclosed", "space: {sizes: [", "\tname: tabbed", "name: 'unterminated", 'name: "unterminated',
            "name: a: b", "- stray item", "*undefined_alias", "name: !!python/object/apply:os.system [echo hi]",
            "? [", "]", "}", "name: @reserved", "name: `reserved", "%YAML 1.1", "name: [a, b}"]
CONTROL = ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\ufffe", "\uffff"]


@st.composite
def invalid_yaml(draw):
    lines = QUICKSTART_TEXT.splitlines(keepends=True)
    if draw(st.booleans()):
        i = draw(st.integers(0, len(lines)))
        breaker = draw(st.sampled_from(BREAKERS))
        text, what = "".join([*lines[:i], breaker + "\n", *lines[i:]]), f"line {i + 1}: {breaker!r}"
    else:
        i = draw(st.integers(0, len(QUICKSTART_TEXT)))
        char = draw(st.sampled_from(CONTROL))
        text, what = QUICKSTART_TEXT[:i] + char + QUICKSTART_TEXT[i:], f"{char!r} at character {i}"
    try:
        yaml.safe_load(text)
        assume(False)  # still parses: not this category's case
    except yaml.YAMLError:
        pass
    return Case(f"invalid YAML: {what}", text.encode(), frozenset({FILE}), phrase="valid YAML")


def undecodable(body: bytes) -> bool:
    try:
        body.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


@st.composite
def non_utf8(draw):
    base = QUICKSTART_TEXT.encode()
    form = draw(st.sampled_from(["inserted", "utf-16", "latin-1", "random"]))
    if form == "inserted":
        bad = draw(st.one_of(st.sampled_from([b"\xff", b"\xfe", b"\x80", b"\xc3\x28", b"\xc0\xaf", b"\xe2\x82",
                                              b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf0\x28\x8c\xbc"]),
                             st.binary(min_size=1, max_size=8).filter(undecodable)))
        i = draw(st.integers(0, len(base)))
        body, what = base[:i] + bad + base[i:], f"{bad!r} at byte {i}"
    elif form == "utf-16":
        body, what = QUICKSTART_TEXT.encode("utf-16"), "the quickstart in UTF-16"
    elif form == "latin-1":
        body, what = (QUICKSTART_TEXT + "# café, naïve\n").encode("latin-1"), "the quickstart in Latin-1"
    else:
        body = draw(st.binary(min_size=1, max_size=200))
        what = f"random bytes {body[:24]!r}…"
    assume(undecodable(body))
    return Case(f"not UTF-8: {what}", body, frozenset({FILE}), phrase="UTF-8 text")


# -- in-process: every case is one line naming its field ------------------------------------------------


def test_quickstart_itself_loads():
    """The cases break one thing of this spec, so it must load as it is."""
    load_spec(QUICKSTART)


@config(50)
@given(wrong_type_cases)
def test_wrong_types(case):
    rejected(case)


@config(20)
@given(st.one_of(missing_cases, empty_cases))
def test_missing_or_empty(case):
    rejected(case)


@config(30)
@given(leaf_cases(NUMBERS, out_of_range, "out of range"))
def test_negative_or_out_of_range(case):
    rejected(case)


@config(30)
@given(leaf_cases([leaf for leaf in NUMBERS if not leaf.limit], huge, "huge"))
def test_huge_values(case):
    rejected(case)


@config(20)
@given(rank_above_head_dim())
def test_rank_above_head_dim(case):
    rejected(case)


@config(20)
@given(st.one_of(unknown_baselines(), unknown_samplers))
def test_unknown_attention_kinds_and_samplers(case):
    rejected(case)


@config(25)
@given(unknown_keys())
def test_unknown_keys_at_any_depth(case):
    err = rejected(case)
    assert err.expected == "no such field", str(err)


@config(20)
@given(bad_uris())
def test_bad_storage_uris(case):
    rejected(case)


@config(40)
@given(st.one_of(not_mappings, invalid_yaml(), non_utf8()))
def test_files_that_are_no_spec(case):
    rejected(case)


def representatives(leaf: Leaf) -> list:
    """A fixed handful of the values the strategies above draw from, per field."""
    values = {"int": [True, "abc", "16", 2.5, [1], {"a": 1}], "float": [True, "abc", [1], {"a": 1}],
              "bool": ["sometimes", 0.5, 2, [1], {"a": 1}], "enum": [5, 1.5, True, [1], {"a": 1}],
              "str": [5, 1.5, True, [1], {"a": 1}]}[leaf.kind] + ([] if leaf.nullable else [None])
    if leaf.kind in ("int", "float"):
        if leaf.low is not None:
            values += [int(leaf.low) - (0 if leaf.low_open else 1)] if leaf.kind == "int" else \
                [-1.0, *([leaf.low] if leaf.low_open else [])]
        if leaf.high is not None:
            values += [int(leaf.high) + (0 if leaf.high_open else 1)] if leaf.kind == "int" else \
                [leaf.high + (0 if leaf.high_open else 0.5)]
        if not leaf.limit:
            values += [INT64, 10**30, 1e30] if leaf.kind == "int" else [math.inf, -math.inf, math.nan]
    return values


def test_every_field_against_representative_values():
    """The inventory: every field of LEAVES with a fixed set of bad values, every failure listed at once (the
    property tests above stop at their first, and a few dozen draws may miss a field)."""
    failures = []
    for leaf in LEAVES:
        for value in representatives(leaf):
            case = broken(f"{leaf.path} = {value!r}", leaf.path, value)
            try:
                rejected(case)
            except BaseException as exc:  # noqa: BLE001 - pytest.fail raises an outcome, not an Exception
                failures.append(str(exc).splitlines()[0].removeprefix("Failed: "))
    for field in ("study", "tracking_uri"):
        for uri in BAD_STUDY if field == "study" else BAD_TRACKING:
            try:
                rejected(broken(f"storage.{field} = {uri!r}", f"storage.{field}", uri))
            except BaseException as exc:  # noqa: BLE001
                failures.append(str(exc).splitlines()[0].removeprefix("Failed: "))
    assert not failures, f"{len(failures)} bad values pass or are misreported:\n" + "\n".join(failures)


# -- beyond one broken field: what a hostile file can do to the loader --------------------------------------


def test_deep_nesting_is_a_file_error():
    """A 1 KB file nested 500 deep (PyYAML's constructor recurses once per level)."""
    rejected(Case("nested 500 deep", b"name: " + b"[" * 500 + b"]" * 500 + b"\n", frozenset({FILE})))


def test_alias_bomb_message_stays_short():
    """Aliases make a 1 KB file a million-element value; the error must not print it whole."""
    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]", *(f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6))]
    body = QUICKSTART_TEXT + f"bogus: [{', '.join(levels)}]\n"
    rejected(Case("alias bomb under an unknown key", body.encode(), frozenset({"bogus"})))


def test_huge_rank_range_is_refused_without_enumerating_it():
    """`high` far above d_h: refused from the bounds, not by listing every rank in between."""
    rejected(broken("rank range 0..10**12", "space.rank", {"low": 0, "high": 10**12}, {"space.rank.high"}, deeper=False))


def test_duplicate_keys_are_refused():
    """PyYAML keeps the last of two equal keys silently; a spec with two `budget:` sections is a mistake."""
    body = QUICKSTART_TEXT + "budget: {tokens_per_trial: 1000, trials: 1}\n"
    rejected(Case("budget given twice", body.encode(), frozenset({FILE, "budget"})))


# -- what is valid stays valid (the cases above break something, these do not) -----------------------------


VALID_EDITS = [
    *[(path, number) for path in ("train.lr", "space.lr", "train.matrix_lr", "pruning.margin", "resources.gpus_per_trial",
                                  "constraints.max_cache_fraction_of_mha") for number in ("1e-3", "0.01")],
    ("space.lr", {"low": "1e-4", "high": "1e-2"}),
    ("space.rank", {"values": [0, 4, SMALLEST_HEAD_DIM]}), ("space.rank", {"low": 0, "high": SMALLEST_HEAD_DIM, "step": 4}),
    ("baselines", ["mha", "mqa", "mla", "gqa1", "gqa2", "gqa4"]), ("baselines", []),
    *[("sampler.kind", kind) for kind in sorted(SAMPLERS)],
    ("sampler.seed", 0), ("sampler.seed", 2**32 - 1), ("seed", -1), ("seed", INT64 - 1),
    ("constraints.max_params", 10**30), ("pruning.margin", 1e30), ("data.max_bytes", 10**30),  # limits: large is "none"
    *[("storage.study", uri) for uri in ("postgresql://u:p@db:5432/optuna", "postgresql+psycopg://u@db/optuna",
                                         "sqlite:///runs/optuna.db", "runs/optuna.journal", "/abs/path/optuna.journal")],
    *[("storage.tracking_uri", uri) for uri in ("http://mlflow:5000", "https://mlflow.example.com",
                                                "sqlite:///runs/mlflow.db", "file:///abs/mlruns",
                                                "postgresql://u:p@db:5432/mlflow")],
]


@pytest.mark.parametrize("path,value", VALID_EDITS, ids=[f"{p}={v!r}"[:60] for p, v in VALID_EDITS])
def test_valid_edits_still_load(tmp_path, path, value):
    """The other side of the contract: what is valid stays valid, written as a user writes it. Numbers in
    exponent form go in unquoted, so PyYAML hands them over as strings ('1e-3'), as it does for users."""
    text = dump(edited(path, value)).decode()
    for number in ("1e-3", "0.01", "1e-4", "1e-2"):
        text = text.replace(f"'{number}'", number)
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    try:
        load_spec(spec)
    except ConfigError as exc:
        pytest.fail(f"valid {path} = {value!r} refused: {exc}")


# -- through the command: exit code 2, one line, nothing written --------------------------------------------


@settings(max_examples=1, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.tuples(leaf_cases(NESTED_FIRST, wrong_types, "wrong type"),
                 st.sampled_from(MISSING[::-1]).map(lambda m: broken(f"missing: {m[0]}", m[0], DELETE, {m[1]})),
                 rank_above_head_dim(), st.one_of(non_utf8(), not_mappings)))
def test_sweep_run_exits_2_with_one_line_and_writes_nothing(cases):
    """Four cases through `lrkv sweep run FILE --workspace DIR`, side by side (each pays the imports).

    Hypothesis tries its simplest draw first, the first element of a list: the lists go deepest path first,
    so the command sees nested paths (`train.compile`, `space.rank`) rather than `name`."""
    for case in cases:  # in-process first: a spec the loader accepted would start a real sweep
        rejected(case)
    with tempfile.TemporaryDirectory() as tmp:
        running = []
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LRKV_", "RAY_ADDRESS", "MLFLOW_"))}
        for n, case in enumerate(cases):
            folder = Path(tmp) / f"case{n}"
            folder.mkdir()
            (folder / "spec.yaml").write_bytes(case.body)
            running.append((case, folder, subprocess.Popen(
                [LRKV, "sweep", "run", str(folder / "spec.yaml"), "--workspace", str(folder / "ws")],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder, env=env)))
        for case, folder, proc in running:
            try:
                stdout, stderr = proc.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                pytest.fail(f"{case.what}: `lrkv sweep run` still running after 180 s")
            assert proc.returncode == 2, (case.what, stdout[-2000:], stderr[-2000:])
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (case.what, stderr[-2000:])
            field = lines[0].removeprefix("error: ").partition(": expected ")[0]
            expected = {str(folder / "spec.yaml") if f == FILE else f for f in case.fields}
            assert field in expected or (case.deeper and any(field.startswith(f"{f}.") for f in expected)), \
                (case.what, lines[0])
            assert not (folder / "ws").exists(), f"{case.what}: the workspace was created"
            assert sorted(p.name for p in folder.iterdir()) == ["spec.yaml"], (case.what, list(folder.iterdir()))
