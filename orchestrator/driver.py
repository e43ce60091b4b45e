"""The sweep driver: ask Optuna for points, run them as Ray tasks, tell Optuna and MLflow what came back.

The Optuna study in its storage is the sweep's whole state (spec, trials, curves, MLflow run ids), so
`resume` is reopening it: trials a dead driver left RUNNING are failed and re-queued with the same
parameters and the same MLflow run; completed trials are never re-run. One driver writes a sweep at a
time (a heartbeat in the study guards it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import optuna
import ray
import sqlalchemy.exc
from optuna.trial import TrialState

from lrkv.dashboards.report import log_front
from lrkv.workers.config import TrialConfig
from lrkv.workers.data import load_blocks

from . import search
from .mps import MpsDaemon, check_mps
from .remote import ReportBoard, run_trial, run_trial_fresh_worker, warm_worker
from .spec import OBJECTIVES, SweepSpec
from .stores import Stores, redact
from .study import SweepError, open_study, study_spec
from .tracking import Tracker

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("mlflow").setLevel(logging.ERROR)
log = logging.getLogger("lrkv.driver")
# A down tracking server must cost seconds, not MLflow's default minutes of retries per call.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
HEARTBEAT_SECONDS = 10
STALE_AFTER = 3 * HEARTBEAT_SECONDS
SYNC_SECONDS = 15  # how often a driver retries an unreachable MLflow
MAX_IDLE_PROPOSALS = 64  # consecutive proposals that add nothing new before the space counts as exhausted


@dataclass
class Running:
    trial: optuna.Trial
    params: dict
    key: str
    config: TrialConfig
    costs: dict
    started: float = field(default_factory=time.time)
    latest: dict = field(default_factory=dict)


def connect_tracker(stores: Stores, sweep: str) -> Tracker:
    """The sweep's MLflow experiment; a tracking store that cannot be reached at start is bad input."""
    try:
        with stores.tracking_lock():
            return Tracker(stores.tracking_uri, sweep, stores.artifact_root)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise SweepError("--tracking-uri", "a reachable MLflow tracking store",
                         f"{redact(stores.tracking_uri)} ({type(exc).__name__}: {redact(first)})") from None


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Trials that spend the budget: launched, and not an interrupted attempt that was re-queued."""
    return bool(trial.user_attrs.get("launched")) and not trial.user_attrs.get("requeued")


class SweepDriver:
    def __init__(self, study: optuna.Study, spec: SweepSpec, stores: Stores, address: str | None = None,
                 view=None, tracker: Tracker | None = None, board=None):
        self.study, self.spec, self.stores, self.address, self.view = study, spec, stores, address, view
        self.board = board
        self.storage = study._storage
        self.tracker = tracker or connect_tracker(stores, spec.name)
        self.active: dict[ray.ObjectRef, Running] = {}
        self.exhausted = False
        self.rng = random.Random(spec.sampler.seed)
        self.last_beat = 0.0
        self.mlflow_down_since: float | None = None  # MLflow is derived from the study: it may lag, never lose
        self.last_sync = 0.0
        self.gap = 0  # trials the study has and MLflow lacks when the sweep ended
        self.pending: list[tuple] = []  # told to the study, not yet logged to MLflow
        self.mps: MpsDaemon | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    @classmethod
    def create(cls, spec: SweepSpec, stores: Stores, **kw) -> SweepDriver:
        """A new sweep: the study, its parent run and its reference points. Fails if the name exists."""
        if spec.sampler.kind == "grid" and search.finite_points(spec) is None:
            raise SweepError("sampler.kind", "a sampler other than grid for a space with an lr range", "grid")
        check_mps(spec, kw.get("address"))
        vocab = load_blocks(spec.data_config()).vocab_size  # bad data fails here, before any store is written
        storage = stores.optuna_storage()  # an unreachable database fails here, before anything is written
        stores.prepare()
        # A tracking server must answer before the name is claimed. A local SQLite store that can be
        # opened sets itself up (schema migrations, seconds of CPU) after the claim, while Ray starts (mostly
        # waiting on its processes) and the slots warm.
        tracker = None if stores.local_tracking_usable() else connect_tracker(stores, spec.name)
        try:
            study = optuna.create_study(study_name=spec.name, storage=storage,
                                        directions=spec.directions, sampler=search.make_sampler(spec))
        except optuna.exceptions.DuplicatedStudyError:
            raise SweepError("name", f"a sweep name not yet in {redact(stores.study_url)} "
                                     f"(resume it with `lrkv sweep resume {spec.name}`)", spec.name) from None
        try:
            with ThreadPoolExecutor(1) as pool:
                opening = None if tracker else pool.submit(connect_tracker, stores, spec.name)
                board = start_workers(spec, kw.get("address"))  # only now: a refused sweep starts no Ray
                tracker = tracker or opening.result()
            study.set_user_attr("spec", spec.model_dump(mode="json", exclude={"storage"}))  # no credentials in it
            study.set_user_attr("digest", spec.digest())
            study.set_user_attr("vocab_size", vocab)
            driver = cls(study, spec, stores, tracker=tracker, board=board, **kw)
            driver.claim()
            study.set_user_attr("mlflow_parent_run_id", driver.tracker.start_parent(
                spec.name, spec.model_dump(mode="json", exclude={"storage"}), spec.digest()))
        except BaseException:
            # A sweep that could not start (its tracking store failed to open, say) leaves no study behind
            # that `resume` would find without a parent run: the name is free again.
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=spec.name, storage=storage)
            raise
        return driver

    @classmethod
    def resume(cls, name: str, stores: Stores, **kw) -> SweepDriver:
        study = open_study(stores, name)
        spec = study_spec(study)
        check_mps(spec, kw.get("address"))
        study.sampler = search.make_sampler(spec)
        load_blocks(spec.data_config())
        driver = cls(study, spec, stores, **kw)
        driver.claim()
        driver.board = start_workers(spec, driver.address)
        study.set_user_attr("cancel_requested", None)
        driver.requeue_interrupted()
        driver.tracker.client.update_run(study.user_attrs["mlflow_parent_run_id"], status="RUNNING")
        return driver

    def claim(self) -> None:
        """Refuse to drive a sweep another live driver holds; then hold it."""
        holder = self.study.user_attrs.get("driver")
        if holder and time.time() - holder["beat"] < STALE_AFTER and holder["pid"] != os.getpid():
            same_host = holder["host"] == socket.gethostname()
            if not same_host or _alive(holder["pid"]):
                raise SweepError("name", "a sweep no other driver is running",
                                 f"{self.spec.name} (driven by pid {holder['pid']} on {holder['host']})")
        self.beat(force=True)

    def beat(self, force: bool = False) -> None:
        if force or time.time() - self.last_beat > HEARTBEAT_SECONDS:
            self.last_beat = time.time()
            self.study.set_user_attr("driver", {"pid": os.getpid(), "host": socket.gethostname(), "beat": self.last_beat})

    def requeue_interrupted(self) -> None:
        """Trials left RUNNING by a dead driver: fail them; `_next_fixed` runs their points again first."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self._set_attr(t.number, "requeued", True)
            self._set_attr(t.number, "reason", "interrupted: the driver stopped; re-queued")
            self.study.tell(t.number, state=TrialState.FAIL)

    # -- the loop -----------------------------------------------------------------------------------
    def run(self) -> optuna.Study:
        if self.board is None:
            self.board = start_workers(self.spec, self.address)
        vocab = self.study.user_attrs["vocab_size"]
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if "curve" in t.user_attrs:
                costs = search.pruning_costs(self.spec, t.user_attrs["costs"])
                curve = [tuple(p) for p in t.user_attrs["curve"]]
                ray.get(self.board.register.remote(t.number, t.params["size"], costs, curve))
        cancelled = False
        if self.spec.resources.mps:  # before the first trial: each GPU trial starts a fresh worker, a client
            self.mps = MpsDaemon.start()
        try:
            while True:
                self.beat()
                if self.study.user_attrs.get("cancel_requested"):
                    cancelled = True
                    break
                before = len(self.active)
                while not self.exhausted and len(self.active) < self.spec.budget.concurrency and self._budget_left():
                    self._launch_next(vocab)
                if not self.active:
                    break  # finish_mlflow logs what is pending, and the front, once
                if self.view and len(self.active) > before:
                    self.view.update(self)  # what was just launched shows at once
                self._flush_mlflow()
                ready, _ = ray.wait(list(self.active), num_returns=1, timeout=1.0)
                for number, metrics in ray.get(self.board.drain.remote()):
                    for running in self.active.values():
                        if running.trial.number == number:
                            running.latest = metrics
                for ref in ready:
                    self._finish(ref)
                if self.view:
                    self.view.update(self)
        except BaseException:
            self._abandon("interrupted: the driver stopped")
            raise
        finally:
            if self.mps:
                self.mps.stop()
        if cancelled:
            self._abandon("cancelled")
        self.finish_mlflow("KILLED" if cancelled else "FINISHED")
        self.study.set_user_attr("driver", None)
        return self.study

    def finish_mlflow(self, status: str, patience: float = 60.0) -> None:
        """Bring MLflow level with the study (waiting up to `patience` seconds for it to come back),
        then close the parent run; if it stays away, say what is missing and how to fill it in later."""
        deadline = time.time() + patience
        self.pending = []  # the sync logs them, from the study
        while (missing := self.sync_mlflow(force=True)) and time.time() < deadline:
            time.sleep(5)
        if missing:
            self.gap = missing
            log.warning("MLflow at %s is unreachable: %d trial(s) are in the study but not in MLflow; "
                        "run `lrkv sweep sync %s` when it is back", redact(self.stores.tracking_uri), missing,
                        self.spec.name)
            return
        parent = self.study.user_attrs["mlflow_parent_run_id"]
        log_front(self.study, self.tracker, parent)
        self.tracker.finish_parent(parent, status)

    def _trials_left(self) -> int:
        return self.spec.budget.trials - sum(counted(t) for t in self.study.get_trials(deepcopy=False))

    def _budget_left(self) -> bool:
        return self._trials_left() > 0

    def _launch_next(self, vocab: int) -> None:
        """Ask until a new, feasible point comes; skip duplicates and known-infeasible points cheaply."""
        trials = self.study.get_trials(deepcopy=False)
        finished = {t.user_attrs.get("key"): t for t in trials
                    if t.user_attrs.get("launched") and not t.user_attrs.get("requeued")}
        # Memory grows with parameters at a fixed batch: what ran out of memory bounds its size.
        ooms = [(t.params["size"], t.user_attrs["costs"]["params"], t.number) for t in trials
                if t.user_attrs.get("reason") == "oom" and "costs" in t.user_attrs]
        running = {r.key: r for r in self.active.values()}
        # Known-infeasible points count as seen: a refused reference must not come back at every launch.
        seen = set(finished) | set(running) | {t.user_attrs.get("key") for t in trials
                                               if (t.user_attrs.get("reason") or "").startswith("infeasible")}
        for _ in range(MAX_IDLE_PROPOSALS):
            fixed = self._next_fixed(seen, vocab)
            if fixed:
                self.study.enqueue_trial(*fixed)
            trial = self.study.ask()
            params = search.suggest(trial, self.spec)
            key = search.point_key(params)
            trial.set_user_attr("key", key)
            config = search.trial_config(self.spec, params)
            config = dataclasses.replace(config, data=config.data.anchored())
            costs = search.costs(self.spec, config, vocab)
            reason = search.violation(self.spec, config, vocab) or next(
                (f"trial {n} with {p:,} params at this size ran out of memory" for size, p, n in ooms
                 if size == params["size"] and costs["params"] >= p), None)
            if reason is None and key in running:
                reason = f"skipped: same point as running trial {running[key].trial.number}"
            if reason is None and key in finished and finished[key].number != trial.number:
                reason = f"skipped: same point as trial {finished[key].number}"
            if reason is not None:
                skipped = reason.startswith("skipped")
                trial.set_user_attr("reason", reason if skipped else f"infeasible: {reason}")
                self.study.tell(trial, state=TrialState.FAIL)
                if not skipped:
                    seen.add(key)
                # A refused owed point is followed by the next owed one; a wasted proposal, by a fresh point.
                if not fixed and not self._enqueue_unexplored(seen):
                    break
                continue
            self._start(trial, params, key, config, costs)
            return
        self.exhausted = True

    def _next_fixed(self, seen: set[str], vocab: int) -> tuple[dict, dict] | None:
        """The next point the sweep owes before the sampler's own: interrupted trials first (with their
        MLflow run), then the references (baselines, anchors), then for grid every other point. Within
        the references, and within the rest, the costliest the budget covers goes first. Derived from
        the study every time, so it survives any number of driver restarts; enqueued one at a time, so
        nothing waits behind."""
        if self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get("requeued") and t.user_attrs.get("launched") and t.user_attrs["key"] not in seen:
                return t.params, {"retry_of": t.number}
        tiers = [search.references(self.spec)]
        if self.spec.sampler.kind == "grid":  # exhaustive: every point
            tiers.append(search.finite_points(self.spec))
        for points in tiers:
            owed = [p for p in points if search.point_key(p) not in seen]
            if owed:
                return search.longest_first(self.spec, owed, self._trials_left(), vocab), {}
        return None

    def _enqueue_unexplored(self, seen: set[str]) -> bool:
        """After a wasted proposal in a finite space, queue a point nobody has tried (False: none left).
        Samplers that exploit a small categorical space would otherwise keep proposing known points."""
        points = search.finite_points(self.spec)
        if points is None:
            return True
        waiting = {search.point_key(t.system_attrs.get("fixed_params", {}))
                   for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))}
        fresh = [p for p in points if search.point_key(p) not in seen | waiting]
        if not fresh:
            return bool(waiting)
        self.study.enqueue_trial(self.rng.choice(fresh))
        return True

    def _start(self, trial: optuna.Trial, params: dict, key: str, config: TrialConfig, costs: dict) -> None:
        point = hashlib.sha1(key.encode()).hexdigest()[:16]
        # One write per attribute, `launched` last: a driver stopped between them leaves a trial that reads as
        # never launched, not one that a resume and the MLflow sync find launched without its point or config.
        for name, value in {"costs": costs, "point": point, "label": config.model.attention.label,
                            "config": config.to_dict(), "launched": True}.items():
            trial.set_user_attr(name, value)
        # References (baselines, anchors) always finish: every front and recommendation compares to them.
        reference = key in {search.point_key(p) for p in search.references(self.spec)}
        ray.get(self.board.register.remote(trial.number, params["size"], search.pruning_costs(self.spec, costs),
                                           protected=reference))
        res = self.spec.resources
        task = run_trial_fresh_worker if res.gpus_per_trial else run_trial
        mps = {"runtime_env": {"env_vars": self.mps.env}} if self.mps else {}
        ref = task.options(num_cpus=res.cpus_per_trial, num_gpus=res.gpus_per_trial,
                           max_retries=res.max_retries, retry_exceptions=False, **mps).remote(
            config.to_dict(), trial.number, self.board, int(res.cpus_per_trial))
        self.active[ref] = Running(trial, params, key, config, costs)
        # The child run opens while the trial already trains: the slot does not wait for MLflow.
        run_id = self._mlflow(self.tracker.start_child, self.study.user_attrs["mlflow_parent_run_id"], trial.number,
                              config.model.attention.label, params, config.to_dict(), self.spec.digest(), point)
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)

    def _finish(self, ref: ray.ObjectRef) -> None:
        running = self.active.pop(ref)
        trial = running.trial
        try:
            result = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            result = {"status": "failed", "reason": "cancelled"}
        except ray.exceptions.OutOfMemoryError as exc:
            result = {"status": "failed", "reason": "oom", "detail": str(exc).splitlines()[0]}
        except ray.exceptions.RayError as exc:  # the worker or node died and the retries ran out
            result = {"status": "failed", "reason": "worker lost", "detail": f"{type(exc).__name__}: {str(exc)[:300]}"}
        self._record(trial, running, result)

    def _record(self, trial: optuna.Trial, running: Running, result: dict) -> None:
        status, record = result["status"], result.get("record")
        reason = result.get("reason")
        trial.set_user_attr("reason", reason)
        if result.get("detail"):
            trial.set_user_attr("detail", result["detail"])
        values = None
        if record:
            trial.set_user_attr("curve", [[p["tokens"], p["val_bpb"]] for p in record["curve"]])
            trial.set_user_attr("record", record)
            values = {name: record[OBJECTIVES[name]] for name in self.spec.objectives}
        # The study first: it is the truth. MLflow follows, now or (if it is down) when it returns.
        if status == "complete":
            self.study.tell(trial, [values[name] for name in self.spec.objectives])
        else:
            self.study.tell(trial, state=TrialState.PRUNED if status == "pruned" else TrialState.FAIL)
        self.pending.append((trial, status, record, reason, values))

    def _flush_mlflow(self) -> None:
        """Log the trials told since the last call to MLflow, then the front once. Called after the
        freed slots are refilled, so a slot never waits for MLflow."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        for trial, status, record, reason, values in pending:
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id and self.mlflow_down_since is None:
                self._mlflow(self.tracker.finish_child, run_id, status, record, reason, values)
            else:
                self.sync_mlflow()
        self._mlflow(log_front, self.study, self.tracker, self.study.user_attrs["mlflow_parent_run_id"])

    def _mlflow(self, fn, *args):
        """Call MLflow; if it is unreachable, note it and go on (the study keeps everything)."""
        try:
            result = fn(*args)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError):
            raise  # the study's storage, not MLflow: it has already been retried
        except Exception as exc:
            if self.mlflow_down_since is None:
                self.mlflow_down_since = time.time()
                log.warning("MLflow unreachable (%s: %s); results stay in the study and are logged when it returns",
                            type(exc).__name__, redact(str(exc).splitlines()[0] if str(exc) else "")[:200])
            return None
        return result

    def sync_mlflow(self, force: bool = False) -> int:
        """Log every finished trial MLflow lacks (or still shows RUNNING), from the study's own records.
        Returns how many trials are still missing (0 when MLflow is complete)."""
        if not force and time.time() - self.last_sync < SYNC_SECONDS:
            return -1
        self.last_sync = time.time()
        try:
            missing = self.tracker.sync(self.study, self.spec)
        except Exception:
            self.mlflow_down_since = self.mlflow_down_since or time.time()
            return len([t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("launched")])
        self.mlflow_down_since = None
        return missing

    def _abandon(self, reason: str) -> None:
        """Cancel what still runs and record it, so no trial or run is left RUNNING by this driver."""
        for ref, running in list(self.active.items()):
            ray.cancel(ref, force=True)
            self.active.pop(ref)
            # A trial stopped by the driver's own end is re-run on resume, so the budget does not count it.
            running.trial.set_user_attr("requeued", reason != "cancelled")
            self._record(running.trial, running, {"status": "failed", "reason": reason})
        self._flush_mlflow()

    def _set_attr(self, number: int, key: str, value) -> None:
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        self.storage.set_trial_user_attr(self.storage.get_trial_id_from_study_id_trial_number(study_id, number), key, value)


def connect_ray(address: str | None, without_job_files: bool = False) -> None:
    """Join the cluster at `address`, or start a local Ray. `without_job_files`: the trials run without
    the files of the Ray job this driver runs in (a submitted sweep's package holds the store addresses,
    which workers must not hold). `ray.init`'s runtime_env is merged into the job's, and a conflicting
    field (here `working_dir: None`) wins only under RAY_OVERRIDE_JOB_RUNTIME_ENV."""
    if ray.is_initialized():
        return
    if address:
        runtime_env = None
        if without_job_files:
            os.environ["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
            runtime_env = {"working_dir": None}
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, configure_logging=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                 num_cpus=os.cpu_count(), num_gpus=_local_gpus())


def start_workers(spec: SweepSpec, address: str | None):
    """Start Ray and the sweep's report board, and have a worker per trial slot import torch and the
    trial code (about a second each), all while the driver sets up the sweep: the first trials do not
    wait for them. GPU trials get a fresh worker each, which no warming helps. Returns the board."""
    connect_ray(address)
    grace = int(spec.pruning.grace * spec.budget.tokens_per_trial)
    board = ReportBoard.remote(spec.pruning.margin, grace, spec.pruning.enabled)
    res = spec.resources
    if not res.gpus_per_trial:
        for _ in range(spec.budget.concurrency):
            warm_worker.options(num_cpus=res.cpus_per_trial).remote()
    return board


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _local_gpus() -> int:
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:
        return 0
