"""One decode step of attention on one GPU: the fused LRKV kernel against MHA, GQA-4, plain-PyTorch LRKV
and the bandwidth floor, all measured in the same run on the same card.

Every LRKV cell is first checked against an fp64 reference (two sequences of the cell, full and
ragged lengths, every candidate tiling of every split kernel; grouped only with --key-scales): bf16 relative
error must stay ≤ 1e-2; a candidate over it is left out, and the product's own tiling over it stops the run.
"fused" is what the product runs (the method `logit_method` picks, with its default tiling); the best
candidate of each method is reported beside it.
Timings replay a CUDA graph of many decode steps; a small cache is cycled through enough copies
that each step reads it from HBM, not from L2. The floor is the cache's bytes over the
device-to-device copy bandwidth (bytes read + written per second) measured here; "÷read" divides by
the cache's bytes over the rate one reduction reads at, measured here too (a copy's rate can sit under
what a read-only pass reaches, so this floor is the tighter one). "TB/s" is the cache bytes the product's
kernel read per second, "TF/s" the rate of its tensor-core products (`tensor_core_flops`).
`--key-scales` times the cache layout of a spec's `key_scales` (each key's 1/rms cached, H more values
per token, counted in the floor); its check still compares against the reference that computes the norm.

    python3 benchmarks/decode.py                       # H=16, d_h=128, B 1/8/32, T 2K/8K/32K, r 16/32/64/128
    python3 benchmarks/decode.py --batch 8 --context 32768 --ranks 64
    python3 benchmarks/decode.py --report benchmarks/results/decode-<card>.json   # reprint with today's defaults

`--candidates defaults` times only the tilings the launcher can pick, `--tiling` adds candidates, `--no-plain`
skips the plain-PyTorch baseline. Writes benchmarks/results/decode-<card>[-<tag>].json (and a copy under
--out-dir) and prints a table; --report only reprints.
"""
from __future__ import annotations

import argparse
import ast
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.runtime.errors import OutOfResources

from lrkv.kernels.fused import decode as fused_decode
from lrkv.kernels.fused.decode import METHODS, SHORT_REBUILT, TILINGS, decode, default_tiling, group_size, logit_method
from lrkv.kernels.fused.tiles import dot_tile
from lrkv.kernels.lrkv import attend_compressed, key_scales
from lrkv.kernels.ops import rms_norm
from lrkv.workers.profile import copies_past_l2, copy_bandwidth, step_seconds
from record import arguments, card_slug, write

THETA = 10000.0
# Candidates (method, block_t, num_warps, num_stages, min_tiles, waves, heads_per_program); the product's
# defaults (every tiling the launcher can pick) are among them, and `logit_method` picks the one it runs per cell.
DEFAULTS = [(key.split("-")[0], *tiling) for key, tiling in TILINGS.items()] + [("rebuilt", *SHORT_REBUILT)]
CANDIDATES = DEFAULTS + [
    ("folded", 128, 4, 2, 2, 8, None), ("folded", 256, 8, 2, 2, 4, None), ("folded", 64, 4, 3, 2, 16, 8),
    ("folded", 128, 8, 2, 2, 4, None), ("folded", 128, 4, 3, 2, 8, None),
    ("grouped", 64, 8, 3, 2, 8, None), ("grouped", 128, 8, 3, 2, 8, None), ("grouped", 64, 4, 3, 2, 8, 1),
    ("grouped", 64, 4, 2, 2, 16, None), ("grouped", 32, 4, 3, 2, 16, None),
    # every head in one program: at r = 16 one product 256 latent columns wide, K_shared's work done once
    ("grouped", 64, 8, 3, 2, 8, 16), ("grouped", 32, 4, 3, 2, 8, 16),
    # one tile per split at most: more, shorter programs for short contexts (launch-bound)
    ("rebuilt", 32, 2, 2, 1, 32, 1), ("rebuilt", 16, 2, 2, 1, 64, 1), ("rebuilt", 32, 4, 2, 1, 32, 1),
    ("folded", 64, 4, 3, 1, 8, None), ("folded", 32, 4, 3, 1, 16, None), ("grouped", 32, 4, 3, 1, 16, None)]


def product_tiling(B: int, T: int, r: int, scaled: bool = False) -> tuple:
    method = logit_method(B, T, r, scaled)
    return (method, *default_tiling(method, r, scaled, B * T))


def read_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes read per second by one reduction over a buffer past L2: a read-only pass, as decode is (a copy
    also writes, so its rate can sit under what a decode kernel reads at)."""
    x = torch.randn(nbytes // 2, device=device, dtype=torch.bfloat16)
    total = torch.empty((), device=device)
    return nbytes / step_seconds(lambda i: torch.sum(x, dim=0, dtype=torch.float32, out=total), device)


def graph_ms(step, copies: int) -> float:
    return step_seconds(step, torch.device("cuda"), copies) * 1e3


def lrkv_cache(B, T, H, dh, r, device, gen, scales: bool = False):
    rows = {"k_shared": torch.randn(B, T, dh, device=device, generator=gen),
            "v_shared": torch.randn(B, T, dh, device=device, generator=gen),
            "r_k": torch.randn(B, T, H, r, device=device, generator=gen),
            "r_v": torch.randn(B, T, H, r, device=device, generator=gen)}
    rows = {k: v.to(torch.bfloat16) for k, v in rows.items()}
    ups = [(torch.randn(H, r, dh, device=device, generator=gen) * max(r, 1) ** -0.5).to(torch.bfloat16)
           for _ in range(2)]
    q = rms_norm(torch.randn(B, H, dh, device=device, generator=gen)).to(torch.bfloat16)
    if scales:
        rows["k_scale"] = key_scales(rows["k_shared"], rows["r_k"], ups[0]).to(torch.bfloat16)
    return q, rows, ups[0], ups[1]


def fused(q, rows, k_up, v_up, lengths, tiling, out=None):
    method, block_t, warps, stages, min_tiles, waves, heads = tiling
    return decode(q, rows["k_shared"], rows["v_shared"], rows["r_k"], rows["r_v"], k_up, v_up, lengths,
                  norm=True, rope_theta=THETA, method=method, block_t=block_t, num_warps=warps, num_stages=stages,
                  min_tiles=min_tiles, waves=waves, heads_per_program=heads, k_scale=rows.get("k_scale"), out=out)


def reference_error(q, rows, k_up, v_up, lengths, out) -> float:
    """Worst relative error of `out` over two sequences, against the fp64 reference of each alone."""
    worst = 0.0
    for b in sorted({0, q.size(0) - 1}):
        n = int(lengths[b])
        one = {k: v[b:b + 1, :n].double() for k, v in rows.items() if k != "k_scale"}  # the norm computed
        mask = torch.ones(1, n, dtype=torch.bool, device=q.device)
        ref = attend_compressed(q[b:b + 1].double(), one, mask, k_up.double(), v_up.double(), norm=True,
                                rope_theta=THETA)
        worst = max(worst, float((out[b:b + 1].double() - ref).norm() / ref.norm()))
    return worst


def fits(q, rows, k_up, v_up, tiling) -> bool:
    """Whether a tiling compiles within the card's shared memory and registers."""
    try:
        fused(q, rows, k_up, v_up, torch.full((q.size(0),), 1, device=q.device), tiling)
        return True
    except OutOfResources:
        return False


def check(q, rows, k_up, v_up, tilings, default) -> dict:
    """Full and ragged lengths, every tiling, poisoned output; the worst relative error per tiling. A
    candidate over the bf16 tolerance is reported and left out; the product's default stops the run."""
    B, T = q.size(0), rows["k_shared"].size(1)
    full = torch.full((B,), T, device=q.device)
    ragged = torch.randint(1, T + 1, (B,), device=q.device)
    ragged[0] = max(1, T // 3)
    worst = {}
    for tiling in tilings:
        for lengths in (full, ragged):
            out = torch.full_like(q, float("nan"))
            fused(q, rows, k_up, v_up, lengths, tiling, out=out)
            worst[tiling] = max(worst.get(tiling, 0.0), reference_error(q, rows, k_up, v_up, lengths, out))
        if not worst[tiling] <= 1e-2:
            failed = f"check failed: B={B} T={T} r={k_up.size(1)} tiling={tiling}: rel err {worst[tiling]:.3g}"
            if tiling == default:
                raise SystemExit(failed)
            print(failed, "(candidate left out)", flush=True)
    return worst


def time_lrkv(B, T, H, dh, r, device, gen, tilings, plain: bool, scales: bool = False) -> dict:
    q, rows, k_up, v_up = lrkv_cache(B, T, H, dh, r, device, gen, scales)
    nbytes = sum(t.nbytes for t in rows.values())
    tilings = [t for t in tilings if fits(q, rows, k_up, v_up, t)]
    errors = check(q, rows, k_up, v_up, tilings, product_tiling(B, T, r, scales))
    tilings = [t for t in tilings if errors[t] <= 1e-2]
    cell = {"B": B, "T": T, "r": r, "cache_bytes": nbytes, "max_rel_err": max(errors[t] for t in tilings),
            "failed_tilings": {str(t): e for t, e in errors.items() if not e <= 1e-2}}
    copies = copies_past_l2(nbytes, device)
    stock = [rows] + [{k: v.clone() for k, v in rows.items()} for _ in range(copies - 1)]
    lengths = torch.full((B,), T, device=device)
    out = torch.empty_like(q)
    by_tiling = {}
    for tiling in tilings:
        by_tiling[str(tiling)] = graph_ms(lambda i: fused(q, stock[i], k_up, v_up, lengths, tiling, out=out), copies)
    cell["fused_ms_by_tiling"] = by_tiling
    with_defaults(cell, scales)
    if plain:
        mask = torch.ones(B, T, dtype=torch.bool, device=device)
        try:
            cell["plain_ms"] = graph_ms(lambda i: attend_compressed(q, stock[i], mask, k_up, v_up, norm=True,
                                                                    rope_theta=THETA), copies)
        except torch.OutOfMemoryError:
            cell["plain_ms"] = None
    del stock, rows
    torch.cuda.empty_cache()
    return cell


def time_sdpa(B, T, H, kv_heads, dh, device, gen) -> float:
    """Best stock decode path: flash SDPA over a (B, kv, T, d_h) cache; a GQA group's queries ride as
    extra query rows of their K/V head, so no K/V is repeated."""
    k = torch.randn(B, kv_heads, T, dh, device=device, generator=gen, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    q = torch.randn(B, kv_heads, H // kv_heads, dh, device=device, generator=gen, dtype=torch.bfloat16)
    copies = copies_past_l2(k.nbytes + v.nbytes, device)
    stock = [(k, v)] + [(k.clone(), v.clone()) for _ in range(copies - 1)]
    ms = graph_ms(lambda i: F.scaled_dot_product_attention(q, *stock[i]), copies)
    del stock, k, v
    torch.cuda.empty_cache()
    return ms


def with_defaults(cell: dict, scaled: bool) -> dict:
    """fused_ms: the product's choice (method and its default tiling) for the cell; best_ms: the fastest candidate."""
    by_tiling = cell["fused_ms_by_tiling"]
    best = min(by_tiling, key=by_tiling.get)
    chosen = str(product_tiling(cell["B"], cell["T"], cell["r"], scaled))
    cell.update(fused_ms=by_tiling.get(chosen), default_tiling=chosen, best_ms=by_tiling[best], best_tiling=best)
    for method in METHODS:
        cell[f"{method}_ms"] = min((ms for t, ms in by_tiling.items() if ast.literal_eval(t)[0] == method), default=None)
    return cell


def tensor_core_flops(tiling: tuple, tokens: int, H: int, dh: int, r: int, scaled: bool = False) -> int:
    """FLOPs of a tiling's split-kernel tensor-core products over `tokens` cached tokens, as the kernels issue
    them: a program holds G heads, and p (and the query columns) are padded to P = dot_tile(G) ≥ 16 rows.
    Per token and group, every method: q·RoPE(K_s) or q·K (P·dh) and p·V_s (P·dh). Per (token, head), folded:
    [cos|sin]·M_h (dh·r), the norm's K_s·2B_hᵀ (dh·r) and R_k·B_hB_hᵀ (r²) unless key scales are cached, the
    head sums as a product (2·r·P, high and low parts) where it takes them so, and p·R_v,h (P·r, or P·r·G'/G
    for G' = next_power_of_2(G) where the group takes it at once); rebuilt: R_k·B_h (dh·r) and p·R_v,h (P·r).
    grouped, per token and group of C = G'·r_p latent columns: [cos|sin]·M_group (dh·C), the head sums
    (2·C·P) and p·R_v over the group (P·C)."""
    method, heads = tiling[0], group_size(tiling[0], H, r, tiling[-1])
    pad, wide, r_p = dot_tile(heads), triton.next_power_of_2(heads), dot_tile(r)
    per_group = 2 * pad * dh  # q against K_s and p·V_s
    if method == "grouped":
        cols = wide * r_p
        per_group += dh * cols + 3 * pad * cols
        per_head = 0
    elif method == "folded":
        at_once = heads > 1 and r_p <= fused_decode.VALUES_AT_ONCE_MAX_RANK
        by_dot = fused_decode.sums_by_dot(heads, r_p, scaled)
        per_head = (dh * r + (0 if scaled else dh * r + r * r) + (2 * r * pad if by_dot else 0)
                    + pad * r * (wide / heads if at_once else 1))
    else:
        per_head = dh * r + pad * r
    return int(2 * (per_group / heads + per_head) * tokens * H)


def parse_tiling(text: str) -> tuple:
    """'folded,64,4,3,1,8,4' -> ("folded", 64, 4, 3, 1, 8, 4), the shape of a CANDIDATES entry."""
    method, *numbers = text.split(",")
    if method not in METHODS or len(numbers) != 6:
        raise argparse.ArgumentTypeError(f"expected method,block_t,num_warps,num_stages,min_tiles,waves,heads "
                                         f"with method one of {', '.join(METHODS)}, got {text!r}")
    try:
        return (method, *map(int, numbers[:5]), None if numbers[5] == "None" else int(numbers[5]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers after the method, got {text!r}") from None


# Launcher rules a run may set apart from the product's: argument -> constant of the decode module.
KERNEL_RULES = {"values_at_once_max_rank": "VALUES_AT_ONCE_MAX_RANK", "logit_cols": "LOGIT_COLS",
                "early_loads_max_rank": "EARLY_LOADS_MAX_RANK",
                "head_stages": "HEAD_STAGES", "whole_waves": "WHOLE_WAVES"}


def add_kernel_rules(parser: argparse.ArgumentParser) -> None:
    """One option per KERNEL_RULES entry, each defaulting to the product's value."""
    parser.add_argument("--values-at-once-max-rank", type=int,
                        help="folded's p·R_v as one product per group up to this rank, padded to a power of two "
                             "of at least 16 (default: the product's)")
    parser.add_argument("--logit-cols", type=int,
                        help="with key scales, folded's logit product takes as many heads as fill this many "
                             "columns (0: one head at a time; default: the product's)")
    parser.add_argument("--early-loads-max-rank", type=int,
                        help="folded issues a tile's V_shared and key-scale loads with its K_shared loads up to "
                             "this padded rank (0: never; default: the product's)")
    parser.add_argument("--head-stages", type=int, nargs=2, metavar=("NARROW", "WIDE"),
                        help="with key scales, folded's head-loop pipeline stages for tiles of up to 64 tokens and "
                             "for 128-token tiles (default: the product's)")
    parser.add_argument("--whole-waves", type=int, choices=[0, 1],
                        help="split counts round each row's share of the programs down (default: the product's)")


def use_kernel_rules(args: dict) -> None:
    for arg, constant in KERNEL_RULES.items():
        if args.get(arg) is not None:
            setattr(fused_decode, constant, args[arg])


def ms(v: float | None) -> str:
    return f"{v:.4f}" if v else "-"


def rate(amount: float, milliseconds: float | None, digits: int) -> str:
    """Per second, in units of 10¹²: the achieved read rate (TB/s) or tensor-core rate (TFLOP/s)."""
    return f"{amount / milliseconds / 1e9:.{digits}f}" if milliseconds else "-"


def print_table(env: dict, cells: list) -> None:
    read = env.get("read_bandwidth_bytes_per_s")
    print(f"\n{env['card']} · torch {env['torch']} · triton {env['triton']} · H={env['heads']} d_h={env['head_dim']} "
          f"bf16{' · key scales cached' if env['args'].get('key_scales') else ''} · copy {env['copy_bandwidth_bytes_per_s'] / 1e12:.3f} TB/s"
          f"{f' · read {read / 1e12:.3f} TB/s' if read else ''} · times in ms")
    print(f"{'B':>3} {'T':>6} {'r':>4} {'floor':>8} {'fused':>8} {'÷floor':>7} {'÷read':>6} {'rebuilt':>8} {'folded':>8} {'grouped':>8} "
          f"{'plain':>8} {'mha':>8} {'gqa4':>8} {'mha÷fused':>9} {'fused÷mha':>9} {'TB/s':>5} {'TF/s':>4}  best tiling")
    for c in cells:
        f = c["fused_ms"]
        by_read = f / c["read_floor_ms"] if f and c.get("read_floor_ms") else float("nan")
        flops = tensor_core_flops(ast.literal_eval(c["default_tiling"]), c["B"] * c["T"], env["heads"],
                                  env["head_dim"], c["r"], env["args"].get("key_scales", False))
        print(f"{c['B']:>3} {c['T']:>6} {c['r']:>4} {c['floor_ms']:>8.4f} {ms(f):>8} "
              f"{f / c['floor_ms'] if f else float('nan'):>7.3f} {by_read:>6.2f} {ms(c.get('rebuilt_ms')):>8} "
              f"{ms(c.get('folded_ms')):>8} {ms(c.get('grouped_ms')):>8} {ms(c.get('plain_ms')):>8} {c['mha_ms']:>8.4f} {c['gqa4_ms']:>8.4f} "
              f"{c['mha_ms'] / f if f else float('nan'):>9.3f} {f / c['mha_ms'] if f else float('nan'):>9.3f} "
              f"{rate(c['cache_bytes'], f, 2):>5} {rate(flops, f, 0):>4}  "
              f"{c['best_tiling']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--context", type=int, nargs="+", default=[2048, 8192, 32768])
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--no-plain", action="store_true", help="skip the plain-PyTorch LRKV baseline")
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--report", type=Path, help="reprint a results file's table with the current defaults")
    parser.add_argument("--candidates", choices=["all", "defaults"], default="all",
                        help="time every candidate tiling, or only those the launcher can pick (DEFAULTS)")
    parser.add_argument("--tiling", type=parse_tiling, nargs="+", default=[],
                        help="more candidates, each method,block_t,num_warps,num_stages,min_tiles,waves,heads "
                             "(heads 'None': the method's default group)")
    add_kernel_rules(parser)
    parser.add_argument("--key-scales", action="store_true", help="LRKV caches each key's 1/rms (spec key_scales)")
    parser.add_argument("--out-dir", type=Path, help="also write the JSON result here (after every cell)")
    args = parser.parse_args()
    if args.report:
        result = json.loads(args.report.read_text())
        scaled = result["env"]["args"].get("key_scales", False)
        use_kernel_rules(result["env"]["args"])  # the run's own kernels
        print_table(result["env"], [with_defaults(c, scaled) for c in result["cells"]])
        return
    use_kernel_rules(vars(args))
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    H, dh = args.heads, args.head_dim
    bandwidth, read = copy_bandwidth(device), read_bandwidth(device)
    print(f"copy bandwidth {bandwidth / 1e12:.3f} TB/s, read {read / 1e12:.3f} TB/s", flush=True)

    card = torch.cuda.get_device_name(device)
    env = {"card": card, "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d"), "copy_bandwidth_bytes_per_s": bandwidth,
           "read_bandwidth_bytes_per_s": read, "heads": H, "head_dim": dh,
           "dtype": "bfloat16", "args": arguments(args)}
    tag = f"-{args.tag}" if args.tag else ""
    name = f"decode-{card_slug(card)}{tag}.json"
    candidates = (CANDIDATES if args.candidates == "all"
                  else DEFAULTS) + args.tiling
    if not args.key_scales:  # grouped computes no norm
        candidates = [c for c in candidates if c[0] != "grouped"]

    cells = []
    for B in args.batch:
        for T in args.context:
            mha = time_sdpa(B, T, H, H, dh, device, gen)
            gqa = time_sdpa(B, T, H, 4, dh, device, gen)
            for r in args.ranks:
                cell = time_lrkv(B, T, H, dh, r, device, gen, candidates, plain=not args.no_plain,
                                 scales=args.key_scales)
                cell.update(mha_ms=mha, gqa4_ms=gqa, floor_ms=cell["cache_bytes"] / bandwidth * 1e3,
                            read_floor_ms=cell["cache_bytes"] / read * 1e3)
                cells.append(cell)
                write(name, {"env": env, "cells": cells}, args.out_dir)  # after every cell, so a run cut short keeps what it measured
                print(f"B={B:>2} T={T:>5} r={r:>3}  fused {ms(cell['fused_ms'])} ms  floor {cell['floor_ms']:.4f}  "
                      f"mha {mha:.4f}  err {cell['max_rel_err']:.2e}  {cell['best_tiling']}", flush=True)

    out = write(name, {"env": env, "cells": cells}, args.out_dir)
    print_table(env, cells)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
