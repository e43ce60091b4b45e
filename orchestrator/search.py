"""The search space in Optuna's terms: samplers, define-by-run suggestions, reference points, costs.

A trial's parameters are (size, variant, rank, lr): `variant` is LRKV or one of the baselines, and
the rank is only asked for LRKV (a conditional space, which TPE, NSGA-II and brute force handle).
The references — every baseline and the LRKV anchors r ∈ {0, d_h/4, d_h/2, d_h} at every size —
are enqueued first, so every front has them whatever the sampler does.
"""
from __future__ import annotations

import warnings

import optuna

from lrkv.workers.config import TrialConfig

from .spec import LrSpace, SweepSpec


def make_sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    if s.kind in ("grid", "random"):
        # grid: the driver enqueues every point of the finite space itself (Optuna's brute-force
        # sampler stops the study from inside `tell`, which an ask/tell driver cannot take).
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(4, spec.budget.concurrency * 2))
    if s.kind == "gp":
        return optuna.samplers.GPSampler(seed=s.seed, n_startup_trials=s.startup_trials)
    with warnings.catch_warnings():  # `group` is marked experimental; it is what conditional spaces need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=s.startup_trials, multivariate=True,
                                          group=True, constant_liar=True)


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict:
    """Ask the trial for its point; returns the parameters as a plain dict."""
    params = {"size": trial.suggest_categorical("size", [s.name for s in spec.space.sizes]),
              "variant": trial.suggest_categorical("variant", spec.variants())}
    rank = spec.space.rank
    if params["variant"] == "lrkv":
        if rank.low is not None:
            params[rank.param()] = trial.suggest_int(rank.param(), rank.low, rank.high, step=rank.step)
        else:
            params[rank.param()] = trial.suggest_categorical(rank.param(), rank.choices())
    if isinstance(spec.space.lr, LrSpace):
        params["lr"] = trial.suggest_float("lr", spec.space.lr.low, spec.space.lr.high, log=spec.space.lr.log)
    return params


def trial_config(spec: SweepSpec, params: dict) -> TrialConfig:
    rank = params.get("rank", params.get("rank_frac", 0))
    lr = params.get("lr", spec.space.lr if isinstance(spec.space.lr, float) else None)
    return spec.trial_config(params["size"], params["variant"], rank, lr)


def references(spec: SweepSpec) -> list[dict]:
    """Fixed points enqueued before the sampler runs: the baselines and the LRKV anchors, per size."""
    points = []
    lr = spec.space.lr
    extra = {"lr": (lr.low * lr.high) ** 0.5 if lr.log else (lr.low + lr.high) / 2} if isinstance(lr, LrSpace) else {}
    for size in spec.space.sizes:
        if spec.anchors:
            points += [{"size": size.name, "variant": "lrkv", spec.space.rank.param(): a, **extra}
                       for a in spec.space.rank.anchors(size.d_head)]
        points += [{"size": size.name, "variant": b, **extra} for b in spec.baselines]
    return points


def finite_points(spec: SweepSpec) -> list[dict] | None:
    """Every point of the space when it is finite (no continuous lr range), else None."""
    if isinstance(spec.space.lr, LrSpace):
        return None
    rank = spec.space.rank
    points = []
    for size in spec.space.sizes:
        points += [{"size": size.name, "variant": "lrkv", rank.param(): r} for r in rank.choices()]
        points += [{"size": size.name, "variant": b} for b in spec.baselines]
    return points


def point_key(params: dict) -> str:
    """Identity of a configuration: the same key trains the same model (the seed is fixed)."""
    return "|".join(f"{k}={params[k]!r}" for k in sorted(params))


def costs(spec: SweepSpec, config: TrialConfig, vocab_size: int) -> dict[str, float]:
    """Objective values known from the spec alone (everything but the loss)."""
    model = config.model
    return {"kv_cache_bytes": model.kv_cache_bytes_per_token(),
            "flops_per_token": model.train_flops_per_token(vocab_size, config.data.seq_len),
            "params": model.params(vocab_size)}


def pruning_costs(spec: SweepSpec, costs: dict[str, float]) -> tuple[float, ...]:
    """What the frontier-fair rule compares trials on, each as lower-is-better: the cache always (the
    rule's own measure), then every other cost objective known before training. `decode_ms` is measured
    after training, so the cache each decode step reads stands in for it."""
    names = ["kv_cache_bytes", *(n for n in spec.objectives if n in costs and n != "kv_cache_bytes")]
    return tuple(-costs[n] if spec.objectives.get(n) == "max" else costs[n] for n in names)


def training_flops(spec: SweepSpec, params: dict, vocab_size: int) -> int:
    """A trial's training FLOPs at this point (FLOPs per token × tokens): how long it runs, known before it does."""
    config = trial_config(spec, params)
    return costs(spec, config, vocab_size)["flops_per_token"] * spec.budget.tokens_per_trial


def longest_first(spec: SweepSpec, owed: list[dict], slots: int, vocab_size: int) -> dict:
    """The owed point (listed in the sweep's own order) to launch next: of the first `slots` (those the
    budget still covers), the costliest in training FLOPs among each size's next point. Long trials go
    first, so a sweep does not end waiting on one of them while the other slots idle. Only the order
    changes, never which points run; within a size the order is kept, because the out-of-memory rule
    skips the larger points that come after one that ran out of memory. Ties keep the sweep's order."""
    heads: dict[str, dict] = {}
    for params in owed[:max(1, slots)]:
        heads.setdefault(params["size"], params)
    return max(heads.values(), key=lambda p: training_flops(spec, p, vocab_size))


def violation(spec: SweepSpec, config: TrialConfig, vocab_size: int) -> str | None:
    """Why this configuration breaks a constraint, or None. Costs nothing: no GPU time is spent."""
    c, model = spec.constraints, config.model
    fraction = model.attention.cache_ratio_vs_mha()
    if c.max_cache_fraction_of_mha is not None and fraction > c.max_cache_fraction_of_mha:
        return f"cache is {fraction:.3f} of MHA's > {c.max_cache_fraction_of_mha}"
    if c.max_cache_bytes_per_token is not None and model.kv_cache_bytes_per_token() > c.max_cache_bytes_per_token:
        return f"cache {model.kv_cache_bytes_per_token()} B/token > {c.max_cache_bytes_per_token}"
    if c.max_params is not None and model.params(vocab_size) > c.max_params:
        return f"{model.params(vocab_size)} params > {c.max_params}"
    return None
