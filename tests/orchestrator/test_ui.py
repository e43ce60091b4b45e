"""`lrkv ui` serves the MLflow UI for the workspace's store, on 127.0.0.1 only."""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

from mlflow.tracking import MlflowClient

from lrkv.orchestrator.stores import Stores

from .test_submit import free_port
from .test_sweep import LRKV


def test_ui_serves_the_workspace_store_on_loopback_only(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    MlflowClient(Stores.resolve(ws).tracking_uri).create_experiment("kept-in-the-workspace")
    port = free_port()
    ui = subprocess.Popen([LRKV, "ui", "--workspace", str(ws), "--port", str(port)], cwd=tmp_path,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    assert reply.status == 200
                    break
            except OSError:
                assert time.time() < deadline and ui.poll() is None, "the MLflow UI did not come up"
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=5") as reply:
            assert reply.status == 200
            assert "kept-in-the-workspace" in {e["name"] for e in json.load(reply)["experiments"]}
        outside = socket.gethostbyname(socket.gethostname())
        if not outside.startswith("127."):
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((outside, port)) != 0  # not reachable from other hosts
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
