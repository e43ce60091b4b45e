"""What a sweep has found so far, read from its study: rows per finished trial, the Pareto front per
model size with its hypervolume, as a table for the terminal, JSON and Markdown for the MLflow run."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from .pareto import fronts, hypervolume, to_minimise

COLUMNS = ("number", "size", "label", "val_bpb", "kv_cache_bytes", "cache_vs_mha", "flops_per_token", "tokens_per_s")


def rows(study: optuna.Study) -> list[dict]:
    """One row per COMPLETE trial, with its objective values by name."""
    names = list(study.user_attrs["spec"]["objectives"])
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = t.user_attrs.get("record", {})
        out.append({"number": t.number, "size": t.params["size"], "label": t.user_attrs.get("label"),
                    "values": dict(zip(names, t.values)), "val_bpb": record.get("val_bpb"),
                    "kv_cache_bytes": record.get("kv_cache_bytes_per_token"),
                    "cache_vs_mha": record.get("kv_cache_ratio_vs_mha"),
                    "flops_per_token": record.get("flops_per_token"), "tokens_per_s": record.get("tokens_per_s"),
                    "mlflow_run_id": t.user_attrs.get("mlflow_run_id"), "feasible": True})
    return out


def front_table(study: optuna.Study) -> dict:
    """{size: {"front": [rows], "hypervolume": float, "reference": [...]}} over COMPLETE trials.

    The hypervolume reference point is the worst value seen at that size in each objective plus 10 %
    of its range, so every front point counts and the number compares across samplers of one sweep.
    """
    objectives = study.user_attrs["spec"]["objectives"]
    all_rows = rows(study)
    out = {}
    for size, front in fronts(all_rows, objectives).items():
        members = [r for r in all_rows if r["size"] == size]
        pts = to_minimise([[r["values"][n] for n in objectives] for r in members], list(objectives.values()))
        span = pts.max(axis=0) - pts.min(axis=0)
        reference = pts.max(axis=0) + 0.1 * span + 1e-12
        front_pts = to_minimise([[r["values"][n] for n in objectives] for r in front], list(objectives.values()))
        out[size] = {"front": front, "hypervolume": hypervolume(front_pts, reference),
                     "reference": reference.tolist(), "trials": len(members)}
    return out


def markdown(table: dict) -> str:
    lines = []
    for size, entry in table.items():
        lines += [f"### {size} — {len(entry['front'])} on the front of {entry['trials']}, "
                  f"hypervolume {entry['hypervolume']:.4g}", "",
                  "| trial | variant | val bpb | KV bytes/token | vs MHA |", "|---:|---|---:|---:|---:|"]
        for r in entry["front"]:
            lines.append(f"| {r['number']} | {r['label']} | {r['val_bpb']:.4f} | {r['kv_cache_bytes']:,} | "
                         f"{r['cache_vs_mha']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def log_front(study: optuna.Study, tracker, parent_run_id: str) -> dict:
    table = front_table(study)
    metrics = {f"hypervolume.{size}": entry["hypervolume"] for size, entry in table.items()}
    tracker.log_front(parent_run_id, table, markdown(table), metrics)
    return table
