"""Decode profiler: time the attention of one decode step over full caches at given contexts.

Per context T it allocates each attention layer's own cache (B sequences × T tokens, bf16 on the
GPU), fills it, and times `cache.attend` for every layer in turn: on CUDA as a replayed CUDA graph
(the fused LRKV kernel, flash SDPA for MHA/GQA/MQA, the absorbed MLA path), on the CPU with a wall
clock. It also reports the fraction of the bandwidth floor reached: the caches' bytes over the
device-to-device copy bandwidth measured in the same process.
"""
from __future__ import annotations

import functools
import statistics
import time

import torch

from lrkv.kernels import Attention


@functools.cache
def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes moved (read + written) per second by a same-device copy."""
    if device.type != "cuda":
        nbytes = 1 << 26
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = _seconds(lambda: dst.copy_(src), device)
    return 2 * nbytes / seconds


def _seconds(step, device: torch.device, calls: int = 10) -> float:
    """Median seconds of one `step()`; on CUDA replayed from a graph of `calls` steps."""
    step()
    if device.type != "cuda":
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    times = []
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / calls)
    return statistics.median(times)


@torch.no_grad()
def profile_decode(layers: list[Attention], contexts: list[int], batch: int, device: torch.device) -> dict:
    """{decode_ms_at_T, decode_floor_fraction_at_T for each T, and decode_ms at the largest T}."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bandwidth = copy_bandwidth(device)
    record = {}
    for T in sorted(contexts):
        caches = []
        for layer in layers:
            cache = layer.allocate_cache(batch, T, dtype=dtype, device=device)
            for t in cache.tensors.values():
                t.normal_()
            cache.lengths.fill_(T)
            caches.append((cache, layer.attend_args(batch, dtype)))
        seconds = _seconds(lambda: [cache.attend(*args, full=True) for cache, args in caches], device)
        floor = sum(cache.nbytes for cache, _ in caches) / bandwidth
        record[f"decode_ms_at_{T}"] = seconds * 1e3
        record[f"decode_floor_fraction_at_{T}"] = floor / seconds
        del caches
    if contexts:
        record["decode_ms"] = record[f"decode_ms_at_{max(contexts)}"]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record
