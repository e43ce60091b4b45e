"""Rank recommendations: for a model size, the smallest LRKV rank r whose validation loss is within a
tolerance of the best (or of MHA), under an optional KV-cache budget — or a refusal that says what
evidence is missing and what sweep would supply it.

Everything is measured as a *gap*: an LRKV trial's validation bits per byte minus its reference's,
where the reference is the best finished trial of any kind at the same size in the same sweep
(`against="best"`) or the best finished MHA trial there (`against="mha"`). Gaps are taken within one
sweep, so sweeps with different token budgets or data can be pooled; ranks are compared as r/d_h.
Several trials at one (sweep, size, rank) (learning rates, retries) count once, by the best.

The fit, over every gap of every swept size:
    gap(x, z) = Σ_k (a_k + b_k·(z − z̄))·(1 − x)^k,  k = 0, 1, 2,   x = r/d_h,  z = log2(n_layers·d_model²)
i.e. a quadratic in 1 − x per size whose coefficients move linearly with the log of the model's scale
(layers × width², the non-embedding parameter count up to a constant). Terms are dropped (quadratic
ones first) until the design has full rank and at least MIN_DOF residual degrees of freedom, so that
σ² = RSS/dof estimates the run-to-run noise (plus any misfit: a poor fit widens intervals instead of
hiding); the coefficient covariance is σ²(XᵀX)⁻¹ and intervals are two-sided 95 % with Student's t.

- **A swept size** (same d_model, n_layers, n_heads, d_h as a sweep's size) is answered from its runs:
  the smallest swept rank under the budget whose measured gap is within the tolerance. The rank is
  known to the sweep's resolution, so the answer carries the interval (largest failing swept rank,
  answer]; the gap carries the noise σ/√k of a mean over k sweeps. If that noise exceeds the
  tolerance the sweep cannot tell the ranks apart: refused. If no swept rank passes but the budget
  allows ranks nobody ran, the fit must rule those out at its 95 % bound before the answer is "none".
- **An unswept size** is answered from the fit: the smallest integer r under the budget whose
  predicted gap is within the tolerance, with an interval from the smallest r whose *lower* bound
  is within it to the smallest whose *upper* bound is.
- **Refusal** ("thin"): no usable runs or references (e.g. MHA pruned, with `against="mha"`); an
  unswept size with fewer than two swept sizes or too few points to estimate σ, or further than
  MAX_EXTRAPOLATION (in z, i.e. doublings of layers × width²) outside the swept range; a rank
  interval that reaches past the budget or spans more than MAX_SPREAD of d_h. The refusal names a
  sweep (size, rank fractions, baselines, pruning) that would settle it.

Pure logic: `points_from_study` reads a study once; `recommend` takes plain Points, so tests build
sweeps whose answer is known.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import optuna
from optuna.trial import TrialState

from lrkv.kernels import AttentionSpec, ConfigError

MIN_DOF = 2                 # residual degrees of freedom needed to estimate the noise σ
MAX_EXTRAPOLATION = 1.0     # how far (in log2 of layers × width²) outside the swept sizes the fit may answer
MAX_SPREAD = 0.5            # widest acceptable 95 % rank interval, as a fraction of d_h
CONFIDENCE = 0.95
DEFAULT_FRACTIONS = (0.0, 0.125, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Point:
    """One finished trial, as `recommend` sees it."""
    sweep: str
    size: str
    number: int
    run_id: str | None
    kind: str
    label: str
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int
    rank: int
    val_bpb: float
    state: str = "complete"  # complete | pruned (pruned ones only explain a missing reference)
    tokens: int = 0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.d_model, self.n_layers, self.n_heads, self.head_dim)


def points_from_study(study: optuna.Study) -> list[Point]:
    """COMPLETE and PRUNED trials that carry their config and metrics record (as the driver writes them)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        config, record = t.user_attrs.get("config"), t.user_attrs.get("record")
        if not config or not record or record.get("val_bpb") is None:
            continue
        att = config["model"]["attention"]
        head_dim = att.get("head_dim") or att["d_model"] // att["n_heads"]
        out.append(Point(study.study_name, t.params.get("size", "?"), t.number, t.user_attrs.get("mlflow_run_id"),
                         att["kind"], t.user_attrs.get("label") or att["kind"], att["d_model"],
                         config["model"]["n_layers"], att["n_heads"], head_dim, att.get("rank") or 0,
                         float(record["val_bpb"]), t.state.name.lower(), int(record.get("tokens") or 0)))
    return out


@dataclass(frozen=True)
class Query:
    """The size asked about, the budget (fraction of MHA's KV cache) and the tolerance (bits per byte)."""
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int | None = None
    cache_budget: float | None = None
    tolerance: float = 0.02
    against: str = "best"

    def __post_init__(self):
        for name in ("d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(name, "a positive integer", value)
        spec = AttentionSpec("mha", self.d_model, self.n_heads, self.head_dim)  # checks the shape
        object.__setattr__(self, "head_dim", spec.head_dim)
        if self.cache_budget is not None and not (0 < self.cache_budget <= 1):
            raise ConfigError("cache_budget", "a fraction of MHA's KV cache in (0, 1]", self.cache_budget)
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ConfigError("tolerance", "a non-negative number of bits per byte", self.tolerance)
        if self.against not in ("best", "mha"):
            raise ConfigError("against", "best or mha", self.against)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.d_model, self.n_layers, self.n_heads, self.head_dim)

    @property
    def z(self) -> float:
        return scale(self.d_model, self.n_layers)

    def cache_fraction(self, rank: int) -> float:
        return AttentionSpec("lrkv", self.d_model, self.n_heads, self.head_dim, rank=rank).cache_ratio_vs_mha()

    def allowed(self, rank: int) -> bool:
        return self.cache_budget is None or self.cache_fraction(rank) <= self.cache_budget + 1e-12

    def max_rank(self) -> int | None:
        """The largest rank under the budget (None: not even r = 0 fits)."""
        fitting = [r for r in range(self.head_dim + 1) if self.allowed(r)]
        return fitting[-1] if fitting else None


def scale(d_model: int, n_layers: int) -> float:
    """The size coordinate of the fit: log2 of layers × width² (non-embedding parameters, up to a constant)."""
    return math.log2(n_layers * d_model ** 2)


@dataclass
class Cell:
    """One size in one sweep: its reference trial and, per LRKV rank, the best trial and its gap."""
    sweep: str
    size: str
    shape: tuple[int, int, int, int]
    reference: Point | None
    reason: str | None
    trials: dict[int, Point] = field(default_factory=dict)
    gaps: dict[int, float] = field(default_factory=dict)

    @property
    def z(self) -> float:
        return scale(self.shape[0], self.shape[1])

    @property
    def head_dim(self) -> int:
        return self.shape[3]


def cells(points: Iterable[Point], against: str = "best") -> list[Cell]:
    """Group by (sweep, size); the reference and, per rank, the best LRKV trial (several at one rank
    are learning rates or retries: the best is the configuration one would deploy)."""
    groups: dict[tuple[str, str], list[Point]] = {}
    for p in points:
        groups.setdefault((p.sweep, p.size), []).append(p)
    out = []
    for (sweep, size), members in sorted(groups.items()):
        done = [p for p in members if p.state == "complete"]
        pool = done if against == "best" else [p for p in done if p.kind == "mha"]
        reference = min(pool, key=lambda p: (p.val_bpb, p.number)) if pool else None
        reason = None
        if reference is None:
            pruned = [p for p in members if p.kind == "mha" and p.state == "pruned"]
            reason = (f"MHA was pruned (trial {', '.join(str(p.number) for p in pruned)}) before it finished"
                      if pruned and against == "mha" else
                      "no finished MHA trial" if against == "mha" else "no finished trial")
        cell = Cell(sweep, size, members[0].shape, reference, reason)
        for p in sorted(done, key=lambda p: (p.val_bpb, p.number)):
            if p.kind == "lrkv" and p.rank not in cell.trials:
                cell.trials[p.rank] = p
        if reference is not None:
            cell.gaps = {r: p.val_bpb - reference.val_bpb for r, p in sorted(cell.trials.items())}
        out.append(cell)
    return out


# -- the fit ---------------------------------------------------------------------------------------
TERMS_WITH_SIZE = (("1", "u", "u2", "z", "zu", "zu2"), ("1", "u", "u2", "z", "zu"), ("1", "u", "z", "zu"),
                   ("1", "u", "z"))
TERMS_ONE_SIZE = (("1", "u", "u2"), ("1", "u"))


def _features(x: np.ndarray, dz: np.ndarray, terms: Sequence[str]) -> np.ndarray:
    u = 1.0 - x
    columns = {"1": np.ones_like(u), "u": u, "u2": u ** 2, "z": dz, "zu": dz * u, "zu2": dz * u ** 2}
    return np.stack([columns[t] for t in terms], axis=1)


@dataclass
class Fit:
    """Least-squares fit of the gap in x = r/d_h and z = log2(layers × width²); see the module docstring."""
    terms: tuple[str, ...]
    coef: np.ndarray
    cov: np.ndarray
    sigma: float
    dof: int
    n: int
    z_mean: float
    z_range: tuple[float, float]
    sizes: list[str]

    @property
    def with_size(self) -> bool:
        return "z" in self.terms

    def predict(self, x: np.ndarray | float, z: float) -> tuple[np.ndarray, np.ndarray]:
        """Predicted mean gap and its standard error at r/d_h = x (array) for scale z."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        f = _features(x, np.full_like(x, z - self.z_mean), self.terms)
        return f @ self.coef, np.sqrt(np.einsum("ij,jk,ik->i", f, self.cov, f))

    def quantile(self) -> float:
        from scipy.stats import t
        return float(t.ppf(0.5 + CONFIDENCE / 2, self.dof))

    def summary(self) -> dict:
        return {"terms": list(self.terms), "coef": self.coef.round(6).tolist(), "sigma": self.sigma, "dof": self.dof,
                "points": self.n, "sizes": self.sizes, "z_range": list(self.z_range), "model":
                "gap = Σ_k (a_k + b_k·(z − z̄))·(1 − r/d_h)^k, z = log2(n_layers·d_model²)"}


def fit_gaps(all_cells: Sequence[Cell]) -> Fit | None:
    """The fit over every (cell, rank) gap; None when no term set leaves MIN_DOF residual degrees of freedom."""
    used = [c for c in all_cells if c.gaps]
    xs = np.array([r / c.head_dim for c in used for r in c.gaps], dtype=float)
    zs = np.array([c.z for c in used for _ in c.gaps], dtype=float)
    ys = np.array([g for c in used for g in c.gaps.values()], dtype=float)
    if len(ys) == 0:
        return None
    z_mean = float(zs.mean())
    several = len({round(z, 9) for z in zs}) >= 2
    for terms in TERMS_WITH_SIZE if several else TERMS_ONE_SIZE:
        X = _features(xs, zs - z_mean, terms)
        dof = len(ys) - X.shape[1]
        if dof < MIN_DOF or np.linalg.matrix_rank(X) < X.shape[1]:
            continue
        coef, *_ = np.linalg.lstsq(X, ys, rcond=None)
        residual = ys - X @ coef
        sigma = float(np.sqrt(residual @ residual / dof))
        cov = sigma ** 2 * np.linalg.inv(X.T @ X)
        return Fit(terms, coef, cov, sigma, dof, len(ys), z_mean, (float(zs.min()), float(zs.max())),
                   [f"{c.sweep}:{c.size}" for c in used])
    return None


# -- the answer ------------------------------------------------------------------------------------
@dataclass
class Recommendation:
    """status: ok (a rank), none (the evidence says no rank under the budget is within tolerance) or
    thin (refused: `reason` says what is missing and `suggestion` what sweep would settle it)."""
    status: str
    query: dict
    method: str | None = None           # direct | fit
    rank: int | None = None
    rank_frac: float | None = None
    cache_fraction: float | None = None
    rank_interval: tuple[int, int] | None = None
    gap: float | None = None             # bits per byte over the reference (measured or predicted)
    gap_se: float | None = None          # standard error of a predicted gap; the noise σ for a measured one
    gap_interval: tuple[float, float] | None = None
    reference: str = "best"
    supporting: list[dict] = field(default_factory=list)
    reason: str | None = None
    suggestion: dict | None = None
    fit: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def recommend(points: Sequence[Point], query: Query) -> Recommendation:
    """The smallest rank within `query.tolerance` of the reference under the budget, or why not."""
    all_cells = cells(points, query.against)
    usable = [c for c in all_cells if c.gaps]
    fit = fit_gaps(usable)
    base = {"query": asdict(query), "reference": query.against, "fit": fit.summary() if fit else None}
    if query.max_rank() is None:
        return Recommendation("none", **base, reason=(
            f"even r = 0 (the shared K/V alone) caches {query.cache_fraction(0):.4g} of MHA's, above the budget "
            f"{query.cache_budget}"))
    here = [c for c in all_cells if c.shape == query.shape]
    if here:
        return _direct(query, here, fit, base)
    return _from_fit(query, all_cells, fit, base)


def _support(p: Point, role: str, gap: float | None = None) -> dict:
    return {"sweep": p.sweep, "size": p.size, "trial": p.number, "run_id": p.run_id, "label": p.label, "rank": p.rank,
            "val_bpb": p.val_bpb, "gap": gap, "role": role}


def _direct(query: Query, here: list[Cell], fit: Fit | None, base: dict) -> Recommendation:
    """A swept size: the measured gaps decide (averaged over the sweeps that swept the same size)."""
    usable = [c for c in here if c.gaps]
    if not usable:
        reasons = "; ".join(f"{c.sweep}:{c.size}: {c.reason or 'no finished LRKV trial'}" for c in here)
        return Recommendation("thin", **base, method="direct", reason=f"this size was swept but {reasons}",
                              suggestion=suggest(query, why="re-run this size with its reference",
                                                 mha_pruned="pruned" in reasons))
    by_rank: dict[int, list[tuple[Cell, float]]] = {}
    for c in usable:
        for r, g in c.gaps.items():
            by_rank.setdefault(r, []).append((c, g))
    gap = {r: float(np.mean([g for _, g in v])) for r, v in sorted(by_rank.items())}
    sigma = fit.sigma if fit else None
    # A gap here is a mean over the sweeps that ran this rank: its noise shrinks with their number.
    se = {r: sigma / math.sqrt(len(v)) if sigma is not None else None for r, v in by_rank.items()}
    top = query.max_rank()
    allowed = [r for r in gap if query.allowed(r)]
    passing = [r for r in allowed if gap[r] <= query.tolerance]
    references = [_support(c.reference, "reference") for c in usable]

    def runs(*pairs: tuple[int | None, str]) -> list[dict]:
        """The runs at these ranks with their roles, then each reference not among them."""
        out = [_support(c.trials[r], role, g) for r, role in pairs if r is not None for c, g in by_rank[r]]
        for ref in references:
            same = next((s for s in out if (s["sweep"], s["trial"]) == (ref["sweep"], ref["trial"])), None)
            if same:
                same["role"] += " and reference"
            else:
                out.append(ref)
        return out

    def too_noisy(r: int, verdict: str) -> Recommendation | None:
        """Refuse when the noise on the deciding gap exceeds the tolerance: the verdict could be noise."""
        if se[r] is None or se[r] <= query.tolerance:
            return None
        return Recommendation("thin", **base, method="direct", supporting=runs((r, verdict)), gap=gap[r], gap_se=se[r],
                              reason=(f"single runs scatter by σ = {sigma:.4f} bpb about the fit, so the measured gap "
                                      f"at r = {r} ({gap[r]:+.4f}) is uncertain by {se[r]:.4f}, more than the "
                                      f"tolerance {query.tolerance}: the sweep cannot tell the ranks apart"),
                              suggestion=suggest(query, sorted({x / query.head_dim for x in gap if query.allowed(x)}),
                                                 "repeat these ranks with more tokens per trial or other seeds",
                                                 noisy=True))

    if not passing:
        closest = min(allowed, key=lambda r: (gap[r], r)) if allowed else None
        highest = max(allowed, default=-1)
        if top is not None and top > highest and fit is not None:  # the budget allows ranks nobody ran:
            untested = np.arange(highest + 1, top + 1)               # the fit may still rule them out
            mean, spread = fit.predict(untested / query.head_dim, query.z)
            if np.all(mean - fit.quantile() * spread > query.tolerance):
                return too_noisy(closest, "closest") or Recommendation(
                    "none", **base, method="direct", supporting=runs((closest, "closest")), gap=gap[closest],
                    gap_se=se[closest], reason=(
                        f"no swept rank under the budget is within {query.tolerance} bpb of the {query.against} "
                        f"(closest: r = {closest}, gap {gap[closest]:+.4f}), and the fit puts the unswept ranks "
                        f"{highest + 1}..{top} outside it too (lower {CONFIDENCE:.0%} bound ≥ "
                        f"{float(np.min(mean - fit.quantile() * spread)):+.4f})"))
        if top is not None and top > highest:
            return Recommendation("thin", **base, method="direct", supporting=runs((closest, "closest")), reason=(
                f"no swept rank under the budget is within {query.tolerance} bpb"
                + (f" (closest: r = {closest}, gap {gap[closest]:+.4f})" if closest is not None else "")
                + f", and ranks {highest + 1}..{top}, which the budget allows, were not swept"),
                suggestion=suggest(query, _grid(highest + 1, top, query.head_dim),
                                   "sweep the ranks the budget allows that were not tried"))
        return too_noisy(closest, "closest") or Recommendation(
            "none", **base, method="direct", supporting=runs((closest, "closest")), gap=gap[closest],
            gap_se=se[closest], reason=(f"no rank under the budget is within {query.tolerance} bpb of the "
                                        f"{query.against}: the closest is r = {closest} with gap {gap[closest]:+.4f}"))
    best = passing[0]
    below = [r for r in gap if r < best]  # all allowed (the cache grows with r) and all outside the tolerance
    lower = max(below) + 1 if below else 0
    refused = too_noisy(best, "smallest passing rank")
    if refused:
        return refused
    warnings = []
    worse = [r for r in allowed if r > best and se[r] is not None and gap[r] > query.tolerance + 2 * se[r]]
    if worse:
        warnings.append(f"larger swept ranks {worse} miss the tolerance by more than 2σ ({sigma:.4f}): single runs "
                        "are noisy here; replicate seeds before trusting the exact rank")
    if (best - lower) / query.head_dim > 0.25:
        warnings.append(f"the sweep only brackets the answer to ranks {lower}..{best}; sweep ranks in between to "
                        "narrow it")
    if sigma is None:
        warnings.append("the noise of single runs is unknown (too few runs for a fit): the gap has no error bar")
    q = fit.quantile() if fit else None
    return Recommendation(
        "ok", **base, method="direct", rank=best, rank_frac=best / query.head_dim,
        cache_fraction=query.cache_fraction(best), rank_interval=(lower, best), gap=gap[best], gap_se=se[best],
        gap_interval=(gap[best] - q * se[best], gap[best] + q * se[best]) if q is not None else None,
        supporting=runs((best, "answer"), (max(below) if below else None, "largest failing rank below")),
        warnings=warnings)


def _from_fit(query: Query, all_cells: list[Cell], fit: Fit | None, base: dict) -> Recommendation:
    """An unswept size: the fit across swept sizes, or a refusal naming what would settle it."""
    usable = [c for c in all_cells if c.gaps]
    distinct = sorted({(c.shape[0], c.shape[1]) for c in usable})
    if not usable:
        why = "; ".join(f"{c.sweep}:{c.size}: {c.reason or 'no finished LRKV trial'}" for c in all_cells)
        return Recommendation("thin", **base, reason=f"no usable runs ({why or 'no finished trials at all'})",
                              suggestion=suggest(query, why="no sweep has runs to fit",
                                                 mha_pruned="pruned" in why))
    if fit is None or not fit.with_size:
        return Recommendation("thin", **base, reason=(
            f"an unswept size needs a fit across at least two swept sizes with enough points to estimate the noise; "
            f"have {len(distinct)} size(s) ({', '.join(f'{d}×{n}' for d, n in distinct)}, width × layers) "
            f"and {sum(len(c.gaps) for c in usable)} LRKV gaps"),
            suggestion=suggest(query, why="sweep this size itself (a direct answer) or more sizes around it"))
    low, high = fit.z_range
    if not (low - MAX_EXTRAPOLATION <= query.z <= high + MAX_EXTRAPOLATION):
        side = "above" if query.z > high else "below"
        return Recommendation("thin", **base, method="fit", reason=(
            f"this size (log2 layers·width² = {query.z:.2f}) is {side} the swept range [{low:.2f}, {high:.2f}] "
            f"by more than {MAX_EXTRAPOLATION}: extrapolating the fit that far would be a guess"),
            suggestion=suggest(query, why="sweep this size, or one beyond it, so the fit brackets it"))
    ranks = np.arange(query.head_dim + 1)
    allowed = np.array([query.allowed(int(r)) for r in ranks])
    mean, se = fit.predict(ranks / query.head_dim, query.z)
    q = fit.quantile()
    lower, upper = mean - q * se, mean + q * se

    def first(mask: np.ndarray) -> int | None:
        hits = np.flatnonzero(mask & allowed)
        return int(hits[0]) if len(hits) else None

    r_est, r_lo, r_hi = first(mean <= query.tolerance), first(lower <= query.tolerance), first(upper <= query.tolerance)
    top = query.max_rank()
    support = _fit_support(usable, query, (r_est if r_est is not None else top) / query.head_dim)
    at = r_est if r_est is not None else top
    detail = dict(gap=float(mean[at]), gap_se=float(se[at]), gap_interval=(float(lower[at]), float(upper[at])))
    if r_lo is None:
        return Recommendation("none", **base, method="fit", supporting=support, **detail, reason=(
            f"the fit puts every rank under the budget outside {query.tolerance} bpb of the {query.against}, even at "
            f"its {CONFIDENCE:.0%} lower bound (at r = {top}: gap {mean[top]:+.4f} ± {q * se[top]:.4f})"))
    if r_hi is None or r_est is None:
        return Recommendation("thin", **base, method="fit", supporting=support, **detail, reason=(
            f"the fit cannot confirm any rank under the budget: at r = {top} the gap is {mean[top]:+.4f} "
            f"± {q * se[top]:.4f} ({CONFIDENCE:.0%}) against a tolerance of {query.tolerance}"),
            suggestion=suggest(query, _grid(r_lo, top, query.head_dim),
                               "sweep this size around the ranks the fit allows"))
    if (r_hi - r_lo) / query.head_dim > MAX_SPREAD:
        return Recommendation("thin", **base, method="fit", rank_interval=(r_lo, r_hi), supporting=support, **detail,
                              reason=(f"the fit's {CONFIDENCE:.0%} interval for the rank is {r_lo}..{r_hi} of d_h = "
                                      f"{query.head_dim}, wider than {MAX_SPREAD:.0%} of d_h"),
                              suggestion=suggest(query, _grid(r_lo, r_hi, query.head_dim),
                                                 "sweep this size at ranks across that interval"))
    return Recommendation("ok", **base, method="fit", rank=r_est, rank_frac=r_est / query.head_dim,
                          cache_fraction=query.cache_fraction(r_est), rank_interval=(r_lo, r_hi), supporting=support,
                          **detail)


def _fit_support(usable: list[Cell], query: Query, x: float) -> list[dict]:
    """The runs that carry the prediction most: at the swept sizes nearest in scale, the LRKV runs at
    the swept ranks on either side of the answer's r/d_h, and their references."""
    nearest = sorted(usable, key=lambda c: (abs(c.z - query.z), c.sweep, c.size))
    zs = sorted({round(c.z, 9) for c in nearest})
    below = [z for z in zs if z <= query.z]
    above = [z for z in zs if z >= query.z]
    keep = {below[-1] if below else None, above[0] if above else None} - {None}
    out = []
    for c in nearest:
        if round(c.z, 9) not in keep:
            continue
        fracs = {r: r / c.head_dim for r in c.gaps}
        lo = max((r for r, f in fracs.items() if f <= x + 1e-12), default=None)
        hi = min((r for r, f in fracs.items() if f >= x - 1e-12), default=None)
        for r, role in ((lo, "rank at or below"), (hi, "rank at or above")) if lo != hi else ((lo, "rank at"),):
            if r is not None and not any(s["trial"] == c.trials[r].number and s["sweep"] == c.sweep for s in out):
                out.append(_support(c.trials[r], role, c.gaps[r]))
        out.append(_support(c.reference, "reference"))
    return out


def _grid(r_lo: int, r_hi: int, head_dim: int, points: int = 5) -> list[float]:
    """Rank fractions spanning [r_lo, r_hi], snapped to whole ranks."""
    r_lo, r_hi = max(0, r_lo), max(max(0, r_lo), r_hi)
    ranks = sorted({round(r) for r in np.linspace(r_lo, r_hi, points)})
    return [round(r / head_dim, 6) for r in ranks]


def suggest(query: Query, fractions: Sequence[float] | None = None, why: str = "",
            mha_pruned: bool = False, noisy: bool = False) -> dict:
    """A sweep that would settle the question: this size, these rank fractions, MHA beside them
    (pruning off when the reference got pruned before it finished; for noisy runs, a note to train
    longer or repeat with another seed)."""
    fractions = list(fractions) if fractions else list(DEFAULT_FRACTIONS)
    if query.cache_budget is not None:
        top = query.max_rank()
        fractions = [f for f in fractions if top is not None and round(f * query.head_dim) <= top] or [0.0]
    size = {"name": f"d{query.d_model}-l{query.n_layers}-h{query.n_heads}", "d_model": query.d_model,
            "n_layers": query.n_layers, "n_heads": query.n_heads}
    if query.head_dim != query.d_model // query.n_heads:
        size["head_dim"] = query.head_dim
    spec: dict = {"space": {"sizes": [size], "rank": {"fractions": fractions}}, "baselines": ["mha"]}
    if mha_pruned or query.against == "mha":
        spec["pruning"] = {"enabled": False}  # the reference must finish, whatever it costs
    lines = [f"space: {{sizes: [{_flow(size)}], rank: {{fractions: {fractions}}}}}", "baselines: [mha]"]
    if "pruning" in spec:
        lines.append("pruning: {enabled: false}")
    if noisy:
        lines.append("# and a larger budget.tokens_per_trial, or the same sweep again with another seed, "
                     "to average the noise")
    return {"why": why, "spec": spec, "yaml": "\n".join(lines)}


def _flow(mapping: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"
