"""The front report read from a real (in-memory) Optuna study, as the driver leaves it."""
import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from lrkv.dashboards.pareto import hypervolume
from lrkv.dashboards.report import front_table, markdown, rows

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIST = {"size": CategoricalDistribution(["d64", "d128"]), "variant": CategoricalDistribution(["lrkv", "mha"])}


def study_with(trials) -> optuna.Study:
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_user_attr("spec", {"objectives": {"val_bpb": "min", "kv_cache_bytes": "min"}})
    for size, label, bpb, cache, state in trials:
        record = {"val_bpb": bpb, "kv_cache_bytes_per_token": cache, "kv_cache_ratio_vs_mha": cache / 1024,
                  "flops_per_token": 1000, "tokens_per_s": 50.0}
        study.add_trial(create_trial(
            params={"size": size, "variant": "mha" if label == "mha" else "lrkv"}, distributions=DIST,
            values=[bpb, cache] if state == TrialState.COMPLETE else None, state=state,
            user_attrs={"record": record, "label": label}))
    return study


TRIALS = [("d64", "lrkv0", 2.0, 128, TrialState.COMPLETE), ("d64", "lrkv8", 1.7, 512, TrialState.COMPLETE),
          ("d64", "mha", 1.6, 1024, TrialState.COMPLETE), ("d64", "lrkv4", 1.9, 768, TrialState.COMPLETE),  # dominated
          ("d64", "lrkv2", 0.1, 16, TrialState.FAIL),                                                       # not counted
          ("d128", "mha", 1.2, 2048, TrialState.COMPLETE)]


def test_rows_are_complete_trials_with_named_values():
    out = rows(study_with(TRIALS))
    assert [r["number"] for r in out] == [0, 1, 2, 3, 5]
    assert out[0]["values"] == {"val_bpb": 2.0, "kv_cache_bytes": 128}
    assert out[0]["label"] == "lrkv0" and out[0]["size"] == "d64" and out[0]["kv_cache_bytes"] == 128


def test_front_table_per_size_with_hypervolume():
    table = front_table(study_with(TRIALS))
    assert set(table) == {"d64", "d128"}
    d64 = table["d64"]
    assert [r["label"] for r in d64["front"]] == ["mha", "lrkv8", "lrkv0"] and d64["trials"] == 4
    # reference: the worst value per objective + 10 % of its range
    assert d64["reference"] == pytest.approx([2.0 + 0.04, 1024 + 89.6], rel=1e-9)
    pts = np.array([[1.6, 1024], [1.7, 512], [2.0, 128]])
    assert d64["hypervolume"] == pytest.approx(hypervolume(pts, d64["reference"]))
    assert d64["hypervolume"] > 0
    assert table["d128"]["trials"] == 1 and len(table["d128"]["front"]) == 1


def test_markdown_lists_the_front():
    text = markdown(front_table(study_with(TRIALS)))
    assert "### d64 — 3 on the front of 4" in text and "### d128 — 1 on the front of 1" in text
    assert "| 1 | lrkv8 | 1.7000 | 512 | 0.500 |" in text
    assert "lrkv4" not in text and "lrkv2" not in text


def test_empty_study_has_no_fronts():
    assert front_table(study_with([])) == {} and markdown({}) == ""
