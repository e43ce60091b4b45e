"""Pareto fronts: non-dominated sorting and hypervolume over finished trials, per model size.

All objectives are turned into minimisation first (`max` objectives are negated), so one dominance
test serves every spec. Identical points do not dominate each other: ties share a front.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def to_minimise(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    sign = np.array([1.0 if d.startswith("min") else -1.0 for d in directions])
    return np.asarray(values, dtype=float).reshape(-1, len(directions)) * sign


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def front_ranks(points: np.ndarray) -> np.ndarray:
    """Non-dominated sorting: rank 0 is the Pareto front, rank 1 the front once it is removed, ..."""
    n = len(points)
    ranks = np.full(n, -1)
    remaining = set(range(n))
    rank = 0
    while remaining:
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining if j != i)}
        for i in front:
            ranks[i] = rank
        remaining -= front
        rank += 1
    return ranks


def hypervolume(points: np.ndarray, reference: Sequence[float]) -> float:
    """Volume dominated by `points` (minimisation) and bounded by `reference`; points not strictly
    better than the reference in every objective add nothing. Exact, by slicing on the last axis."""
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, len(ref))
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    if len(ref) == 1:
        return float(ref[0] - pts[:, 0].min())
    pts = pts[np.argsort(pts[:, -1])]
    volume = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        if upper > pts[i, -1]:
            volume += hypervolume(pts[: i + 1, :-1], ref[:-1]) * (upper - pts[i, -1])
    return volume


def fronts(rows: list[dict], objectives: dict[str, str], group: str = "size") -> dict[str, list[dict]]:
    """The Pareto-optimal rows of each group; rows carry `values` (a dict by objective) and `feasible`."""
    names = list(objectives)
    out: dict[str, list[dict]] = {}
    for key in sorted({r[group] for r in rows}):
        members = [r for r in rows if r[group] == key and r.get("feasible", True)]
        if not members:
            continue
        pts = to_minimise([[r["values"][n] for n in names] for r in members], list(objectives.values()))
        ranks = front_ranks(pts)
        out[key] = sorted((r for r, k in zip(members, ranks) if k == 0), key=lambda r: [r["values"][n] for n in names])
    return out
