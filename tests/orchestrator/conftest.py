"""Real services for the orchestrator tests: a workspace per test module, a fresh PostgreSQL database per test
(this machine runs PostgreSQL on 127.0.0.1:5432) and an `mlflow server` process."""
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import sqlalchemy

from lrkv.orchestrator.stores import Stores

from .test_submit import free_port

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PASSWORD = "s3cret-Pa55"  # trust auth ignores it; the tests check it never leaks


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One workspace for a test module's sweeps, each under its own name, as a user's workspace holds many: its
    MLflow store is set up (about a second of schema migrations) once."""
    return Stores.resolve(tmp_path_factory.mktemp("workspace") / "ws")


@contextlib.contextmanager
def new_database():
    """A new, empty database; its URL carries a password, as a team's would."""
    name = f"lrkv_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as c:
        c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def pg_database():
    with new_database() as url:
        yield url


class MlflowServer:
    def __init__(self, backend: str, artifacts: Path, log: Path):
        self.backend, self.artifacts, self.log, self.port = backend, artifacts, log, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend, "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1", "--serve-artifacts",
             "--artifacts-destination", str(self.artifacts)],
            env=env, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                assert time.time() < deadline and self.process.poll() is None, self.log.read_text()[-2000:]
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def pg_mlflow_server(tmp_path):
    """An MLflow tracking server whose backend store is PostgreSQL, as a team runs it."""
    with new_database() as url:
        server = MlflowServer(url, tmp_path / "server-artifacts", tmp_path / "mlflow-server.log")
        server.start()
        yield server
        server.stop()


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(f"sqlite:///{tmp_path / 'mlflow-server.db'}", tmp_path / "server-artifacts",
                          tmp_path / "mlflow-server.log")
    server.start()
    yield server
    server.stop()
