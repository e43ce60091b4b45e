"""Registers, spilled bytes and shared memory of the decode kernels the launcher picks, compiled for a Hopper
GPU (sm_90) on any machine, and how many programs of each fit on one multiprocessor.

The split kernels' time is set by latency at low occupancy (benchmarks/NOTES.md), and a change that adds a
register's or a kilobyte's pressure can halve the programs a multiprocessor holds. This reads that before a GPU
run: `decode()` runs on meta tensors with every kernel launch captured, and each captured launch is compiled
by Triton for sm_90 (no GPU needed); Triton's own cuobjdump reads the registers and stack from the cubin.
Hopper's limits per multiprocessor: 65,536 registers (allocated 256 a warp), 228 KB of shared memory (1 KB
of it per program reserved), 64 warps, 32 programs. Compilers differ: compare numbers from the same Triton.

  python3 benchmarks/decode_resources.py --batch 8 --context 32768 --ranks 16 32 64 128 --key-scales
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from decode import add_kernel_rules, use_kernel_rules
from lrkv.kernels.fused import decode as fused_decode
from record import arguments, write

TARGET = GPUTarget("cuda", 90, 32)
REGISTERS, REGISTER_UNIT, SHARED, SHARED_RESERVED, WARPS, PROGRAMS = 65536, 256, 228 * 1024, 1024, 64, 32
KERNELS = ("_split_folded_kernel", "_split_grouped_kernel", "_split_rebuilt_kernel")
DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int64: "i64",
          torch.int32: "i32"}


class Capture:
    """Stands in for a kernel: `kernel[grid](*args, **constants)` records the launch and runs nothing."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        return lambda *args, **constants: self.launches.append((args, constants))


@contextlib.contextmanager
def captured_launches():
    """The split kernels replaced by captures, and the launcher told they are compiled (not interpreted)."""
    saved = {name: getattr(fused_decode, name) for name in (*KERNELS, "_prepare_kernel", "_reduce_kernel")}
    saved["interpreted"] = fused_decode.interpreted
    captures = {name: Capture(saved[name]) for name in KERNELS}
    try:
        for name in saved:
            setattr(fused_decode, name, captures.get(name, Capture(None)))
        fused_decode.interpreted = lambda kernel: False
        yield captures
    finally:
        for name, value in saved.items():
            setattr(fused_decode, name, value)


def launch(B: int, T: int, H: int, dh: int, r: int, scaled: bool) -> tuple[str, object, tuple, dict]:
    """The split kernel `decode()` launches for a bf16 cache of this shape, with its arguments and constants."""
    meta = dict(device="meta", dtype=torch.bfloat16)
    q = torch.empty(B, H, dh, **meta)
    rows = [torch.empty(B, T, dh, **meta), torch.empty(B, T, dh, **meta), torch.empty(B, T, H, r, **meta),
            torch.empty(B, T, H, r, **meta), torch.empty(H, r, dh, **meta), torch.empty(H, r, dh, **meta)]
    lengths = torch.empty(B, device="meta", dtype=torch.int64)
    k_scale = torch.empty(B, T, H, **meta) if scaled else None
    with captured_launches() as captures:
        fused_decode.decode(q, *rows, lengths, norm=True, rope_theta=10000.0, k_scale=k_scale)
    (name, capture), = [(n, c) for n, c in captures.items() if c.launches]
    return name, capture.kernel, *capture.launches[0]


def compiled(kernel, args: tuple, constants: dict):
    """The kernel compiled for TARGET as the launch would specialise it: pointers and integers divisible by 16
    are marked so (as Triton's launcher marks them), the rest typed from their values."""
    constants = dict(constants)
    options = {k: constants.pop(k) for k in ("num_warps", "num_stages")}
    signature, attrs = {}, {}
    for i, (name, value) in enumerate(zip(kernel.arg_names, args)):
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    signature.update({name: "constexpr" for name in constants})
    return triton.compile(ASTSource(kernel, signature, constants, attrs), target=TARGET, options=options)


def resources(kernel) -> dict:
    """Registers a thread, stack bytes a thread (spills), shared memory a program, and the programs a
    multiprocessor holds by each limit."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        Path(cubin).write_bytes(kernel.asm["cubin"])
        usage = subprocess.run([str(cuobjdump), "-res-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
    regs, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
    warps, shared = kernel.metadata.num_warps, kernel.metadata.shared
    per_warp = triton.cdiv(regs * 32, REGISTER_UNIT) * REGISTER_UNIT
    limits = {"registers": REGISTERS // per_warp // warps, "shared": SHARED // (shared + SHARED_RESERVED),
              "warps": WARPS // warps, "programs": PROGRAMS}
    fit = min(limits.values())
    return dict(registers=regs, stack_bytes=stack, shared_bytes=shared, num_warps=warps, programs_per_sm=fit,
                limited_by="+".join(k for k, v in limits.items() if v == fit))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--key-scales", action="store_true", help="LRKV caches each key's 1/rms")
    add_kernel_rules(parser)
    parser.add_argument("--tag", default="", help="suffix of the result file name")
    parser.add_argument("--out-dir", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    use_kernel_rules(vars(args))

    print(f"  sm_{TARGET.arch}, triton {triton.__version__}; B = {args.batch}, T = {args.context}, "
          f"key scales {args.key_scales}")
    print("    r  kernel   tiling               regs  stack  shared KB  programs/SM (limit)")
    cells = []
    for r in args.ranks:
        name, kernel, launch_args, constants = launch(args.batch, args.context, args.heads, args.head_dim, r,
                                                      args.key_scales)
        used = resources(compiled(kernel, launch_args, constants))
        tiling = (constants["BLOCK_T"], constants["num_warps"], constants["num_stages"])
        method = name.removeprefix("_split_").removesuffix("_kernel")
        cells.append(dict(r=r, method=method, tiling=list(tiling), **used))
        print(f"  {r:>3}  {method:<8} {str(tiling):<20} {used['registers']:>4}  {used['stack_bytes']:>5}  "
              f"{used['shared_bytes'] / 1000:>9.1f}  {used['programs_per_sm']:>3} ({used['limited_by']})")
    env = dict(target=f"sm_{TARGET.arch}", triton=triton.__version__, torch=torch.__version__,
               python=platform.python_version(), args=arguments(args))
    tag = f"-{args.tag}" if args.tag else ""
    print("written:", write(f"decode_resources-sm{TARGET.arch}-triton{triton.__version__}{tag}.json",
                            {"env": env, "cells": cells}, args.out_dir))


if __name__ == "__main__":
    main()
