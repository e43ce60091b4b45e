"""The sweep service end to end on the CPU: real Ray, a real Optuna journal, a real MLflow store.

Each test drives `lrkv` as a user does (a subprocess), then reads the stores back.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lrkv.orchestrator.stores import Stores

from ..workers.conftest import CORPUS
from .test_search import QUICKSTART

LRKV = str(Path(sys.executable).parent / "lrkv")


def write_spec(path: Path, name: str, tokens: int = 4096, trials: int = 8, **extra) -> Path:
    spec = {
        "name": name,
        "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        "space": {"sizes": [{"name": "d32", "d_model": 32, "n_layers": 1, "n_heads": 4},
                            {"name": "d64", "d_model": 64, "n_layers": 1, "n_heads": 4}],
                  "rank": {"fractions": [0.0, 0.25, 0.5, 1.0]}},
        "baselines": ["mha", "gqa2", "mqa"],
        "budget": {"tokens_per_trial": tokens, "trials": trials, "concurrency": 2},
        "data": {"source": str(CORPUS), "seq_len": 32, "cache_dir": str(path.parent / "data-cache")},
        "train": {"batch_size": 8, "eval_every": 4, "eval_blocks": 8},
        **extra,
    }
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def lrkv(*args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([LRKV, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def load(ws: Path, name: str, wait: float = 30) -> optuna.Study:
    """The sweep's study, waiting briefly for a driver that is still creating it."""
    deadline = time.time() + wait
    while True:
        try:
            return optuna.load_study(study_name=name, storage=Stores.resolve(ws).optuna_storage())
        except KeyError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def mlflow_runs(ws: Path, name: str):
    client = MlflowClient(Stores.resolve(ws).tracking_uri)
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def launched(study):
    return [t for t in study.get_trials() if t.user_attrs.get("launched") and not t.user_attrs.get("requeued")]


def quickstart_spec(path: Path, name: str, tokens: int, trials: int) -> Path:
    """`sweeps/quickstart.yaml` as shipped (sizes, ranks, baselines, objectives, pruning, sampler) with a
    tiny budget: fewer tokens and trials, the fixture corpus, short evaluations."""
    spec = yaml.safe_load(QUICKSTART.read_text())
    spec.update(name=name, data={"source": str(CORPUS), "seq_len": 32, "cache_dir": str(path.parent / "data-cache")})
    spec["budget"].update(tokens_per_trial=tokens, trials=trials)
    spec["train"].update(batch_size=8, eval_every=4, eval_blocks=8)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def dominated(a: list[float], b: list[float]) -> bool:
    """b dominates a: no worse anywhere, better somewhere (every objective minimised)."""
    return all(y <= x for x, y in zip(a, b)) and any(y < x for x, y in zip(a, b))


def test_quickstart_sweep_end_to_end(tmp_path):
    spec = quickstart_spec(tmp_path / "sweep.yaml", "e2e", tokens=4096, trials=8)
    ws = tmp_path / "ws"
    done = lrkv("sweep", "run", str(spec), "--workspace", str(ws), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Pareto front · d64" in done.stdout and "Pareto front · d128" in done.stdout
    assert "experiment e2e, parent run" in done.stdout  # where to look in the MLflow UI

    study = load(ws, "e2e")
    trials = launched(study)
    assert len(trials) == 8
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # References first: the budget covers the first size's anchors and baselines and the second size's
    # first anchor, which goes first (a d128 trial costs more); each size keeps its own order.
    points = [(t.params["size"], t.user_attrs["label"]) for t in sorted(trials, key=lambda t: t.number)]
    assert points == [("d128", "lrkv0")] + [("d64", label) for label in
                                            ["lrkv0", "lrkv4", "lrkv8", "lrkv16", "mha", "gqa2", "mqa"]]

    client, runs = mlflow_runs(ws, "e2e")
    parents = [r for r in runs if r.data.tags.get("lrkv.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("lrkv.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == len(trials)  # one run per trial, no duplicates
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in children}
    for t in trials:
        run = by_number[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == ("FINISHED" if t.state == TrialState.COMPLETE else "KILLED")
        for metric in ("val_bpb", "kv_cache_bytes_per_token", "flops_per_token", "tokens_per_s", "params"):
            assert metric in run.data.metrics, metric
        assert run.data.params["optuna_trial_number"] == str(t.number)
        assert set(t.params) | {"model.attention.d_model", "model.n_layers", "train.lr"} <= set(run.data.params)  # the point and its config
        assert run.data.tags["lrkv.spec_digest"] == study.user_attrs["digest"]
        if t.state == TrialState.COMPLETE:
            assert run.data.metrics["val_bpb"] == pytest.approx(t.values[0])
            assert run.data.metrics["kv_cache_bytes_per_token"] == t.values[1]
        history = client.get_metric_history(run.info.run_id, "curve.val_bpb")
        assert len(history) == len(t.user_attrs["curve"]) >= 1
        memory = client.get_metric_history(run.info.run_id, "system/memory_rss_megabytes")  # MLflow's System tab
        assert len(memory) == len(t.user_attrs["record"]["system"]) >= 1 and min(m.value for m in memory) > 0
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"pareto.json", "pareto.md", "spec.json"} <= artifacts
    assert (ws / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()  # artifacts stay in the workspace

    # The parent run's Pareto table is the front of the study's finished trials, per size.
    table = json.loads(Path(client.download_artifacts(parents[0].info.run_id, "pareto.json", str(tmp_path))).read_text())
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    expected = {size: sorted(t.number for t in complete if t.params["size"] == size and not any(
        dominated(t.values, o.values) for o in complete if o.params["size"] == size)) for size in {"d64", "d128"}}
    assert {size: sorted(r["number"] for r in entry["front"]) for size, entry in table.items()} == expected
    logged = client.get_run(parents[0].info.run_id).data.metrics
    assert all(logged[f"hypervolume.{size}"] == pytest.approx(entry["hypervolume"]) for size, entry in table.items())

    # What a user runs next. Each reads the stores or changes nothing the others read (sync finds MLflow complete,
    # a refused sweep records nothing), so they run two at a time, one a core.
    workspace = {**os.environ, "LRKV_WORKSPACE": str(ws)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    named_stores = Stores.resolve(ws)
    named = {k: v for k, v in os.environ.items() if k != "LRKV_WORKSPACE"} | {
        "LRKV_STORAGE": named_stores.study_url, "LRKV_TRACKING_URI": named_stores.tracking_uri}
    commands = [  # (arguments, folder, environment)
        (["pareto", "e2e", "--workspace", str(ws), "--json"], tmp_path, None),
        (["sweep", "status", "e2e", "--workspace", str(ws), "--json"], tmp_path, None),
        (["pareto", "e2e"], tmp_path, workspace),
        (["sweep", "status", "--json"], tmp_path, workspace),
        (["sweep", "list"], tmp_path, workspace),
        (["pareto", "e2e", "--json"], elsewhere, named),
        (["sweep", "sync", "e2e"], elsewhere, named),
        (["sweep", "run", str(spec), "--workspace", str(ws)], tmp_path, None),
    ]
    with ThreadPoolExecutor(2) as pool:
        front, status, tables, every, listing, by_env, synced, again = pool.map(
            lambda c: lrkv(*c[0], cwd=c[1], env=c[2]), commands)
    # The same front from the CLI, as JSON.
    front = json.loads(front.stdout)
    assert {size: sorted(r["number"] for r in entry["front"]) for size, entry in front.items()} == expected
    status = json.loads(status.stdout)
    assert status["e2e"]["counts"].get("running", 0) == 0
    # The workspace from the environment: the front as tables, every sweep's status and the list of sweeps.
    assert tables.returncode == 0 and "Pareto front · d64" in tables.stdout
    assert json.loads(every.stdout) == status
    assert re.search(r"e2e\s*│\s*8\s*│\s*8\s*│\s*0\s*│\s*—", listing.stdout), listing.stdout
    # The stores named by the environment, from another folder: the study (LRKV_STORAGE) and MLflow (LRKV_TRACKING_URI).
    assert json.loads(by_env.stdout) == front
    assert synced.returncode == 0 and "MLflow holds every finished trial of e2e" in synced.stdout, synced.stderr
    assert not list(elsewhere.iterdir())  # no default workspace was made here
    assert len([r for r in mlflow_runs(ws, "e2e")[1] if r.data.tags.get("lrkv.role") == "trial"]) == len(trials)

    # A second sweep of the same name is refused with one line and exit code 2.
    assert again.returncode == 2 and again.stderr.strip().startswith("error: name: expected a sweep name not yet in")


def test_driver_killed_then_resumed_loses_nothing(tmp_path):
    """Kill the driver (SIGKILL, by its pid) mid-sweep; `lrkv sweep resume` finishes the budget without
    re-running a completed trial, fails and re-runs the interrupted ones, and leaves no run RUNNING."""
    spec = write_spec(tmp_path / "sweep.yaml", "resumable", tokens=16384, trials=5,
                      pruning={"enabled": False})
    ws = tmp_path / "ws"
    driver = subprocess.Popen([LRKV, "sweep", "run", str(spec), "--workspace", str(ws)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    before = []
    while time.time() < deadline:
        time.sleep(0.25)  # one trial done and another running lasts about two trials: polled several times
        if (ws / "optuna.journal").exists():
            study = load(ws, "resumable")
            before = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
            running = [t for t in study.get_trials() if t.state == TrialState.RUNNING]
            if before and running:
                break
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    assert before, "the sweep made no progress"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    interrupted = [t.number for t in load(ws, "resumable").get_trials() if t.state == TrialState.RUNNING]
    assert interrupted

    done = lrkv("sweep", "resume", "resumable", "--workspace", str(ws), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    study = load(ws, "resumable")
    after = {t.number: t for t in study.get_trials()}
    for t in before:  # completed trials are untouched
        assert after[t.number].state == TrialState.COMPLETE and after[t.number].values == t.values
    for number in interrupted:  # interrupted ones failed, marked, and re-queued with the same point
        assert after[number].state == TrialState.FAIL and after[number].user_attrs["requeued"]
        assert any(t.user_attrs.get("retry_of") == number and t.state == TrialState.COMPLETE for t in after.values())
    trials = launched(study)
    assert len(trials) == 5
    keys = Counter(t.user_attrs["key"] for t in trials)
    assert max(keys.values()) == 1  # nothing ran twice
    _, runs = mlflow_runs(ws, "resumable")
    children = [r for r in runs if r.data.tags.get("lrkv.role") == "trial"]
    stuck = [(r.data.tags, sorted(r.data.params)[:4]) for r in runs if r.info.status == "RUNNING"]
    assert not stuck, f"{stuck}\n{done.stderr[-3000:]}"
    assert len(children) == 5  # re-runs continued their run instead of adding one


def test_cancel_stops_a_running_sweep(tmp_path):
    spec = write_spec(tmp_path / "sweep.yaml", "stoppable", tokens=65536, trials=8, pruning={"enabled": False})
    ws = tmp_path / "ws"
    driver = subprocess.Popen([LRKV, "sweep", "run", str(spec), "--workspace", str(ws)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(1)
        if (ws / "optuna.journal").exists() and any(
                t.state == TrialState.RUNNING for t in load(ws, "stoppable").get_trials()):
            break
    done = lrkv("sweep", "cancel", "stoppable", "--workspace", str(ws), cwd=tmp_path)
    assert done.returncode == 0
    assert driver.wait(timeout=120) == 0
    study = load(ws, "stoppable")
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]
    cancelled = [t for t in study.get_trials() if t.user_attrs.get("reason") == "cancelled"]
    assert cancelled and all(t.state == TrialState.FAIL for t in cancelled)
    assert len(launched(study)) < 8
    client, runs = mlflow_runs(ws, "stoppable")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert [r.info.status for r in runs if r.data.tags.get("lrkv.role") == "sweep"] == ["KILLED"]


def test_same_name_at_once_one_wins_and_other_sweeps_stay_apart(tmp_path):
    """Two drivers race for one name: one runs, the other gets one line and exit 2. A third sweep of
    another name shares the same stores (and the machine) at the same time without mixing runs."""
    ws = tmp_path / "ws"
    first = write_spec(tmp_path / "a.yaml", "contested", trials=2)
    second = write_spec(tmp_path / "b.yaml", "contested", trials=2)
    other = write_spec(tmp_path / "c.yaml", "neighbour", trials=2)
    procs = [subprocess.Popen([LRKV, "sweep", "run", str(s), "--workspace", str(ws)], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for s in (first, second, other)]
    codes = [p.wait(timeout=600) for p in procs]
    errors = [p.stderr.read() for p in procs]
    assert sorted(codes[:2]) == [0, 2], errors
    loser = errors[codes.index(2)].strip().splitlines()
    assert len(loser) == 1 and loser[0].startswith("error: name: expected a sweep name not yet in"), loser
    assert codes[2] == 0, errors[2][-2000:]
    for name in ("contested", "neighbour"):
        study = load(ws, name)
        assert len(launched(study)) == 2
        _, runs = mlflow_runs(ws, name)  # each sweep's runs live in its own experiment
        children = [r for r in runs if r.data.tags.get("lrkv.role") == "trial"]
        assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in launched(study)}


def test_decode_ms_as_an_objective(tmp_path):
    """A sweep can trade loss against measured decode time: the profiler's numbers reach the study and MLflow."""
    train = {"batch_size": 8, "eval_every": 4, "eval_blocks": 8, "profile_contexts": [16, 32], "profile_batch": 2}
    spec = write_spec(tmp_path / "sweep.yaml", "decode", trials=3, objectives={"val_bpb": "min", "decode_ms": "min"},
                      baselines=["mha"], train=train)
    ws = tmp_path / "ws"
    done = lrkv("sweep", "run", str(spec), "--workspace", str(ws), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = [t for t in launched(load(ws, "decode")) if t.state == TrialState.COMPLETE]
    assert trials
    _, runs = mlflow_runs(ws, "decode")
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs if r.data.tags.get("lrkv.role") == "trial"}
    for t in trials:
        metrics = by_number[t.number].data.metrics
        assert metrics["decode_ms"] == pytest.approx(t.values[1]) and t.values[1] > 0
        assert metrics["decode_ms_at_32"] == metrics["decode_ms"]
        assert {"decode_ms_at_16", "decode_floor_fraction_at_16", "decode_floor_fraction_at_32"} <= set(metrics)
