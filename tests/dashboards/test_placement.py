"""Placement analysis: per-GPU busy time and whole-GPU trials that shared a card."""
import pytest

from lrkv.dashboards.placement import Placement, busy_fractions, shared_cards


def at(number, gpus, start, end, node="n0"):
    return Placement(number, node, tuple(gpus), ",".join(gpus), start, end)


def test_busy_time_counts_overlaps_once():
    items = [at(0, ["0"], 0, 4), at(1, ["0"], 2, 6), at(2, ["1"], 1, 2), at(3, ["1"], 8, 12)]
    busy = busy_fractions(items, 0, 10)  # the window cuts trial 3 at 10
    assert busy == {("n0", "0"): pytest.approx(0.6), ("n0", "1"): pytest.approx(0.3)}


def test_shared_cards_are_overlapping_trials_on_one_gpu():
    items = [at(0, ["0"], 0, 4), at(1, ["1"], 0, 4), at(2, ["0"], 4, 8),  # back to back: no clash
             at(3, ["1"], 3, 5), at(4, ["1"], 0, 1, node="n1")]           # another node's GPU 1
    assert shared_cards(items) == [(1, 3, ("n0", "1"))]
