"""Training throughput of LRKV against MHA on one GPU, through the trial code itself.

Each configuration runs `lrkv.workers.train.train` (bf16 autocast, torch.compile, AdamW) on the
embedded corpus; tokens/s leaves out the first steps (compilation). All rows come from one process
on one card, so the ratios compare like with like.

    python benchmarks/train_throughput.py --sizes 768x12x6 --kinds mha lrkv64 lrkv64-fused --steps 40

`lrkv64` takes the layer's own training path; a suffix forces one (`kernels.lrkv.TRAINING_PATHS`):
`-factored` rebuilds keys/values with the plain composition (einsum, norm, RoPE, which torch.compile
fuses as it can), `-fused` with the Triton op. `--compile off` times eager CUDA. `--repeats N` runs the kinds N times in
turn (each a fresh build and compile), so a ratio comes with the spread between rounds. The process's first
row (LRKV at 768/12/6) ran 16–18 % slow on an H100 when Inductor's caches were warm from an earlier run, and
not with TORCHINDUCTOR_COMPILE_THREADS=1 (benchmarks/NOTES.md): set that, or compare the later rounds.

Writes benchmarks/results/train_throughput-<card>.json and prints a table.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import re
import time
from pathlib import Path

import torch

from lrkv.kernels import lrkv as lrkv_module
from lrkv.workers.config import TrialConfig
from lrkv.workers.train import train
from record import arguments, card_slug, write


def attention_for(kind: str, d_model: int, n_heads: int) -> dict:
    """'mha', 'mqa', 'gqa4', 'mla', 'lrkv64', 'lrkv64-fused' -> an attention mapping."""
    name, number = re.fullmatch(r"([a-z]+)(\d*)(?:-[a-z]+)?", kind).groups()
    attention = {"kind": name, "d_model": d_model, "n_heads": n_heads}
    if name == "lrkv":
        attention["rank"] = int(number)
    elif name == "gqa":
        attention["n_kv_heads"] = int(number)
    return attention


def trial_for(size: str, kind: str, args: argparse.Namespace) -> TrialConfig:
    """The trial of one row ('768x12x6', 'lrkv64-fused'), with the kind's training path forced if it names one."""
    d_model, n_layers, n_heads = map(int, size.split("x"))
    path = kind.partition("-")[2] or None
    if path is not None and path not in lrkv_module.TRAINING_PATHS:
        raise SystemExit(f"--kinds: {kind!r}: expected a suffix in {lrkv_module.TRAINING_PATHS}")
    lrkv_module.TRAINING_PATH = path
    return TrialConfig.from_dict({
        "model": {"n_layers": n_layers, "attention": attention_for(kind, d_model, n_heads)},
        "data": {"source": "stdlib", "seq_len": args.seq_len},
        "train": {"tokens": args.steps * args.batch_size * args.seq_len, "batch_size": args.batch_size,
                  "optimizer": args.optimizer, "eval_every": args.steps, "eval_blocks": 16,
                  "compile": args.compile},
    })


def trial_parser(description: str, steps: int) -> argparse.ArgumentParser:
    """The arguments that pick the rows' trials (`trial_for`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sizes", nargs="+", default=["768x12x6"], help="d_model x n_layers x n_heads")
    parser.add_argument("--kinds", nargs="+", default=["mha", "lrkv64"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--compile", choices=["on", "off"], default="on")
    return parser


def main() -> None:
    parser = trial_parser(__doc__.splitlines()[0], steps=40)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the kinds, interleaved")
    parser.add_argument("--out-dir", type=Path, help="also write the JSON result here (after every row)")
    args = parser.parse_args()
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    env = {"card": card, "torch": torch.__version__, "python": platform.python_version(),
           "triton": _version("triton"), "date": time.strftime("%Y-%m-%d"),
           "args": arguments(args)}
    name = f"train_throughput-{card_slug(card)}.json"

    rows = []
    for size in args.sizes:
        for round_, kind in ((i, kind) for i in range(args.repeats) for kind in args.kinds):
            record = train(trial_for(size, kind, args))
            rows.append({"size": size, "kind": kind, "round": round_, **{k: record[k] for k in (
                "tokens_per_s", "mfu", "peak_memory_bytes", "flops_per_token", "params",
                "kv_cache_bytes_per_token", "val_bpb", "steps", "device")}})
            print(f"{size:>10} {kind:>14} round {round_} {record['tokens_per_s']:>12,.0f} tok/s  "
                  f"mfu {record['mfu'] or 0:.3f}", flush=True)
            write(name, {"env": env, "rows": rows}, args.out_dir)  # after every row, so a run cut short keeps what it measured

    summary = summarise(rows, args.kinds[0])
    out = write(name, {"env": env, "rows": rows, "summary": summary}, args.out_dir)

    mode = "compiled" if args.compile == "on" else "eager"
    print(f"\n{card} · torch {env['torch']} · batch {args.batch_size}×{args.seq_len} · bf16 · {mode} · "
          f"{args.optimizer} · {args.repeats} round(s) · medians, ratio range over rounds")
    print(f"{'size':>10} {'kind':>14} {'tokens/s':>12} {'vs ' + args.kinds[0]:>8} {'min':>6} {'max':>6} "
          f"{'MFU':>6} {'peak GiB':>9} {'KV B/tok':>9}")
    for r in summary:
        print(f"{r['size']:>10} {r['kind']:>14} {r['tokens_per_s']:>12,.0f} {r['ratio']:>8.3f} {r['ratio_min']:>6.3f} "
              f"{r['ratio_max']:>6.3f} {r['mfu'] or 0:>6.3f} {r['peak_memory_bytes'] / 2**30:>9.2f} "
              f"{r['kv_cache_bytes_per_token']:>9,}")
    print(f"written: {out}")


def summarise(rows: list[dict], baseline: str) -> list[dict]:
    """Per size and kind: median tokens/s over rounds, and the median, min and max of the ratio to the
    baseline kind measured in the same round (rounds are interleaved, so slow drift cancels)."""
    summary = []
    for size, kind in dict.fromkeys((r["size"], r["kind"]) for r in rows):
        mine = {r["round"]: r for r in rows if (r["size"], r["kind"]) == (size, kind)}
        base = {r["round"]: r["tokens_per_s"] for r in rows if (r["size"], r["kind"]) == (size, baseline)}
        ratios = [mine[i]["tokens_per_s"] / base[i] for i in mine if i in base]
        median = statistics.median(r["tokens_per_s"] for r in mine.values())
        last = mine[max(mine)]
        summary.append({"size": size, "kind": kind, "rounds": len(mine), "tokens_per_s": median,
                        "ratio": statistics.median(ratios) if ratios else None,
                        "ratio_min": min(ratios, default=None), "ratio_max": max(ratios, default=None),
                        **{k: last[k] for k in ("mfu", "peak_memory_bytes", "kv_cache_bytes_per_token")}})
    return summary


def _version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
