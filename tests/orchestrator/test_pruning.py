"""Frontier-fair early stopping: a trial stops only when a trial of its size that costs no more on every
cost objective already has a loss lower by more than the margin at the same number of tokens."""
import pytest

from lrkv.orchestrator.pruning import Curve, should_stop

MARGIN = 0.05


def curve(costs, points, group="d64") -> Curve:
    c = Curve(group=group, costs=tuple(costs))
    for tokens, loss in points:
        c.add(tokens, loss)
    return c


# -- Curve ---------------------------------------------------------------------------------------


def test_at_exact_and_interpolated_points():
    c = curve([1], [(100, 3.0), (200, 2.0), (400, 1.0)])
    assert c.at(100) == 3.0 and c.at(200) == 2.0 and c.at(400) == 1.0
    assert c.at(150) == pytest.approx(2.5)
    assert c.at(300) == pytest.approx(1.5)
    assert c.at(250) == pytest.approx(1.75)


def test_at_outside_the_curve_is_none():
    c = curve([1], [(100, 3.0), (200, 2.0)])
    assert c.at(201) is None and c.at(10_000) is None   # beyond its end: unknown, not extrapolated
    assert c.at(99) is None and c.at(0) is None          # before its first evaluation
    assert Curve("d64", (1,)).at(100) is None            # no points at all


def test_add_appends_in_order():
    c = curve([1], [(100, 3.0), (200, 2.5), (300, 2.0)])
    assert c.tokens == [100, 200, 300] and c.losses == [3.0, 2.5, 2.0]


def test_rerun_from_step_one_overwrites_old_points():
    c = curve([1], [(100, 3.0), (200, 2.5), (300, 2.0)])
    c.add(100, 3.3)  # the retry starts again: its first evaluation replaces everything from there on
    assert c.tokens == [100] and c.losses == [3.3]
    assert c.at(200) is None
    c.add(200, 2.9)
    assert c.tokens == [100, 200] and c.losses == [3.3, 2.9]


def test_rerun_from_an_earlier_point_keeps_the_points_before_it():
    c = curve([1], [(100, 3.0), (200, 2.5), (300, 2.0)])
    c.add(200, 2.7)
    assert c.tokens == [100, 200] and c.losses == [3.0, 2.7]
    c.add(150, 2.8)  # between evaluations: everything from 150 on goes
    assert c.tokens == [100, 150] and c.losses == [3.0, 2.8]


# -- should_stop ---------------------------------------------------------------------------------


def test_stops_a_bigger_cache_trial_beaten_by_a_cheaper_one():
    cheap = curve([100], [(100, 2.5), (200, 2.0)])
    big = curve([400], [(100, 2.6), (200, 2.2)])
    reason = should_stop(big, [cheap, big], MARGIN, grace_tokens=0)
    assert reason is not None and "200 tokens" in reason and "2.0000" in reason and "2.2000" in reason


def test_never_stops_the_trial_with_the_smallest_cache():
    smallest = curve([100], [(100, 9.0), (200, 9.0)])  # dreadful loss, but nothing costs less
    others = [curve([200], [(100, 1.0), (200, 1.0)]), curve([400], [(100, 0.5), (200, 0.5)])]
    assert should_stop(smallest, [smallest, *others], MARGIN, grace_tokens=0) is None


def test_does_not_stop_when_the_better_trial_costs_more_on_any_cost():
    # costs: (cache bytes, FLOPs). The better trial has a smaller cache but more FLOPs.
    candidate = curve([400, 1000], [(100, 3.0)])
    better = curve([100, 1001], [(100, 1.0)])
    assert should_stop(candidate, [better], MARGIN, grace_tokens=0) is None
    # equal on every cost is "no more": it may stop the candidate
    twin = curve([400, 1000], [(100, 1.0)])
    assert should_stop(candidate, [twin], MARGIN, grace_tokens=0) is not None


def test_margin_is_strict():
    candidate = curve([400], [(100, 2.0)])
    assert should_stop(candidate, [curve([100], [(100, 1.96)])], MARGIN, grace_tokens=0) is None   # within margin
    assert should_stop(candidate, [curve([100], [(100, 1.95)])], 0.0625, grace_tokens=0) is None  # exactly margin
    assert should_stop(candidate, [curve([100], [(100, 1.9375)])], 0.0625, grace_tokens=0) is None
    assert should_stop(candidate, [curve([100], [(100, 1.93)])], 0.0625, grace_tokens=0) is not None
    assert should_stop(candidate, [curve([100], [(100, 1.99)])], 0.0, grace_tokens=0) is not None


def test_respects_grace_tokens():
    cheap = curve([100], [(100, 1.0), (200, 1.0), (300, 1.0)])
    big = curve([400], [(100, 3.0), (200, 3.0)])
    assert should_stop(big, [cheap], MARGIN, grace_tokens=300) is None   # 200 < 300: too early
    big.add(300, 3.0)
    assert should_stop(big, [cheap], MARGIN, grace_tokens=300) is not None  # at the grace point it may stop
    assert should_stop(curve([400], []), [cheap], MARGIN, grace_tokens=0) is None  # no point yet


def test_compares_only_within_the_same_group():
    big = curve([400], [(100, 3.0)], group="d128")
    cheap_other_size = curve([100], [(100, 1.0)], group="d64")
    assert should_stop(big, [cheap_other_size], MARGIN, grace_tokens=0) is None
    cheap_same_size = curve([100], [(100, 1.0)], group="d128")
    assert should_stop(big, [cheap_other_size, cheap_same_size], MARGIN, grace_tokens=0) is not None


def test_compares_at_the_candidates_tokens_by_interpolation():
    cheap = curve([100], [(100, 3.0), (300, 1.0)])  # at 200 tokens: 2.0 by interpolation
    assert should_stop(curve([400], [(200, 2.04)]), [cheap], MARGIN, grace_tokens=0) is None   # 2.0 ≥ 2.04 − .05
    reason = should_stop(curve([400], [(200, 2.1)]), [cheap], MARGIN, grace_tokens=0)
    assert reason is not None and "2.0000" in reason
    # the candidate's latest point is what counts, not an earlier one where it was behind
    catching_up = curve([400], [(100, 9.0), (200, 2.0)])
    assert should_stop(catching_up, [cheap], MARGIN, grace_tokens=0) is None


def test_a_cheaper_trial_that_has_not_reached_the_tokens_yet_does_not_stop_it():
    cheap = curve([100], [(100, 1.0)])     # only evaluated at 100 so far
    big = curve([400], [(100, 2.9), (200, 2.8)])
    assert should_stop(big, [cheap], MARGIN, grace_tokens=0) is None  # no loss at 200: not compared
    cheap.add(200, 1.0)
    assert should_stop(big, [cheap], MARGIN, grace_tokens=0) is not None


def test_the_candidate_in_others_is_ignored():
    c = curve([100], [(100, 2.0)])
    assert should_stop(c, [c], 0.0, grace_tokens=0) is None
    assert should_stop(c, [], 0.0, grace_tokens=0) is None
