"""Frontier-fair early stopping.

Optuna's pruners and Ray Tune's schedulers rank trials on one metric, so in a loss-vs-cache sweep they
kill low-rank trials for a loss that their smaller cache pays for. The rule here stops a trial only
when it is already beaten where it matters: some other trial of the same model size that costs no
more (cache bytes, and every other cost objective known before training: FLOPs, parameters) had a
validation loss lower by more than `margin` at the same number of training tokens. A trial whose cache
no other trial matches or undercuts is never stopped.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field


@dataclass
class Curve:
    """One trial's validation curve and its (analytic) costs."""
    group: str                    # model size: trials are compared within it
    costs: tuple[float, ...]      # cost objectives, lower is better
    tokens: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def add(self, tokens: int, loss: float) -> None:
        """Record a point; a re-run (after a retry) overwrites the points from its start."""
        i = bisect_left(self.tokens, tokens)
        del self.tokens[i:], self.losses[i:]
        self.tokens.append(tokens)
        self.losses.append(loss)

    def at(self, tokens: int) -> float | None:
        """Loss at `tokens`, linearly interpolated between evaluations; None beyond the curve."""
        i = bisect_left(self.tokens, tokens)
        if i == len(self.tokens):
            return None
        if self.tokens[i] == tokens:
            return self.losses[i]
        if i == 0:
            return None
        t0, t1 = self.tokens[i - 1], self.tokens[i]
        return self.losses[i - 1] + (self.losses[i] - self.losses[i - 1]) * (tokens - t0) / (t1 - t0)


def should_stop(candidate: Curve, others: list[Curve], margin: float, grace_tokens: int) -> str | None:
    """The reason to stop `candidate` at its latest point, or None to let it run."""
    if not candidate.tokens or candidate.tokens[-1] < grace_tokens:
        return None
    tokens, loss = candidate.tokens[-1], candidate.losses[-1]
    for other in others:
        if other is candidate or other.group != candidate.group:
            continue
        if any(o > c for o, c in zip(other.costs, candidate.costs)):
            continue  # costs more somewhere: its lower loss may be what it pays for
        their = other.at(tokens)
        if their is not None and their < loss - margin:
            return f"at {tokens} tokens, a trial costing no more had loss {their:.4f} < {loss:.4f} − {margin}"
    return None
