"""Pareto figures (plotly HTML, matplotlib PNG) and what `log_front` writes to a real MLflow store."""
import io
import logging
from pathlib import Path

import pytest
from optuna.trial import TrialState

from lrkv.dashboards import figures, report
from lrkv.dashboards.figures import HTML_OPTIONS, front_2d, panels, pareto_figure, pareto_png, run_link, staircase
from lrkv.dashboards.report import log_front, rows
from lrkv.orchestrator.tracking import Tracker

from . import sweeps


def trials(run=lambda n: f"run-{n}", decode=False):
    """Two sizes with LRKV ranks and baselines; known fronts on (KV bytes, val bpb)."""
    t = sweeps.trial
    ms = (lambda v: v) if decode else (lambda v: None)
    return [
        t("d64", "lrkv", 64, 2, 4, 2.00, rank=0, run_id=run(0), flops=900, decode_ms=ms(0.5)),   # front
        t("d64", "lrkv", 64, 2, 4, 1.80, rank=4, run_id=run(1), flops=950, decode_ms=ms(0.6)),   # front
        t("d64", "lrkv", 64, 2, 4, 1.85, rank=8, run_id=run(2), flops=1000, decode_ms=ms(0.7)),  # dominated by r=4
        t("d64", "mha", 64, 2, 4, 1.70, run_id=run(3), flops=1000, decode_ms=ms(0.9)),           # front
        t("d64", "mqa", 64, 2, 4, 2.00, run_id=run(4), flops=880, decode_ms=ms(0.4)),            # ties r=0 exactly
        t("d64", "gqa2", 64, 2, 4, 1.90, run_id=run(5), flops=940, decode_ms=ms(0.55)),          # dominated by r=4
        t("d128", "lrkv", 128, 2, 4, 1.50, rank=16, run_id=run(6), flops=3000, decode_ms=ms(1.0)),
        t("d128", "mha", 128, 2, 4, 1.45, run_id=run(7), flops=3200, decode_ms=ms(1.5)),
        t("d128", "lrkv", 128, 2, 4, 0.10, rank=8, state=TrialState.FAIL),                       # not a result
    ]


def unescape(page: str) -> str:
    return page.replace("\\u002f", "/")  # plotly writes "/" in its JSON as \u002f


def points(fig, axis="kv_cache_bytes"):
    return {t.meta["size"]: t for t in fig.data if t.meta and t.meta["lrkv"] == "points" and t.meta["axis"] == axis}


def test_front_2d_ties_and_missing_values():
    all_rows = rows(sweeps.study(trials()))
    d64 = [r for r in all_rows if r["size"] == "d64"]
    assert [r["label"] for r in front_2d(d64, "kv_cache_bytes")] == ["lrkv0", "mqa", "lrkv4", "mha"]  # tie kept
    assert front_2d([{**r, "decode_ms": None} for r in d64], "decode_ms") == []
    xs, ys = staircase(front_2d(d64, "kv_cache_bytes"), "kv_cache_bytes")
    assert len(xs) == len(ys) == 2 * 4 - 1 and ys == sorted(ys, reverse=True)  # right, then down: never up


def test_pareto_figure_traces_markers_and_links():
    all_rows = rows(sweeps.study(trials()))
    assert panels(all_rows) == ["kv_cache_bytes", "flops_per_token"]     # no decode times recorded
    fig = pareto_figure(all_rows, experiment_id="7", title="t")
    traces = points(fig)
    assert list(traces) == ["d64", "d128"]                               # one trace per size, spec order
    d64 = traces["d64"]
    by_number = dict(zip([c[1] for c in d64.customdata], range(len(d64.x))))
    sizes, symbols = list(d64.marker.size), list(d64.marker.symbol)
    front = {0, 1, 3, 4}
    for number, i in by_number.items():
        assert sizes[i] == (14 if number in front else 9)                # the front drawn large
    assert symbols[by_number[3]] == "star" and symbols[by_number[5]] == "diamond" and symbols[by_number[0]] == "circle"
    assert d64.text[by_number[3]] == "mha" and d64.text[by_number[0]] == ""  # baselines named on the plot
    assert d64.customdata[by_number[2]][0] == "#/experiments/7/runs/run-2"
    assert "trial 2" in d64.hovertext[by_number[2]] and "run run-2" in d64.hovertext[by_number[2]]
    assert "r/d_h = 0.5" in d64.hovertext[by_number[2]]
    fronts = [t for t in fig.data if t.meta and t.meta["lrkv"] == "front" and t.meta["axis"] == "kv_cache_bytes"]
    assert len(fronts) == 2
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "linear"
    with_decode = pareto_figure(rows(sweeps.study(trials(decode=True))), experiment_id="7")
    assert {t.meta["axis"] for t in with_decode.data if t.meta and t.meta["lrkv"] == "points"} == set(figures.AXES)
    assert run_link(None, "x") == "" and run_link("1", None) == ""


def test_html_is_self_contained_and_clickable(tmp_path):
    fig = pareto_figure(rows(sweeps.study(trials())), experiment_id="7")
    path = tmp_path / "pareto.html"
    fig.write_html(path, **HTML_OPTIONS)
    page = path.read_text()
    assert '<script src="https://cdn.plot.ly' not in page and len(page) > 1_000_000  # plotly.js inlined, not fetched
    assert "plotly_click" in page and "lrkv-run-link" in page
    assert "#/experiments/7/runs/run-1" in unescape(page)


def test_png_and_empty_figures():
    buf = io.BytesIO()
    pareto_png(rows(sweeps.study(trials())), "t").savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = pareto_figure([], title="nothing")
    assert empty.layout.annotations[0].text == "no finished trials yet"
    pareto_png([], "nothing").savefig(io.BytesIO(), format="png")


# -- log_front against a real MLflow store -----------------------------------------------------------


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    return Tracker(f"sqlite:///{root / 'mlflow.db'}", "figures", (root / "artifacts").as_uri())


def sweep_with_runs(tracker, name):
    """A constructed sweep whose trials have child runs under a fresh parent run."""
    parent = tracker.client.create_run(tracker.experiment_id, run_name=name).info.run_id
    ids = {}

    def run(n):
        ids[n] = tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
        return ids[n]

    return sweeps.study(trials(run), name=name), parent, ids


def artifact(tracker, run_id, path) -> Path:
    return Path(tracker.client.download_artifacts(run_id, path))


def test_log_front_writes_figures_views_and_pareto_ranks(tracker):
    study, parent, ids = sweep_with_runs(tracker, "logged")
    table = log_front(study, tracker, parent)
    names = {a.path for a in tracker.client.list_artifacts(parent)}
    assert {"pareto.json", "pareto.md", "pareto.html", "pareto.png", "compute.html", "compute.png",
            "compute.json", "compute.md"} <= names
    page = unescape(artifact(tracker, parent, "pareto.html").read_text())
    assert f"#/experiments/{tracker.experiment_id}/runs/{ids[1]}" in page
    assert artifact(tracker, parent, "pareto.png").read_bytes()[:4] == b"\x89PNG"
    metrics = tracker.client.get_run(parent).data.metrics
    assert "hypervolume.d64" in metrics and metrics["mha_tokens_ratio.d64.mha"] == 1.0
    # each child run carries its Pareto rank within its size, as the MLflow chart view can use
    front = {r["mlflow_run_id"] for entry in table.values() for r in entry["front"]}
    for run_id in ids.values():
        data = tracker.client.get_run(run_id).data
        assert data.tags["lrkv.pareto_front"] == ("true" if run_id in front else "false")
        assert (data.metrics["pareto_rank"] == 0) == (run_id in front)
    assert {ids[0], ids[1], ids[3], ids[4]} <= front and ids[2] not in front


def test_figures_redraw_as_trials_finish(tracker, monkeypatch):
    study, parent, ids = sweep_with_runs(tracker, "growing")
    drawn = []
    monkeypatch.setattr(report, "log_figures", lambda study, *a, **k: drawn.append(len(rows(study))))
    log_front(study, tracker, parent)
    log_front(study, tracker, parent)                  # nothing new finished: not redrawn
    assert drawn == [8]

    running = study.ask()                              # a trial still running, and a new one finished
    late = tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    study.add_trial(sweeps.trial("d128", "lrkv", 128, 2, 4, 1.40, rank=24, run_id=late))
    log_front(study, tracker, parent)                  # within FIGURE_INTERVAL while one runs: not yet
    assert drawn == [8]
    assert tracker.client.get_run(late).data.tags["lrkv.pareto_front"] == "true"  # ranks are written at once
    monkeypatch.setattr(report, "FIGURE_INTERVAL", 0.0)
    log_front(study, tracker, parent)                  # the interval has passed: redrawn with the new trial
    assert drawn == [8, 9]
    monkeypatch.setattr(report, "FIGURE_INTERVAL", 3600.0)
    study.add_trial(sweeps.trial("d128", "mqa", 128, 2, 4, 1.9, run_id=ids[0]))
    study.tell(running, state=TrialState.FAIL)
    log_front(study, tracker, parent)                  # nothing runs any more (the sweep's end): always redrawn
    assert drawn == [8, 9, 10]


def test_a_drawing_failure_does_not_stop_the_sweep(tracker, monkeypatch, caplog):
    study, parent, _ = sweep_with_runs(tracker, "broken")

    def broken(*args, **kwargs):
        raise RuntimeError("no figure today")

    monkeypatch.setattr(figures, "pareto_figure", broken)
    with caplog.at_level(logging.WARNING, logger="lrkv.dashboards"):
        table = log_front(study, tracker, parent)
    assert set(table) == {"d64", "d128"} and "could not log the figures" in caplog.text
    names = {a.path for a in tracker.client.list_artifacts(parent)}
    assert "pareto.json" in names and "pareto.html" not in names
    drawn = []
    monkeypatch.setattr(report, "log_figures", lambda *a, **k: drawn.append(1))
    log_front(study, tracker, parent)                  # tried again at the next call, though nothing changed
    assert drawn == [1]
