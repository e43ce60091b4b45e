"""Sweep scaling over the GPUs of one host: the fixed spec `sweeps/multi-gpu.yaml` on 1 GPU and on all
of them, with whole-GPU and with fractional placement, through one local Ray node.

For each placement and GPU count k it starts a fresh Ray node that sees k GPUs, runs the sweep
(SweepDriver.create(...).run()) in its own workspace, and reads where every trial ran from the trial
records (Ray's GPU ids, CUDA_VISIBLE_DEVICES, start and end). It reports wall time, trials per hour,
each GPU's busy fraction (time some trial ran on it ÷ wall of run()), and the scaling efficiency
T_1 ÷ (k · T_k) (goal ≥ 1 / 1.1), and checks that every GPU got work and that no two whole-GPU trials
shared a card at once.

    python3 benchmarks/multi_gpu.py                      # all visible GPUs; whole and half-GPU trials
    python3 benchmarks/multi_gpu.py --fake-gpus 4 --tokens 16384   # CPU: the code path with fake GPUs

Writes benchmarks/results/multi_gpu-<card>-<k>gpu.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import ray
import torch
import yaml

from lrkv.dashboards.placement import busy_fractions, placements, shared_cards
from lrkv.orchestrator.driver import SweepDriver
from lrkv.orchestrator.spec import parse_spec
from lrkv.orchestrator.stores import Stores
from record import RESULTS, card_slug

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "sweeps" / "multi-gpu.yaml"
TARGET = 1.1  # wall on k GPUs ≤ 1.1 × (wall on 1 GPU) / k


def run_once(raw: dict, k: int, per_gpu: int, fake: bool, workdir: Path, cpus: int) -> dict:
    """One sweep on a fresh Ray node with k GPUs, `per_gpu` trials per GPU at a time."""
    spec = json.loads(json.dumps(raw))
    spec["name"] = f"{raw['name']}-{k}gpu-{per_gpu}per"
    spec["resources"] = {**spec.get("resources", {}), "gpus_per_trial": 1 / per_gpu}
    spec["budget"]["concurrency"] = k * per_gpu
    spec["data"]["cache_dir"] = str(ROOT / ".lrkv-cache")
    ray.shutdown()
    # num_gpus=k: Ray hands out GPU ids 0..k-1 and sets each worker's CUDA_VISIBLE_DEVICES to its own.
    ray.init(num_cpus=cpus, num_gpus=k, include_dashboard=False, log_to_driver=False, configure_logging=False)
    driver = SweepDriver.create(parse_spec(spec, source=spec["name"]), Stores.resolve(workdir / spec["name"]))
    t0 = time.time()
    study = driver.run()
    t1 = time.time()
    ray.shutdown()
    items = placements(study)
    busy = busy_fractions(items, t0, t1)
    used = {gpu for _, gpu in busy}
    return {
        "k": k, "per_gpu": per_gpu, "gpus_per_trial": 1 / per_gpu, "wall_s": t1 - t0, "trials": len(items),
        "trials_per_hour": len(items) / (t1 - t0) * 3600,
        "busy_fraction": {gpu: f for (_, gpu), f in busy.items()},
        "every_gpu_used": used == {str(i) for i in range(k)},
        "whole_gpu_clashes": shared_cards(items) if per_gpu == 1 else None,
        "visible_matches_assigned": all(p.visible == ",".join(p.gpus) for p in items) if not fake else None,
        "trials_detail": [{"number": p.number, "gpus": p.gpus, "visible": p.visible, "start": p.start - t0,
                           "end": p.end - t0} for p in items],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=None, help="k for the many-GPU runs (default: all visible)")
    parser.add_argument("--fake-gpus", type=int, default=None, help="no CUDA: give Ray this many fake GPUs")
    parser.add_argument("--per-gpu", type=int, nargs="+", default=[1, 2], help="trials per GPU: 1 whole, 2 halves")
    parser.add_argument("--tokens", type=int, default=None, help="override budget.tokens_per_trial")
    args = parser.parse_args()
    fake = args.fake_gpus is not None
    k_all = args.gpus or args.fake_gpus or torch.cuda.device_count()
    if k_all < 1:
        raise SystemExit("no GPU visible: pass --fake-gpus N to exercise the code path on the CPU")
    raw = yaml.safe_load(SPEC.read_text())
    if args.tokens:
        raw["budget"]["tokens_per_trial"] = args.tokens
    cpus = max(2, k_all * max(args.per_gpu) * int(raw["resources"].get("cpus_per_trial", 1)))
    card = "fake" if fake else torch.cuda.get_device_name(0)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for per_gpu in args.per_gpu:
            for k in sorted({1, k_all}):
                row = run_once(raw, k, per_gpu, fake, Path(tmp), cpus)
                rows.append(row)
                print(f"{k} GPU × {per_gpu}/GPU: wall {row['wall_s']:.1f} s, {row['trials_per_hour']:.0f} trials/h, "
                      f"busy {row['busy_fraction']}", flush=True)
    for row in rows:
        one = next(r for r in rows if r["per_gpu"] == row["per_gpu"] and r["k"] == 1)
        row["scaling_efficiency"] = one["wall_s"] / (row["k"] * row["wall_s"])
        row["target_met"] = row["wall_s"] <= TARGET * one["wall_s"] / row["k"]

    env = {"card": card, "gpus": k_all, "fake": fake, "torch": torch.__version__, "ray": ray.__version__,
           "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"), "spec": raw, "args": vars(args)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"multi_gpu-{card_slug(card)}-{k_all}gpu.json"
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")

    print(f"\n{card} × {k_all}{' (fake)' if fake else ''} · {raw['budget']['trials']} trials · "
          f"{raw['budget']['tokens_per_trial']:,} tokens each")
    print(f"{'GPUs':>4} {'per GPU':>7} {'wall s':>8} {'trials/h':>9} {'efficiency':>10} {'goal':>5} "
          f"{'all used':>8} {'clashes':>7}  busy per GPU")
    for r in rows:
        clashes = "-" if r["whole_gpu_clashes"] is None else len(r["whole_gpu_clashes"])
        busy = " ".join(f"{g}:{f:.2f}" for g, f in r["busy_fraction"].items())
        print(f"{r['k']:>4} {r['per_gpu']:>7} {r['wall_s']:>8.1f} {r['trials_per_hour']:>9.0f} "
              f"{r['scaling_efficiency']:>10.3f} {'yes' if r['target_met'] else 'no':>5} "
              f"{'yes' if r['every_gpu_used'] else 'no':>8} {clashes:>7}  {busy}")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
