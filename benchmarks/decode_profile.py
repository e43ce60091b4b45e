"""One decode step of one cell, for a profiler to wrap: the product's LRKV kernels, then MHA through SDPA.

    ncu --section SpeedOfLight -k regex:'split|flash' python3 benchmarks/decode_profile.py --batch 8 --context 32768 --rank 64

Each is run twice, so the second launch of every kernel comes after compilation and autotuning.
`--kernels N` instead prints each kernel's mean GPU time over N more steps, from torch's profiler:

    python3 benchmarks/decode_profile.py --batch 1 --context 2048 --rank 64 --key-scales --kernels 50
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from decode import THETA, fused, lrkv_cache, product_tiling
from lrkv.kernels.fused.decode import default_tiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--key-scales", action="store_true")
    parser.add_argument("--method", help="a split kernel other than the product's choice (its default tiling)")
    parser.add_argument("--kernels", type=int, default=0, metavar="N",
                        help="print each kernel's mean GPU time over N steps of each")
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    B, T, H, dh, r = args.batch, args.context, args.heads, args.head_dim, args.rank
    q, rows, k_up, v_up = lrkv_cache(B, T, H, dh, r, device, gen, args.key_scales)
    lengths = torch.full((B,), T, device=device)
    tiling = product_tiling(B, T, r, args.key_scales)
    if args.method:
        tiling = (args.method, *default_tiling(args.method, r, args.key_scales, B * T))
    print("tiling", tiling, "theta", THETA, flush=True)
    for _ in range(2):
        fused(q, rows, k_up, v_up, lengths, tiling)
    k = torch.randn(B, H, T, dh, device=device, generator=gen, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    for _ in range(2):
        F.scaled_dot_product_attention(q[:, :, None], k, v)
    torch.cuda.synchronize()
    if args.kernels:
        kernel_table(args.kernels, lambda: fused(q, rows, k_up, v_up, lengths, tiling),
                     lambda: F.scaled_dot_product_attention(q[:, :, None], k, v))


def kernel_table(steps: int, *runs) -> None:
    """Mean GPU time of each kernel a run launches, per step (each run's steps profiled apart)."""
    from torch.profiler import ProfilerActivity, profile
    for run in runs:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                run()
            torch.cuda.synchronize()
        for event in prof.key_averages():
            if event.device_type.name == "CUDA" and event.count >= steps:
                print(f"{event.device_time_total / steps:9.2f} us  x{event.count // steps}  {event.key[:90]}")
        print(flush=True)


if __name__ == "__main__":
    main()
