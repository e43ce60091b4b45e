"""A worker node dies mid-trial (its processes killed by their ids): Ray re-runs the trial on a node
that joins later, and the sweep completes its budget with nothing lost, duplicated or left RUNNING.
The cluster is real: a head and worker nodes started as separate processes on this machine."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from .test_submit import RAY, free_port
from .test_sweep import LRKV, launched, load, mlflow_runs, write_spec


class Cluster:
    def __init__(self, tmp_path: Path):
        self.temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
        self.port = free_port()
        # The head declares a node dead after this many failed health checks this far apart: about 3 s for a
        # killed node, where Ray's default (5 every 3 s) leaves the lost trials waiting 15 s.
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
        self.logs, self.nodes = tmp_path, []

    def start(self, *args: str) -> subprocess.Popen:
        node = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", f"--temp-dir={self.temp}",
                                 "--object-store-memory=100000000", *args], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=open(self.logs / f"node{len(self.nodes)}.log", "w"),
                                start_new_session=True)
        self.nodes.append(node)
        return node

    def head(self) -> None:
        # The head runs no trials (no CPUs): trials can only go to worker nodes.
        head = self.start("--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false",
                          "--memory=2000000000")
        deadline = time.time() + 90
        while True:  # up once its GCS port answers
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert time.time() < deadline and head.poll() is None, (self.logs / "node0.log").read_text()[-2000:]
                time.sleep(0.2)

    def worker(self) -> subprocess.Popen:
        return self.start(f"--address=127.0.0.1:{self.port}", "--num-cpus=2", "--memory=4000000000")

    def kill(self, node: subprocess.Popen) -> None:
        os.killpg(node.pid, signal.SIGKILL)  # the node's raylet, workers and all: a machine gone
        node.wait()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.stop()


def test_worker_node_killed_mid_trial(tmp_path, cluster):
    cluster.head()
    node_a = cluster.worker()
    spec = write_spec(tmp_path / "sweep.yaml", "nodeloss", tokens=65536, trials=4, pruning={"enabled": False})
    ws = tmp_path / "ws"
    log = tmp_path / "driver.log"
    driver = subprocess.Popen([LRKV, "sweep", "run", str(spec), "--workspace", str(ws),
                               "--address", f"127.0.0.1:{cluster.port}"], cwd=tmp_path, env=cluster.env,
                              stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)
    try:
        deadline = time.time() + 300
        running = []
        while time.time() < deadline and not running:
            time.sleep(1)
            assert driver.poll() is None, log.read_text()[-3000:]
            try:
                study = load(ws, "nodeloss")
            except (KeyError, OSError):  # not created yet
                continue
            # Kill only once a trial is launched and has had time to start training on node A.
            running = [t for t in study.get_trials() if t.state == TrialState.RUNNING and t.user_attrs.get("launched")]
            if running:
                time.sleep(3)
        assert running, "no trial started"
        killed_at = time.time()
        cluster.kill(node_a)
        cluster.worker()  # a replacement node joins (seconds to start); the lost trials run there
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)

    study = load(ws, "nodeloss")
    trials = launched(study)
    assert len(trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state, t.user_attrs.get("reason")) for t in trials]
    for t in running:  # the interrupted trials themselves finished, from an attempt begun after the kill
        done = study.trials[t.number]
        assert done.state == TrialState.COMPLETE and done.user_attrs["record"]["started_at"] > killed_at
    assert max(Counter(t.user_attrs["key"] for t in trials).values()) == 1
    _, runs = mlflow_runs(ws, "nodeloss")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert len([r for r in runs if r.data.tags.get("lrkv.role") == "trial"]) == 4
