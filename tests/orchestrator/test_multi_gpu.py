"""GPU placement on a Ray node with several (fake) GPUs: every GPU gets work, whole-GPU trials never share
a card, fractional trials pack onto one, and each worker sees exactly the GPU Ray assigned it."""
import os

import pytest
import ray
from mlflow.tracking import MlflowClient

from lrkv.dashboards.placement import busy_fractions, placements, shared_cards
from lrkv.kernels import ConfigError
from lrkv.orchestrator.driver import SweepDriver, SweepError
from lrkv.orchestrator.spec import parse_spec
from lrkv.orchestrator.stores import Stores

from ..workers.conftest import CORPUS


@pytest.fixture
def fake_gpus(request):
    ray.shutdown()
    ray.init(num_cpus=4, num_gpus=request.param, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield request.param
    ray.shutdown()


def sweep(tmp_path, stores, name, gpus_per_trial, concurrency, trials=8, mps=False):
    return SweepDriver.create(sweep_spec(tmp_path, name, gpus_per_trial, concurrency, trials, mps), stores).run()


def sweep_spec(tmp_path, name, gpus_per_trial, concurrency, trials=8, mps=False):
    return parse_spec({
        "name": name, "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        "space": {"sizes": [{"name": "d32", "d_model": 32, "n_layers": 1, "n_heads": 4}],
                  "rank": {"values": [0, 1, 2, 3, 4, 5, 6, 7]}},
        "anchors": False, "sampler": {"kind": "grid"}, "pruning": {"enabled": False},
        "budget": {"tokens_per_trial": 2048, "trials": trials, "concurrency": concurrency},
        "resources": {"gpus_per_trial": gpus_per_trial, "cpus_per_trial": 1, "mps": mps},
        "data": {"source": str(CORPUS), "seq_len": 32, "cache_dir": str(tmp_path / "cache")},
        "train": {"batch_size": 8, "eval_every": 4, "eval_blocks": 4},
    })


@pytest.mark.parametrize("fake_gpus", [4], indirect=True)
def test_whole_gpus_spread_and_never_shared(tmp_path, stores, fake_gpus):
    items = placements(sweep(tmp_path, stores, "whole", 1, 4))
    assert len(items) == 8
    for p in items:
        assert len(p.gpus) == 1 and p.visible == p.gpus[0]  # the worker sees only its own card
    assert {p.gpus[0] for p in items} == {"0", "1", "2", "3"}  # every GPU got work
    assert shared_cards(items) == []
    client = MlflowClient(stores.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("whole").experiment_id], "tags.`lrkv.role` = 'trial'")
    assert sorted(r.data.tags["lrkv.gpus"] for r in runs) == sorted(p.gpus[0] for p in items)
    start, end = min(p.start for p in items), max(p.end for p in items)
    assert all(0 < f <= 1 for f in busy_fractions(items, start, end).values())


@pytest.mark.parametrize("fake_gpus", [2], indirect=True)
def test_fractional_trials_pack_onto_cards(tmp_path, stores, fake_gpus):
    items = placements(sweep(tmp_path, stores, "packed", 0.5, 4))
    assert len(items) == 8 and {p.gpus for p in items} == {("0",), ("1",)}
    sharing = []
    for card in {("0",), ("1",)}:  # at most two half-GPU trials on a card at once
        on_card = [p for p in items if p.gpus == card]
        sharing += [sum(q.start <= p.start < q.end for q in on_card) for p in on_card]
    assert max(sharing) == 2  # and they did pack


# Stands in for nvidia-cuda-mps-control (no GPU here): logs the daemon's start and each command it is given,
# with the pipe folder each call saw.
FAKE_MPS_CONTROL = """#!/bin/sh
log="$(dirname "$0")/calls.log"
if [ "$1" = "-d" ]; then echo "start $CUDA_MPS_PIPE_DIRECTORY" >> "$log"; exit 0; fi
read command
echo "$command $CUDA_MPS_PIPE_DIRECTORY" >> "$log"
if [ "$command" = get_server_list ]; then echo 4242; fi
"""


@pytest.mark.parametrize("fake_gpus", [1], indirect=True)
def test_mps_daemon_serves_every_trial_and_stops_after_them(tmp_path, stores, fake_gpus, monkeypatch):
    """resources.mps: the driver starts one daemon before the first trial, every trial's worker is its
    client (it sees the daemon's pipe folder), and the daemon is asked to quit once the sweep is done."""
    folder = tmp_path / "bin"
    folder.mkdir()
    control = folder / "nvidia-cuda-mps-control"
    control.write_text(FAKE_MPS_CONTROL)
    control.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    study = sweep(tmp_path, stores, "mps", 0.5, 2, trials=4, mps=True)
    calls = (folder / "calls.log").read_text().splitlines()
    pipe = calls[0].removeprefix("start ")
    assert pipe and calls == [f"start {pipe}", f"get_server_list {pipe}", f"quit {pipe}"]
    records = [t.user_attrs["record"] for t in study.get_trials() if "record" in t.user_attrs]
    assert len(records) == 4 and {r["cuda_mps_pipe"] for r in records} == {pipe}
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ  # the driver's own CUDA is not a client


def test_mps_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    spec = sweep_spec(tmp_path, "mps", 0.5, 2, mps=True)
    with pytest.raises(SweepError, match=r"^resources.mps: expected false on a cluster \(start MPS on its nodes\)"):
        SweepDriver.create(spec, Stores.resolve(tmp_path / "ws"), address="ray://head:10001")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="^resources.mps: expected nvidia-cuda-mps-control on PATH"):
        SweepDriver.create(spec, Stores.resolve(tmp_path / "ws"))
    assert not (tmp_path / "ws").exists()
