"""Compute-normalised views of a sweep, as the LRKV paper argues them: not only where each variant
ends, but what it costs to get there.

- Validation loss against cumulative training FLOPs, one line per trial, coloured by attention kind:
  the x value of an evaluation is tokens seen × the trial's training FLOPs per token (matrix products,
  forward and backward, as `AttentionSpec` counts them), so variants with cheaper or dearer
  attention are compared at equal compute, not at equal tokens.
- Tokens (and FLOPs) each variant needs to reach MHA's final validation loss at the same size in the
  same sweep, as a fraction of what MHA itself needed (the paper reports 18–25 % fewer for LRKV).

Curves come from each trial's user attrs (`curve` = [[tokens, val_bpb], ...] and
`record.flops_per_token`), written by the driver. A crossing between two evaluations is placed by
linear interpolation; a curve that never gets to the target is "not reached" (with how far it got),
never extrapolated. Pruned trials count when they reached the target before they were stopped.
"""
from __future__ import annotations

import html
from collections.abc import Sequence

import optuna
from optuna.trial import TrialState

from .figures import PALETTE, kind_of, run_link, sizes

# Baseline colours; LRKV ranks take shades of blue, darker for larger r/d_h.
KIND_COLORS = {"mha": "#111111", "gqa": "#ff7f0e", "mqa": "#2ca02c", "mla": "#9467bd"}


def trial_curves(study: optuna.Study) -> list[dict]:
    """One entry per COMPLETE or PRUNED trial that has a validation curve."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        curve = [(float(tok), float(bpb)) for tok, bpb in t.user_attrs.get("curve") or []]
        if not curve:
            continue
        record = t.user_attrs.get("record") or {}
        attention = (t.user_attrs.get("config") or {}).get("model", {}).get("attention", {})
        flops = record.get("flops_per_token") or (t.user_attrs.get("costs") or {}).get("flops_per_token")
        out.append({"number": t.number, "size": t.params.get("size"), "label": t.user_attrs.get("label"),
                    "kind": attention.get("kind"), "rank": attention.get("rank"), "head_dim": attention.get("head_dim"),
                    "state": t.state.name.lower(), "curve": curve, "flops_per_token": flops,
                    "final_bpb": curve[-1][1], "tokens": curve[-1][0],
                    "mlflow_run_id": t.user_attrs.get("mlflow_run_id")})
    return out


def first_reach(curve: Sequence[tuple[float, float]], target: float) -> float | None:
    """Tokens at which the curve first gets to `target` or below: linear between the evaluation before
    and the one at or below it; the first evaluation's tokens if it is already there; None if never."""
    previous = None
    for tokens, bpb in curve:
        if bpb <= target:
            if previous is None:
                return float(tokens)
            t0, b0 = previous  # b0 > target >= bpb
            return float(t0 + (b0 - target) / (b0 - bpb) * (tokens - t0))
        previous = (tokens, bpb)
    return None


def reach_table(curves: Sequence[dict]) -> dict[str, dict]:
    """Per size: MHA's final loss (the target: its best COMPLETE trial), the tokens and FLOPs MHA took
    to get there, and per variant label the same for its trial that got there soonest (or, if none
    did, its trial with the lowest final loss), with ratios to MHA's.

    A size without a finished MHA trial has `target` None and a `reason` (e.g. MHA was pruned)."""
    out: dict[str, dict] = {}
    for size in sizes(curves):
        members = [c for c in curves if c["size"] == size]
        mha = [c for c in members if kind_of(c) == "mha" and c["state"] == "complete"]
        if not mha:
            pruned = [c for c in members if kind_of(c) == "mha"]
            where = ", ".join(f"{c['tokens']:,.0f} tokens (trial {c['number']})" for c in pruned)
            reason = f"MHA was pruned at {where}" if pruned else "no MHA trial finished at this size"
            out[size] = {"target": None, "reason": reason, "kinds": {}}
            continue
        ref = min(mha, key=lambda c: (c["final_bpb"], c["number"]))
        target = ref["final_bpb"]
        mha_tokens = first_reach(ref["curve"], target)
        mha_flops = mha_tokens * ref["flops_per_token"] if ref["flops_per_token"] else None
        kinds = {}
        for label in dict.fromkeys(c["label"] for c in members):
            group = [c for c in members if c["label"] == label]
            reached = [(first_reach(c["curve"], target), c) for c in group]
            reached = [(tok, c) for tok, c in reached if tok is not None]
            tokens, best = min(reached, key=lambda p: (p[0], p[1]["number"])) if reached else \
                (None, min(group, key=lambda c: (c["final_bpb"], c["number"])))
            flops = tokens * best["flops_per_token"] if tokens is not None and best["flops_per_token"] else None
            kinds[label] = {
                "trial": best["number"], "kind": kind_of(best), "state": best["state"], "reached": tokens is not None,
                "tokens": tokens, "flops": flops, "final_bpb": best["final_bpb"], "max_tokens": best["tokens"],
                "tokens_vs_mha": tokens / mha_tokens if tokens is not None and mha_tokens else None,
                "flops_vs_mha": flops / mha_flops if flops is not None and mha_flops else None,
                "mlflow_run_id": best["mlflow_run_id"]}
        out[size] = {"target": target, "mha_trial": ref["number"], "mha_tokens": mha_tokens, "mha_flops": mha_flops,
                     "kinds": kinds}
    return out


def reach_metrics(table: dict[str, dict]) -> dict[str, float]:
    """Parent-run metrics: `mha_tokens_ratio.<size>.<label>` and `mha_flops_ratio.<size>.<label>` for
    each variant that reached MHA's final loss (below 1: it needed less than MHA)."""
    metrics = {}
    for size, entry in table.items():
        for label, k in entry["kinds"].items():
            if k["tokens_vs_mha"] is not None:
                metrics[f"mha_tokens_ratio.{size}.{label}"] = k["tokens_vs_mha"]
            if k["flops_vs_mha"] is not None:
                metrics[f"mha_flops_ratio.{size}.{label}"] = k["flops_vs_mha"]
    return metrics


def reach_markdown(table: dict[str, dict]) -> str:
    lines = []
    for size, entry in table.items():
        if entry["target"] is None:
            lines += [f"### {size} — no MHA target: {entry['reason']}", ""]
            continue
        lines += [f"### {size} — to MHA's final {entry['target']:.4f} bpb (trial {entry['mha_trial']}, "
                  f"{entry['mha_tokens']:,.0f} tokens)", "",
                  "| variant | trial | tokens | vs MHA | FLOPs | vs MHA |", "|---|---:|---:|---:|---:|---:|"]
        for label, k in entry["kinds"].items():
            if not k["reached"]:
                lines.append(f"| {label} | {k['trial']} | not reached in {k['max_tokens']:,.0f} "
                             f"(final {k['final_bpb']:.4f}) | — | — | — |")
                continue
            flops = f"{k['flops']:.4g}" if k["flops"] is not None else "—"
            fr = f"{k['flops_vs_mha']:.3f}" if k["flops_vs_mha"] is not None else "—"
            lines.append(f"| {label} | {k['trial']} | {k['tokens']:,.0f} | {k['tokens_vs_mha']:.3f} | {flops} | {fr} |")
        lines.append("")
    return "\n".join(lines)


def label_color(curve: dict) -> str:
    """Baselines by kind; LRKV from light to dark blue as r/d_h grows."""
    kind = kind_of(curve)
    if kind != "lrkv":
        return KIND_COLORS.get(kind, PALETTE[-1])
    frac = (curve["rank"] / curve["head_dim"]) if curve.get("rank") is not None and curve.get("head_dim") else 0.5
    light, dark = (158, 202, 225), (8, 48, 107)
    r, g, b = (round(lo + (hi - lo) * frac) for lo, hi in zip(light, dark))
    return f"#{r:02x}{g:02x}{b:02x}"


def _flops_curve(c: dict) -> tuple[list[float], list[float]]:
    per_token = c["flops_per_token"] or 0
    return [tok * per_token for tok, _ in c["curve"]], [bpb for _, bpb in c["curve"]]


def compute_figure(curves: Sequence[dict], table: dict[str, dict], experiment_id: str | None = None,
                   title: str = "Compute-normalised view"):
    """Plotly: top row, val bpb against cumulative training FLOPs per size (MHA's final loss dashed,
    a ring where each trial reaches it); bottom row, tokens and FLOPs to MHA's final loss vs MHA's."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = sizes(curves) or ["—"]
    fig = make_subplots(rows=2, cols=len(names), vertical_spacing=0.16, horizontal_spacing=0.07,
                        subplot_titles=[f"{s}: loss vs cumulative training FLOPs" for s in names]
                        + [f"{s}: to MHA's final loss, vs MHA" for s in names])
    if not curves:
        fig.add_annotation(text="no trial curves yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    seen_labels: set[str] = set()
    for col, size in enumerate(names, start=1):
        entry = table.get(size, {"target": None, "kinds": {}, "reason": ""})
        for c in (c for c in curves if c["size"] == size):
            xs, ys = _flops_curve(c)
            link = run_link(experiment_id, c.get("mlflow_run_id"))
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=c["label"], legendgroup=c["label"],
                showlegend=c["label"] not in seen_labels,
                line={"color": label_color(c), "width": 2, "dash": "dot" if c["state"] == "pruned" else "solid"},
                marker={"size": 4}, customdata=[[link, c["number"], c["label"]]] * len(xs),
                hovertemplate=(f"trial {c['number']} · {html.escape(c['label'] or '')} · {c['state']}<br>"
                               "%{x:.4g} FLOPs · %{y:.4f} bpb<extra></extra>"),
                meta={"lrkv": "curve", "size": size}), row=1, col=col)
            seen_labels.add(c["label"])
        if entry["target"] is None:
            fig.add_annotation(text=html.escape(entry.get("reason") or "no MHA target"), showarrow=False,
                               xref="paper", yref="paper", x=(col - 0.5) / len(names), y=0.2)  # in the bar row
            continue
        fig.add_hline(y=entry["target"], line={"dash": "dash", "color": "#444", "width": 1}, row=1, col=col,
                      annotation_text="MHA final", annotation_position="top right")
        labels = list(entry["kinds"])
        ring_x, ring_text = [], []
        for label in labels:
            k = entry["kinds"][label]
            if k["flops"] is not None:
                ring_x.append(k["flops"])
                ring_text.append(f"{label}: reaches MHA's final loss at {k['tokens']:,.0f} tokens "
                                 f"({k['tokens_vs_mha']:.2f}× MHA)")
        fig.add_trace(go.Scatter(x=ring_x, y=[entry["target"]] * len(ring_x), mode="markers", showlegend=False,
                                 marker={"symbol": "circle-open", "size": 12, "color": "#444"}, hovertext=ring_text,
                                 hoverinfo="text", meta={"lrkv": "reach", "size": size}), row=1, col=col)
        for metric, name, color in (("tokens_vs_mha", "tokens", "#1f77b4"), ("flops_vs_mha", "FLOPs", "#ff7f0e")):
            values = [entry["kinds"][lb][metric] for lb in labels]
            fig.add_trace(go.Bar(
                x=labels, y=[v if v is not None else 0 for v in values], name=f"{name} vs MHA",
                legendgroup=f"bar-{name}", showlegend=col == 1, marker={"color": color},
                text=[f"{v:.2f}" if v is not None else ("not reached" if metric == "tokens_vs_mha" else "")
                      for v in values], textposition="outside", constraintext="none", cliponaxis=False,
                meta={"lrkv": "bars", "size": size}), row=2, col=col)
        fig.add_hline(y=1.0, line={"dash": "dash", "color": "#444", "width": 1}, row=2, col=col)
        fig.update_xaxes(title_text="cumulative training FLOPs", row=1, col=col)
    fig.update_yaxes(title_text="validation bits per byte", row=1, col=1)
    fig.update_yaxes(title_text="fraction of MHA's", row=2, col=1)
    fig.update_layout(title=html.escape(title), template="plotly_white", barmode="group", height=820,
                      hovermode="closest")
    return fig


def compute_png(curves: Sequence[dict], table: dict[str, dict], title: str = "Compute-normalised view"):
    """The same two rows as a matplotlib Figure (no pyplot)."""
    from matplotlib.figure import Figure

    names = sizes(curves) or ["—"]
    fig = Figure(figsize=(5.6 * len(names), 8.0), dpi=100, layout="constrained")
    grid = fig.subplots(2, len(names), squeeze=False)
    for col, size in enumerate(names):
        top, bottom = grid[0][col], grid[1][col]
        top.set_title(f"{size}: loss vs cumulative training FLOPs", fontsize=10)
        top.set_xlabel("cumulative training FLOPs")
        top.grid(alpha=0.3)
        bottom.set_title(f"{size}: to MHA's final loss, vs MHA", fontsize=10)
        bottom.grid(alpha=0.3, axis="y")
        members = [c for c in curves if c["size"] == size]
        if not members:
            top.text(0.5, 0.5, "no trial curves yet", ha="center", va="center", transform=top.transAxes)
        for c in members:
            xs, ys = _flops_curve(c)
            top.plot(xs, ys, color=label_color(c), linestyle=":" if c["state"] == "pruned" else "-", linewidth=1.6,
                     marker=".", label=f"{c['label']} (#{c['number']})")
        entry = table.get(size, {"target": None, "kinds": {}, "reason": ""})
        if entry["target"] is None:
            bottom.text(0.5, 0.5, entry.get("reason") or "no MHA target", ha="center", va="center", wrap=True,
                        transform=bottom.transAxes)
            if members:
                top.legend(fontsize=7)
            continue
        top.axhline(entry["target"], color="#444", linestyle="--", linewidth=1)
        reach = [(k["flops"]) for k in entry["kinds"].values() if k["flops"] is not None]
        top.scatter(reach, [entry["target"]] * len(reach), facecolors="none", edgecolors="#444", s=70, zorder=3)
        top.legend(fontsize=7)
        labels = list(entry["kinds"])
        width = 0.38
        for j, (metric, name, color) in enumerate((("tokens_vs_mha", "tokens", "#1f77b4"),
                                                   ("flops_vs_mha", "FLOPs", "#ff7f0e"))):
            values = [entry["kinds"][lb][metric] for lb in labels]
            xs = [i + (j - 0.5) * width for i in range(len(labels))]
            bottom.bar(xs, [v or 0 for v in values], width=width, color=color, label=f"{name} vs MHA")
            for x, v in zip(xs, values):
                if v is not None:
                    bottom.text(x, v + 0.02, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
        for i, label in enumerate(labels):
            if not entry["kinds"][label]["reached"]:
                bottom.text(i, 0.02, "not\nreached", ha="center", va="bottom", fontsize=7, color="#555")
        bottom.axhline(1.0, color="#444", linestyle="--", linewidth=1)
        bottom.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
        bottom.set_ylabel("fraction of MHA's")
        bottom.legend(fontsize=7)
    grid[0][0].set_ylabel("validation bits per byte")
    fig.suptitle(title)
    return fig
