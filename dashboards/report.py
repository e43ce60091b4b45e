"""What a sweep has found so far, read from its study: rows per finished trial, the Pareto front per
model size with its hypervolume, as a table for the terminal, JSON and Markdown for the MLflow run,
and (`log_front`) the figures and compute-normalised views logged to the sweep's parent run."""
from __future__ import annotations

import logging
import time

import optuna
from optuna.trial import TrialState

from .pareto import front_ranks, fronts, hypervolume, to_minimise

log = logging.getLogger("lrkv.dashboards")
# Figures cost about a second to draw; while other trials still run they are redrawn at most this
# often (seconds). When nothing runs (the sweep's last trial, or concurrency 1) they always are.
FIGURE_INTERVAL = 15.0
_drawn: dict[str, tuple[tuple | None, float]] = {}  # parent run id -> (finished trials last drawn, time of last try)
_marked: dict[str, dict[str, int]] = {}             # parent run id -> {child run id: pareto rank} already written

COLUMNS = ("number", "size", "label", "val_bpb", "kv_cache_bytes", "cache_vs_mha", "flops_per_token", "tokens_per_s")


def rows(study: optuna.Study) -> list[dict]:
    """One row per COMPLETE trial, with its objective values by name."""
    names = list(study.user_attrs["spec"]["objectives"])
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = t.user_attrs.get("record", {})
        attention = t.user_attrs.get("config", {}).get("model", {}).get("attention", {})
        out.append({"number": t.number, "size": t.params["size"], "label": t.user_attrs.get("label"),
                    "kind": attention.get("kind"), "rank": attention.get("rank"), "head_dim": attention.get("head_dim"),
                    "values": dict(zip(names, t.values)), "val_bpb": record.get("val_bpb"),
                    "kv_cache_bytes": record.get("kv_cache_bytes_per_token"),
                    "cache_vs_mha": record.get("kv_cache_ratio_vs_mha"),
                    "flops_per_token": record.get("flops_per_token"), "tokens_per_s": record.get("tokens_per_s"),
                    "decode_ms": record.get("decode_ms"),
                    "mlflow_run_id": t.user_attrs.get("mlflow_run_id"), "feasible": True})
    return out


def front_table(study: optuna.Study) -> dict:
    """{size: {"front": [rows], "hypervolume": float, "reference": [...]}} over COMPLETE trials.

    The hypervolume reference point is the worst value seen at that size in each objective plus 10 %
    of its range, so every front point counts; the value tracks one sweep as it grows (different
    sweeps have different reference points).
    """
    objectives = study.user_attrs["spec"]["objectives"]
    all_rows = rows(study)
    out = {}
    for size, front in fronts(all_rows, objectives).items():
        members = [r for r in all_rows if r["size"] == size]
        pts = to_minimise([[r["values"][n] for n in objectives] for r in members], list(objectives.values()))
        span = pts.max(axis=0) - pts.min(axis=0)
        reference = pts.max(axis=0) + 0.1 * span + 1e-12
        front_pts = to_minimise([[r["values"][n] for n in objectives] for r in front], list(objectives.values()))
        out[size] = {"front": front, "hypervolume": hypervolume(front_pts, reference),
                     "reference": reference.tolist(), "trials": len(members)}
    return out


def markdown(table: dict) -> str:
    lines = []
    for size, entry in table.items():
        lines += [f"### {size} — {len(entry['front'])} on the front of {entry['trials']}, "
                  f"hypervolume {entry['hypervolume']:.4g}", "",
                  "| trial | variant | val bpb | KV bytes/token | vs MHA |", "|---:|---|---:|---:|---:|"]
        for r in entry["front"]:
            lines.append(f"| {r['number']} | {r['label']} | {r['val_bpb']:.4f} | {r['kv_cache_bytes']:,} | "
                         f"{r['cache_vs_mha']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def log_front(study: optuna.Study, tracker, parent_run_id: str) -> dict:
    """Write what the sweep has found to MLflow: the front (JSON, Markdown, hypervolume and
    tokens-to-MHA metrics) on the parent run, each child run's Pareto rank, and the figures.

    The driver calls this after every finished trial and once at the end, so the parent run's
    figures grow with the sweep (redrawn at most every FIGURE_INTERVAL seconds while trials run).
    Figures that cannot be drawn or logged are a warning, tried again at the next call, and never
    stop the sweep; the other writes' errors propagate as before, for the caller to judge.
    """
    from .compute import reach_markdown, reach_metrics, reach_table, trial_curves

    table = front_table(study)
    curves = trial_curves(study)
    reach = reach_table(curves)
    metrics = {f"hypervolume.{size}": entry["hypervolume"] for size, entry in table.items()} | reach_metrics(reach)
    tracker.log_front(parent_run_id, table, markdown(table), metrics)
    tracker.client.log_dict(parent_run_id, reach, "compute.json")
    tracker.client.log_text(parent_run_id, reach_markdown(reach), "compute.md")
    mark_runs(study, tracker, parent_run_id)
    finished = _figures_due(study, parent_run_id)
    if finished is not None:
        try:
            log_figures(study, tracker, parent_run_id, curves, reach)
            _drawn[parent_run_id] = (finished, time.time())
        except Exception:  # a drawing bug or a store outage must not cost a sweep its results; retried later
            last = _drawn.get(parent_run_id, (None, 0.0))
            _drawn[parent_run_id] = (last[0], time.time())
            log.warning("could not log the figures of sweep %s", study.study_name, exc_info=True)
    return table


def log_figures(study: optuna.Study, tracker, parent_run_id: str, curves: list[dict] | None = None,
                reach: dict | None = None) -> None:
    """pareto.html / pareto.png and compute.html / compute.png on the parent run. The HTML pages are
    self-contained (plotly.js inlined), so they render in an MLflow UI that cannot reach a CDN."""
    from .compute import compute_figure, compute_png, reach_table, trial_curves
    from .figures import HTML_OPTIONS, pareto_figure, pareto_png

    if curves is None:
        curves = trial_curves(study)
    if reach is None:
        reach = reach_table(curves)
    all_rows = rows(study)
    experiment_id = getattr(tracker, "experiment_id", None)
    title = f"{study.study_name}: validation loss vs cost ({len(all_rows)} finished trials)"
    client = tracker.client
    client.log_figure(parent_run_id, pareto_figure(all_rows, experiment_id, title), "pareto.html",
                      save_kwargs=HTML_OPTIONS)
    client.log_figure(parent_run_id, pareto_png(all_rows, title), "pareto.png")
    title = f"{study.study_name}: compute-normalised view"
    client.log_figure(parent_run_id, compute_figure(curves, reach, experiment_id, title), "compute.html",
                      save_kwargs=HTML_OPTIONS)
    client.log_figure(parent_run_id, compute_png(curves, reach, title), "compute.png")


def mark_runs(study: optuna.Study, tracker, parent_run_id: str) -> None:
    """Give each finished trial's child run its Pareto rank within its size (metric `pareto_rank`, 0 on
    the front; tag `lrkv.pareto_front`), so the MLflow UI's own chart view can draw and colour the
    same scatter from the runs' `val_bpb` and `kv_cache_bytes_per_token` metrics and `size` param.
    Only ranks that changed since the last call are written."""
    from mlflow.entities import Metric, RunTag

    objectives = study.user_attrs["spec"]["objectives"]
    all_rows = [r for r in rows(study) if r["mlflow_run_id"]]
    written = _marked.setdefault(parent_run_id, {})
    now = int(time.time() * 1000)
    for size in {r["size"] for r in all_rows}:
        members = [r for r in all_rows if r["size"] == size]
        pts = to_minimise([[r["values"][n] for n in objectives] for r in members], list(objectives.values()))
        for r, rank in zip(members, front_ranks(pts)):
            if written.get(r["mlflow_run_id"]) == int(rank):
                continue
            tracker.client.log_batch(r["mlflow_run_id"], metrics=[Metric("pareto_rank", float(rank), now, 0)],
                                     tags=[RunTag("lrkv.pareto_front", "true" if rank == 0 else "false")])
            written[r["mlflow_run_id"]] = int(rank)


def _figures_due(study: optuna.Study, parent_run_id: str) -> tuple | None:
    """The finished trials to draw, when a redrawing is due: something finished since the last figures
    that were logged, and either nothing is running or FIGURE_INTERVAL has passed since the last try."""
    trials = study.get_trials(deepcopy=False)
    finished = tuple((t.number, t.state.name) for t in trials if t.state.is_finished())
    last = _drawn.get(parent_run_id)
    if last is not None:
        if finished == last[0]:
            return None
        if any(t.state == TrialState.RUNNING for t in trials) and time.time() - last[1] < FIGURE_INTERVAL:
            return None
    return finished
