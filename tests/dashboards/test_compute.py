"""Compute-normalised views: crossings of MHA's final loss, ratios to MHA, and their figures."""
import io

import pytest
from optuna.trial import TrialState

from lrkv.dashboards.compute import (compute_figure, compute_png, first_reach, reach_markdown, reach_metrics,
                                     reach_table, trial_curves)

from . import sweeps

MHA_CURVE = [(100, 3.0), (200, 2.5), (300, 2.0)]


def test_first_reach_interpolates_between_evaluations():
    assert first_reach(MHA_CURVE, 2.0) == 300.0                          # only at the end
    assert first_reach([(100, 2.8), (200, 2.2), (300, 1.9)], 2.0) == pytest.approx(200 + 100 * 0.2 / 0.3)
    assert first_reach([(100, 1.5), (200, 1.4)], 2.0) == 100.0           # already there at the first evaluation
    assert first_reach([(100, 3.0), (200, 2.5)], 2.0) is None            # never: not extrapolated
    assert first_reach([], 2.0) is None
    # the first crossing counts, even if the curve goes back up afterwards
    assert first_reach([(100, 3.0), (200, 1.0), (300, 2.5), (400, 1.5)], 2.0) == pytest.approx(150.0)


def study():
    t = sweeps.trial
    return sweeps.study([
        t("d64", "mha", 64, 2, 4, 2.0, curve=MHA_CURVE, flops=1000, run_id="r-mha"),
        t("d64", "mha", 64, 2, 4, 2.1, curve=[(100, 3.0), (300, 2.1)], flops=1000, run_id="r-mha-worse"),
        t("d64", "lrkv", 64, 2, 4, 1.9, rank=8, curve=[(100, 2.8), (200, 2.2), (300, 1.9)], flops=900, run_id="r-8"),
        t("d64", "lrkv", 64, 2, 4, 2.4, rank=0, curve=[(100, 3.1), (300, 2.4)], flops=800, run_id="r-0"),
        # pruned at 200 tokens, but it had reached MHA's final loss by then: it counts
        t("d64", "gqa2", 64, 2, 4, 1.95, curve=[(100, 2.5), (200, 1.95)], flops=950, state=TrialState.PRUNED),
        # a size whose MHA was pruned: no target
        t("d128", "mha", 128, 2, 4, 2.9, curve=[(100, 2.9)], state=TrialState.PRUNED),
        t("d128", "lrkv", 128, 2, 4, 2.0, rank=4, curve=[(100, 2.5), (200, 2.0)]),
        t("d128", "mqa", 128, 2, 4, 2.0, curve=[(100, 2.0)], state=TrialState.FAIL),  # failed: no curve counted
    ])


def test_reach_table_per_size():
    curves = trial_curves(study())
    assert len(curves) == 7  # COMPLETE and PRUNED with a curve; the FAIL is left out
    table = reach_table(curves)
    d64 = table["d64"]
    assert d64["target"] == 2.0 and d64["mha_trial"] == 0      # the best MHA, not the worse one
    assert d64["mha_tokens"] == 300.0 and d64["mha_flops"] == 300_000.0
    lrkv8 = d64["kinds"]["lrkv8"]
    assert lrkv8["reached"] and lrkv8["tokens"] == pytest.approx(266.667, rel=1e-4)
    assert lrkv8["tokens_vs_mha"] == pytest.approx(266.667 / 300, rel=1e-4)
    assert lrkv8["flops_vs_mha"] == pytest.approx(266.667 * 900 / 300_000, rel=1e-4)
    assert lrkv8["mlflow_run_id"] == "r-8"
    assert not d64["kinds"]["lrkv0"]["reached"] and d64["kinds"]["lrkv0"]["tokens"] is None
    assert d64["kinds"]["lrkv0"]["max_tokens"] == 300 and d64["kinds"]["lrkv0"]["tokens_vs_mha"] is None
    gqa = d64["kinds"]["gqa2"]
    assert gqa["reached"] and gqa["state"] == "pruned" and gqa["tokens"] == pytest.approx(200 - 100 * 0.05 / 0.55)
    assert d64["kinds"]["mha"]["tokens_vs_mha"] == 1.0
    d128 = table["d128"]
    assert d128["target"] is None and "MHA was pruned at 100 tokens (trial 5)" in d128["reason"]


def test_reach_metrics_and_markdown():
    table = reach_table(trial_curves(study()))
    metrics = reach_metrics(table)
    assert metrics["mha_tokens_ratio.d64.lrkv8"] == pytest.approx(266.667 / 300, rel=1e-4)
    assert "mha_tokens_ratio.d64.lrkv0" not in metrics and not any(k.endswith("d128.lrkv4") for k in metrics)
    text = reach_markdown(table)
    assert "### d64 — to MHA's final 2.0000 bpb (trial 0, 300 tokens)" in text
    assert "| lrkv0 | 3 | not reached in 300 (final 2.4000) |" in text
    assert "| lrkv8 | 2 | 267 | 0.889 |" in text
    assert "### d128 — no MHA target: MHA was pruned" in text


def test_compute_figures():
    curves = trial_curves(study())
    table = reach_table(curves)
    fig = compute_figure(curves, table, experiment_id="5")
    lines = [t for t in fig.data if t.meta and t.meta["lrkv"] == "curve"]
    assert len(lines) == 7
    lrkv8 = next(t for t in lines if t.name == "lrkv8")
    assert list(lrkv8.x) == [100 * 900, 200 * 900, 300 * 900]  # cumulative FLOPs = tokens × FLOPs/token
    bars = [t for t in fig.data if t.meta and t.meta["lrkv"] == "bars"]
    assert {t.meta["size"] for t in bars} == {"d64"}           # d128 has no MHA target: a note instead
    tokens_bar = next(t for t in bars if t.name == "tokens vs MHA")
    assert dict(zip(tokens_bar.x, tokens_bar.text))["lrkv0"] == "not reached"
    assert any("MHA was pruned" in a.text for a in fig.layout.annotations)
    png = io.BytesIO()
    compute_png(curves, table).savefig(png, format="png")
    assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = compute_figure([], {})
    assert any("no trial curves yet" in a.text for a in empty.layout.annotations)
    compute_png([], {}).savefig(io.BytesIO(), format="png")
