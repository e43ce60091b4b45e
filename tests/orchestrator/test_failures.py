"""Sweeps through the driver in-process. Trials that fail — out of memory, a NaN loss — or are stopped early
are recorded with their reason and the sweep goes on; a size that ran out of memory is not tried again at the
same or a larger parameter count. Every sampler runs a real sweep."""
import shutil

import optuna
import pytest
import ray
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lrkv.orchestrator.driver import SweepDriver
from lrkv.orchestrator.spec import parse_spec

from ..workers.conftest import CORPUS


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def spec_for(tmp_path, name, sizes, space=(), **extra):
    return parse_spec({
        "name": name, "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        "space": {"sizes": sizes, "rank": {"fractions": [0.0, 0.5]}, **dict(space)},
        "budget": extra.pop("budget", {"tokens_per_trial": 1024, "trials": 4, "concurrency": 1}),
        "data": {"source": str(CORPUS), "seq_len": 32, "cache_dir": str(tmp_path / "cache")},
        "train": {"batch_size": 8, "eval_every": 2, "eval_blocks": 4, **extra.pop("train", {})}, **extra})


def run(stores, spec):
    study = SweepDriver.create(spec, stores).run()
    return study, MlflowClient(stores.tracking_uri)


def test_out_of_memory_is_recorded_and_remembered(tmp_path, stores):
    tiny = {"name": "tiny", "d_model": 32, "n_layers": 1, "n_heads": 4}
    huge = {"name": "huge", "d_model": 131072, "n_layers": 1, "n_heads": 1024}  # a 64 GiB weight
    study, client = run(stores, spec_for(tmp_path, "oom", [tiny, huge]))
    asked = [t for t in study.get_trials() if t.params]

    def point(size, frac):
        """The point's launched trial, else its last proposal (the sampler may propose a point again)."""
        same = [t for t in asked if (t.params["size"], t.params.get("rank_frac")) == (size, frac)]
        return next((t for t in same if t.user_attrs.get("launched")), same[-1])

    assert point("tiny", 0.0).state == point("tiny", 0.5).state == TrialState.COMPLETE
    oom = point("huge", 0.0)
    assert oom.state == TrialState.FAIL and oom.user_attrs["reason"] == "oom"
    assert "can't allocate memory" in oom.user_attrs["detail"]
    larger = point("huge", 0.5)  # more parameters at the same size: known infeasible, never run
    assert larger.state == TrialState.FAIL and not larger.user_attrs.get("launched")
    assert f"trial {oom.number}" in larger.user_attrs["reason"] and "out of memory" in larger.user_attrs["reason"]
    run_ = client.get_run(oom.user_attrs["mlflow_run_id"])
    assert run_.info.status == "FAILED" and run_.data.tags["lrkv.reason"] == "oom"


def test_nan_loss_is_recorded_and_the_sweep_finishes(tmp_path, stores):
    tiny = {"name": "tiny", "d_model": 32, "n_layers": 1, "n_heads": 4}
    spec = spec_for(tmp_path, "nan", [tiny], train={"lr": 1e30, "grad_clip": 1e30, "warmup_frac": 0.0})
    study, client = run(stores, spec)
    ran = [t for t in study.get_trials() if t.user_attrs.get("launched")]
    assert len(ran) == 2 and all(t.state == TrialState.FAIL for t in ran)
    assert {t.user_attrs["reason"] for t in ran} == {"nan"}
    assert all(client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "FAILED" for t in ran)
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"


def test_grid_runs_every_point_once_then_stops(tmp_path, stores):
    """The exhaustive grid: every point of the finite space exactly once, then the sweep ends by itself
    (the budget allows more trials than the space has points)."""
    tiny = {"name": "tiny", "d_model": 32, "n_layers": 1, "n_heads": 4}
    spec = spec_for(tmp_path, "grid", [tiny], sampler={"kind": "grid"}, baselines=["mqa"],
                    budget={"tokens_per_trial": 512, "trials": 10, "concurrency": 2})
    study, _ = run(stores, spec)
    ran = [t for t in study.get_trials() if t.user_attrs.get("launched")]
    assert sorted(t.user_attrs["label"] for t in ran) == ["lrkv0", "lrkv4", "mqa"]
    assert all(t.state == TrialState.COMPLETE for t in ran)


TINY = {"name": "tiny", "d_model": 32, "n_layers": 1, "n_heads": 4}


def test_a_trial_beaten_by_a_cheaper_one_is_stopped_and_the_references_never_are(tmp_path, stores):
    """Frontier-fair stopping in a real sweep. The references train at the middle of a wide learning-rate
    range; sampled trials far below it barely learn, so a reference that caches no more beats them by
    the margin and they are stopped. Each stop is checked against the recorded curves."""
    margin = 0.05
    spec = spec_for(tmp_path, "stopping", [TINY], space={"rank": {"fractions": [0.0, 0.25, 0.5, 1.0]},
                                                         "lr": {"low": 1e-5, "high": 10.0}},
                    baselines=["mqa"], sampler={"kind": "random", "seed": 3},
                    pruning={"margin": margin, "grace": 0.25},
                    budget={"tokens_per_trial": 4096, "trials": 11, "concurrency": 1})
    study, client = run(stores, spec)
    ran = sorted((t for t in study.get_trials() if t.user_attrs.get("launched")), key=lambda t: t.number)
    references = ran[:5]  # launched first
    assert sorted(t.user_attrs["label"] for t in references) == ["lrkv0", "lrkv2", "lrkv4", "lrkv8", "mqa"]
    assert all(t.state == TrialState.COMPLETE and t.params["lr"] == pytest.approx(1e-2) for t in references)
    pruned = [t for t in ran if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.user_attrs.get("curve")) for t in ran]
    for t in pruned:
        tokens, loss = t.user_attrs["curve"][-1]
        assert tokens < 4096 and "a trial costing no more" in t.user_attrs["reason"]
        cache = t.user_attrs["record"]["kv_cache_bytes_per_token"]
        # Concurrency 1: every trial that could have stopped it had finished before it started.
        beaten_by = [o for o in ran if o.number < t.number and o.user_attrs.get("curve")
                     and o.user_attrs["record"]["kv_cache_bytes_per_token"] <= cache
                     and dict(map(tuple, o.user_attrs["curve"])).get(tokens, float("inf")) < loss - margin]
        assert beaten_by, (t.number, tokens, loss)
        mlflow_run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert mlflow_run.info.status == "KILLED" and mlflow_run.data.tags["lrkv.state"] == "pruned"
        assert mlflow_run.data.tags["lrkv.reason"] == t.user_attrs["reason"]


@pytest.mark.parametrize("kind", ["tpe", "nsga2", "gp", "random"])
def test_every_sampler_runs_a_sweep(tmp_path, stores, kind):
    """Past its one start-up trial the sampler proposes from its model; every proposal is a new point."""
    spec = spec_for(tmp_path, kind, [TINY], space={"rank": {"values": list(range(9))}}, anchors=False,
                    sampler={"kind": kind, "seed": 0, "startup_trials": 1},
                    budget={"tokens_per_trial": 512, "trials": 4, "concurrency": 1})
    study, _ = run(stores, spec)
    ran = [t for t in study.get_trials() if t.user_attrs.get("launched")]
    assert len(ran) == 4 and all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in ran)
    assert len({t.params["rank"] for t in ran}) == 4
    assert study.user_attrs["spec"]["sampler"]["kind"] == kind


def test_a_trial_that_raises_is_recorded_with_its_error_and_the_sweep_goes_on(tmp_path, stores):
    """The corpus vanishes after the sweep was accepted: every trial raises in its worker. Each is an Optuna
    FAIL with reason `error` and the exception's first line, and a FAILED MLflow run tagged with the reason;
    the sweep spends its budget and ends."""
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    spec = spec_for(tmp_path, "vanished", [TINY])
    spec = spec.model_copy(update={"data": {**spec.data, "source": str(corpus)}})
    driver = SweepDriver.create(spec, stores)  # the data is read and packed here
    shutil.rmtree(corpus)
    shutil.rmtree(tmp_path / "cache")
    study = driver.run()
    ran = [t for t in study.get_trials() if t.user_attrs.get("launched")]
    assert len(ran) == 2 and all(t.state == TrialState.FAIL for t in ran)  # each point of the space, once
    assert {t.user_attrs["reason"] for t in ran} == {"error"}
    assert all(str(corpus) in t.user_attrs["detail"] and "\n" not in t.user_attrs["detail"] for t in ran)
    client = MlflowClient(stores.tracking_uri)
    for t in ran:
        run_ = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run_.info.status == "FAILED" and run_.data.tags["lrkv.reason"] == "error"
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"
