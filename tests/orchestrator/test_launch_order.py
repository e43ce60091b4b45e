"""The order in which the driver launches the points it owes (references, grid points), without Ray:
`_start` is replaced by a stand-in that records the point and completes the trial at once."""
import copy
from pathlib import Path

import optuna
import pytest
import yaml

from lrkv.orchestrator import search
from lrkv.orchestrator.driver import SweepDriver
from lrkv.orchestrator.spec import parse_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
QUICKSTART = yaml.safe_load((Path(__file__).parents[2] / "sweeps" / "quickstart.yaml").read_text())
VOCAB = 256


def spec_with(**sections):
    raw = copy.deepcopy(QUICKSTART)
    raw.update(sections)
    return parse_spec(raw)


def launches(spec) -> list[dict]:
    """The points a driver launches, in order, until its budget or its space runs out."""
    study = optuna.create_study(directions=spec.directions, sampler=search.make_sampler(spec))
    driver = SweepDriver(study, spec, stores=None, tracker=object())
    launched = []

    def start(trial, params, key, config, costs):
        trial.set_user_attr("launched", True)
        launched.append(params)
        study.tell(trial, [1.0] * len(spec.objectives))

    driver._start = start
    while not driver.exhausted and driver._budget_left():
        driver._launch_next(VOCAB)
    return launched


def keys(points) -> list[str]:
    return [search.point_key(p) for p in points]


def flops(spec, params) -> int:
    return search.training_flops(spec, params, VOCAB)


def test_references_launch_costliest_size_first_each_size_in_its_own_order():
    spec = spec_with(budget={"tokens_per_trial": 4096, "trials": 14, "concurrency": 2})
    refs = search.references(spec)
    assert len(refs) == 14 and [p["size"] for p in refs[:7]] == ["d64"] * 7  # the spec lists d64 first
    ran = launches(spec)
    assert sorted(keys(ran)) == sorted(keys(refs))  # the same points, only reordered
    assert [p["size"] for p in ran] == ["d128"] * 7 + ["d64"] * 7  # d128 trials cost more
    for size in ("d64", "d128"):
        assert keys(p for p in ran if p["size"] == size) == keys(p for p in refs if p["size"] == size)
    assert flops(spec, refs[7]) > flops(spec, refs[0])  # each size's first point: the costlier goes first


def test_a_budget_below_the_references_runs_the_same_points():
    """Only the references the sweep's own order would reach are reordered."""
    spec = spec_with(budget={"tokens_per_trial": 4096, "trials": 9, "concurrency": 2})
    refs = search.references(spec)
    ran = launches(spec)
    assert sorted(keys(ran)) == sorted(keys(refs[:9]))
    assert ran[0]["size"] == "d128" and ran[-1]["size"] == "d64"


def test_grid_runs_references_then_the_rest_costliest_first():
    spec = spec_with(sampler={"kind": "grid"}, budget={"tokens_per_trial": 4096, "trials": 100, "concurrency": 2})
    refs, points = search.references(spec), search.finite_points(spec)
    ran = launches(spec)
    assert sorted(keys(ran)) == sorted(keys(points))
    assert sorted(keys(ran[:len(refs)])) == sorted(keys(refs))
    rest = ran[len(refs):]
    assert [p["size"] for p in rest] == ["d128", "d64"]  # the ranks 1/8 d_h, the only points not references


@pytest.mark.parametrize("lr", [0.01, {"low": 1e-3, "high": 1e-2}])
def test_infeasible_references_are_refused_once_and_the_others_still_run_first(lr):
    """A cache budget that rules out MHA and LRKV at r = d_h: each of those references is told infeasible
    once; every other reference runs before any point of the sampler's own, in a finite space or not."""
    spec = spec_with(constraints={"max_cache_fraction_of_mha": 0.9},
                     space={**QUICKSTART["space"], "lr": lr},
                     budget={"tokens_per_trial": 4096, "trials": 14, "concurrency": 2})

    def feasible(points):
        return [p for p in points if not search.violation(spec, search.trial_config(spec, p), VOCAB)]

    refs = feasible(search.references(spec))
    assert len(refs) == 10
    ran = launches(spec)
    assert sorted(keys(ran[:len(refs)])) == sorted(keys(refs))
    if isinstance(lr, dict):
        assert len(ran) == 14  # a continuous space: until the budget is spent
    else:
        assert len(ran) == len(feasible(search.finite_points(spec))) == 12  # a finite one: every feasible point
