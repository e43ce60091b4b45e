"""What runs inside the Ray cluster: the trial task and the board that carries its reports.

A trial reports each validation to the ReportBoard actor and learns from the answer whether to stop
(the frontier-fair rule sees every trial's curve there). The driver drains the board for its live
view; only the driver writes the Optuna study and MLflow, so workers need no store credentials.
"""
from __future__ import annotations

import os
import time
import traceback

import ray
import torch

from lrkv.workers.config import TrialConfig
from lrkv.workers.train import TrialDiverged, train

from .pruning import Curve, should_stop


@ray.remote(num_cpus=0)
class ReportBoard:
    def __init__(self, margin: float, grace_tokens: int, enabled: bool):
        self.margin, self.grace_tokens, self.enabled = margin, grace_tokens, enabled
        self.curves: dict[int, Curve] = {}
        self.events: list[tuple[int, dict]] = []
        self.protected: set[int] = set()  # trials never stopped (the references)

    def register(self, number: int, group: str, costs: tuple, points: list[tuple[int, float]] = (),
                 protected: bool = False) -> None:
        curve = self.curves[number] = Curve(group, tuple(costs))
        if protected:
            self.protected.add(number)
        for tokens, loss in points:
            curve.add(tokens, loss)

    def report(self, number: int, metrics: dict) -> str | None:
        """Record a validation point; returns the reason to stop, or None."""
        curve = self.curves[number]
        curve.add(metrics["tokens"], metrics["val_bpb"])
        self.events.append((number, metrics))
        if not self.enabled or number in self.protected:
            return None
        return should_stop(curve, list(self.curves.values()), self.margin, self.grace_tokens)

    def drain(self) -> list[tuple[int, dict]]:
        events, self.events = self.events, []
        return events


def failure(exc: BaseException) -> dict:
    """Why a trial failed: nan, oom (GPU or CPU allocator) or error, with a one-line detail."""
    first = (str(exc).splitlines() or [""])[0][:300]
    if isinstance(exc, TrialDiverged):
        return {"reason": "nan", "detail": first}
    if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc):
        return {"reason": "oom", "detail": first}
    return {"reason": "error", "detail": f"{type(exc).__name__}: {first}", "traceback": traceback.format_exc(limit=8)}


def trial_task(config: dict, number: int, board, threads: int) -> dict:
    """Train one configuration. Returns {"status": complete | pruned | failed, ...}; a node that dies
    mid-trial surfaces as a Ray error, and Ray re-runs the task (max_retries)."""
    torch.set_num_threads(max(1, threads))
    stop: list[str] = []

    def report(step: int, metrics: dict) -> bool:
        reason = ray.get(board.report.remote(number, metrics))
        if reason:
            stop.append(reason)
        return bool(reason)

    started = time.time()
    try:
        record = train(TrialConfig.from_dict(config), report)
    except Exception as exc:  # recorded with its reason, never lost: the sweep goes on
        return {"status": "failed", **failure(exc)}
    record["trial_seconds"] = time.time() - started
    record["started_at"] = started  # wall clock of the attempt that produced this record (retries start later)
    record["ended_at"] = time.time()
    # Where Ray placed it: the GPU ids it assigned and what the worker saw (placement is checked from these).
    record["gpu_ids"] = [str(g) for g in ray.get_gpu_ids()]
    record["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    record["cuda_mps_pipe"] = os.environ.get("CUDA_MPS_PIPE_DIRECTORY")  # set: a client of the sweep's MPS
    record["node_id"] = ray.get_runtime_context().get_node_id()
    if record["stopped_early"]:  # a stop asked at the last evaluation changes nothing: the trial is complete
        return {"status": "pruned", "reason": stop[-1], "record": record}
    return {"status": "complete", "reason": None, "record": record}


@ray.remote
def warm_worker() -> None:
    """Import what a trial runs (torch, the training code), so that the worker's first trial need not.
    Ray ships a task's function by value: only the modules it names are imported in the worker."""
    import lrkv.workers.train  # noqa: F401


run_trial = ray.remote(trial_task)
# On a GPU each trial gets a fresh worker: no CUDA context, cached memory or compiled graphs carried over.
run_trial_fresh_worker = ray.remote(max_calls=1)(trial_task)
