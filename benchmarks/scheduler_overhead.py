"""Scheduler overhead of the sweep driver: how busy it keeps its worker slots, and how well fractional
GPU placement packs small trials onto one card.

--cpu  One small sweep (two tiny sizes × rank fractions and baselines, concurrency 2, one CPU per
       trial, pruning off) on the fixture corpus. Busy fraction = Σ trial_seconds ÷ (slots × wall of
       run()); the missing slot-time is split into what Ray and the driver spend inside each trial's
       ask→tell window, gaps before the last launch, and the drain tail after it. A second sweep with a
       stub trial task (returns at once) measures the driver's own bookkeeping per trial.
--gpu  A warm-up sweep (fills the torch.compile caches and leaves warm Ray workers), then for k in 1, 4, 2 a sweep of k
       identical trials (the same shape and LRKV rank under k size names) with gpus_per_trial 1/k and
       concurrency k, each in its own workspace. Aggregate tokens/s two ways: the sum of the trials'
       steady-state tokens_per_s (warm-up steps excluded) and total tokens ÷ wall of run().

    python benchmarks/scheduler_overhead.py --cpu
    python benchmarks/scheduler_overhead.py --gpu          # on a CUDA machine; starts its own Ray

Writes benchmarks/results/scheduler_overhead-{cpu,gpu-<card>}.json (after each phase) and prints tables.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import ray
import torch
from optuna.trial import TrialState

import lrkv.orchestrator.driver as driver_module
from lrkv.orchestrator.driver import SweepDriver
from lrkv.orchestrator.spec import parse_spec
from lrkv.orchestrator.stores import Stores
from record import arguments, card_slug, write

CORPUS = Path(__file__).parents[1] / "tests" / "data" / "corpus"
WARMUP_STEPS = 3  # lrkv.workers.train.WARMUP_STEPS: steps left out of tokens_per_s


class TimedDriver(SweepDriver):
    """The project's driver, with the time of its two bookkeeping steps added up (nothing else changed)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.launch_s: list[float] = []
        self.finish_s: list[float] = []

    def _launch_next(self, vocab):
        t = time.perf_counter()
        try:
            return super()._launch_next(vocab)
        finally:
            self.launch_s.append(time.perf_counter() - t)

    def _finish(self, ref):
        t = time.perf_counter()
        try:
            return super()._finish(ref)
        finally:
            self.finish_s.append(time.perf_counter() - t)


def sweep(spec_dict: dict, workspace: Path) -> dict:
    """Create and run one sweep; returns timings, the driver's bookkeeping and each launched trial."""
    spec = parse_spec(spec_dict)
    stores = Stores.resolve(workspace)
    t0 = time.perf_counter()
    driver = TimedDriver.create(spec, stores)
    create_s = time.perf_counter() - t0
    w0, p0 = time.time(), time.perf_counter()
    study = driver.run()
    wall = time.perf_counter() - p0
    w1 = w0 + wall
    trials = []
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get("launched"):
            continue
        rec = t.user_attrs.get("record") or {}
        trials.append({
            "number": t.number, "label": t.user_attrs.get("label"), "size": t.params.get("size"),
            "state": t.state.name, "reason": t.user_attrs.get("reason"), "detail": t.user_attrs.get("detail"),
            "start": t.datetime_start.timestamp(), "end": t.datetime_complete.timestamp(),
            **{k: rec.get(k) for k in ("trial_seconds", "wall_seconds", "train_seconds", "tokens", "steps",
                                       "tokens_per_s", "mfu", "peak_memory_bytes", "gpu_util_mean", "device",
                                       "cuda_mps_pipe")}})
    return {"create_s": create_s, "wall_s": wall, "run_start": w0, "run_end": w1, "trials": trials,
            "asked": len(study.get_trials(deepcopy=False)), "mps_servers": driver.mps.servers if driver.mps else None,
            "launch_ms": [1e3 * s for s in driver.launch_s], "finish_ms": [1e3 * s for s in driver.finish_s]}


def idle_slot_seconds(trials: list[dict], slots: int, t0: float, t1: float, split: float) -> tuple[float, float]:
    """∫ (slots − trials in flight)⁺ dt over [t0, split] and over [split, t1]."""
    def free(a: float, b: float) -> float:
        cuts = sorted({a, b, *(x for t in trials for x in (t["start"], t["end"]) if a < x < b)})
        total = 0.0
        for lo, hi in zip(cuts, cuts[1:]):
            mid = (lo + hi) / 2
            n = sum(t["start"] <= mid < t["end"] for t in trials)
            total += max(0, slots - n) * (hi - lo)
        return total
    split = min(max(split, t0), t1)
    return free(t0, split), free(split, t1)


# -- CPU ----------------------------------------------------------------------------------------------
def cpu_spec(args, cache: Path) -> dict:
    return {
        "name": "overhead-cpu", "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        "space": {"sizes": [{"name": "d64", "d_model": 64, "n_layers": 2, "n_heads": 4},
                            {"name": "d48", "d_model": 48, "n_layers": 2, "n_heads": 4}],
                  "rank": {"fractions": [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]}},
        "baselines": ["mha", "mqa", "gqa2", "mla"],
        "budget": {"tokens_per_trial": args.steps * args.batch_size * 64, "trials": args.trials, "concurrency": 2},
        "pruning": {"enabled": False},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "data": {"source": str(CORPUS), "seq_len": 64, "cache_dir": str(cache)},
        "train": {"batch_size": args.batch_size, "eval_every": max(1, args.steps // 2), "eval_blocks": 32,
                  "device": "cpu"},
    }


def stub_spec(args, cache: Path) -> dict:
    return {
        "name": "overhead-stub", "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        "space": {"sizes": [{"name": "d256", "d_model": 256, "n_layers": 1, "n_heads": 4}],
                  "rank": {"low": 0, "high": 64}},
        "baselines": ["mha", "mqa", "gqa2", "mla"],
        "budget": {"tokens_per_trial": 1024, "trials": args.stub_trials, "concurrency": 2},
        "pruning": {"enabled": False},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "data": {"source": str(CORPUS), "seq_len": 64, "cache_dir": str(cache)},
        "train": {"batch_size": 8, "device": "cpu"},
    }


@ray.remote
def stub_trial(config: dict, number: int, board, threads: int) -> dict:
    """Stands in for remote.run_trial: one report to the board, then a record at once (no training)."""
    from lrkv.workers.config import TrialConfig
    point = {"step": 1, "tokens": 1024, "train_loss": 1.0, "val_bpb": 2.0 + 1e-3 * (number % 7)}
    ray.get(board.report.remote(number, dict(point)))
    model = TrialConfig.from_dict(config).model
    record = {"val_bpb": point["val_bpb"], "train_loss": 1.0, "steps": 1, "tokens": 1024, "stopped_early": False,
              "kv_cache_bytes_per_token": model.kv_cache_bytes_per_token(),
              "kv_cache_ratio_vs_mha": model.attention.cache_ratio_vs_mha(), "trial_seconds": 0.0, "curve": [point]}
    return {"status": "complete", "reason": None, "record": record}


def run_cpu(args) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load0 = os.getloadavg()
    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_init_s = time.perf_counter() - t
    slots = 2
    with tempfile.TemporaryDirectory(prefix="lrkv-overhead-") as tmp:
        tmp = Path(tmp)
        spec = cpu_spec(args, tmp / "cache")
        res = sweep(spec, tmp / "ws-cpu")
        load1 = os.getloadavg()
        stub = None
        if args.stub_trials:
            real = driver_module.run_trial
            driver_module.run_trial = stub_trial
            try:
                stub = sweep(stub_spec(args, tmp / "cache"), tmp / "ws-stub")
            finally:
                driver_module.run_trial = real
    ray.shutdown()

    trials = res["trials"]
    body = sum(t["trial_seconds"] or 0.0 for t in trials)
    flight = sum(t["end"] - t["start"] for t in trials)
    last_launch = max(t["start"] for t in trials)
    gaps, tail = idle_slot_seconds(trials, slots, res["run_start"], res["run_end"], last_launch)
    capacity = slots * res["wall_s"]
    summary = {
        "trials_launched": len(trials), "trials_complete": sum(t["state"] == "COMPLETE" for t in trials),
        "asked": res["asked"], "slots": slots, "ray_init_s": ray_init_s, "create_s": res["create_s"],
        "wall_s": res["wall_s"], "sum_trial_seconds": body, "busy_fraction": body / capacity,
        "busy_fraction_without_tail": body / (capacity - tail),
        "in_flight_overhead_slot_s": flight - body, "gap_slot_s": gaps, "tail_slot_s": tail,
        "trial_seconds_mean": body / len(trials),
        "overhead_per_trial_s": (flight - body) / len(trials),
        "first_two_overhead_s": [t["end"] - t["start"] - (t["trial_seconds"] or 0) for t in trials[:2]],
        "launch_ms_mean": statistics.mean(res["launch_ms"]), "finish_ms_mean": statistics.mean(res["finish_ms"]),
    }
    if stub:
        n = len(stub["trials"])
        summary["stub"] = {"trials": n, "asked": stub["asked"], "wall_s": stub["wall_s"], "create_s": stub["create_s"],
                           "ms_per_trial": 1e3 * stub["wall_s"] / n, "trials_per_s": n / stub["wall_s"],
                           "launch_ms_mean": statistics.mean(stub["launch_ms"]),
                           "launch_ms_median": statistics.median(stub["launch_ms"]),
                           "finish_ms_mean": statistics.mean(stub["finish_ms"]),
                           "finish_ms_median": statistics.median(stub["finish_ms"])}

    failed = [t for t in trials if t["state"] != "COMPLETE"]
    for t in failed:
        print(f"trial {t['number']} {t['state']}: {t['reason']} {t['detail'] or ''}", file=sys.stderr)
    print(f"\nper trial (s): number label body in-flight overhead")
    for t in trials:
        print(f"  {t['number']:>3} {t['label']:>14} {t['trial_seconds'] or 0:7.2f} {t['end'] - t['start']:7.2f} "
              f"{t['end'] - t['start'] - (t['trial_seconds'] or 0):6.2f}")
    table = cpu_table(summary, args)
    print("\n" + table)
    env = environment("cpu") | {"started": started, "loadavg_start": load0, "loadavg_after_sweep": load1,
                                "args": arguments(args)}
    write(f"scheduler_overhead-cpu{'-' + args.suffix if args.suffix else ''}.json", {"env": env, "spec": spec, "summary": summary, "table": table,
                                          "trials": trials, "launch_ms": res["launch_ms"], "finish_ms": res["finish_ms"],
                                          "stub": stub and {k: stub[k] for k in ("launch_ms", "finish_ms", "asked")}},
          args.out_dir)


def cpu_table(s: dict, args) -> str:
    cap = s["slots"] * s["wall_s"]
    pct = lambda x: f"{100 * x / cap:5.1f} %"  # noqa: E731
    lines = [
        f"CPU sweep · {s['trials_launched']} trials ({s['trials_complete']} complete, {s['asked']} asked) · "
        f"{s['slots']} slots × 1 CPU · 2 sizes (d64/d48 × 2 layers) · {args.steps} steps × {args.batch_size}×64 · pruning off",
        f"{'measure':<44} {'value':>10}",
        f"{'ray.init (before the driver)':<44} {s['ray_init_s']:>8.2f} s",
        f"{'driver creation (study, MLflow parent, data)':<44} {s['create_s']:>8.2f} s",
        f"{'run() wall':<44} {s['wall_s']:>8.2f} s",
        f"{'Σ trial_seconds (trial bodies)':<44} {s['sum_trial_seconds']:>8.2f} s",
        f"{'mean trial_seconds':<44} {s['trial_seconds_mean']:>8.2f} s",
        f"{'busy fraction (goal ≥ 95 %)':<44} {100 * s['busy_fraction']:>8.1f} %",
        f"{'  lost: ask→tell minus body (Ray, driver)':<44} {s['in_flight_overhead_slot_s']:>8.2f} slot-s {pct(s['in_flight_overhead_slot_s'])}",
        f"{'  lost: no trial in a slot, before last launch':<44} {s['gap_slot_s']:>8.2f} slot-s {pct(s['gap_slot_s'])}",
        f"{'  lost: drain tail after the last launch':<44} {s['tail_slot_s']:>8.2f} slot-s {pct(s['tail_slot_s'])}",
        f"{'busy fraction without the drain tail':<44} {100 * s['busy_fraction_without_tail']:>8.1f} %",
        f"{'ask→tell overhead per trial (mean)':<44} {s['overhead_per_trial_s']:>8.2f} s",
        f"{'  of it, first trial of each slot':<44} {' / '.join(f'{x:.2f}' for x in s['first_two_overhead_s']):>10} s",
        f"{'driver _launch_next / _finish (mean)':<44} {s['launch_ms_mean']:>6.0f} / {s['finish_ms_mean']:.0f} ms",
    ]
    if "stub" in s:
        st = s["stub"]
        lines += [
            f"{'stub sweep (no training): trials, asked':<44} {st['trials']:>6} , {st['asked']}",
            f"{'  driver bookkeeping per trial (wall ÷ n)':<44} {st['ms_per_trial']:>8.0f} ms  ({st['trials_per_s']:.1f} trials/s)",
            f"{'  _launch_next / _finish (median)':<44} {st['launch_ms_median']:>6.0f} / {st['finish_ms_median']:.0f} ms",
        ]
    return "\n".join(lines)


# -- GPU ----------------------------------------------------------------------------------------------
def gpu_spec(args, k: int, steps: int, gpus: float, cache: Path, name: str) -> dict:
    d, layers, heads = args.d_model, args.layers, args.heads
    return {
        "name": name, "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        # k size names, one shape: identical trials that are still distinct points of the space.
        "space": {"sizes": [{"name": f"s{i}", "d_model": d, "n_layers": layers, "n_heads": heads} for i in range(k)],
                  "rank": {"values": [args.rank]}},
        "budget": {"tokens_per_trial": steps * args.batch_size * args.seq_len, "trials": k, "concurrency": k},
        "pruning": {"enabled": False},
        "resources": {"cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": gpus, "mps": args.mps},
        "data": {"source": args.data, "seq_len": args.seq_len, "cache_dir": str(cache)},
        "train": {"batch_size": args.batch_size, "eval_every": steps, "eval_blocks": 2 * args.batch_size},
    }


def compute_apps() -> list[str]:
    """The card's compute processes as nvidia-smi lists them (under MPS, its server stands for the clients)."""
    apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name", "--format=csv,noheader"],
                          capture_output=True, text=True)
    return [line.strip() for line in apps.stdout.splitlines() if line.strip()]


def run_gpu(args) -> None:
    t_script = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    cuda = torch.cuda.is_available()
    card = torch.cuda.get_device_name(0) if cuda else "cpu"
    base = args.gpu_base if args.gpu_base is not None else (1.0 if cuda else 0.0)
    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), num_gpus=1 if cuda else 0, include_dashboard=False, log_to_driver=args.worker_logs,
             configure_logging=False, object_store_memory=1 << 30)
    ray_init_s = time.perf_counter() - t
    print(f"{card} · Ray {ray.__version__} · {os.cpu_count()} CPUs · ray.init {ray_init_s:.1f} s", flush=True)
    tokens_per_step = args.batch_size * args.seq_len
    out = {"env": environment(card) | {"started": started, "args": arguments(args), "gpus_per_trial_base": base},
           "ray_init_s": ray_init_s, "rows": [], "skipped": []}
    name = (f"scheduler_overhead-gpu-{card_slug(card)}{'-mps' if args.mps else ''}"
            f"{'-' + args.suffix if args.suffix else ''}.json")
    with tempfile.TemporaryDirectory(prefix="lrkv-packing-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        # Warm-up: short trials of the same shapes. They fill the on-disk compile caches, and Ray keeps
        # their worker processes (run_trial gets num_gpus through .options(), so Ray's max_calls=1 for GPU
        # tasks does not apply): a later trial that lands in one of them finds dynamo's in-memory cache
        # too. --warmup-trials max(ks) gives every timed trial such a worker; 1 leaves k>1 trials mixed.
        n = args.warmup_trials or max(args.ks)
        res = sweep(gpu_spec(args, n, args.warmup_steps, base / n, cache, "packing-warmup"), tmp / "ws-warmup")
        w = min((t for t in res["trials"] if t["state"] == "COMPLETE"), key=lambda t: t["number"], default=res["trials"][0])
        out["warmup"] = res | {"estimate_tokens_per_s": w["tokens_per_s"]}
        report_failures(res)
        if w["state"] != "COMPLETE":
            write(name, out, args.out_dir)
            raise SystemExit("warm-up trial failed")
        steps = args.steps or min(args.max_steps, max(args.min_steps,
                                                      int(args.target_train_s * w["tokens_per_s"] / tokens_per_step)))
        out["steps"], out["warmup_trials"] = steps, n
        print(f"warm-up: run() {res['wall_s']:.1f} s, trial {w['trial_seconds']:.1f} s, ~{w['tokens_per_s']:,.0f} tok/s "
              f"over {args.warmup_steps - WARMUP_STEPS} steps → {steps} steps per timed trial "
              f"({steps * tokens_per_step / 1e6:.1f}M tokens)", flush=True)
        write(name, out, args.out_dir)
        for k in args.ks:
            elapsed = time.perf_counter() - t_script
            if elapsed > args.deadline_s:
                print(f"k={k}: skipped, {elapsed:.0f} s elapsed > deadline {args.deadline_s:.0f} s", flush=True)
                out["skipped"].append(k)
                continue
            gpus = base / k
            res = sweep(gpu_spec(args, k, steps, gpus, cache, f"packing-k{k}"), tmp / f"ws-k{k}")
            report_failures(res)
            done = [t for t in res["trials"] if t["state"] == "COMPLETE"]
            row = {"k": k, "gpus_per_trial": gpus, "steps": steps, "create_s": res["create_s"], "wall_s": res["wall_s"],
                   "complete": len(done), "launched": len(res["trials"]),
                   "sum_steady_tokens_per_s": sum(t["tokens_per_s"] for t in done),
                   "total_tokens": sum(t["tokens"] for t in done),
                   "per_trial_tokens_per_s": [t["tokens_per_s"] for t in done],
                   "trial_seconds": [t["trial_seconds"] for t in done],
                   "warmup_steps_s": [t["train_seconds"] - (t["steps"] - WARMUP_STEPS) * tokens_per_step / t["tokens_per_s"]
                                      for t in done],
                   "outside_train_s": [t["trial_seconds"] - t["train_seconds"] for t in done],
                   "ask_to_tell_minus_body_s": [t["end"] - t["start"] - t["trial_seconds"] for t in done],
                   "launch_skew_s": max(t["start"] for t in res["trials"]) - min(t["start"] for t in res["trials"]),
                   "peak_gib": [t["peak_memory_bytes"] / 2**30 for t in done],
                   "mfu": [t["mfu"] for t in done], "gpu_util_mean": [t["gpu_util_mean"] for t in done],
                   "trials": res["trials"],
                   "launch_ms": res["launch_ms"], "finish_ms": res["finish_ms"]}
            row["wall_tokens_per_s"] = row["total_tokens"] / res["wall_s"]
            row["compute_apps"] = compute_apps() if cuda else []  # the trials' workers are still alive
            row["mps_servers"] = res["mps_servers"]  # the sweep's daemon listed them as it stopped
            out["rows"].append(row)
            print(f"k={k}: run() {res['wall_s']:.1f} s, Σ steady {row['sum_steady_tokens_per_s']:,.0f} tok/s, "
                  f"tokens/wall {row['wall_tokens_per_s']:,.0f} tok/s, per trial "
                  f"{', '.join(f'{x:,.0f}' for x in row['per_trial_tokens_per_s'])}", flush=True)
            write(name, out, args.out_dir)
    ray.shutdown()
    out["table"] = gpu_table(out, args, card)
    out["script_s"] = time.perf_counter() - t_script
    print("\n" + out["table"])
    write(name, out, args.out_dir)


def report_failures(res: dict) -> None:
    for t in res["trials"]:
        if t["state"] != "COMPLETE":
            print(f"trial {t['number']} {t['state']}: {t['reason']} {t['detail'] or ''}", file=sys.stderr, flush=True)


def gpu_table(out: dict, args, card: str) -> str:
    rows = sorted(out["rows"], key=lambda r: r["k"])
    one = next((r for r in rows if r["k"] == 1), None)
    lines = [f"{card} · torch {torch.__version__} · Ray {ray.__version__} · {args.d_model}x{args.layers}x{args.heads} "
             f"LRKV r={args.rank} · batch {args.batch_size}×{args.seq_len} · {out.get('steps')} steps/trial · "
             f"{args.cpus_per_trial} CPUs/trial · warm-up {out.get('warmup_trials')} trial(s)"
             f"{' · CUDA MPS' if args.mps else ''}",
             f"{'k':>2} {'GPU/trial':>9} {'Σ steady tok/s':>15} {'×k=1':>6} {'tokens/wall':>12} {'×k=1':>6} "
             f"{'run() s':>8} {'per-trial tok/s (mean)':>22} {'warm-up s':>9} {'peak GiB':>8} {'util %':>6}"]
    for r in rows:
        a = r["sum_steady_tokens_per_s"] / one["sum_steady_tokens_per_s"] if one else float("nan")
        b = r["wall_tokens_per_s"] / one["wall_tokens_per_s"] if one else float("nan")
        per = statistics.mean(r["per_trial_tokens_per_s"]) if r["per_trial_tokens_per_s"] else 0
        warm = statistics.mean(r["warmup_steps_s"]) if r["warmup_steps_s"] else 0
        peak = max(r["peak_gib"]) if r["peak_gib"] else 0
        utils = [u for u in r["gpu_util_mean"] if u is not None]
        util = f"{statistics.mean(utils):6.0f}" if utils else f"{'-':>6}"
        lines.append(f"{r['k']:>2} {r['gpus_per_trial']:>9.2f} {r['sum_steady_tokens_per_s']:>15,.0f} {a:>6.2f} "
                     f"{r['wall_tokens_per_s']:>12,.0f} {b:>6.2f} {r['wall_s']:>8.1f} {per:>22,.0f} {warm:>9.1f} {peak:>8.2f} {util}")
    if out["skipped"]:
        lines.append(f"skipped (deadline): k = {', '.join(map(str, out['skipped']))}")
    return "\n".join(lines)


# -- common -------------------------------------------------------------------------------------------
def environment(card: str) -> dict:
    import mlflow
    return {"card": card, "torch": torch.__version__, "ray": ray.__version__, "optuna": optuna.__version__,
            "mlflow": mlflow.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "host": platform.node(), "date": time.strftime("%Y-%m-%d"), "lrkv_source": source_of(driver_module.__file__),
            "lrkv_commit": os.environ.get("LRKV_SOURCE_COMMIT")}


def source_of(path: str) -> str:
    """Where the measured code came from, without naming a machine's folders: this tree or an installed copy."""
    repo = Path(__file__).resolve().parents[1]
    try:
        return Path(path).resolve().relative_to(repo).as_posix()
    except ValueError:
        return "installed copy (see lrkv_commit)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cpu", action="store_true", help="busy fraction of the worker slots (CPU sweep)")
    mode.add_argument("--gpu", action="store_true", help="fractional GPU packing, k = 1, 4, 2 trials per card")
    p.add_argument("--out-dir", type=Path, help="also write the JSON result here")
    p.add_argument("--suffix", help="ends the result's file name: scheduler_overhead-cpu-SUFFIX.json, "
                   "scheduler_overhead-gpu-CARD[-mps]-SUFFIX.json (e.g. the commit or shape measured)")
    c = p.add_argument_group("--cpu")
    c.add_argument("--trials", type=int, default=20)
    c.add_argument("--steps", type=int, default=None, help="cpu: steps per trial (160); gpu: fixed steps (else adaptive)")
    c.add_argument("--batch-size", type=int, default=None, help="cpu 16, gpu 16")
    c.add_argument("--stub-trials", type=int, default=40, help="trials of the stub sweep (0: none)")
    g = p.add_argument_group("--gpu")
    g.add_argument("--ks", type=int, nargs="+", default=[1, 4, 2])
    g.add_argument("--d-model", type=int, default=512)
    g.add_argument("--layers", type=int, default=8)
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--rank", type=int, default=32)
    g.add_argument("--seq-len", type=int, default=1024)
    g.add_argument("--data", default="stdlib")
    g.add_argument("--cpus-per-trial", type=float, default=2)
    g.add_argument("--gpu-base", type=float, default=None, help="GPUs of a lone trial (default 1 with CUDA, else 0)")
    g.add_argument("--warmup-steps", type=int, default=30)
    g.add_argument("--warmup-trials", type=int, default=None,
                   help="concurrent warm-up trials (default max(ks): every timed trial gets a warm Ray worker)")
    g.add_argument("--target-train-s", type=float, default=20.0, help="adaptive steps: seconds of a lone trial")
    g.add_argument("--min-steps", type=int, default=300)
    g.add_argument("--max-steps", type=int, default=3000)
    g.add_argument("--deadline-s", type=float, default=330.0, help="start no further k after this many seconds")
    g.add_argument("--worker-logs", action="store_true", help="show Ray workers' output")
    g.add_argument("--mps", action="store_true", help="share the card through CUDA MPS (the specs' resources.mps)")
    args = p.parse_args()
    if args.cpu:
        args.steps = args.steps or 160
        args.batch_size = args.batch_size or 16
        run_cpu(args)
    else:
        args.batch_size = args.batch_size or 16
        run_gpu(args)


if __name__ == "__main__":
    main()
