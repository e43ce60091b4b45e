"""Decode profiler: time the attention of one decode step over full caches at given contexts.

Per context T it allocates each attention layer's own cache (B sequences × T tokens, bf16 on the
GPU), fills it, and times `cache.attend` for every layer in turn: on CUDA as a replayed CUDA graph
(the fused LRKV kernel, flash SDPA for MHA/GQA/MQA, the absorbed MLA path), on the CPU with a wall
clock. Small caches are cycled through enough copies that every step reads from HBM, not L2. It
also reports the fraction of the bandwidth floor reached: the caches' bytes over the device-to-device
copy bandwidth measured in the same process. Trials that share a GPU share its bandwidth too, so a
packed trial's decode numbers are what it got beside its neighbours.
"""
from __future__ import annotations

import functools
import math
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
    seconds = step_seconds(lambda i: dst.copy_(src), device)
    return 2 * nbytes / seconds


def step_seconds(step, device: torch.device, copies: int = 1) -> float:
    """Median seconds of one `step(i)`, i cycling through `copies`; on CUDA replayed from a graph."""
    step(0)
    if device.type != "cuda":
        times = []
        for i in range(5):
            t0 = time.perf_counter()
            step(i % copies)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    calls = max(copies, 10)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            step(i % copies)
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


def copies_past_l2(nbytes: int, device: torch.device) -> int:
    """Copies of an `nbytes` working set to cycle through so that each step reads it from HBM, not L2."""
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0
    return max(1, math.ceil(3 * l2 / nbytes))


def _full_cache(layer: Attention, batch: int, T: int, dtype, device):
    cache = layer.allocate_cache(batch, T, dtype=dtype, device=device)
    for t in cache.tensors.values():
        t.normal_()
    cache.lengths.fill_(T)
    return cache


@torch.no_grad()
def profile_decode(layers: list[Attention], contexts: list[int], batch: int, device: torch.device) -> dict:
    """{decode_ms_at_T, decode_floor_fraction_at_T for each T, and decode_ms at the largest T}."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bandwidth = copy_bandwidth(device)
    record = {}
    for T in sorted(contexts):
        nbytes = sum(layer.spec.kv_cache_bytes_per_token(dtype) for layer in layers) * batch * T
        copies = copies_past_l2(nbytes, device)
        sets = [[_full_cache(layer, batch, T, dtype, device) for layer in layers] for _ in range(copies)]
        args = [layer.attend_args(batch, dtype) for layer in layers]
        def step(i):
            return [cache.attend(*a, full=True) for cache, a in zip(sets[i], args)]

        seconds = step_seconds(step, device, copies)
        floor = nbytes / bandwidth
        record[f"decode_ms_at_{T}"] = seconds * 1e3
        record[f"decode_floor_fraction_at_{T}"] = floor / seconds
        del sets
    if contexts:
        record["decode_ms"] = record[f"decode_ms_at_{max(contexts)}"]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record
