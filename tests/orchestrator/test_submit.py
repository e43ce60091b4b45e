"""`lrkv sweep submit` against a real Ray cluster (a head node with the job API, started here)."""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from .test_sweep import LRKV, load, write_spec

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head with its dashboard (job API) on 127.0.0.1, token-authenticated as Ray clusters are."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    # The head's environment has the project's commands on PATH, as a cluster image would.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    port, dash = free_port(), free_port()
    (tmp_path / "head").mkdir()  # the folder the head's workers start in
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--num-cpus=2", "--include-dashboard=true", "--disable-usage-stats", "--memory=4000000000",
         "--object-store-memory=200000000", f"--temp-dir={temp}"],
        env=env, cwd=tmp_path / "head", stdout=subprocess.DEVNULL, stderr=open(tmp_path / "head.log", "w"),
        start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", dash), timeout=1).close()
            break
        except OSError:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(0.5)
    yield address, env, Path(temp)
    # SIGKILL: a blocked `ray start` can take 30 s or more to leave on SIGTERM. Ray's processes share its
    # process group, and a job's driver is killed by its own watcher once the head's are gone.
    os.killpg(head.pid, signal.SIGKILL)
    head.wait()
    shutil.rmtree(temp, ignore_errors=True)


def test_submit_returns_at_once_and_the_cluster_runs_the_sweep(tmp_path, ray_head):
    address, env, temp = ray_head
    spec = write_spec(tmp_path / "sweep.yaml", "submitted", tokens=2048, trials=2)
    raw = json.loads(spec.read_text())
    del raw["data"]["cache_dir"]  # the default, relative to the driver's folder (the job's package)
    spec.write_text(json.dumps(raw))
    ws = tmp_path / "ws"
    started = time.time()
    done = subprocess.run([LRKV, "sweep", "submit", str(spec), "--address", address, "--workspace", str(ws)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "submitted sweep submitted" in done.stdout
    assert time.time() - started < 60  # it does not wait for the sweep
    def job(*args):  # the Ray jobs CLI, with the cluster's token
        return subprocess.run([RAY, "job", *args, "lrkv-submitted", "--address", address], env=env,
                              capture_output=True, text=True, timeout=60).stdout.lower()

    deadline = time.time() + 240
    while not any(s in (status := job("status")) for s in ("succeeded", "failed", "stopped")):
        assert time.time() < deadline, job("logs")[-3000:]
        time.sleep(0.5)  # each `ray job status` takes a second or more itself
    assert "succeeded" in status, job("logs")[-3000:]
    complete = [t for t in load(ws, "submitted").get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    # What anyone who can list the cluster's jobs sees: the job, but not the store addresses (they may
    # carry a password); those travel inside the job's package.
    listing = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True, text=True,
                             timeout=60).stdout
    assert "lrkv-submitted" in listing and "--stores-file" in listing
    assert str(ws) not in listing and "mlflow.db" not in listing
    # Nor do the workers hold them: the trials ran without the job's package, and the head kept no copy.
    deadline = time.time() + 30
    while True:  # Ray reports task events asynchronously
        trials = json.loads(subprocess.run(
            [RAY, "list", "tasks", "--filter", "name=trial_task", "--detail", "--format", "json", "--address", address],
            env=env, capture_output=True, text=True, timeout=60).stdout)
        if len([t for t in trials if t["state"] == "FINISHED"]) >= 2 or time.time() > deadline:
            break
        time.sleep(1)
    assert len([t for t in trials if t["state"] == "FINISHED"]) >= 2, trials
    assert all("working_dir" not in json.loads(t["runtime_env_info"]["serialized_runtime_env"]) for t in trials)
    assert not list(temp.rglob("stores.json"))
    # Out of the package, the trials still read the blocks the driver packed beside it.
    assert not (tmp_path / "head" / ".lrkv-cache").exists()

    again = subprocess.run([LRKV, "sweep", "submit", str(spec), "--workspace", str(ws)],  # the address from RAY_ADDRESS
                           cwd=tmp_path, env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip() == "error: name: expected a sweep name not yet submitted to this cluster, got 'submitted'"


def test_submit_refuses_mps_before_reaching_the_cluster(tmp_path):
    """A cluster's nodes run their own MPS daemons: the spec is refused here, exit 2, nothing written."""
    spec = write_spec(tmp_path / "sweep.yaml", "packed", resources={"gpus_per_trial": 0.25, "mps": True})
    done = subprocess.run([LRKV, "sweep", "submit", str(spec), "--address", "http://127.0.0.1:9",
                           "--workspace", str(tmp_path / "ws")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: resources.mps: expected false on a cluster (start MPS on its nodes), got True"]
    assert not (tmp_path / "ws").exists()
