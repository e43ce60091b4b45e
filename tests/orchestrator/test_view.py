"""The live view of a running sweep: counts by state, the trials in flight with their latest validation,
and the front so far, as a user watching `lrkv sweep run` sees them."""
import optuna
import pytest
import ray
from optuna.trial import TrialState
from rich.console import Console

from lrkv.orchestrator.driver import SweepDriver
from lrkv.orchestrator.spec import parse_spec
from lrkv.orchestrator.stores import Stores
from lrkv.orchestrator.view import SweepView, counts_line

from ..workers.conftest import CORPUS


def test_counts_line_names_every_state_a_user_tells_apart():
    study = optuna.create_study(study_name="s", directions=["minimize", "minimize"])
    for state, attrs in [(TrialState.COMPLETE, {"launched": True}), (TrialState.COMPLETE, {"launched": True}),
                         (TrialState.PRUNED, {"launched": True}), (TrialState.FAIL, {"launched": True}),
                         (TrialState.FAIL, {}),  # refused before it ran (infeasible, or a repeated point)
                         (TrialState.FAIL, {"launched": True, "requeued": True}),  # interrupted, runs again
                         (TrialState.RUNNING, {"launched": True})]:
        trial = study.ask()
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if state != TrialState.RUNNING:
            study.tell(trial, [1.0, 2.0] if state == TrialState.COMPLETE else None, state=state)
    study.enqueue_trial({})  # waiting: not shown
    assert counts_line(study, 12) == ("[bold]s[/] · budget 12 trials · 1 running · 2 complete · 1 pruned · 1 failed · "
                                      "1 skipped · 1 re-queued")
    assert counts_line(optuna.create_study(study_name="new"), 3).endswith("budget 3 trials · starting")


class Recorder:
    """A view that keeps every frame as the text a terminal would show."""

    def __init__(self):
        self.frames: list[str] = []

    def update(self, driver) -> None:
        console = Console(record=True, width=200, force_terminal=False)
        console.print(SweepView.render(driver))
        self.frames.append(console.export_text())


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_the_live_view_follows_a_real_sweep(tmp_path, local_ray):
    spec = parse_spec({
        "name": "watched", "objectives": {"val_bpb": "min", "kv_cache_bytes": "min"},
        "space": {"sizes": [{"name": "tiny", "d_model": 32, "n_layers": 1, "n_heads": 4}],
                  "rank": {"fractions": [0.0, 0.5]}},
        "baselines": ["mha", "mqa"],
        "budget": {"tokens_per_trial": 32768, "trials": 2, "concurrency": 2},
        "data": {"source": str(CORPUS), "seq_len": 32, "cache_dir": str(tmp_path / "cache")},
        "train": {"batch_size": 8, "eval_every": 4, "eval_blocks": 4}})
    view = Recorder()
    study = SweepDriver.create(spec, Stores.resolve(tmp_path / "ws"), view=view).run()

    in_flight = [f for f in view.frames if "2 running" in f]
    assert in_flight and in_flight[0] == view.frames[0], view.frames[:2]  # shown as soon as they are launched
    labels = {t.user_attrs["label"] for t in study.get_trials() if t.user_attrs.get("launched")}
    # A running trial's row: its number, size, variant and (once it has reported) its latest validation.
    cells = [[c.strip() for c in line.split("│")[1:-1]] for frame in view.frames for line in frame.splitlines()]
    rows = [c for c in cells if len(c) == 6 and c[1] == "tiny" and c[2] in labels]
    assert rows and any(row[4] != "—" and float(row[4]) > 0 for row in rows), in_flight[-1]
    last = view.frames[-1]
    assert last.splitlines()[0] == "watched · budget 2 trials · 2 complete"
    assert "Pareto front · tiny · hypervolume" in last
    front = [t for t in study.best_trials]
    assert front and all(f" {t.user_attrs['label']} " in last for t in front)
