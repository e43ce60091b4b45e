"""One real trial on the CPU: the record, reporting and stopping, divergence, and a golden loss curve."""
import json
import math
import time
from pathlib import Path

import pytest
import torch

from lrkv.workers.train import SystemSampler, TrialDiverged, train

from .conftest import tiny_trial

GOLDEN = Path(__file__).parent / "golden" / "tiny_lrkv_curve.json"
RECORD_KEYS = {"val_bpb", "train_loss", "tokens", "wall_seconds", "tokens_per_s", "mfu", "peak_memory_bytes",
               "kv_cache_bytes_per_token", "flops_per_token", "params", "head_eff_rank", "head_eff_rank_frac"}


def test_record_and_reports(trial):
    reports = []
    record = train(trial, report=lambda step, m: reports.append((step, m)))
    assert RECORD_KEYS <= set(record)
    assert [s for s, _ in reports] == [4, 8, 12]
    assert record["steps"] == 12 and record["tokens"] == 12 * 8 * 64
    assert record["val_bpb"] == reports[-1][1]["val_bpb"]
    assert 0 < record["val_bpb"] < 8  # a byte model starts near log2(256) = 8 bits per byte
    assert reports[-1][1]["val_bpb"] < reports[0][1]["val_bpb"]  # it learns
    assert record["mfu"] is None  # no MFU on the CPU rather than a guess
    assert record["kv_cache_bytes_per_token"] == trial.model.kv_cache_bytes_per_token()
    assert record["flops_per_token"] == trial.model.train_flops_per_token(256, 64)
    assert record["system"] and all(s["memory_rss_megabytes"] > 0 for s in record["system"])
    json.dumps(record)  # the record is plain JSON


def test_a_compiled_trial_stops_inductors_compile_workers(tmp_path, monkeypatch):
    """Compiling for CUDA wakes a pool of compile worker processes, even when every kernel is cached; a trial
    stops it once its graphs are compiled, so the workers do not take the CPUs its steps launch from."""
    from torch._inductor import async_compile, config
    monkeypatch.setattr(config, "compile_threads", 2)
    # Scalar kernels of one layer: the same graphs (training and evaluation) through the same workers, compiled
    # in about two thirds of the time when Inductor's cache is cold.
    monkeypatch.setattr(config.cpp, "simdlen", 1)
    async_compile.AsyncCompile.wakeup()  # as compile_fx does for CUDA inputs
    pools = list(async_compile._pool_set)
    assert pools and all(pool.process.poll() is None for pool in pools)
    record = train(tiny_trial(tmp_path, n_layers=1, compile="on"))
    assert math.isfinite(record["val_bpb"])
    assert not async_compile._pool_set and all(pool.process.poll() is not None for pool in pools)


def test_system_sampler_measures_cpu_and_memory_and_stays_bounded():
    """A busy thread reads near 100 % CPU; a long run keeps at most max_samples, evenly spaced."""
    with SystemSampler(torch.device("cpu"), interval=0.01, max_samples=8) as sampler:
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            pass
    samples = sampler.samples
    assert 2 <= len(samples) < 8 + 1 and sampler.interval > 0.01  # thinned at least once
    times = [s["time"] for s in samples]
    assert times == sorted(times) and times[-1] - times[0] > 0.3
    assert 50 < sampler.mean("cpu_utilization_percentage") < 250
    assert all(s["memory_rss_megabytes"] > 10 for s in samples)
    assert sampler.mean("gpu_utilization_percentage") is None  # no card, no GPU samples


def test_report_can_stop_a_trial(trial):
    record = train(trial, report=lambda step, m: step >= 8)
    assert record["stopped_early"] and record["steps"] == 8


def test_nan_loss_raises_diverged_at_its_step(tmp_path):
    """Losses are read a step late, except where a validation reads at once: both name the same first bad step."""
    blamed = []
    for eval_every in (1, 100):
        with pytest.raises(TrialDiverged, match="loss became") as caught:
            train(tiny_trial(tmp_path, lr=1e30, warmup_frac=0.0, grad_clip=1e30, eval_every=eval_every))
        blamed.append(str(caught.value).rsplit(" ", 1)[-1])
    assert blamed[0] == blamed[1] and int(blamed[0]) < 12


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa", "mla"])
def test_baselines_train(tmp_path, kind):
    record = train(tiny_trial(tmp_path, kind=kind, tokens=64 * 8 * 4))
    assert math.isfinite(record["val_bpb"])


def test_lrkv_rank_zero_trains_as_mqa(tmp_path):
    """Under one seed, LRKV at r = 0 starts with MQA's weights (W_shared is drawn as MQA's K/V) and so
    learns the same curve: the sweep's r = 0 anchor and its MQA baseline agree, as the paper has them."""
    lrkv, mqa = (train(tiny_trial(tmp_path, kind=kind, rank=0, tokens=64 * 8 * 8)) for kind in ("lrkv", "mqa"))
    assert [p["val_bpb"] for p in lrkv["curve"]] == pytest.approx([p["val_bpb"] for p in mqa["curve"]], rel=1e-5)
    assert lrkv["kv_cache_bytes_per_token"] == mqa["kv_cache_bytes_per_token"]


def test_muon_trains(tmp_path):
    record = train(tiny_trial(tmp_path, optimizer="muon", tokens=64 * 8 * 8))
    assert math.isfinite(record["val_bpb"]) and record["val_bpb"] < 8


def test_golden_curve(trial):
    """A fixed-seed CPU trial must reproduce its recorded validation curve. A change here means the
    model, data or optimiser maths changed: regenerate the file only when that change is intended
    (python -m tests.workers.test_train)."""
    curve = [p["val_bpb"] for p in train(trial)["curve"]]
    golden = json.loads(GOLDEN.read_text())
    assert curve == pytest.approx(golden["val_bpb"], rel=golden["rtol"])


if __name__ == "__main__":
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        curve = [p["val_bpb"] for p in train(tiny_trial(Path(tmp)))["curve"]]
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"rtol": 2e-4, "val_bpb": curve}, indent=1) + "\n")
    print(curve)
