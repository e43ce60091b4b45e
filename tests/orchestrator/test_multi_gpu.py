"""GPU placement on a Ray node with several (fake) GPUs: every GPU gets work, whole-GPU trials never share
a card, fractional trials pack onto one, and each worker sees exactly the GPU Ray assigned it."""
import pytest
import ray
from mlflow.tracking import MlflowClient

from lrkv.dashboards.placement import busy_fractions, placements, shared_cards
from lrkv.orchestrator.driver import SweepDriver
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


def sweep(tmp_path, name, gpus_per_trial, concurrency, trials=8):
    spec = parse_spec({
        "name": name, "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        "space": {"sizes": [{"name": "d32", "d_model": 32, "n_layers": 1, "n_heads": 4}],
                  "rank": {"values": [0, 1, 2, 3, 4, 5, 6, 7]}},
        "anchors": False, "sampler": {"kind": "grid"}, "pruning": {"enabled": False},
        "budget": {"tokens_per_trial": 2048, "trials": trials, "concurrency": concurrency},
        "resources": {"gpus_per_trial": gpus_per_trial, "cpus_per_trial": 1},
        "data": {"source": str(CORPUS), "seq_len": 32, "cache_dir": str(tmp_path / "cache")},
        "train": {"batch_size": 8, "eval_every": 4, "eval_blocks": 4},
    })
    return SweepDriver.create(spec, Stores.resolve(tmp_path / "ws")).run()


@pytest.mark.parametrize("fake_gpus", [4], indirect=True)
def test_whole_gpus_spread_and_never_shared(tmp_path, fake_gpus):
    items = placements(sweep(tmp_path, "whole", 1, 4))
    assert len(items) == 8
    for p in items:
        assert len(p.gpus) == 1 and p.visible == p.gpus[0]  # the worker sees only its own card
    assert {p.gpus[0] for p in items} == {"0", "1", "2", "3"}  # every GPU got work
    assert shared_cards(items) == []
    client = MlflowClient(Stores.resolve(tmp_path / "ws").tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("whole").experiment_id], "tags.`lrkv.role` = 'trial'")
    assert sorted(r.data.tags["lrkv.gpus"] for r in runs) == sorted(p.gpus[0] for p in items)
    start, end = min(p.start for p in items), max(p.end for p in items)
    assert all(0 < f <= 1 for f in busy_fractions(items, start, end).values())


@pytest.mark.parametrize("fake_gpus", [2], indirect=True)
def test_fractional_trials_pack_onto_cards(tmp_path, fake_gpus):
    items = placements(sweep(tmp_path, "packed", 0.5, 4))
    assert len(items) == 8 and {p.gpus for p in items} == {("0",), ("1",)}
    sharing = []
    for card in {("0",), ("1",)}:  # at most two half-GPU trials on a card at once
        on_card = [p for p in items if p.gpus == card]
        sharing += [sum(q.start <= p.start < q.end for q in on_card) for p in on_card]
    assert max(sharing) == 2  # and they did pack
