"""One trial: train a small GPT with the configured attention on real text and measure it.

`train(config, report)` is the whole contract with the orchestrator: it calls `report(step, metrics)`
after each validation and stops early when `report` returns True; it returns one metrics record.
A NaN or infinite loss raises TrialDiverged, so a sweep records the trial as failed with its reason.
"""
from __future__ import annotations

import math
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from .config import TrialConfig
from .data import PackedData, load_blocks
from .diversity import head_diversity
from .model import GPT
from .profile import profile_decode

Report = Callable[[int, dict], "bool | None"]

# Dense bf16 tensor-core peaks (FLOP/s) for MFU; unknown cards report no MFU rather than a guess.
WARMUP_STEPS = 3  # left out of tokens/s
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


class SystemSampler:
    """The trial's system metrics, sampled while it trains: the process's CPU use and resident memory and,
    on CUDA, the card's utilisation (NVML through torch; a shared card reports the whole card) and the memory
    this process holds. The sweep logs them as MLflow system metrics. Whenever `max_samples` are held, every
    other one is dropped and the interval doubles, so a long trial keeps a short, evenly spaced record."""

    def __init__(self, device: torch.device, interval: float = 0.5, max_samples: int = 128):
        self.device, self.interval, self.max_samples = device, interval, max_samples
        self.samples: list[dict] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _cpu_seconds(self) -> float:
        times = os.times()
        return times.user + times.system

    def _sample(self) -> None:
        now, cpu = time.monotonic(), self._cpu_seconds()
        sample = {"time": time.time(),
                  "cpu_utilization_percentage": 100 * (cpu - self.cpu) / max(now - self.last, 1e-6)}
        self.last, self.cpu = now, cpu
        rss = resident_bytes()
        if rss:
            sample["memory_rss_megabytes"] = rss / 2**20
        if self.device.type == "cuda":
            sample["gpu_memory_reserved_megabytes"] = torch.cuda.memory_reserved(self.device) / 2**20
            try:
                sample["gpu_utilization_percentage"] = float(torch.cuda.utilization(self.device))
            except Exception:  # no NVML: no utilisation, never a failed trial
                pass
        self.samples.append(sample)
        if len(self.samples) >= self.max_samples:
            del self.samples[1::2]
            self.interval *= 2

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self._sample()

    def __enter__(self):
        self.last, self.cpu = time.monotonic(), self._cpu_seconds()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self._sample()  # the last stretch: a trial shorter than one interval still has a sample

    def mean(self, key: str) -> float | None:
        values = [s[key] for s in self.samples if key in s]
        return sum(values) / len(values) if values else None


def resident_bytes() -> int | None:
    """This process's resident memory (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        from lrkv.kernels import ConfigError
        raise ConfigError("train.device", "a machine with CUDA for 'cuda'", choice)
    return torch.device(choice)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def lr_at(step: int, steps: int, cfg) -> float:
    """Linear warmup, then cosine decay to min_lr_frac of the peak (a multiplier)."""
    warmup = max(1, int(cfg.warmup_frac * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizers(model: GPT, cfg) -> list[torch.optim.Optimizer]:
    if cfg.optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))]
    # Muon (as the paper trains): 2-D matrices inside the blocks; embedding, head and per-head 3-D tensors use AdamW.
    matrices = [p for p in model.blocks.parameters() if p.dim() == 2 and p.numel()]
    ids = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [torch.optim.Muon(matrices, lr=cfg.matrix_lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw"),
            torch.optim.AdamW(rest, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))]


@torch.no_grad()
def evaluate(model, data: PackedData, n_blocks: int, batch_size: int, device, autocast) -> float:
    """Validation bits per byte over the first n_blocks validation blocks (the same blocks every time)."""
    model.eval()
    blocks = data.val[:n_blocks]
    total = 0.0
    for i in range(0, len(blocks), batch_size):
        chunk = blocks[i:i + batch_size].to(device)
        with autocast:
            total += float(model(chunk[:, :-1], chunk[:, 1:])) * len(chunk)
    model.train()
    nats_per_token = total / len(blocks)
    return nats_per_token / math.log(2) / data.bytes_per_token


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def compiled(model: GPT, choice: str, device: torch.device):
    """The model as the trial steps it: `torch.compile`d for "on", and for "auto" on CUDA."""
    return torch.compile(model) if choice == "on" or (choice == "auto" and device.type == "cuda") else model


def release_compile_workers() -> None:
    """Stops Inductor's compile worker processes. Inductor starts one per core (up to 32) whenever it compiles
    for CUDA, even when every kernel comes from its cache; left to start up beside the first steps they take
    the CPUs from a launch-bound step (benchmarks/NOTES.md: 16–18 % slower, gone with in-process compiling).
    A later compile starts them again."""
    from torch._inductor.async_compile import shutdown_compile_workers
    shutdown_compile_workers()


def train_step(step_model, model: GPT, batch: torch.Tensor, optimizers: list[torch.optim.Optimizer], autocast,
               grad_clip: float) -> torch.Tensor:
    """One optimisation step on a batch of token blocks (B, T + 1); returns the loss, unsynchronised."""
    with autocast:
        loss = step_model(batch[:, :-1], batch[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss


class LossReader:
    """Reads each step's loss (a host sync) only once the next step is queued, so the GPU never waits on the
    host between steps; a validation step reads its own at once. A step's time runs from the previous read
    to its own; steps up to `warmup` pay for compilation and autotuning and are left out of `timed_seconds`."""

    def __init__(self, warmup: int, tokens_per_step: int, bar: TrainProgress | None):
        self.warmup, self.tokens_per_step, self.bar = warmup, tokens_per_step, bar
        self.queued: list[tuple[int, torch.Tensor]] = []
        self.last = float("nan")
        self.train_seconds = self.timed_seconds = 0.0
        self.last_read = time.perf_counter()

    def queue(self, step: int, loss: torch.Tensor) -> None:
        self.queued.append((step, loss))

    def read(self, keep: int) -> None:
        """Reads the queued losses, all but the last `keep`; a NaN or infinite one raises TrialDiverged."""
        while len(self.queued) > keep:
            step, loss = self.queued.pop(0)
            self.last = float(loss.detach())
            now = time.perf_counter()
            seconds, self.last_read = now - self.last_read, now
            self.train_seconds += seconds
            if step > self.warmup:
                self.timed_seconds += seconds
            if not math.isfinite(self.last):
                raise TrialDiverged(f"training loss became {self.last} at step {step}")
            if self.bar is not None:
                self.bar.update(step, self.last, step * self.tokens_per_step / self.train_seconds)

    def resume(self) -> None:
        """Starts the next step's clock now, leaving out the time since the last read."""
        self.last_read = time.perf_counter()


def train(config: TrialConfig, report: Report | None = None, progress: bool = False) -> dict:
    """Run one trial; returns its metrics record (see module docstring)."""
    t_start = time.perf_counter()
    cfg = config.train
    device = resolve_device(cfg.device)
    torch.manual_seed(config.seed)
    data = load_blocks(config.data)
    seq_len = config.data.seq_len
    model = GPT(config.model, data.vocab_size).to(device)
    step_model = compiled(model, cfg.compile, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    optimizers = make_optimizers(model, cfg)
    base_lrs = [[g["lr"] for g in opt.param_groups] for opt in optimizers]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    tokens_per_step = cfg.batch_size * seq_len
    steps = max(1, cfg.tokens // tokens_per_step)
    sampler = torch.Generator().manual_seed(config.seed)
    curve: list[dict] = []
    warmup = min(WARMUP_STEPS, steps - 1)  # always leaves at least the last step timed
    stopped_early = False
    step = 0

    bar = TrainProgress(steps) if progress else None
    system = SystemSampler(device)
    losses = LossReader(warmup, tokens_per_step, bar)
    with bar or nullcontext(), system:
        for step in range(1, steps + 1):
            idx = torch.randint(len(data.train), (cfg.batch_size,), generator=sampler)
            batch = data.train[idx]
            if device.type == "cuda":  # from pinned memory the copy queues behind the running step, not waits for it
                batch = batch.pin_memory()
            batch = batch.to(device, non_blocking=True)
            for opt, lrs in zip(optimizers, base_lrs):
                for group, lr in zip(opt.param_groups, lrs):
                    group["lr"] = lr * lr_at(step - 1, steps, cfg)
            losses.queue(step, train_step(step_model, model, batch, optimizers, autocast, cfg.grad_clip))
            if step == 1:  # the training graphs are compiled
                release_compile_workers()
            validate = step % cfg.eval_every == 0 or step == steps
            losses.read(keep=0 if validate else 1)
            if validate:
                val_bpb = evaluate(step_model, data, cfg.eval_blocks, cfg.batch_size, device, autocast)
                if not curve:  # the evaluation graph is compiled
                    release_compile_workers()
                losses.resume()  # validation is not training time
                point = {"step": step, "tokens": step * tokens_per_step, "train_loss": losses.last,
                         "val_bpb": val_bpb}
                curve.append(point)
                if bar is not None:
                    bar.note(val_bpb)
                if report is not None and report(step, dict(point)) and step < steps:
                    stopped_early = True
                    break

    profiled = profile_decode(model.attention_layers(), cfg.profile_contexts, cfg.profile_batch, device) \
        if cfg.profile_contexts else {}
    tokens = step * tokens_per_step
    timed_steps = step - warmup  # none when a report stopped the trial inside the warmup
    tokens_per_s = (timed_steps * tokens_per_step / losses.timed_seconds if timed_steps > 0
                    else tokens / losses.train_seconds)
    flops_per_token = config.model.train_flops_per_token(data.vocab_size, seq_len)
    peak = peak_flops(device)
    return {
        "val_bpb": curve[-1]["val_bpb"],
        "train_loss": losses.last,
        "steps": step,
        "tokens": tokens,
        "stopped_early": stopped_early,
        "wall_seconds": time.perf_counter() - t_start,
        "train_seconds": losses.train_seconds,
        "tokens_per_s": tokens_per_s,
        "mfu": flops_per_token * tokens_per_s / peak if peak else None,
        "peak_memory_bytes": peak_memory_bytes(device),
        "gpu_util_mean": system.mean("gpu_utilization_percentage"),
        "kv_cache_bytes_per_token": config.model.kv_cache_bytes_per_token(torch.bfloat16),
        "kv_cache_ratio_vs_mha": config.model.attention.cache_ratio_vs_mha(),
        "flops_per_token": flops_per_token,
        "params": config.model.params(data.vocab_size),
        **head_diversity(model.attention_layers()),
        **profiled,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "data": data.description,
        "curve": curve,
        "system": system.samples,
    }


class TrainProgress:
    """Rich progress line for a trial run from the terminal: steps, tokens/s, loss, last val bpb."""

    def __init__(self, steps: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=False)
        self.task = self.progress.add_task("train", total=steps, stats="")
        self.val = "—"

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, step: int, loss: float, tok_s: float) -> None:
        stats = f"loss {loss:.3f} · {tok_s:,.0f} tok/s · val bpb {self.val}"
        self.progress.update(self.task, completed=step, stats=stats)

    def note(self, val_bpb: float) -> None:
        self.val = f"{val_bpb:.3f}"
