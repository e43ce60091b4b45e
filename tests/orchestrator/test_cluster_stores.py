"""A sweep on a team's stores — PostgreSQL for the study, an MLflow tracking server — and their faults:
the database restarting mid-sweep, the database down at start, the tracking server going away."""
import json
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lrkv.orchestrator import stores
from lrkv.orchestrator.stores import Stores

from .conftest import PASSWORD, PG_ADMIN
from .test_sweep import LRKV, write_spec


def study_of(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=Stores.resolve(None, url).optuna_storage())


def runs_of(uri: str, name: str):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)


def finished_trials(study):
    return [t for t in study.get_trials() if t.user_attrs.get("launched") and not t.user_attrs.get("requeued")]


def assert_mlflow_matches(uri, name, study):
    runs = runs_of(uri, name)
    children = [r for r in runs if r.data.tags.get("lrkv.role") == "trial"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    trials = finished_trials(study)
    assert len(children) == len(trials)
    assert {r.data.tags["lrkv.point"] for r in children} == {t.user_attrs["point"] for t in trials}


def start(cmd, cwd, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)


def wait_complete(url, name, count, driver, log, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(1)
        try:
            if sum(t.state == TrialState.COMPLETE for t in study_of(url, name).get_trials()) >= count:
                return
        except (KeyError, Exception):
            pass
        assert driver.poll() is None, Path(log).read_text()[-3000:]
    raise AssertionError("the sweep made no progress")


def test_sweep_on_postgres_and_a_tracking_server_leaks_no_credential(tmp_path, pg_database, pg_mlflow_server):
    mlflow_server = pg_mlflow_server
    spec = write_spec(tmp_path / "sweep.yaml", "teamwork", trials=4)
    done = subprocess.run([LRKV, "sweep", "run", str(spec), "--storage", pg_database, "--tracking-uri",
                           mlflow_server.uri], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study = study_of(pg_database, "teamwork")
    assert len(finished_trials(study)) == 4
    assert_mlflow_matches(mlflow_server.uri, "teamwork", study)
    # The password appears nowhere a user or a dashboard can read it.
    assert PASSWORD not in done.stdout + done.stderr
    assert PASSWORD not in json.dumps(study.user_attrs) + json.dumps([t.user_attrs for t in study.get_trials()])
    client = MlflowClient(mlflow_server.uri)
    for run in runs_of(mlflow_server.uri, "teamwork"):
        assert PASSWORD not in json.dumps([run.data.params, run.data.tags])
        for artifact in client.list_artifacts(run.info.run_id):
            if artifact.path.endswith((".json", ".md")):
                assert PASSWORD not in Path(client.download_artifacts(run.info.run_id, artifact.path, tmp_path)).read_text()
    assert PASSWORD not in (mlflow_server.log.read_text())
    status = subprocess.run([LRKV, "sweep", "status", "teamwork", "--storage", pg_database], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and PASSWORD not in status.stdout + status.stderr


def test_postgres_down_at_start_is_one_line_exit_2(tmp_path):
    spec = write_spec(tmp_path / "sweep.yaml", "nodb")
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/lrkv"  # nothing listens on port 1
    done = subprocess.run([LRKV, "sweep", "run", str(spec), "--storage", url, "--workspace", str(tmp_path / "ws")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --storage: expected a reachable database")
    assert "postgresql://postgres:***@127.0.0.1:1/lrkv" in lines[0] and PASSWORD not in done.stderr
    assert not (tmp_path / "ws").exists()


class BackendKiller:
    """Terminates the storage's own PostgreSQL connection just before its n-th statement: the
    connection dies inside a transaction, as when the server restarts mid-call."""

    def __init__(self, engine):
        self.admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        self.count, self.at = 0, None
        sqlalchemy.event.listen(engine, "before_cursor_execute", self.before)

    def before(self, conn, *_):
        self.count += 1
        if self.count == self.at:
            with self.admin.connect() as c:
                c.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"),
                          {"pid": conn.connection.dbapi_connection.info.backend_pid})

    def statements(self, call) -> int:
        self.count, self.at = 0, None
        call()
        return self.count

    def kill_at(self, n: int, call):
        self.count, self.at = 0, n
        return call()


def test_connection_lost_inside_any_statement_of_a_call_is_retried(pg_database, monkeypatch, caplog):
    """Wherever the connection dies, the call is retried on a fresh session: reads return every trial,
    an ask/tell makes exactly one COMPLETE trial (nothing duplicated, nothing left RUNNING)."""
    monkeypatch.setattr(stores, "RETRY_FIRST_DELAY", 0.01)
    storage = Stores.resolve(None, pg_database).optuna_storage()
    study = optuna.create_study(study_name="kill", storage=storage, directions=["minimize", "minimize"])
    told = []

    def ask_tell():
        trial = study.ask()
        study.tell(trial, [trial.suggest_int("rank", 0, 128), 1.0])
        told.append(trial.number)

    def read():
        assert [t.number for t in study.get_trials(deepcopy=False)] == told

    killer = BackendKiller(storage.engine)
    for call in (ask_tell, read):
        for n in range(1, killer.statements(call) + 1):
            killer.kill_at(n, call)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == len(told) > 30 and all(t.state == TrialState.COMPLETE for t in trials)
    assert "retrying" in caplog.text and "terminating connection" in caplog.text
    killer.admin.dispose()


def test_postgres_restart_mid_sweep(tmp_path, pg_database):
    """The driver rides out a database restart (retries with backoff) and completes the budget."""
    spec = write_spec(tmp_path / "sweep.yaml", "restart", tokens=16384, trials=3, pruning={"enabled": False})
    log = tmp_path / "driver.log"
    driver = start([LRKV, "sweep", "run", str(spec), "--storage", pg_database, "--workspace", str(tmp_path / "ws")],
                   tmp_path, log)
    wait_complete(pg_database, "restart", 1, driver, log)
    version = subprocess.run(["ls", "/etc/postgresql"], capture_output=True, text=True).stdout.split()[0]
    cluster = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]
    seen = log.read_text().count("retrying")
    subprocess.run([*cluster, "stop"], check=True, timeout=120)
    try:
        # Down until the driver has failed twice more (a first retry and a longer one): a fixed outage would
        # leave it waiting out a backoff of up to 8 s once the database is back.
        deadline = time.time() + 120
        while log.read_text().count("retrying") < seen + 2:
            assert time.time() < deadline and driver.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        subprocess.run([*cluster, "start"], check=True, timeout=120)
    assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    study = study_of(pg_database, "restart")
    assert len(finished_trials(study)) == 3
    assert all(t.state == TrialState.COMPLETE for t in finished_trials(study))
    assert "retrying" in log.read_text()  # it did see the outage


def test_tracking_server_down_mid_sweep_loses_nothing(tmp_path, mlflow_server):
    """Results land in the study while MLflow is away; when it returns, the driver logs what it missed."""
    spec = write_spec(tmp_path / "sweep.yaml", "outage", tokens=16384, trials=4, pruning={"enabled": False})
    ws = tmp_path / "ws"
    url = str(ws / "optuna.journal")
    log = tmp_path / "driver.log"
    driver = start([LRKV, "sweep", "run", str(spec), "--workspace", str(ws), "--tracking-uri", mlflow_server.uri],
                   tmp_path, log)
    wait_complete(url, "outage", 1, driver, log)
    mlflow_server.stop()
    wait_complete(url, "outage", 2, driver, log)  # the sweep goes on without MLflow
    mlflow_server.start()
    assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    study = study_of(url, "outage")
    assert len(finished_trials(study)) == 4
    assert "MLflow unreachable" in log.read_text()
    assert_mlflow_matches(mlflow_server.uri, "outage", study)
    parent = [r for r in runs_of(mlflow_server.uri, "outage") if r.data.tags.get("lrkv.role") == "sweep"]
    assert [r.info.status for r in parent] == ["FINISHED"]
