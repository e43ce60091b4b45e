"""Pareto figures of a sweep, for its MLflow parent run: an interactive HTML page (plotly) and a PNG
(matplotlib) of validation bits per byte against each cost the trials carry.

One panel per cost axis: KV-cache bytes per token always, training FLOPs per token and decode ms (one
decode step's attention over every layer, at the largest profiled context) when the records have
them. In each panel every model size is one trace (one colour); the attention kind is the marker (LRKV a circle, baselines a star, diamond, square or triangle, with
their label beside them); the points on that panel's 2-D front are drawn large and outlined and
joined by the front's staircase. Each point carries its trial, variant, costs and a link to its child
run (`#/experiments/<id>/runs/<id>`, relative to the MLflow UI's root): hover shows it, a click
opens it (or, inside the UI's sandboxed artifact frame, which may not open windows, writes it as a
link under the plot).

The input is `report.rows(study)` (COMPLETE trials); nothing here reads a store, so tests build
figures from plain dicts.
"""
from __future__ import annotations

import html
import re
from collections.abc import Sequence

import numpy as np

from .pareto import front_ranks

# Cost axes in panel order: row key -> (axis title, log scale).
AXES: dict[str, tuple[str, bool]] = {
    "kv_cache_bytes": ("KV-cache bytes per token", True),
    "flops_per_token": ("training FLOPs per token", False),
    "decode_ms": ("decode ms per step (attention, all layers)", False),
}
# Attention kind -> marker (plotly, matplotlib); LRKV is the swept variant, the rest are baselines.
SYMBOLS = {"lrkv": ("circle", "o"), "mha": ("star", "*"), "gqa": ("diamond", "D"), "mqa": ("square", "s"),
           "mla": ("triangle-up", "^")}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
FRONT_NOTE = "large, outlined points joined by a staircase: the front of each size in that panel"

# Runs in the page after plotly draws: a click on a point opens its MLflow run. Inside the MLflow UI
# the page is a blob in an iframe sandboxed to scripts only, so window.open is refused there; the
# link is also written under the plot, where it can be followed or copied.
CLICK_SCRIPT = r"""
var gd = document.getElementById('{plot_id}');
var box = document.createElement('div');
box.id = 'lrkv-run-link';
box.style.cssText = 'font: 13px sans-serif; padding: 4px 8px;';
box.textContent = 'Click a point to open its MLflow run.';
document.body.appendChild(box);
function uiRoot() {
  // The UI's root: the page that embeds this one, else where this page was served from.
  var here = String(window.location.href).replace(/^blob:/, '');
  var candidates = [document.referrer, here];
  for (var i = 0; i < candidates.length; i++) {
    var m = /^(https?:\/\/[^\/?#]+)([^?#]*)/.exec(candidates[i] || '');
    if (!m) continue;
    var path = m[2];
    var cut = path.search(/\/(get-artifact|ajax-api|api)\//);
    if (cut >= 0) path = path.slice(0, cut);
    else if (i === 1 && /^blob:/.test(String(window.location.href))) path = '';  // a blob's path is its id
    return m[1] + path.replace(/\/?$/, '/');
  }
  return '';
}
gd.on('plotly_click', function (ev) {
  var p = ev.points && ev.points[0];
  if (!p || !p.customdata || !p.customdata[0]) return;
  var url = uiRoot() + p.customdata[0];
  var a = document.createElement('a');
  a.href = url; a.target = '_blank'; a.rel = 'noopener';
  a.textContent = url;
  box.textContent = 'trial ' + p.customdata[1] + ' (' + p.customdata[2] + '): ';
  box.appendChild(a);
  try { window.open(url, '_blank'); } catch (e) { /* sandboxed: the link above stays */ }
});
"""
# How `log_figure` writes the HTML: plotly.js inlined (MLflow's default loads it from a CDN, which
# an offline cluster or a closed network cannot reach), and the click handler.
HTML_OPTIONS = {"include_plotlyjs": True, "full_html": True, "post_script": CLICK_SCRIPT,
                "config": {"displaylogo": False, "responsive": True}}


def kind_of(row: dict) -> str:
    """Attention kind of a row: its config's kind, else read from the label (`gqa2` -> gqa)."""
    if row.get("kind"):
        return row["kind"]
    return re.sub(r"\d+$", "", row.get("label") or "lrkv") or "lrkv"


def run_link(experiment_id: str | None, run_id: str | None) -> str:
    """The child run's page, relative to the MLflow UI root ('' when either id is unknown)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id and run_id else ""


def panels(rows: Sequence[dict]) -> list[str]:
    """Cost axes to draw: KV-cache bytes always, the others when at least one row has them."""
    return [key for key in AXES if key == "kv_cache_bytes" or any(r.get(key) is not None for r in rows)]


def sizes(rows: Sequence[dict]) -> list[str]:
    """Size names in the order the sweep first finished a trial of them (the spec's order, since the
    references run size by size), so colours stay put as trials arrive."""
    first: dict[str, int] = {}
    for r in rows:
        first[r["size"]] = min(first.get(r["size"], r["number"]), r["number"])
    return sorted(first, key=lambda s: (first[s], s))


def front_2d(rows: Sequence[dict], axis: str) -> list[dict]:
    """The rows on the 2-D front of (cost on `axis`, val_bpb), both minimised, sorted by cost.
    Rows missing either value are left out; ties share the front (see pareto.front_ranks)."""
    members = [r for r in rows if r.get(axis) is not None and r.get("val_bpb") is not None]
    if not members:
        return []
    ranks = front_ranks(np.array([[r[axis], r["val_bpb"]] for r in members], dtype=float))
    return sorted((r for r, k in zip(members, ranks) if k == 0), key=lambda r: (r[axis], r["val_bpb"]))


def staircase(front: Sequence[dict], axis: str) -> tuple[list[float], list[float]]:
    """The boundary of what the front attains: from each point right at its loss, then down to the next."""
    xs, ys = [], []
    for i, r in enumerate(front):
        if i:
            xs.append(r[axis])
            ys.append(front[i - 1]["val_bpb"])
        xs.append(r[axis])
        ys.append(r["val_bpb"])
    return xs, ys


def describe(row: dict) -> str:
    """Variant with its rank as a fraction of d_h, e.g. `lrkv8 (r/d_h = 0.5)`."""
    label = row.get("label") or kind_of(row)
    if kind_of(row) == "lrkv" and row.get("rank") is not None and row.get("head_dim"):
        return f"{label} (r/d_h = {row['rank'] / row['head_dim']:.3g})"
    return label if kind_of(row) == "lrkv" else f"{label} (baseline)"


def hover_text(row: dict, link: str) -> str:
    lines = [f"<b>trial {row['number']}</b> · {html.escape(describe(row))} · {html.escape(str(row['size']))}",
             f"val bpb {row['val_bpb']:.4f}"]
    if row.get("kv_cache_bytes") is not None:
        ratio = f" ({row['cache_vs_mha']:.3f} of MHA)" if row.get("cache_vs_mha") is not None else ""
        lines.append(f"KV cache {row['kv_cache_bytes']:,} B/token{ratio}")
    if row.get("flops_per_token") is not None:
        lines.append(f"train FLOPs/token {row['flops_per_token']:,.4g}")
    if row.get("decode_ms") is not None:
        lines.append(f"decode {row['decode_ms']:.4g} ms/step")
    if row.get("mlflow_run_id"):
        lines.append(f"run {row['mlflow_run_id']}" + (" · click to open" if link else ""))
    return "<br>".join(lines)


def _empty_note(title: str):
    import plotly.graph_objects as go
    fig = go.Figure()
    fig.add_annotation(text="no finished trials yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 16})
    fig.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, template="plotly_white")
    return fig


def pareto_figure(rows: Sequence[dict], experiment_id: str | None = None, title: str = "Pareto front"):
    """The interactive figure: one panel per cost axis, one trace per size plus its front's staircase."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = [r for r in rows if r.get("val_bpb") is not None]  # a trial without its record has nothing to plot
    if not rows:
        return _empty_note(title)
    axes = panels(rows)
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True, horizontal_spacing=0.05)
    for col, axis in enumerate(axes, start=1):
        for i, size in enumerate(sizes(rows)):
            color = PALETTE[i % len(PALETTE)]
            members = [r for r in rows if r["size"] == size and r.get(axis) is not None]
            front = front_2d(members, axis)
            on_front = {r["number"] for r in front}
            links = [run_link(experiment_id, r.get("mlflow_run_id")) for r in members]
            fig.add_trace(go.Scatter(
                x=[r[axis] for r in members], y=[r["val_bpb"] for r in members], mode="markers+text",
                name=size, legendgroup=size, showlegend=col == 1,
                text=["" if kind_of(r) == "lrkv" else r.get("label") or kind_of(r) for r in members],
                textposition="top center", textfont={"size": 10, "color": color},
                marker={"color": color, "symbol": [SYMBOLS.get(kind_of(r), SYMBOLS["lrkv"])[0] for r in members],
                        "size": [14 if r["number"] in on_front else 9 for r in members],
                        "opacity": [1.0 if r["number"] in on_front else 0.55 for r in members],
                        "line": {"color": "#111", "width": [1.5 if r["number"] in on_front else 0 for r in members]}},
                customdata=[[link, r["number"], describe(r)] for r, link in zip(members, links)],
                hovertext=[hover_text(r, link) for r, link in zip(members, links)], hoverinfo="text",
                meta={"lrkv": "points", "axis": axis, "size": size}), row=1, col=col)
            xs, ys = staircase(front, axis)
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines", name=f"{size} front", legendgroup=size, showlegend=False,
                line={"color": color, "width": 2, "dash": "dot"}, hoverinfo="skip",
                meta={"lrkv": "front", "axis": axis, "size": size}), row=1, col=col)
        fig.update_xaxes(title_text=AXES[axis][0], type="log" if AXES[axis][1] else "linear", row=1, col=col)
    # Marker legend: which symbol is which attention kind.
    for kind in sorted({kind_of(r) for r in rows}, key=lambda k: (k != "lrkv", k)):
        name = kind if kind == "lrkv" else f"{kind} (baseline)"
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker={"symbol": SYMBOLS.get(kind, SYMBOLS["lrkv"])[0], "color": "#666", "size": 10},
                                 legendgroup=f"kind-{kind}", meta={"lrkv": "legend"}), row=1, col=1)
    fig.update_yaxes(title_text="validation bits per byte", row=1, col=1)
    # The legend goes under the panels: the MLflow UI shows artifacts in a narrow pane.
    fig.update_layout(title={"text": f"{html.escape(title)}<br><sup>{FRONT_NOTE}</sup>"}, template="plotly_white",
                      hovermode="closest", height=560, margin={"t": 80, "l": 60, "r": 20},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0})
    return fig


def pareto_png(rows: Sequence[dict], title: str = "Pareto front"):
    """The same figure as a matplotlib Figure (no pyplot: safe in the driver, no display needed)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = [r for r in rows if r.get("val_bpb") is not None]
    axes = panels(rows) if rows else ["kv_cache_bytes"]
    fig = Figure(figsize=(5.2 * len(axes), 4.6), dpi=100, layout="constrained")
    subplots = fig.subplots(1, len(axes), sharey=True, squeeze=False)[0]
    for ax, axis in zip(subplots, axes):
        ax.set_xlabel(AXES[axis][0])
        ax.set_title(AXES[axis][0])
        ax.grid(alpha=0.3)
        if not rows:
            ax.text(0.5, 0.5, "no finished trials yet", ha="center", va="center", transform=ax.transAxes)
            continue
        if AXES[axis][1]:
            ax.set_xscale("log")
        for i, size in enumerate(sizes(rows)):
            color = PALETTE[i % len(PALETTE)]
            members = [r for r in rows if r["size"] == size and r.get(axis) is not None]
            front = front_2d(members, axis)
            on_front = {r["number"] for r in front}
            xs, ys = staircase(front, axis)
            ax.plot(xs, ys, color=color, linestyle=":", linewidth=1.8)
            for kind in {kind_of(r) for r in members}:  # one scatter per marker and layer: fewer artists, faster
                for big in (False, True):
                    pts = [r for r in members if kind_of(r) == kind and (r["number"] in on_front) == big]
                    if pts:
                        ax.scatter([r[axis] for r in pts], [r["val_bpb"] for r in pts], color=color,
                                   marker=SYMBOLS.get(kind, SYMBOLS["lrkv"])[1], s=90 if big else 36,
                                   alpha=1.0 if big else 0.55, edgecolors="#111" if big else "none",
                                   linewidths=1.2 if big else 0, zorder=3)
            for r in members:  # baselines by name; LRKV by rank, smaller and grey
                lrkv = kind_of(r) == "lrkv"
                ax.annotate(f"r{r['rank']}" if lrkv and r.get("rank") is not None else r.get("label") or kind_of(r),
                            (r[axis], r["val_bpb"]), textcoords="offset points", xytext=(0, 7), ha="center",
                            fontsize=7 if lrkv else 8, color="#777" if lrkv else color)
    subplots[0].set_ylabel("validation bits per byte")
    handles = [Line2D([], [], color=PALETTE[i % len(PALETTE)], marker="o", linestyle=":", label=size)
               for i, size in enumerate(sizes(rows))]
    handles += [Line2D([], [], color="#666", marker=SYMBOLS.get(k, SYMBOLS["lrkv"])[1], linestyle="none",
                       label=k if k == "lrkv" else f"{k} (baseline)")
                for k in sorted({kind_of(r) for r in rows}, key=lambda k: (k != "lrkv", k))]
    if handles:
        subplots[-1].legend(handles=handles, fontsize=8, loc="upper right")
    fig.suptitle(f"{title} — outlined points: the front")
    return fig
