"""The live terminal view of a running sweep, and the tables `status` and `pareto` print."""
from __future__ import annotations

import time
from collections import Counter

import optuna
from optuna.trial import TrialState
from rich.console import Group
from rich.live import Live
from rich.table import Table

from lrkv.dashboards.report import front_table


def trial_counts(study: optuna.Study) -> Counter:
    """running / complete / pruned / failed / skipped (duplicates and infeasible points cost nothing)."""
    counts: Counter = Counter()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL and not t.user_attrs.get("launched"):
            counts["skipped"] += 1
        elif t.state == TrialState.FAIL and t.user_attrs.get("requeued"):
            counts["re-queued"] += 1
        elif t.state != TrialState.WAITING:
            counts[t.state.name.lower()] += 1
    return counts


def counts_line(study: optuna.Study, budget: int) -> str:
    c = trial_counts(study)
    parts = [f"{c[k]} {'failed' if k == 'fail' else k}"
             for k in ("running", "complete", "pruned", "fail", "skipped", "re-queued") if c[k]]
    return f"[bold]{study.study_name}[/] · budget {budget} trials · " + (" · ".join(parts) or "starting")


def front_tables(study: optuna.Study) -> list[Table]:
    tables = []
    for size, entry in front_table(study).items():
        table = Table(title=f"Pareto front · {size} · hypervolume {entry['hypervolume']:.4g}", title_justify="left")
        for col in ("trial", "variant", "val bpb", "KV bytes/token", "vs MHA", "tokens/s"):
            table.add_column(col, justify="left" if col == "variant" else "right")
        for r in entry["front"]:
            table.add_row(str(r["number"]), r["label"], f"{r['val_bpb']:.4f}", f"{r['kv_cache_bytes']:,}",
                          f"{r['cache_vs_mha']:.3f}", f"{r['tokens_per_s']:,.0f}")
        tables.append(table)
    return tables


class SweepView:
    """Counts, the trials in flight with their latest validation, and the front so far."""

    def __init__(self, console):
        self.live = Live(console=console, refresh_per_second=2, transient=True)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)

    def update(self, driver) -> None:
        self.live.update(self.render(driver))

    @staticmethod
    def render(driver) -> Group:
        running = Table(title="running", title_justify="left")
        for col in ("trial", "size", "variant", "tokens", "val bpb", "seconds"):
            running.add_column(col, justify="right")
        for r in sorted(driver.active.values(), key=lambda r: r.trial.number):
            latest = r.latest
            running.add_row(str(r.trial.number), r.params["size"], r.config.model.attention.label,
                            f"{latest.get('tokens', 0):,}", f"{latest['val_bpb']:.4f}" if latest else "—",
                            f"{time.time() - r.started:.0f}")
        return Group(counts_line(driver.study, driver.spec.budget.trials), running, *front_tables(driver.study))
