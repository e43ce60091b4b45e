"""Sweep efficiency on the CPU: hypervolume reached against compute spent, for three ways to search one
fixed small space — the exhaustive grid, random sampling, and the default sampler (TPE with the
baselines and LRKV anchors enqueued first, frontier-fair early stopping on).

    .venv/bin/python benchmarks/sweep_efficiency.py                      # the recorded run (~15-20 min, 2 cores)
    .venv/bin/python benchmarks/sweep_efficiency.py --tokens 8192 --seeds 0 --fractions 0.25 --out /tmp/smoke.json

Every run is a real sweep (SweepDriver.create(spec, stores).run()) in its own temporary workspace, on one
in-process Ray with 2 CPUs. Compute is trial-seconds: the sum of `record.trial_seconds` over the trials
that trained (complete or pruned; skipped duplicates cost nothing), so a pruned trial costs what it ran.
Training is deterministic on the CPU (fixed seed, one thread per trial), so a configuration gets the same
loss in every run and the exhaustive sweep is the ground truth for this space; the script checks that.

Hypervolume uses ONE reference point for all runs (per size): the worst of each objective, in
minimisation form, over every run's complete trials, plus 10 % of its range. HV and compute are then
reported as fractions of the exhaustive sweep's. The target from the issue: the default sampler
reaches >= 95 % of the grid's HV for <= 35 % of the grid's compute.

Writes benchmarks/results/sweep_efficiency-cpu.json (or --out) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import ray
import torch
from optuna.trial import TrialState

from lrkv.dashboards.pareto import front_ranks, hypervolume, to_minimise
from lrkv.orchestrator import search
from lrkv.orchestrator.driver import SweepDriver, counted
from lrkv.orchestrator.spec import parse_spec
from lrkv.orchestrator.stores import Stores

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TARGET_HV, TARGET_COMPUTE = 0.95, 0.35

# The exhaustive sweep is sampler kind "grid" (needs 0475043 or later: before it, optuna's
# BruteForceSampler called study.stop() from inside the driver's `tell` and the sweep died with a
# RuntimeError once every point was launched). On older code, "random" with a budget equal to the
# number of points is exhaustive too: the driver never launches a point twice and the budget counts
# launched trials only. Either way the script asserts that every point trained exactly once.
EXHAUSTIVE_SAMPLER = "grid"


def base_spec(tokens: int) -> dict:
    """The fixed space: one small size (d_model 64, 2 layers, 4 heads -> d_h 16), LRKV rank 0..16
    and three baselines = 20 points. ~256 steps of 16x64 tokens: a few seconds per trial on one core."""
    steps = tokens // (16 * 64)
    return {
        "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        "space": {"sizes": [{"name": "d64", "d_model": 64, "n_layers": 2, "n_heads": 4}],
                  "rank": {"low": 0, "high": 16, "step": 1}},
        "baselines": ["mha", "gqa2", "mqa"],
        "budget": {"tokens_per_trial": tokens, "trials": 1, "concurrency": 2},
        "resources": {"cpus_per_trial": 1.0},
        "data": {"source": "stdlib", "seq_len": 64, "cache_dir": str(ROOT / ".lrkv-cache")},
        "train": {"batch_size": 16, "eval_every": max(1, steps // 6), "eval_blocks": 128, "lr": 0.01},
        "seed": 0,
    }


def make_spec(base: dict, name: str, kind: str, seed: int, trials: int, pruning: bool, anchors: bool,
              margin: float = 0.05):
    raw = json.loads(json.dumps(base))
    raw |= {"name": name, "anchors": anchors, "pruning": {"enabled": pruning, "margin": margin},
            "sampler": {"kind": kind, "seed": seed}}
    raw["budget"]["trials"] = trials
    return parse_spec(raw, source=name)


def run_sweep(spec) -> tuple[optuna.Study, float]:
    with tempfile.TemporaryDirectory(prefix=f"lrkv-eff-{spec.name}-") as tmp:
        t0 = time.perf_counter()
        study = SweepDriver.create(spec, Stores.resolve(tmp)).run()
        wall = time.perf_counter() - t0
        trials = study.get_trials(deepcopy=True)  # read everything before the journal goes away
    return trials, wall


def trial_rows(trials, objectives: list[str]) -> list[dict]:
    """One row per trial that trained (complete or pruned)."""
    out = []
    for t in trials:
        record = t.user_attrs.get("record")
        if not record or not counted(t):
            continue
        out.append({"number": t.number, "key": t.user_attrs["key"], "size": t.params["size"],
                    "label": t.user_attrs.get("label"), "state": t.state.name,
                    "values": list(t.values) if t.state == TrialState.COMPLETE else None,
                    "val_bpb": record["val_bpb"], "kv_cache_bytes": record["kv_cache_bytes_per_token"],
                    "tokens": record["tokens"], "trial_seconds": record["trial_seconds"],
                    "reason": t.user_attrs.get("reason")})
    return out


def _git() -> dict:
    """The commit the code ran at, and whether the code the sweep imports had uncommitted changes."""
    def out(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True).stdout.rstrip("\n")
        except (OSError, subprocess.CalledProcessError):
            return None
    dirty = out("status", "--porcelain", "--", "orchestrator", "workers", "kernels", "dashboards")
    return {"commit": out("rev-parse", "--short", "HEAD"), "dirty_code": sorted(line[3:] for line in dirty.splitlines()) if dirty else []}


def _plain(value):
    """numpy scalars -> Python numbers, for json."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=262144, help="tokens per trial (256 steps of 16x64)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.35, 0.5],
                        help="trial budgets of random / default, as fractions of the number of points")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler seeds")
    parser.add_argument("--margin", type=float, default=0.05,
                        help="frontier-fair stopping's margin (bits/byte) for the default sampler")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_efficiency-cpu.json")
    args = parser.parse_args()

    started = time.perf_counter()
    git_at_start = _git()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    base = base_spec(args.tokens)
    probe = make_spec(base, "probe", "tpe", 0, 1, True, True)
    objectives, directions = list(probe.objectives), list(probe.objectives.values())
    points = search.finite_points(probe)
    all_keys = {search.point_key(p) for p in points}
    ref_keys = {search.point_key(p) for p in search.references(probe)}
    n_points = len(points)

    # Warm-up (discarded): the first trial in a fresh Ray worker pays one-off start-up costs inside its
    # trial_seconds (seconds on a short trial), which would otherwise land on whichever run goes first.
    warm = make_spec(base_spec(4096), "eff-warmup", "random", 0, 2, False, False)
    print(f"warm-up: {run_sweep(warm)[1]:.0f} s wall (discarded)", flush=True)

    plan = [("grid", EXHAUSTIVE_SAMPLER, 0, 1.0, False, False)]
    for frac in args.fractions:
        for seed in args.seeds:
            plan.append(("random", "random", seed, frac, False, False))
            plan.append(("default", "tpe", seed, frac, True, True))

    runs = []
    for i, (method, kind, seed, frac, pruning, anchors) in enumerate(plan):
        trials_budget = n_points if method == "grid" else max(1, round(frac * n_points))
        name = f"eff-{method}-{round(100 * frac)}pct-s{seed}"
        spec = make_spec(base, name, kind, seed, trials_budget, pruning, anchors, args.margin)
        trials, wall = run_sweep(spec)
        rows = trial_rows(trials, objectives)
        runs.append({"run": name, "method": method, "sampler": kind, "seed": seed, "budget_fraction": frac,
                     "budget_trials": trials_budget, "pruning": pruning, "anchors": anchors,
                     "wall_seconds": wall, "trials": rows,
                     "failed": sum(t.state == TrialState.FAIL and counted(t) for t in trials),
                     "skipped": sum(not t.user_attrs.get("launched") for t in trials)})
        done = sum(r["trial_seconds"] for r in rows)
        print(f"[{i + 1}/{len(plan)}] {name}: {len(rows)} trained, "
              f"{sum(r['state'] == 'PRUNED' for r in rows)} pruned, {done:.0f} trial-s, {wall:.0f} s wall "
              f"(elapsed {time.perf_counter() - started:.0f} s)", flush=True)

    grid = runs[0]
    grid_by_key = {r["key"]: r for r in grid["trials"]}
    assert set(grid_by_key) == all_keys and len(grid["trials"]) == n_points, \
        f"the exhaustive sweep trained {len(grid['trials'])} of {n_points} points"

    # Determinism: the same configuration gives the same loss in every run.
    drift = max((abs(r["val_bpb"] - grid_by_key[r["key"]]["val_bpb"]) for run in runs for r in run["trials"]
                 if r["state"] == "COMPLETE"), default=0.0)

    # One reference point per size over every run's complete trials.
    reference = {}
    for size in sorted({r["size"] for run in runs for r in run["trials"]}):
        pts = to_minimise([r["values"] for run in runs for r in run["trials"]
                           if r["size"] == size and r["state"] == "COMPLETE"], directions)
        span = pts.max(axis=0) - pts.min(axis=0)
        reference[size] = (pts.max(axis=0) + 0.1 * span + 1e-12).tolist()

    def front(rows: list[dict]) -> tuple[float, list[dict]]:
        hv, members = 0.0, []
        for size, ref in reference.items():
            done = [r for r in rows if r["size"] == size and r["state"] == "COMPLETE"]
            if not done:
                continue
            pts = to_minimise([r["values"] for r in done], directions)
            ranks = front_ranks(pts)
            members += [r for r, k in zip(done, ranks) if k == 0]
            hv += hypervolume(pts[ranks == 0], ref)
        return hv, members

    grid_hv, grid_front = front(grid["trials"])
    grid_seconds = sum(r["trial_seconds"] for r in grid["trials"])
    grid_tokens = sum(r["tokens"] for r in grid["trials"])
    grid_front_keys = {r["key"] for r in grid_front}
    refs_hv, _ = front([r for r in grid["trials"] if r["key"] in ref_keys])
    refs_seconds = sum(r["trial_seconds"] for r in grid["trials"] if r["key"] in ref_keys)

    for run in runs:
        rows = run["trials"]
        hv, members = front(rows)
        seconds = sum(r["trial_seconds"] for r in rows)
        pruned = [r for r in rows if r["state"] == "PRUNED"]
        # What the pruned trials would have cost in full, priced at the same point's grid trial.
        pruned_full = sum(grid_by_key[r["key"]]["trial_seconds"] for r in pruned)
        run.update({
            "trained": len(rows), "complete": sum(r["state"] == "COMPLETE" for r in rows), "pruned": len(pruned),
            "trial_seconds": seconds, "compute_fraction": seconds / grid_seconds,
            "tokens": sum(r["tokens"] for r in rows), "tokens_fraction": sum(r["tokens"] for r in rows) / grid_tokens,
            "hypervolume": hv, "hv_fraction": hv / grid_hv,
            "front": sorted(r["key"] for r in members),
            "front_references": sum(r["key"] in ref_keys for r in members),
            # Grid front points this run reached: matched in value (r=0 LRKV and MQA tie to ~1e-8).
            "grid_front_found": sum(any(r["size"] == g["size"] and np.allclose(r["values"], g["values"], rtol=1e-6)
                                        for r in members) for g in grid_front),
            "pruning_saved_seconds": pruned_full - sum(r["trial_seconds"] for r in pruned),
            "target_met": hv / grid_hv >= TARGET_HV and seconds / grid_seconds <= TARGET_COMPUTE,
            # The same test with tokens trained as the compute measure (immune to CPU contention).
            "target_met_tokens": hv / grid_hv >= TARGET_HV
                                 and sum(r["tokens"] for r in rows) / grid_tokens <= TARGET_COMPUTE,
        })

    summary = []
    for method in ("random", "default"):
        for frac in args.fractions:
            group = [r for r in runs if r["method"] == method and r["budget_fraction"] == frac]
            summary.append({"method": method, "budget_fraction": frac, "budget_trials": group[0]["budget_trials"],
                            "seeds": [r["seed"] for r in group],
                            **{f"{k}_{agg.__name__}": agg(r[k] for r in group)
                               for k in ("hv_fraction", "compute_fraction") for agg in (min, max)},
                            "hv_fraction_mean": statistics.fmean(r["hv_fraction"] for r in group),
                            "compute_fraction_mean": statistics.fmean(r["compute_fraction"] for r in group),
                            "tokens_fraction_mean": statistics.fmean(r["tokens_fraction"] for r in group),
                            "target_met": sum(r["target_met"] for r in group),
                            "target_met_tokens": sum(r["target_met_tokens"] for r in group)})

    env = {"device": "cpu", "cpus": 2, "python": platform.python_version(), "torch": torch.__version__,
           "optuna": optuna.__version__, "ray": ray.__version__, "date": time.strftime("%Y-%m-%d"),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "args": {k: str(v) for k, v in vars(args).items()},
           "total_wall_seconds": time.perf_counter() - started, "git_at_start": git_at_start, "git_at_end": _git()}
    result = {
        "env": env, "spec": {k: v for k, v in base.items()}, "points": n_points, "reference_keys": sorted(ref_keys),
        "exhaustive_sampler": EXHAUSTIVE_SAMPLER, "hv_reference_point": reference, "objective_directions": directions,
        "grid": {"hypervolume": grid_hv, "trial_seconds": grid_seconds, "tokens": grid_tokens,
                 "front": sorted(grid_front_keys), "front_references": len(grid_front_keys & ref_keys),
                 "references_only_hv_fraction": refs_hv / grid_hv,
                 "references_only_compute_fraction": refs_seconds / grid_seconds},
        "determinism_max_abs_val_bpb_drift": drift,
        "target": {"hv_fraction_at_least": TARGET_HV, "compute_fraction_at_most": TARGET_COMPUTE},
        "summary": summary, "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=_plain) + "\n")

    print(f"\ncpu (2 cores, shared) · torch {torch.__version__} · optuna {optuna.__version__} · {n_points} points "
          f"(d64: LRKV r=0..16, mha, gqa2, mqa) · {args.tokens:,} tokens/trial · concurrency 2")
    print(f"grid: HV {grid_hv:.4g}, {grid_seconds:.0f} trial-s; front {len(grid_front_keys)} points, "
          f"{len(grid_front_keys & ref_keys)} of them references; references alone: "
          f"HV {refs_hv / grid_hv:.3f} for compute {refs_seconds / grid_seconds:.3f}; "
          f"max val_bpb drift across runs {drift:.2g}")
    head = (f"{'run':<22} {'trials':>6} {'pruned':>6} {'trial-s':>8} {'compute':>8} {'tokens':>7} "
            f"{'HV':>6} {'front':>5} {'refs':>4} {'grid∩':>5} {'saved-s':>7} {'wall-s':>6}  target")
    print(head)
    for r in runs:
        print(f"{r['run']:<22} {r['trained']:>6} {r['pruned']:>6} {r['trial_seconds']:>8.1f} "
              f"{r['compute_fraction']:>8.3f} {r['tokens_fraction']:>7.3f} {r['hv_fraction']:>6.3f} "
              f"{len(r['front']):>5} {r['front_references']:>4} {r['grid_front_found']:>5} "
              f"{r['pruning_saved_seconds']:>7.1f} {r['wall_seconds']:>6.0f}  {'yes' if r['target_met'] else 'no'}")
    print("trials: trained (complete + pruned); compute: trial-s / grid's; tokens: tokens trained / grid's; "
          "HV: hypervolume / grid's; front: its size; refs: front points that are enqueued references; "
          "grid∩: grid front points reached (by value); saved-s: pruned trials' grid cost minus what they ran")
    print(f"\n{'method':<8} {'budget':>10} {'HV mean [min, max]':>22} {'compute mean [min, max]':>26} {'tokens':>6} {'target met':>11} {'by tokens':>9}")
    for s in summary:
        print(f"{s['method']:<8} {s['budget_trials']:>3} ({round(100 * s['budget_fraction']):>2} %) "
              f"{s['hv_fraction_mean']:>7.3f} [{s['hv_fraction_min']:.3f}, {s['hv_fraction_max']:.3f}] "
              f"{s['compute_fraction_mean']:>11.3f} [{s['compute_fraction_min']:.3f}, {s['compute_fraction_max']:.3f}] "
              f"{s['tokens_fraction_mean']:>6.3f} {s['target_met']:>6} of {len(s['seeds'])} {s['target_met_tokens']:>4} of {len(s['seeds'])}")
    print(f"\ntotal wall {env['total_wall_seconds']:.0f} s; wrote {args.out}")
    ray.shutdown()


if __name__ == "__main__":
    main()
