"""The fused LRKV key reconstruction (Triton, forward + backward) on one GPU: checked against fp64, then
timed against the same composition (einsum + RMSNorm + RoPE) compiled by torch.compile and eager, in one run.

Checks: output and the gradients of shared, latent and up, bf16 relative error ≤ 1e-2 against fp64
autograd through the reference ops, at every timed shape; the script stops on a miss.

    python3 benchmarks/reconstruct.py                  # the training shapes of train_throughput.py

Writes benchmarks/results/reconstruct-<card>.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import triton

from lrkv.kernels.fused.reconstruct import reconstruct as fused
from lrkv.kernels.lrkv import reconstruct
from lrkv.kernels.ops import rms_norm, rope
from record import RESULTS, card_slug

THETA = 10000.0


def composed(shared, latent, up):
    k = rms_norm(reconstruct(shared, latent, up))
    return rope(k, torch.arange(shared.size(1), device=shared.device), THETA)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["16x2048x6x128x64", "16x2048x10x128x64"],
                        help="B x T x H x d_h x r")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    compiled = torch.compile(composed)
    rows = []
    for shape in args.shapes:
        B, T, H, dh, r = map(int, shape.split("x"))
        shared = torch.randn(B, T, dh, device=device, generator=gen).bfloat16().requires_grad_()
        latent = torch.randn(B, T, H, r, device=device, generator=gen).bfloat16().requires_grad_()
        up = (torch.randn(H, r, dh, device=device, generator=gen) * r ** -0.5).bfloat16().requires_grad_()
        grad = torch.randn(B, T, H, dh, device=device, generator=gen).bfloat16()

        ref_inputs = [t.detach().double().requires_grad_() for t in (shared, latent, up)]
        ref = composed(*ref_inputs)
        ref.backward(grad.double())
        out = fused(shared, latent, up, norm=True, rope_theta=THETA)
        out.backward(grad)
        errors = {"out": rel(out, ref)} | {name: rel(t.grad, r_.grad) for name, t, r_ in
                                            zip(("d_shared", "d_latent", "d_up"), (shared, latent, up), ref_inputs)}
        if max(errors.values()) > 1e-2:
            raise SystemExit(f"check failed at {shape}: {errors}")
        del ref, ref_inputs

        def step(fn):
            def run():
                for t in (shared, latent, up):
                    t.grad = None
                fn(shared, latent, up).backward(grad)
            return run

        fused_ms = triton.testing.do_bench(step(lambda *a: fused(*a, norm=True, rope_theta=THETA)))
        compiled_ms = triton.testing.do_bench(step(compiled))
        eager_ms = triton.testing.do_bench(step(composed))
        rows.append({"shape": shape, "fused_ms": fused_ms, "compiled_ms": compiled_ms, "eager_ms": eager_ms,
                     "max_rel_err": errors})
        print(f"{shape:>20}  fwd+bwd ms: fused {fused_ms:.3f}  compiled composition {compiled_ms:.3f}  "
              f"eager composition {eager_ms:.3f}  errors {max(errors.values()):.2e}", flush=True)

    card = torch.cuda.get_device_name(device)
    env = {"card": card, "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "date": time.strftime("%Y-%m-%d"), "dtype": "bfloat16", "args": vars(args)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    out = RESULTS / f"reconstruct-{card_slug(card)}{tag}.json"
    out.write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
