"""Where a training step's GPU time goes, per kind: the CUDA kernels of a few steady-state steps, summed.

    python3 benchmarks/train_profile.py --sizes 768x12x6 --kinds mha lrkv64

Each kind trains as in `train_throughput.py` (the trial code's model, optimiser and step); after `--steps`
steps of compilation and warm-up, `torch.profiler` records `--profiled` more. Prints, per kind, the step's
GPU time and its heaviest kernels, and writes the tables to benchmarks/results/train_profile-<card>.json.
"""
from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from lrkv.workers.data import load_blocks
from lrkv.workers.model import GPT
from lrkv.workers.train import compiled, make_optimizers, train_step
from record import arguments, card_slug, write
from train_throughput import trial_for, trial_parser


def kernel_times(trial, steps: int, profiled: int) -> tuple[float, list[dict]]:
    """Mean GPU ms per step and the kernels (name, calls per step, ms per step), heaviest first."""
    device = torch.device("cuda")
    torch.manual_seed(trial.seed)
    data = load_blocks(trial.data)
    model = GPT(trial.model, data.vocab_size).to(device)
    step_model = compiled(model, trial.train.compile, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    optimizers = make_optimizers(model, trial.train)
    gen = torch.Generator().manual_seed(trial.seed)

    def step() -> None:
        batch = data.train[torch.randint(len(data.train), (trial.train.batch_size,), generator=gen)].to(device)
        train_step(step_model, model, batch, optimizers, autocast, trial.train.grad_clip)

    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(profiled):
            step()
        torch.cuda.synchronize()
    kernels = [{"name": e.key, "calls": e.count / profiled, "ms": e.device_time_total / profiled / 1e3}
               for e in prof.key_averages() if e.device_time_total > 0]
    kernels.sort(key=lambda k: -k["ms"])
    return sum(k["ms"] for k in kernels), kernels


def main() -> None:
    parser = trial_parser(__doc__.splitlines()[0], steps=8)
    parser.add_argument("--profiled", type=int, default=5, help="steps recorded after the first --steps")
    parser.add_argument("--top", type=int, default=25, help="kernels printed per kind")
    args = parser.parse_args()
    card = torch.cuda.get_device_name()
    env = {"card": card, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "args": arguments(args)}
    name = f"train_profile-{card_slug(card)}.json"
    rows = []
    for size in args.sizes:
        for kind in args.kinds:
            total, kernels = kernel_times(trial_for(size, kind, args), args.steps, args.profiled)
            launches = sum(k["calls"] for k in kernels)
            rows.append({"size": size, "kind": kind, "gpu_ms_per_step": total, "launches_per_step": launches,
                         "kernels": kernels})
            write(name, {"env": env, "rows": rows})
            print(f"\n{size} {kind}: {total:.2f} GPU ms and {launches:.0f} kernel launches per step ({card})")
            print(f"{'ms/step':>9} {'share':>6} {'calls':>6}  kernel")
            for k in kernels[:args.top]:
                print(f"{k['ms']:>9.3f} {k['ms'] / total:>6.1%} {k['calls']:>6.1f}  {k['name'][:110]}")


if __name__ == "__main__":
    main()
