"""What a user sees in a browser: a finished sweep's Pareto figure rendered in the MLflow UI (headless
Debian Chromium driven by Playwright), and optuna-dashboard serving the same storage.

The browser test runs a real quickstart-style sweep (`lrkv sweep run`, local Ray, a journal and an
MLflow SQLite store), starts `lrkv ui` on 127.0.0.1, opens the parent run's `pareto.html` artifact
and asserts on elements inside the plot (the points of every finished trial), clicks a point and
checks the link it gives is its child run. The screenshot is kept under `tests/artifacts/`.

`make test` installs Chromium (tests/system.sh) and Playwright (the test extra); where either is missing the
test fails, naming it.
"""
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from lrkv.orchestrator.cli import app
from lrkv.orchestrator.stores import Stores

from ..orchestrator.test_submit import free_port
from ..orchestrator.test_sweep import LRKV, write_spec
from . import sweeps

CHROMIUM = "/usr/bin/chromium"
# Offline-safe flags: without them Chromium waits on network services the machine cannot reach.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parents[1] / "artifacts"


def need_browser():
    """Playwright's sync API with Debian's Chromium, or a skip (a failure where the browser is required)."""
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
        sync_playwright = None
    if missing:
        pytest.fail("browser test needs " + " and ".join(missing))
    return sync_playwright


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    """A server in its own process group (so stopping it stops its workers too)."""
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_up(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    """Until `url` answers 200; fails with the server's output if it dies or takes too long."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop(proc)
            pytest.fail(f"{proc.args[1]} did not come up at {url}: {proc.stdout.read()[-2000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_pareto_figure_renders_in_the_mlflow_ui(tmp_path):
    sync_playwright = need_browser()
    # Two sizes, LRKV at r ∈ {0, d_h} beside MHA and MQA: the 8 references, all run to the end.
    spec = write_spec(tmp_path / "sweep.yaml", "browser", tokens=2048, trials=8, baselines=["mha", "mqa"],
                      space={"sizes": [{"name": "d32", "d_model": 32, "n_layers": 1, "n_heads": 4},
                                       {"name": "d64", "d_model": 64, "n_layers": 1, "n_heads": 4}],
                             "rank": {"fractions": [0.0, 1.0]}}, pruning={"enabled": False})
    ws = tmp_path / "ws"
    sweep = subprocess.Popen([LRKV, "sweep", "run", str(spec), "--workspace", str(ws)], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    port, ui = free_port(), None
    try:
        # Start the UI while trials run, once the sweep has created its MLflow store and parent run.
        client = MlflowClient(Stores.resolve(ws).tracking_uri)
        deadline = time.time() + 300
        while not (ws / "optuna.journal").exists() or "browser" not in (ws / "optuna.journal").read_text() \
                or "mlflow_parent_run_id" not in (ws / "optuna.journal").read_text():
            assert sweep.poll() is None and time.time() < deadline, sweep.stderr.read()[-3000:]
            time.sleep(0.3)
        ui = start([LRKV, "ui", "--workspace", str(ws), "--port", str(port)], tmp_path)
        assert sweep.wait(timeout=300) == 0, sweep.stderr.read()[-3000:]
        wait_up(ui, f"http://127.0.0.1:{port}/health")

        experiment = client.get_experiment_by_name("browser")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
        parent = next(r for r in runs if r.data.tags.get("lrkv.role") == "sweep")
        children = {r.info.run_id for r in runs if r.data.tags.get("lrkv.role") == "trial"}
        assert len(children) == 8
        # the driver logged the figures as trials finished, and the views beside them
        assert {"pareto.html", "pareto.png", "compute.html", "compute.png"} <= {
            a.path for a in client.list_artifacts(parent.info.run_id)}

        shot = tmp_path / "mlflow-ui-pareto.png"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1500, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs/"
                          f"{parent.info.run_id}/artifacts/pareto.html", timeout=60_000)
                plot = page.frame_locator("iframe.mlflow-html-iframe")
                plot.locator(".plotly .scatterlayer .trace").first.wait_for(timeout=60_000)
                # every finished trial is a point in each panel (KV bytes, training FLOPs)
                points = plot.locator(".plotly .scatterlayer .trace .points path")
                assert points.count() == 8 * 2
                assert plot.locator("svg.main-svg .legendtext", has_text="mha (baseline)").count() == 1
                # a click on a point names its child run, as a link into this UI
                box = points.first.bounding_box()
                x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                page.mouse.move(x, y)
                page.mouse.click(x, y)
                link = plot.locator("#lrkv-run-link a")
                link.wait_for(timeout=10_000)
                href = link.get_attribute("href")
                prefix = f"http://127.0.0.1:{port}/#/experiments/{experiment.experiment_id}/runs/"
                assert href.startswith(prefix) and href.removeprefix(prefix) in children
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
        ARTIFACTS.mkdir(exist_ok=True)
        kept = ARTIFACTS / shot.name
        shutil.copy(shot, kept)
        print(f"screenshot: {shot} (kept as {kept})")
        assert shot.stat().st_size > 10_000
    finally:
        for proc in (sweep, ui):
            if proc is not None:
                stop(proc)


def test_dashboard_serves_the_sweeps_storage(tmp_path):
    import optuna_dashboard  # noqa: F401  (the test extra; `lrkv dashboard` serves it)
    ws = tmp_path / "ws"
    sweeps.study([sweeps.trial("d64", "mha", 64, 2, 4, 2.0)], name="served",
                 storage=Stores.resolve(ws).optuna_storage())
    port = free_port()
    proc = start([LRKV, "dashboard", "--workspace", str(ws), "--port", str(port)], tmp_path)
    try:
        wait_up(proc, f"http://127.0.0.1:{port}/api/studies", timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as reply:
            studies = json.loads(reply.read())["study_summaries"]
        assert [s["study_name"] for s in studies] == ["served"]
    finally:
        stop(proc)
    missing = CliRunner().invoke(app, ["dashboard", "--workspace", str(tmp_path / "none")])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: --workspace: expected a workspace with sweeps")
    assert not (tmp_path / "none").exists()
