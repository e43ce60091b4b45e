"""How a sweep starts: a refused sweep starts no Ray and writes nothing more; an accepted one starts Ray,
its report board and a warm worker per trial slot while the driver sets up its stores."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import ray

from lrkv.orchestrator import search
from lrkv.orchestrator.driver import SweepDriver, SweepError
from lrkv.orchestrator.spec import parse_spec
from lrkv.orchestrator.stores import Stores

from ..workers.conftest import CORPUS
from .test_submit import free_port

LRKV = str(Path(sys.executable).parent / "lrkv")


def raw_spec(tmp_path, name="start") -> dict:
    return {
        "name": name, "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        "space": {"sizes": [{"name": "d32", "d_model": 32, "n_layers": 1, "n_heads": 4}],
                  "rank": {"fractions": [0.0, 0.5]}},
        "budget": {"tokens_per_trial": 512, "trials": 2, "concurrency": 2},
        "data": {"source": str(CORPUS), "seq_len": 32, "cache_dir": str(tmp_path / "cache")},
        "train": {"batch_size": 8, "eval_every": 2, "eval_blocks": 4},
    }


@pytest.fixture
def no_ray():
    assert not ray.is_initialized()
    yield
    ray.shutdown()


def test_a_taken_name_is_refused_before_ray_or_mlflow(tmp_path, no_ray):
    stores = Stores.resolve(tmp_path / "ws")
    optuna.create_study(study_name="start", storage=stores.optuna_storage())
    with pytest.raises(SweepError, match="a sweep name not yet in"):
        SweepDriver.create(parse_spec(raw_spec(tmp_path)), stores)
    assert not ray.is_initialized()
    assert not (tmp_path / "ws" / "mlflow.db").exists()


def test_an_unreachable_tracking_server_is_refused_before_ray_or_the_study(tmp_path, no_ray):
    stores = Stores.resolve(tmp_path / "ws", tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(SweepError, match="a reachable MLflow tracking store"):
        SweepDriver.create(parse_spec(raw_spec(tmp_path)), stores)
    assert not ray.is_initialized()
    assert optuna.get_all_study_names(stores.optuna_storage()) == []


def test_a_sweep_whose_tracking_store_fails_to_open_leaves_no_study(tmp_path, no_ray):
    """A damaged local MLflow file passes the early check and fails once the name is claimed: the claim is
    rolled back, so the name is free and no study is left without its parent run."""
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "mlflow.db").write_bytes(b"not a database" * 100)
    stores = Stores.resolve(tmp_path / "ws")
    with pytest.raises(Exception):
        SweepDriver.create(parse_spec(raw_spec(tmp_path)), stores)
    assert optuna.get_all_study_names(stores.optuna_storage()) == []


def test_a_taken_name_through_the_command_is_one_line(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(raw_spec(tmp_path)))  # JSON is YAML
    optuna.create_study(study_name="start", storage=Stores.resolve(tmp_path / "ws").optuna_storage())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LRKV_", "RAY_ADDRESS", "MLFLOW_"))}
    done = subprocess.run([LRKV, "sweep", "run", str(spec), "--workspace", str(tmp_path / "ws")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: name: expected a sweep name not yet in"), done.stderr


@ray.remote
def imported() -> bool:
    time.sleep(0.5)  # long enough that the two probes need two workers
    return "lrkv.workers.train" in sys.modules


def test_an_accepted_sweep_warms_a_worker_per_slot(tmp_path, no_ray):
    driver = SweepDriver.create(parse_spec(raw_spec(tmp_path)), Stores.resolve(tmp_path / "ws"))
    assert ray.is_initialized() and ray.get(driver.board.drain.remote()) == []
    assert ray.get([imported.options(num_cpus=1).remote() for _ in range(2)]) == [True, True]


class Stopped(Exception):
    """The driver's process ending between two writes to the study."""


@pytest.mark.parametrize("writes", range(6))
def test_a_driver_stopped_while_recording_a_launch_leaves_a_whole_launch_or_none(tmp_path, monkeypatch, writes):
    """A trial's launch is several writes to the study. Stopped after any number of them, the trial reads as never
    launched, or as launched with everything `sweep resume` and the MLflow sync read (its point, label, config)."""
    spec = parse_spec(raw_spec(tmp_path))
    study = optuna.create_study(directions=spec.directions)
    trial = study.ask()
    params = search.suggest(trial, spec)
    config = search.trial_config(spec, params)
    done, write = [], trial.set_user_attr

    def write_or_stop(name, value):
        if len(done) == writes:
            raise Stopped
        done.append(name)
        write(name, value)

    monkeypatch.setattr(trial, "set_user_attr", write_or_stop)
    driver = type("Stub", (), {"spec": spec, "board": None})()  # no board: past the writes, the launch stops
    with pytest.raises((Stopped, AttributeError)):
        SweepDriver._start(driver, trial, params, search.point_key(params), config, search.costs(spec, config, 256))
    attrs = study.trials[0].user_attrs
    assert not attrs.get("launched") or {"point", "label", "config", "costs"} <= set(attrs), sorted(attrs)
    assert writes < 5 or attrs.get("launched")  # every write made: launched
