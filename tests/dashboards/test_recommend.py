"""`recommend` on constructed sweeps whose answer is known, its refusals on thin evidence, and the CLI."""
import json
import math

import numpy as np
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from lrkv.dashboards.recommend import Point, Query, fit_gaps, cells, points_from_study, recommend
from lrkv.kernels import ConfigError
from lrkv.orchestrator.cli import app
from lrkv.orchestrator.stores import Stores

from . import sweeps

H, L = 4, 2


def truth(x: float, z: float) -> float:
    """The gap to the best: quadratic in 1 − r/d_h, shrinking with scale (z = log2 L·d²)."""
    return (0.30 - 0.02 * (z - 14)) * (1 - x) ** 2


def swept(d_models=(64, 128, 256), fractions=(0, 0.125, 0.25, 0.5, 0.75, 1), noise=0.0, seed=0, sweep="s",
          gap=truth, mha_state="complete", mha_offset=0.0) -> list[Point]:
    """Points of a sweep: MHA at `base + mha_offset` and LRKV at `base + gap(r/d_h, z) + noise` per size."""
    rng = np.random.default_rng(seed)
    points, n = [], 0
    for d in d_models:
        dh, z = d // H, math.log2(L * d * d)
        base = 3.0 - 0.3 * math.log2(d / 64)
        points.append(Point(sweep, f"d{d}", n, f"{sweep}-run{n}", "mha", "mha", d, L, H, dh, 0, base + mha_offset,
                            mha_state))
        n += 1
        for f in fractions:
            r = round(f * dh)
            points.append(Point(sweep, f"d{d}", n, f"{sweep}-run{n}", "lrkv", f"lrkv{r}", d, L, H, dh, r,
                                base + gap(r / dh, z) + rng.normal(0, noise) if noise else base + gap(r / dh, z)))
            n += 1
    return points


def analytic_rank(d_model: int, tolerance: float) -> int:
    """The smallest integer r with truth(r/d_h, z) ≤ tolerance."""
    dh, z = d_model // H, math.log2(L * d_model ** 2)
    return next(r for r in range(dh + 1) if truth(r / dh, z) <= tolerance + 1e-12)


# -- swept sizes: measured directly ------------------------------------------------------------------


def test_direct_answer_is_the_smallest_swept_rank_within_tolerance():
    points = swept(noise=0.002, seed=1)
    out = recommend(points, Query(128, L, H, tolerance=0.02))
    # d_h = 32: gaps ≈ 0.28·(1−x)² → r=16 (0.07) fails, r=24 (0.0175) passes
    assert out.status == "ok" and out.method == "direct"
    assert out.rank == 24 and out.rank_frac == 0.75 and out.rank_interval == (17, 24)
    assert out.cache_fraction == pytest.approx((32 + 4 * 24) / (4 * 32))
    answer = next(p for p in points if p.size == "d128" and p.rank == 24 and p.kind == "lrkv")
    reference = min((p for p in points if p.size == "d128"), key=lambda p: p.val_bpb)
    assert out.gap == pytest.approx(answer.val_bpb - reference.val_bpb)
    assert out.gap_se is not None and 0 < out.gap_se < 0.01  # the fit's noise, about the 0.002 put in
    roles = {s["run_id"]: s["role"] for s in out.supporting}
    assert roles[answer.run_id].startswith("answer")
    assert "reference" in roles[reference.run_id]
    failing = next(p for p in points if p.size == "d128" and p.rank == 16)
    assert roles[failing.run_id] == "largest failing rank below"


def test_direct_against_mha_or_best():
    # LRKV at full rank beats MHA by 0.05: against the best, the bar is higher than against MHA.
    def gap(x, z):
        return 0.3 * (1 - x) ** 2 - 0.05
    points = swept(d_models=(64,), fractions=(0, 0.25, 0.5, 0.75, 1), gap=gap)
    best = recommend(points, Query(64, L, H, tolerance=0.02, against="best"))
    mha = recommend(points, Query(64, L, H, tolerance=0.02, against="mha"))
    # vs best (−0.05): need 0.3(1−x)² ≤ 0.02 → x ≥ 0.742 → r = 12 of 16; vs MHA: 0.3(1−x)² ≤ 0.07 → x ≥ 0.517 → 12 too,
    # but swept at 0.5 (0.075 − 0.05 = 0.025 vs MHA: fails), so both land on 12; the gaps differ by the 0.05.
    assert best.rank == mha.rank == 12
    assert best.gap - mha.gap == pytest.approx(0.05)
    loose = recommend(points, Query(64, L, H, tolerance=0.03, against="mha"))
    assert loose.rank == 8  # 0.075 − 0.05 = 0.025 ≤ 0.03 only against MHA
    assert recommend(points, Query(64, L, H, tolerance=0.03, against="best")).rank == 12


def test_budget_decides_between_none_and_thin():
    points = swept(d_models=(128,), fractions=(0, 0.125, 0.25, 0.5, 0.75, 1))
    # d_h 32, H 4: cache fraction (32 + 4r)/128; 0.5 allows r ≤ 8, which was swept and fails: a definite no.
    out = recommend(points, Query(128, L, H, cache_budget=0.5, tolerance=0.02))
    assert out.status == "none" and "closest is r = 8" in out.reason
    # 0.6 allows r ≤ 11; 9..11 were never run, but the fit (this size's own curve) rules them out too
    out = recommend(points, Query(128, L, H, cache_budget=0.6, tolerance=0.02))
    assert out.status == "none" and "the fit puts the unswept ranks 9..11 outside it" in out.reason
    # with too few runs for a fit, unswept ranks under the budget are unknown: not enough evidence,
    # and the sweep to run names them
    sparse = swept(d_models=(128,), fractions=(0, 0.25))
    out = recommend(sparse, Query(128, L, H, cache_budget=0.6, tolerance=0.02))
    assert out.status == "thin" and "9..11" in out.reason and out.fit is None
    assert all(round(f * 32) in range(9, 12) for f in out.suggestion["spec"]["space"]["rank"]["fractions"])
    # below r = 0's cache (1/H of MHA's) no LRKV fits at all
    out = recommend(points, Query(128, L, H, cache_budget=0.2))
    assert out.status == "none" and "even r = 0" in out.reason


# -- unswept sizes: the fit ----------------------------------------------------------------------


def test_fit_recovers_the_known_rank_exactly_without_noise():
    out = recommend(swept(), Query(160, L, H, tolerance=0.02))
    assert out.status == "ok" and out.method == "fit"
    assert out.rank == analytic_rank(160, 0.02) == 30
    assert out.rank_interval == (30, 30) and out.gap <= 0.02


@pytest.mark.parametrize("seed", range(3))
def test_fit_with_noise_brackets_the_true_rank(seed):
    points = swept(noise=0.003, seed=seed)
    out = recommend(points, Query(160, L, H, tolerance=0.02))
    assert out.status == "ok" and out.method == "fit"
    lo, hi = out.rank_interval
    assert lo <= analytic_rank(160, 0.02) <= hi and lo <= out.rank <= hi
    assert abs(out.rank - 30) <= 2
    assert out.gap_interval[0] <= out.gap <= out.gap_interval[1] and out.gap_se > 0
    assert out.fit["dof"] >= 2 and 0.001 < out.fit["sigma"] < 0.006
    # the runs behind it come from the two swept sizes that bracket d160 (d128, d256), with their references
    assert {s["size"] for s in out.supporting} == {"d128", "d256"}
    for size, d in (("d128", 128), ("d256", 256)):  # at each, the swept ranks on either side of the answer's r/d_h
        fracs = [s["rank"] / (d // H) for s in out.supporting if s["size"] == size and s["role"].startswith("rank")]
        assert min(fracs) <= out.rank_frac <= max(fracs)
        assert any(s["role"] == "reference" for s in out.supporting if s["size"] == size)
    assert all(s["run_id"].startswith("s-run") for s in out.supporting)


def test_fit_pools_sweeps_and_uses_within_sweep_gaps():
    # the same sizes swept twice with different absolute losses (another data set): gaps still pool
    a = swept(d_models=(64, 256), noise=0.002, seed=1, sweep="a")
    b = [Point(**{**p.__dict__, "val_bpb": p.val_bpb + 0.7}) for p in swept(d_models=(128,), noise=0.002, seed=2,
                                                                             sweep="b")]
    out = recommend(a + b, Query(160, L, H, tolerance=0.02))
    assert out.status == "ok" and abs(out.rank - 30) <= 2
    assert sorted(out.fit["sizes"]) == ["a:d256", "a:d64", "b:d128"]


# -- refusals ------------------------------------------------------------------------------------


def test_refuses_an_unswept_size_from_a_single_swept_size():
    out = recommend(swept(d_models=(128,)), Query(256, L, H))
    assert out.status == "thin" and "two swept sizes" in out.reason
    size = out.suggestion["spec"]["space"]["sizes"][0]
    assert (size["d_model"], size["n_layers"], size["n_heads"]) == (256, L, H)
    assert "d_model: 256" in out.suggestion["yaml"]


def test_refuses_to_extrapolate_far_beyond_the_swept_sizes():
    out = recommend(swept(), Query(1024, L, H))  # z = 21, swept 13..17
    assert out.status == "thin" and "above the swept range" in out.reason and out.rank is None
    near = recommend(swept(), Query(320, L, H))  # z ≈ 17.6: within one doubling, answered
    assert near.status == "ok"


def test_refuses_when_noise_swamps_the_tolerance():
    points = swept(noise=0.08, seed=3)
    unswept = recommend(points, Query(160, L, H, tolerance=0.02))
    assert unswept.status == "thin" and unswept.rank is None
    assert unswept.suggestion["spec"]["space"]["sizes"][0]["d_model"] == 160
    swept_size = recommend(points, Query(128, L, H, tolerance=0.02))
    assert swept_size.status == "thin" and "cannot tell the ranks apart" in swept_size.reason
    assert "seed" in swept_size.suggestion["yaml"]


def test_refuses_against_mha_when_mha_was_pruned():
    points = swept(d_models=(64, 128), mha_state="pruned")
    out = recommend(points, Query(64, L, H, against="mha"))
    assert out.status == "thin" and "pruned" in out.reason
    assert out.suggestion["spec"]["pruning"] == {"enabled": False} and out.suggestion["spec"]["baselines"] == ["mha"]
    # against the best, the same runs answer
    assert recommend(points, Query(64, L, H)).status == "ok"


def test_refuses_with_no_runs_at_all():
    out = recommend([], Query(64, L, H))
    assert out.status == "thin" and "no finished trials" in out.reason
    assert out.suggestion["spec"]["space"]["rank"]["fractions"] == [0.0, 0.125, 0.25, 0.5, 1.0]


def test_fit_needs_residual_degrees_of_freedom():
    # two sizes × two ranks: four points cannot estimate even a line per size and σ
    assert fit_gaps(cells(swept(d_models=(64, 128), fractions=(0, 1)))) is None
    assert fit_gaps(cells(swept(d_models=(64, 128), fractions=(0, 0.5, 1)))).dof >= 2


def test_query_validation_names_the_field():
    for kwargs, field in (({"d_model": 0}, "d_model"), ({"n_heads": 5}, "n_heads"),
                          ({"cache_budget": 1.5}, "cache_budget"), ({"tolerance": -1.0}, "tolerance"),
                          ({"against": "gqa"}, "against")):
        with pytest.raises(ConfigError) as err:
            Query(**{"d_model": 64, "n_layers": 2, "n_heads": 4, **kwargs})
        assert err.value.field == field


# -- from a study, and the command line ------------------------------------------------------------


def study_trials(d_model: int, size: str, gaps: dict[float, float], base: float = 3.0, first_run: int = 0):
    dh = d_model // H
    out = [sweeps.trial(size, "mha", d_model, L, H, base, run_id=f"run-{first_run}")]
    for i, (f, g) in enumerate(gaps.items(), start=1):
        out.append(sweeps.trial(size, "lrkv", d_model, L, H, base + g, rank=round(f * dh),
                                run_id=f"run-{first_run + i}"))
    return out


def test_points_from_a_study_carry_shape_rank_and_state():
    s = sweeps.study(study_trials(64, "d64", {0: 0.3, 0.5: 0.05}) +
                     [sweeps.trial("d64", "gqa2", 64, L, H, 3.1, state=TrialState.PRUNED),
                      sweeps.trial("d64", "mqa", 64, L, H, 3.2, state=TrialState.FAIL)])
    points = points_from_study(s)
    assert [(p.kind, p.rank, p.state) for p in points] == [("mha", 0, "complete"), ("lrkv", 0, "complete"),
                                                          ("lrkv", 8, "complete"), ("gqa", 0, "pruned")]
    assert points[2].shape == (64, L, H, 16) and points[2].run_id == "run-2" and points[2].sweep == "constructed"


@pytest.fixture
def workspace(tmp_path):
    """Two sweeps in one journal: sizes d64 and d256 (fractions 0..1), and d128 alone."""
    storage = Stores.resolve(tmp_path / "ws").optuna_storage()
    fractions = (0, 0.125, 0.25, 0.5, 0.75, 1)
    for name, sizes in (("small-large", (64, 256)), ("middle", (128,))):
        trials = []
        for d in sizes:
            z = math.log2(L * d * d)
            trials += study_trials(d, f"d{d}", {f: truth(f, z) for f in fractions}, first_run=100 * d)
        sweeps.study(trials, name=name, storage=storage)
    return tmp_path / "ws"


def cli(*args):
    result = CliRunner().invoke(app, ["recommend", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_answers_from_every_sweep_by_default(workspace):
    code, out, _ = cli("--d-model", "160", "--n-layers", str(L), "--n-heads", str(H), "--workspace", str(workspace),
                       "--json")
    answer = json.loads(out)
    assert code == 0 and answer["status"] == "ok" and answer["method"] == "fit" and answer["rank"] == 30
    assert {s["sweep"] for s in answer["supporting"]} == {"middle", "small-large"}
    code, out, _ = cli("--d-model", "128", "--n-layers", str(L), "--n-heads", str(H), "--workspace", str(workspace))
    assert code == 0 and "r = 24" in out and "runs behind it" in out


def test_cli_from_one_sweep_and_refusal_exit_code(workspace):
    # d128 alone cannot answer d160: refused with exit code 3 and the sweep to run
    code, out, _ = cli("--d-model", "160", "--n-layers", str(L), "--n-heads", str(H), "--from", "middle",
                       "--workspace", str(workspace))
    assert code == 3 and "not enough evidence" in out and "d_model: 160" in out
    code, out, _ = cli("--d-model", "160", "--n-layers", str(L), "--n-heads", str(H), "--from", "middle",
                       "--from", "small-large", "--workspace", str(workspace), "--json")
    assert code == 0 and json.loads(out)["rank"] == 30


@pytest.mark.parametrize("args, message", [
    (["--n-heads", "5"], "error: --n-heads: expected a divisor of d_model (64), got 5"),
    (["--cache-budget", "2"], "error: --cache-budget: expected a fraction of MHA's KV cache in (0, 1], got 2.0"),
    (["--against", "gqa"], "error: --against: expected best or mha, got 'gqa'"),
    (["--from", "nope"], "error: --from: expected a sweep in"),
])
def test_cli_bad_input_is_one_line_and_exit_code_2(workspace, args, message):
    base = {"--d-model": "64", "--n-layers": str(L), "--n-heads": str(H)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    code, out, err = cli(*[x for kv in base.items() for x in kv], "--workspace", str(workspace))
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1 and out == ""


def test_cli_on_an_empty_workspace_refuses_without_creating_stores(tmp_path):
    code, out, _ = cli("--d-model", "64", "--n-layers", "2", "--n-heads", "4", "--workspace", str(tmp_path / "none"))
    assert code == 3 and "no finished trials" in out
    assert not (tmp_path / "none").exists()
