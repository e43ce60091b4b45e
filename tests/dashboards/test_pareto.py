"""Pareto fronts: non-dominated sorting, max-direction handling, grouping, and exact hypervolume."""
import itertools

import numpy as np
import pytest

from lrkv.dashboards.pareto import dominates, front_ranks, fronts, hypervolume, to_minimise

# -- dominance and sorting -----------------------------------------------------------------------


def test_dominates():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 3.0])
    assert dominates(a, b) and not dominates(b, a)
    assert not dominates(a, a)                                   # identical: neither dominates
    assert not dominates(np.array([1.0, 3.0]), np.array([2.0, 2.0]))  # a trade-off


def test_front_ranks_known_layers():
    points = np.array([
        [1, 5], [2, 3], [4, 1],          # front 0: a staircase
        [2, 5], [3, 4], [5, 2],          # front 1: each beaten by one of the above
        [6, 6],                          # front 2
    ], dtype=float)
    assert front_ranks(points).tolist() == [0, 0, 0, 1, 1, 1, 2]


def test_front_ranks_ties_and_duplicates_share_a_rank():
    points = np.array([[1, 2], [1, 2], [2, 1], [2, 2], [2, 2], [3, 3]], dtype=float)
    assert front_ranks(points).tolist() == [0, 0, 0, 1, 1, 2]


def test_front_ranks_weak_dominance_on_one_axis():
    # equal in one objective, better in the other: dominated
    points = np.array([[1, 1], [1, 2], [2, 1]], dtype=float)
    assert front_ranks(points).tolist() == [0, 1, 1]


def test_front_ranks_edge_cases():
    assert front_ranks(np.empty((0, 2))).tolist() == []
    assert front_ranks(np.array([[3.0, 4.0]])).tolist() == [0]
    chain = np.array([[i, i] for i in range(5)][::-1], dtype=float)
    assert front_ranks(chain).tolist() == [4, 3, 2, 1, 0]


def test_front_ranks_agree_with_brute_force_on_random_points():
    rng = np.random.default_rng(1)
    points = rng.integers(0, 6, size=(40, 3)).astype(float)  # small ints: many ties and duplicates
    ranks = front_ranks(points)
    for i, p in enumerate(points):
        # rank 0 ⇔ no point dominates it; rank k>0 ⇔ some point of rank k-1 dominates it and none of rank ≥ k does
        dominators = [ranks[j] for j, q in enumerate(points) if dominates(q, p)]
        assert (ranks[i] == 0) == (not dominators)
        if dominators:
            assert max(dominators) == ranks[i] - 1


def test_to_minimise_negates_max_objectives():
    out = to_minimise([[1.0, 2.0, 3.0]], ["min", "max", "minimize"])
    assert out.tolist() == [[1.0, -2.0, 3.0]]
    assert to_minimise([[1.0, 2.0]], ["maximize", "max"]).tolist() == [[-1.0, -2.0]]
    assert to_minimise([], ["min", "max"]).shape == (0, 2)
    # a max objective reverses which point is better
    pts = to_minimise([[1.0, 10.0], [1.0, 20.0]], ["min", "max"])
    assert front_ranks(pts).tolist() == [1, 0]


# -- fronts --------------------------------------------------------------------------------------


def row(size, bpb, cache, feasible=True, n=0):
    return {"size": size, "number": n, "values": {"val_bpb": bpb, "kv_cache_bytes": cache}, "feasible": feasible}


def test_fronts_group_by_size_and_sort():
    rows = [row("d64", 2.0, 100, n=0), row("d64", 1.5, 400, n=1), row("d64", 2.1, 400, n=2),   # 2 dominated
            row("d128", 1.2, 800, n=3), row("d128", 1.0, 1600, n=4), row("d128", 1.3, 200, n=5)]
    out = fronts(rows, {"val_bpb": "min", "kv_cache_bytes": "min"})
    assert list(out) == ["d128", "d64"]  # sorted group keys
    assert [r["number"] for r in out["d64"]] == [1, 0]           # sorted by objective values (val_bpb first)
    assert [r["number"] for r in out["d128"]] == [4, 3, 5]


def test_fronts_exclude_infeasible_rows():
    rows = [row("d64", 1.0, 100, feasible=False, n=0), row("d64", 2.0, 200, n=1), row("d64", 3.0, 300, n=2),
            {"size": "d64", "number": 3, "values": {"val_bpb": 2.5, "kv_cache_bytes": 100}}]  # no key: feasible
    out = fronts(rows, {"val_bpb": "min", "kv_cache_bytes": "min"})
    assert sorted(r["number"] for r in out["d64"]) == [1, 3]     # the infeasible 0 neither counts nor dominates
    only_infeasible = fronts([row("d32", 1.0, 1, feasible=False)], {"val_bpb": "min", "kv_cache_bytes": "min"})
    assert only_infeasible == {}


def test_fronts_respect_max_directions_and_custom_group():
    rows = [{"model": "a", "values": {"val_bpb": 1.0, "params": 10}},
            {"model": "a", "values": {"val_bpb": 1.0, "params": 20}}]
    assert [r["values"]["params"] for r in fronts(rows, {"val_bpb": "min", "params": "max"}, group="model")["a"]] == [20]
    assert [r["values"]["params"] for r in fronts(rows, {"val_bpb": "min", "params": "min"}, group="model")["a"]] == [10]


def test_fronts_keep_duplicates_together():
    rows = [row("d64", 1.0, 100, n=0), row("d64", 1.0, 100, n=1), row("d64", 2.0, 200, n=2)]
    assert sorted(r["number"] for r in fronts(rows, {"val_bpb": "min", "kv_cache_bytes": "min"})["d64"]) == [0, 1]


# -- hypervolume ---------------------------------------------------------------------------------


def test_hypervolume_by_hand_2d():
    # staircase (1,3), (2,2), (3,1) under (4,4): slabs of width 1 and heights 1, 2, 3 → 6
    assert hypervolume(np.array([[1, 3], [2, 2], [3, 1]], dtype=float), [4, 4]) == pytest.approx(6.0)
    assert hypervolume(np.array([[0, 0]], dtype=float), [2, 3]) == pytest.approx(6.0)
    # a dominated point adds nothing
    assert hypervolume(np.array([[1, 1], [2, 2]], dtype=float), [3, 3]) == pytest.approx(4.0)


def test_hypervolume_by_hand_3d():
    assert hypervolume(np.array([[1, 1, 1]], dtype=float), [2, 3, 4]) == pytest.approx(1 * 2 * 3)
    # minimisation boxes up to ref (2,2,2):
    # A=(0,1,1): 2·1·1 = 2; B=(1,0,1): 1·2·1 = 2; overlap [1,2]×[1,2]×[1,2] = 1 → 3
    assert hypervolume(np.array([[0, 1, 1], [1, 0, 1]], dtype=float), [2, 2, 2]) == pytest.approx(3.0)
    # add C=(1,1,0): 1·1·2 = 2, overlaps with the union so far in [1,2]^2×[1,2] = 1 → 4
    assert hypervolume(np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]], dtype=float), [2, 2, 2]) == pytest.approx(4.0)


def test_hypervolume_ignores_points_outside_the_reference():
    ref = [3.0, 3.0]
    inside = np.array([[1.0, 1.0]])
    assert hypervolume(inside, ref) == pytest.approx(4.0)
    for outside in ([3.0, 0.0], [0.0, 3.0], [4.0, -5.0], [5.0, 5.0]):  # on or beyond the reference in any axis
        assert hypervolume(np.vstack([inside, [outside]]), ref) == pytest.approx(4.0)
    assert hypervolume(np.array([[5.0, 5.0]]), ref) == 0.0
    assert hypervolume(np.empty((0, 2)), ref) == 0.0
    assert hypervolume(np.array([[1.0], [2.0]]), [4.0]) == pytest.approx(3.0)  # one objective


def exact_by_cells(points: np.ndarray, ref: np.ndarray) -> float:
    """Brute force on the grid the points' coordinates induce: a cell counts when a point dominates its corner."""
    axes = [np.unique(np.append(points[:, k][points[:, k] < ref[k]], ref[k])) for k in range(len(ref))]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        corner = np.array([a[i] for a, i in zip(axes, cell)])
        if np.any(np.all(points <= corner, axis=1)):
            total += np.prod([a[i + 1] - a[i] for a, i in zip(axes, cell)])
    return float(total)


def uniform_grid_estimate(points: np.ndarray, ref: np.ndarray, n: int = 60) -> float:
    g = (np.arange(n) + 0.5) / n
    cells = np.stack(np.meshgrid(*[g * r for r in ref], indexing="ij"), -1).reshape(-1, len(ref))
    covered = np.zeros(len(cells), bool)
    for p in points:
        covered |= np.all(cells >= p, axis=1)
    return float(covered.mean() * np.prod(ref))


@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_matches_brute_force_on_random_3d_points(seed):
    rng = np.random.default_rng(seed)
    points = rng.random((8, 3))
    ref = np.array([1.0, 1.0, 1.0])
    value = hypervolume(points, ref)
    assert value == pytest.approx(exact_by_cells(points, ref), rel=1e-12, abs=1e-12)
    assert value == pytest.approx(uniform_grid_estimate(points, ref), abs=0.02)
    assert 0.0 < value < 1.0


def test_hypervolume_is_monotone_when_adding_points():
    rng = np.random.default_rng(7)
    ref = np.array([1.0, 1.0, 1.0])
    points = np.empty((0, 3))
    previous = 0.0
    for p in rng.random((15, 3)) * 1.2:  # some fall outside the reference
        points = np.vstack([points, p])
        value = hypervolume(points, ref)
        assert value >= previous - 1e-12
        previous = value
    # order does not matter
    assert hypervolume(points[::-1], ref) == pytest.approx(previous)
    assert hypervolume(points[rng.permutation(len(points))], ref) == pytest.approx(previous)
