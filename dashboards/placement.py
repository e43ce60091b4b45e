"""Where a sweep's trials ran: the GPUs Ray assigned each trial, how busy each GPU was, and any
whole-GPU trials that overlapped on one card (which must never happen).

Each finished trial's record carries `gpu_ids` (Ray's assignment), `cuda_visible_devices` (what the
worker saw), `node_id`, and the wall-clock `started_at`/`ended_at` of the attempt that produced it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import optuna


@dataclass(frozen=True)
class Placement:
    number: int
    node: str | None
    gpus: tuple[str, ...]
    visible: str | None
    start: float
    end: float

    def cards(self) -> list[tuple[str | None, str]]:
        return [(self.node, gpu) for gpu in self.gpus]


def placements(study: optuna.Study) -> list[Placement]:
    """One entry per trial that trained (complete or pruned), in trial order."""
    found = []
    for t in study.get_trials(deepcopy=False):
        record = t.user_attrs.get("record") or {}
        if "started_at" in record and "ended_at" in record:
            found.append(Placement(t.number, record.get("node_id"), tuple(record.get("gpu_ids") or ()),
                                   record.get("cuda_visible_devices"), record["started_at"], record["ended_at"]))
    return found


def busy_fractions(items: list[Placement], start: float, end: float) -> dict[tuple[str | None, str], float]:
    """Per GPU (node, id): the time some trial ran on it (overlaps counted once) ÷ (end − start)."""
    spans = defaultdict(list)
    for p in items:
        for card in p.cards():
            spans[card].append((max(p.start, start), min(p.end, end)))
    return {card: _union(intervals) / (end - start) for card, intervals in sorted(spans.items(), key=str)}


def shared_cards(items: list[Placement]) -> list[tuple[int, int, tuple[str | None, str]]]:
    """Pairs of trials that ran on the same GPU at the same time: (trial, trial, card)."""
    clashes = []
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if a.start < b.end and b.start < a.end:
                clashes += [(a.number, b.number, card) for card in set(a.cards()) & set(b.cards())]
    return clashes


def _union(intervals: list[tuple[float, float]]) -> float:
    total, reach = 0.0, float("-inf")
    for lo, hi in sorted(intervals):
        if hi > reach:
            total += hi - max(lo, reach)
            reach = hi
    return total
