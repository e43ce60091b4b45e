"""Constructed sweeps: Optuna studies whose trials carry what the driver writes (label, config,
record, curve, costs, MLflow run id), with losses chosen by the test, so answers are known."""
from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from lrkv.kernels import AttentionSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)
OBJECTIVES = {"val_bpb": "min", "kv_cache_bytes": "min"}
VARIANTS = ["lrkv", "mha", "gqa2", "mqa"]


def attention(kind: str, d_model: int, n_heads: int, rank: int = 0) -> AttentionSpec:
    if kind.startswith("gqa"):
        return AttentionSpec("gqa", d_model, n_heads, n_kv_heads=int(kind[3:]))
    return AttentionSpec(kind, d_model, n_heads, rank=rank)


def trial(size: str, kind: str, d_model: int, n_layers: int, n_heads: int, val_bpb: float, rank: int = 0,
          curve: list[tuple[float, float]] | None = None, flops: float = 1e6, run_id: str | None = None,
          state: TrialState = TrialState.COMPLETE, decode_ms: float | None = None) -> optuna.trial.FrozenTrial:
    """One finished trial as the driver leaves it; `curve` defaults to a single evaluation at the end."""
    spec = attention(kind, d_model, n_heads, rank)
    cache = spec.kv_cache_bytes_per_token(n_layers=n_layers)
    curve = curve or [(1000.0, val_bpb)]
    record = {"val_bpb": val_bpb, "kv_cache_bytes_per_token": cache, "kv_cache_ratio_vs_mha": spec.cache_ratio_vs_mha(),
              "flops_per_token": flops, "tokens_per_s": 1000.0, "params": 1000, "tokens": int(curve[-1][0])}
    if decode_ms is not None:
        record["decode_ms"] = decode_ms
    params = {"size": size, "variant": "lrkv" if kind == "lrkv" else kind}
    dists = {"size": CategoricalDistribution([size]), "variant": CategoricalDistribution(VARIANTS)}
    if kind == "lrkv":
        params["rank"] = rank
        dists["rank"] = IntDistribution(0, 1024)
    config = {"model": {"n_layers": n_layers, "attention": {
        "kind": spec.kind, "d_model": d_model, "n_heads": n_heads, "head_dim": spec.head_dim,
        "n_kv_heads": spec.n_kv_heads, "rank": spec.rank}}}
    attrs = {"label": spec.label, "config": config, "record": record, "curve": [list(p) for p in curve],
             "costs": {"kv_cache_bytes": cache, "flops_per_token": flops, "params": 1000}, "launched": True}
    if run_id:
        attrs["mlflow_run_id"] = run_id
    return create_trial(params=params, distributions=dists, user_attrs=attrs, state=state,
                        values=[val_bpb, cache] if state == TrialState.COMPLETE else None)


def study(trials, name: str = "constructed", storage=None) -> optuna.Study:
    """A study holding `trials` (FrozenTrials from `trial`), with the spec attribute the readers need."""
    s = optuna.create_study(study_name=name, storage=storage, directions=["minimize", "minimize"])
    s.set_user_attr("spec", {"objectives": OBJECTIVES})
    sizes = CategoricalDistribution(sorted({t.params["size"] for t in trials}))
    for t in trials:  # one `size` distribution for every trial, as a real sweep has
        t.distributions = {**t.distributions, "size": sizes}
        s.add_trial(t)
    return s
