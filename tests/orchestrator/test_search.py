"""The search space in Optuna's terms: references, finite enumeration, costs, constraints, suggestions."""
import copy
import math
from pathlib import Path

import optuna
import pytest
import yaml

from lrkv.orchestrator import search
from lrkv.orchestrator.pruning import Curve, should_stop
from lrkv.orchestrator.spec import parse_spec
from lrkv.orchestrator.stores import redact

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
QUICKSTART = Path(__file__).parents[2] / "sweeps" / "quickstart.yaml"
VOCAB = 256


@pytest.fixture(scope="module")
def base() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def spec_with(base, **sections):
    """The quickstart spec with whole top-level sections (or space.* via space_rank / space_lr) replaced."""
    raw = copy.deepcopy(base)
    for key, value in sections.items():
        if key.startswith("space_"):
            raw["space"][key.removeprefix("space_")] = value
        else:
            raw[key] = value
    return parse_spec(raw)


# -- references ----------------------------------------------------------------------------------


def test_references_fractions_every_baseline_and_anchor_per_size(base):
    spec = spec_with(base)  # fractions [0, .125, .25, .5, 1], baselines mha, gqa2, mqa, sizes d64, d128
    points = search.references(spec)
    for size in ("d64", "d128"):
        anchors = [p["rank_frac"] for p in points if p["size"] == size and p["variant"] == "lrkv"]
        assert anchors == [0.0, 0.25, 0.5, 1.0]  # 0.125 is not an anchor
        assert [p["variant"] for p in points if p["size"] == size and p["variant"] != "lrkv"] == ["mha", "gqa2", "mqa"]
    assert len(points) == 2 * (4 + 3)
    assert all(set(p) <= {"size", "variant", "rank_frac"} for p in points)
    assert all("rank_frac" not in p for p in points if p["variant"] != "lrkv")


def test_references_integer_values_in_their_own_units(base):
    # d64: d_h 16 → anchors {0, 4, 8, 16}; d128: d_h 32 → {0, 8, 16, 32}, only where the space has them
    spec = spec_with(base, space_rank={"values": [0, 2, 4, 8, 16]})
    points = search.references(spec)
    ranks = {size: [p["rank"] for p in points if p["size"] == size and p["variant"] == "lrkv"]
             for size in ("d64", "d128")}
    assert ranks == {"d64": [0, 4, 8, 16], "d128": [0, 8, 16]}  # 32 > the space's largest rank


def test_references_from_a_low_high_range(base):
    spec = spec_with(base, space_rank={"low": 0, "high": 16, "step": 4}, baselines=["mqa"])
    points = search.references(spec)
    assert [p.get("rank") for p in points if p["size"] == "d64"] == [0, 4, 8, 16, None]
    assert [p.get("rank") for p in points if p["size"] == "d128"] == [0, 8, 16, None]


def test_references_without_anchors_are_the_baselines(base):
    spec = spec_with(base, anchors=False)
    points = search.references(spec)
    assert all(p["variant"] != "lrkv" for p in points) and len(points) == 2 * 3
    assert search.references(spec_with(base, anchors=False, baselines=[])) == []


def test_references_take_the_middle_of_an_lr_range(base):
    log = search.references(spec_with(base, space_lr={"low": 1e-4, "high": 1e-2}))
    assert all(p["lr"] == pytest.approx(1e-3) for p in log)  # geometric mean
    linear = search.references(spec_with(base, space_lr={"low": 1e-3, "high": 3e-3, "log": False}))
    assert all(p["lr"] == pytest.approx(2e-3) for p in linear)
    assert all("lr" not in p for p in search.references(spec_with(base, space_lr=0.002)))


def test_every_reference_builds_a_valid_trial(base):
    spec = spec_with(base, space_rank={"values": [0, 2, 4, 8, 16]}, baselines=["mha", "mqa", "mla", "gqa2"])
    for params in search.references(spec):
        config = search.trial_config(spec, params)
        attention = config.model.attention
        assert attention.kind == ("gqa" if params["variant"].startswith("gqa") else params["variant"])
        assert attention.rank == params.get("rank", 0)


# -- finite_points -------------------------------------------------------------------------------


def test_finite_points_enumerate_the_space(base):
    spec = spec_with(base)
    points = search.finite_points(spec)
    assert len(points) == 2 * (5 + 3)
    assert len({search.point_key(p) for p in points}) == len(points)
    assert [p["rank_frac"] for p in points if p["size"] == "d128" and p["variant"] == "lrkv"] == \
        [0.0, 0.125, 0.25, 0.5, 1.0]
    assert {p["variant"] for p in points} == {"lrkv", "mha", "gqa2", "mqa"}
    # every reference is one of the finite points
    assert {search.point_key(p) for p in search.references(spec)} <= {search.point_key(p) for p in points}


def test_finite_points_with_ranges_and_lr(base):
    spec = spec_with(base, space_rank={"low": 2, "high": 11, "step": 3}, baselines=[])
    assert [p["rank"] for p in search.finite_points(spec)] == [2, 5, 8, 11] * 2
    assert len(search.finite_points(spec_with(base, space_lr=0.003))) == 16   # a fixed lr is still finite
    assert search.finite_points(spec_with(base, space_lr={"low": 1e-3, "high": 1e-2})) is None


def test_point_key_is_order_independent_and_typed():
    assert search.point_key({"b": 1, "a": "x"}) == search.point_key({"a": "x", "b": 1}) == "a='x'|b=1"
    assert search.point_key({"rank": 4}) != search.point_key({"rank": "4"})


# -- costs and constraints -----------------------------------------------------------------------


def config_for(spec, size, variant, rank=None):
    params = {"size": size, "variant": variant}
    if variant == "lrkv":
        params[spec.space.rank.param()] = rank
    return search.trial_config(spec, params)


@pytest.mark.parametrize("size,variant,rank", [("d64", "lrkv", 0.5), ("d128", "lrkv", 0.0), ("d64", "mha", None),
                                               ("d128", "gqa2", None), ("d128", "mqa", None)])
def test_costs_equal_the_models_own_accounting(base, size, variant, rank):
    spec = spec_with(base)
    config = config_for(spec, size, variant, rank)
    model = config.model
    assert search.costs(spec, config, VOCAB) == {
        "kv_cache_bytes": model.kv_cache_bytes_per_token(),
        "flops_per_token": model.train_flops_per_token(VOCAB, config.data.seq_len),
        "params": model.params(VOCAB)}


def test_costs_by_hand_for_lrkv(base):
    spec = spec_with(base)
    config = config_for(spec, "d64", "lrkv", 0.5)  # d_h 16, H 4, r 8, 2 layers, bf16
    assert config.model.attention.rank == 8
    assert search.costs(spec, config, VOCAB)["kv_cache_bytes"] == 2 * 2 * (16 + 4 * 8) * 2 == 384
    assert search.costs(spec, config_for(spec, "d64", "mha"), VOCAB)["kv_cache_bytes"] == 2 * 2 * 4 * 16 * 2


@pytest.mark.parametrize("objectives,compared", [
    ({"val_bpb": "min", "kv_cache_bytes": "min"}, ["kv_cache_bytes"]),
    ({"val_bpb": "min", "flops_per_token": "min", "kv_cache_bytes": "min"}, ["kv_cache_bytes", "flops_per_token"]),
    ({"val_bpb": "min", "params": "min"}, ["kv_cache_bytes", "params"]),
    ({"val_bpb": "min", "decode_ms": "min"}, ["kv_cache_bytes"])])  # measured after training: the cache stands in
def test_pruning_compares_the_cache_and_every_cost_known_before_training(base, objectives, compared):
    train = {**base["train"], "profile_contexts": [64]}
    spec = spec_with(base, objectives=objectives, train=train)
    costs = search.costs(spec, config_for(spec, "d64", "lrkv", 0.5), VOCAB)
    assert search.pruning_costs(spec, costs) == tuple(costs[name] for name in compared)


def test_pruning_compares_every_cost_as_lower_is_better(base):
    spec = spec_with(base, objectives={"val_bpb": "min", "kv_cache_bytes": "min", "params": "max"})
    costs = search.costs(spec, config_for(spec, "d64", "mha"), VOCAB)
    assert search.pruning_costs(spec, costs) == (costs["kv_cache_bytes"], -costs["params"])


def test_decode_time_as_the_objective_never_stops_a_trial_for_what_its_smaller_cache_pays_for(base):
    """With only `decode_ms` beside the loss, a lower loss from a bigger cache still stops nothing."""
    spec = spec_with(base, objectives={"val_bpb": "min", "decode_ms": "min"},
                     train={**base["train"], "profile_contexts": [64]})

    def curve(variant, rank, loss):
        c = Curve("d64", search.pruning_costs(spec, search.costs(spec, config_for(spec, "d64", variant, rank), VOCAB)))
        c.add(1000, loss)
        return c

    small, mha = curve("lrkv", 0.25, 3.0), curve("mha", None, 2.0)
    assert should_stop(small, [small, mha], margin=0.05, grace_tokens=0) is None
    assert should_stop(mha, [small, curve("mqa", None, 1.0), mha], margin=0.05, grace_tokens=0) is not None


def test_trial_config_uses_a_fixed_space_lr(base):
    spec = spec_with(base, space_lr=0.002)
    assert config_for(spec, "d64", "mha").train.lr == 0.002
    assert search.trial_config(spec, {"size": "d64", "variant": "mha", "lr": 0.005}).train.lr == 0.005
    assert config_for(spec_with(base), "d64", "mha").train.lr == 0.01  # the train section's


def test_no_constraints_no_violation(base):
    spec = spec_with(base)
    assert search.violation(spec, config_for(spec, "d128", "mha"), VOCAB) is None


def test_violation_cache_fraction_of_mha(base):
    spec = spec_with(base, constraints={"max_cache_fraction_of_mha": 0.5})
    # lrkv r=8 at d64: 2(16 + 4·8) / (2·4·16) = 0.75
    assert search.violation(spec, config_for(spec, "d64", "lrkv", 0.5), VOCAB) == "cache is 0.750 of MHA's > 0.5"
    assert search.violation(spec, config_for(spec, "d64", "mha"), VOCAB) == "cache is 1.000 of MHA's > 0.5"
    assert search.violation(spec, config_for(spec, "d64", "gqa2"), VOCAB) is None    # exactly 0.5: within
    assert search.violation(spec, config_for(spec, "d64", "lrkv", 0.25), VOCAB) is None  # (16+16)/64 = 0.5


def test_violation_cache_bytes_per_token(base):
    spec = spec_with(base, constraints={"max_cache_bytes_per_token": 300})
    assert search.violation(spec, config_for(spec, "d64", "lrkv", 0.5), VOCAB) == "cache 384 B/token > 300"
    assert search.violation(spec, config_for(spec, "d64", "lrkv", 0.25), VOCAB) is None  # 256 B/token
    assert search.violation(spec_with(base, constraints={"max_cache_bytes_per_token": 384}),
                            config_for(spec, "d64", "lrkv", 0.5), VOCAB) is None  # equal: within


def test_violation_params(base):
    spec = spec_with(base)
    config = config_for(spec, "d128", "mha")
    params = config.model.params(VOCAB)
    tight = spec_with(base, constraints={"max_params": params - 1})
    assert search.violation(tight, config, VOCAB) == f"{params} params > {params - 1}"
    assert search.violation(spec_with(base, constraints={"max_params": params}), config, VOCAB) is None
    assert search.violation(tight, config, VOCAB * 2) is not None and \
        search.violation(spec_with(base, constraints={"max_params": params}), config, VOCAB - 1) is None


def test_violation_reports_the_first_broken_constraint(base):
    spec = spec_with(base, constraints={"max_cache_fraction_of_mha": 0.1, "max_cache_bytes_per_token": 1,
                                        "max_params": 1})
    assert search.violation(spec, config_for(spec, "d64", "mha"), VOCAB).startswith("cache is 1.000 of MHA's")
    spec = spec_with(base, constraints={"max_cache_bytes_per_token": 1, "max_params": 1})
    assert search.violation(spec, config_for(spec, "d64", "mha"), VOCAB).startswith("cache 512 B/token")


# -- suggestions on a real study -----------------------------------------------------------------


def test_suggest_conditional_space(base):
    spec = spec_with(base)
    study = optuna.create_study(directions=spec.directions, sampler=optuna.samplers.RandomSampler(seed=0))
    variants = set()
    for _ in range(40):
        trial = study.ask()
        params = search.suggest(trial, spec)
        assert params == trial.params
        assert params["size"] in {"d64", "d128"} and params["variant"] in spec.variants()
        if params["variant"] == "lrkv":
            assert set(params) == {"size", "variant", "rank_frac"} and params["rank_frac"] in spec.space.rank.choices()
        else:
            assert set(params) == {"size", "variant"}  # no rank for baselines
        variants.add(params["variant"])
        study.tell(trial, [1.0, 1.0])
    assert variants == set(spec.variants())


def test_suggest_integer_range_and_lr(base):
    spec = spec_with(base, space_rank={"low": 2, "high": 14, "step": 4}, space_lr={"low": 1e-4, "high": 1e-2},
                     baselines=[])
    study = optuna.create_study(directions=spec.directions, sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        params = search.suggest(trial, spec)
        assert params["rank"] in (2, 6, 10, 14) and 1e-4 <= params["lr"] <= 1e-2
        assert search.trial_config(spec, params).train.lr == params["lr"]
        study.tell(trial, [1.0, 1.0])
    assert isinstance(study.trials[0].distributions["rank"], optuna.distributions.IntDistribution)
    assert study.trials[0].distributions["lr"].log


def test_suggest_respects_enqueued_references(base):
    spec = spec_with(base, space_lr={"low": 1e-4, "high": 1e-2})
    study = optuna.create_study(directions=spec.directions, sampler=search.make_sampler(spec))
    fixed = search.references(spec)
    for params in fixed:
        study.enqueue_trial(params)
    for expected in fixed:
        trial = study.ask()
        got = search.suggest(trial, spec)
        assert {k: v for k, v in got.items() if k != "lr"} == {k: v for k, v in expected.items() if k != "lr"}
        assert math.isclose(got["lr"], expected["lr"]) and math.isclose(got["lr"], math.sqrt(1e-4 * 1e-2))
        study.tell(trial, [1.0, 1.0])


@pytest.mark.parametrize("kind,cls", [("tpe", "TPESampler"), ("nsga2", "NSGAIISampler"), ("gp", "GPSampler"),
                                      ("grid", "RandomSampler"), ("random", "RandomSampler")])
def test_make_sampler_kinds(base, kind, cls):
    sampler = search.make_sampler(spec_with(base, sampler={"kind": kind, "seed": 3}))
    assert type(sampler).__name__ == cls


# -- redact --------------------------------------------------------------------------------------


@pytest.mark.parametrize("url,shown", [
    ("postgresql://optuna:s3cret@db.example:5432/optuna", "postgresql://optuna:***@db.example:5432/optuna"),
    ("postgresql+psycopg2://u:p%40ss:word@host/db", "postgresql+psycopg2://u:***@host/db"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),        # no password: unchanged
    ("postgresql://host:5432/db", "postgresql://host:5432/db"),        # a port is not a password
    ("/tmp/ws/optuna.journal", "/tmp/ws/optuna.journal"),
    ("sqlite:////tmp/ws/mlflow.db", "sqlite:////tmp/ws/mlflow.db"),
])
def test_redact_hides_passwords(url, shown):
    assert redact(url) == shown
    if "s3cret" in url:
        assert "s3cret" not in redact(url)
