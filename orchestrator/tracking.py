"""MLflow records: one experiment per sweep, one parent run per sweep, one child run per trial.

The driver is the only writer. A child run is created when its trial starts (RUNNING) and always
ends FINISHED, KILLED (pruned) or FAILED with the reason as a tag; a trial re-run after its driver
died continues the same run, so a retry never leaves a duplicate or a run stuck in RUNNING.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
logging.getLogger("alembic").setLevel(logging.WARNING)

# Final metrics copied from the worker's record onto the child run, and the decode profiler's (per context).
DECODE_METRICS = ("decode_ms", "decode_floor_fraction_at_")
FINAL_METRICS = ("val_bpb", "train_loss", "tokens", "steps", "wall_seconds", "train_seconds", "tokens_per_s", "mfu",
                 "peak_memory_bytes", "kv_cache_bytes_per_token", "kv_cache_ratio_vs_mha", "flops_per_token",
                 "params", "head_eff_rank", "head_eff_rank_frac", "trial_seconds", "gpu_util_mean")
STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists as dotted keys with string values (MLflow params)."""
    if isinstance(tree, dict):
        out: dict[str, str] = {}
        for key, value in tree.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): json.dumps(tree) if isinstance(tree, list) else str(tree)}


class Tracker:
    def __init__(self, tracking_uri: str, sweep: str, artifact_root: str | None = None):
        self.client = MlflowClient(tracking_uri)
        experiment = self.client.get_experiment_by_name(sweep)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            sweep, artifact_location=artifact_root and f"{artifact_root}/{sweep}")

    def start_parent(self, sweep: str, spec: dict, digest: str) -> str:
        run = self.client.create_run(self.experiment_id, run_name=sweep,
                                     tags={"lrkv.sweep": sweep, "lrkv.spec_digest": digest, "lrkv.role": "sweep"})
        public = {k: v for k, v in spec.items() if k != "storage"}  # store URLs may hold credentials
        self._params(run.info.run_id, flatten(public))
        self.client.log_text(run.info.run_id, json.dumps(public, indent=1), "spec.json")
        return run.info.run_id

    def start_child(self, parent_id: str, number: int, label: str, params: dict, config: dict, digest: str,
                    point: str) -> str:
        """Create the trial's run, or reopen the run of the same point when this is a re-run of an
        interrupted trial (found by its point tag, so even a run whose id was never saved is reused)."""
        tags = {"mlflow.parentRunId": parent_id, "optuna.trial_number": str(number), "lrkv.spec_digest": digest,
                "lrkv.role": "trial", "lrkv.point": point, **{f"lrkv.{k}": str(v) for k, v in params.items()}}
        found = self.client.search_runs(
            [self.experiment_id], f"tags.`lrkv.point` = '{point}' and tags.`mlflow.parentRunId` = '{parent_id}'",
            max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{number:03d}-{label}", tags=tags)
        self._params(run.info.run_id, {"optuna_trial_number": number, **params, **flatten(config)})
        return run.info.run_id

    def finish_child(self, run_id: str, status: str, record: dict | None, reason: str | None,
                     objectives: dict[str, float] | None) -> None:
        now = int(time.time() * 1000)
        metrics = []
        if record:
            for point in record.get("curve", []):
                for key in ("val_bpb", "train_loss", "tokens"):
                    metrics.append(Metric(f"curve.{key}", point[key], now, point["step"]))
            metrics += [Metric(k, float(v), now, record.get("steps", 0)) for k, v in record.items()
                        if v is not None and (k in FINAL_METRICS or k.startswith(DECODE_METRICS))]
            for i, sample in enumerate(record.get("system", [])):  # MLflow's System metrics tab shows system/*
                at = int(sample["time"] * 1000)
                metrics += [Metric(f"system/{k}", float(v), at, i) for k, v in sample.items() if k != "time"]
        metrics += [Metric(f"objective.{k}", float(v), now, 0) for k, v in (objectives or {}).items()]
        tags = [RunTag("lrkv.state", status)] + ([RunTag("lrkv.reason", reason[:4000])] if reason else [])
        if record and record.get("gpu_ids"):  # where Ray placed the trial
            tags.append(RunTag("lrkv.gpus", ",".join(record["gpu_ids"])))
        for i in range(0, len(metrics), 900):  # MLflow takes at most 1000 entities per batch
            self.client.log_batch(run_id, metrics=metrics[i:i + 900])
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, STATUS[status])

    def sync(self, study, spec) -> int:
        """Make MLflow agree with the study: every finished trial gets its run, complete and terminated.
        Everything comes from the study (config, record, curve), so MLflow can lag behind (a server
        outage) without losing anything. Returns the number of trials still missing: 0."""
        from optuna.trial import TrialState
        parent = study.user_attrs["mlflow_parent_run_id"]
        runs = {r.data.tags.get("lrkv.point"): r for r in self.client.search_runs(
            [self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000)}
        state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
        trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("launched")]
        live_points = {t.user_attrs["point"] for t in trials if not t.user_attrs.get("requeued")}
        for t in trials:
            point, run = t.user_attrs["point"], runs.get(t.user_attrs["point"])
            if t.user_attrs.get("requeued"):
                if run and run.info.status == "RUNNING" and point not in live_points:
                    self.client.set_tag(run.info.run_id, "lrkv.reason", t.user_attrs.get("reason", "interrupted"))
                    self.client.set_terminated(run.info.run_id, "FAILED")
                continue
            if t.state not in state:
                continue  # still running: its run is open, as it should be
            status = state[t.state]
            if run and run.info.status == STATUS[status] and run.data.tags.get("optuna.trial_number") == str(t.number):
                continue
            run_id = self.start_child(parent, t.number, t.user_attrs["label"], t.params, t.user_attrs["config"],
                                      study.user_attrs["digest"], point)
            values = dict(zip(spec.objectives, t.values)) if t.state == TrialState.COMPLETE else None
            self.finish_child(run_id, status, t.user_attrs.get("record"), t.user_attrs.get("reason"), values)
        return 0

    def finish_parent(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def log_front(self, run_id: str, table: dict, markdown: str, metrics: dict[str, float]) -> None:
        self.client.log_text(run_id, json.dumps(table, indent=1), "pareto.json")
        self.client.log_text(run_id, markdown, "pareto.md")
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])

    def _params(self, run_id: str, params: dict) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 90):  # 100 params per batch at most
            self.client.log_batch(run_id, params=items[i:i + 90])
