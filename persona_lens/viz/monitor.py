"""Figures of monitoring (:mod:`persona_lens.analysis.monitor`): monitor score vs judged trait
expression, with Pearson r (:func:`persona_lens.stats.pearson`); for the graded experiment
(:mod:`persona_lens.analysis.monitor_graded`) the paper's pair of figures: projection vs trait
score at the best layer coloured by system-prompt level, and r by layer with its CI band."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..stats import pearson
from .theme import as_array, color, graph_objects, layer_line, rgba, style


def monitor_scatter(
    monitor_scores,
    trait_scores,
    labels: Sequence[str] | None = None,
    *,
    r: float | None = None,
    title: str | None = None,
    xaxis_title: str = "monitor score (h_last_prompt · v/‖v‖)",
    yaxis_title: str = "trait score (0-100)",
):
    """Monitor score (x) vs trait score (y), coloured by ``labels`` (e.g. pos/neg prompt), with r."""
    go = graph_objects()
    x = as_array(monitor_scores)
    y = np.asarray([np.nan if v is None else float(v) for v in trait_scores], dtype=float)
    if r is None:
        r = pearson(x, y)["r"]
    fig = go.Figure()
    groups = list(dict.fromkeys(labels)) if labels is not None else [None]
    for gi, g in enumerate(groups):
        sel = np.ones(len(x), bool) if labels is None else np.asarray([lab == g for lab in labels])
        fig.add_trace(go.Scatter(x=x[sel], y=y[sel], mode="markers", name=str(g) if g is not None else "prompts",
                                 marker=dict(size=8, opacity=0.75, color=color(gi))))
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() >= 2 and np.ptp(x[keep]) > 0:
        a, b = np.polyfit(x[keep], y[keep], 1)
        xs = np.array([x[keep].min(), x[keep].max()])
        fig.add_trace(go.Scatter(x=xs, y=a * xs + b, mode="lines", name="least squares",
                                 line=dict(color="#444", dash="dash")))
    r_txt = "n/a" if r is None else f"{r:.2f}"
    return style(fig, title or f"Monitoring: projection before generation vs trait expression (r = {r_txt})",
                 xaxis_title=xaxis_title, yaxis_title=yaxis_title)


def monitor_scatter_figure(scores: Sequence[float], trait_scores: Sequence[float], *, r: float | None = None,
                           persona: str = "", layer: int | None = None):
    """:func:`monitor_scatter` titled with the persona, layer and r of a monitoring run."""
    r_txt = "n/a" if r is None else f"{r:.3f}"
    title = f"Monitoring {persona}: last-prompt projection (layer {layer}) vs trait score, r = {r_txt}"
    return monitor_scatter(scores, trait_scores, r=r, title=title, yaxis_title="trait score (judge, 0-100)")


def graded_scatter(result, layer: int | None = None):
    """Projection at ``layer`` (default: the best) vs trait score of every prompt (its answer's, or
    the mean of its ``samples_per_prompt`` answers') of a
    :class:`persona_lens.analysis.monitor.GradedMonitorResult`, coloured by level (weakest first)."""
    layer = result.best_layer if layer is None else layer
    k = result.config.samples_per_prompt
    corr = next(c for c in result.per_layer if c["layer"] == layer)
    ci = "" if corr["ci_low"] is None else f" [{corr['ci_low']:.2f}, {corr['ci_high']:.2f}]"
    r_txt = "n/a" if corr["r"] is None else f"{corr['r']:.2f}{ci}"
    order = [lv["name"] for lv in sorted(result.levels, key=lambda lv: lv["strength"])]
    rows = sorted(result.rows, key=lambda row: order.index(row["level"]))
    return monitor_scatter([row["projection"][str(layer)] for row in rows], [row["trait_score"] for row in rows],
                           [row["level"] for row in rows], r=corr["r"],
                           title=f"Monitoring {result.persona} ({result.judge}): layer {layer}, r = {r_txt}, "
                                 f"n = {corr['n']}",
                           xaxis_title=f"last-prompt projection at layer {layer} (h · v/‖v‖)",
                           yaxis_title="trait score of the answer (0-100)" if k == 1 else
                           f"mean trait score of the prompt's {k} answers (0-100)")


def r_by_layer(result):
    """Pearson r (projection vs trait score) per layer with its confidence band."""
    go = graph_objects()
    rows = [c for c in result.per_layer if c["r"] is not None]
    layers = [c["layer"] for c in rows]
    fig = go.Figure()
    banded = [c for c in rows if c["ci_low"] is not None]
    if banded:
        xs = [c["layer"] for c in banded]
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=[c["ci_high"] for c in banded] + [c["ci_low"] for c in banded][::-1],
                                 fill="toself", fillcolor=rgba(color(0), 0.2), line=dict(width=0), hoverinfo="skip",
                                 name=f"{int(round(100 * banded[0]['confidence']))} % CI"))
    fig.add_trace(go.Scatter(x=layers, y=[c["r"] for c in rows], mode="lines+markers", name="Pearson r",
                             line=dict(color=color(0))))
    layer_line(fig, result.best_layer, text="best")
    return style(fig, f"Monitoring {result.persona}: projection-trait correlation by layer ({result.judge})",
                 xaxis_title="layer", yaxis_title="Pearson r")


def figures(result) -> dict:
    """The figures of a :class:`persona_lens.analysis.monitor.MonitorResult`: ``scatter`` (monitor
    score vs judged trait score, from the result's sample) when it was judged, else none; of a
    ``GradedMonitorResult``: ``scatter`` (best layer, by level) and ``r_by_layer``."""
    if hasattr(result, "per_layer"):
        if result.best_layer is None:
            return {}
        return {"scatter": graded_scatter(result), "r_by_layer": r_by_layer(result)}
    if not result.scatter or not result.scatter["score"]:
        return {}
    r = (result.correlation or {}).get("r")
    return {"scatter": monitor_scatter_figure(result.scatter["score"], result.scatter["trait_score"], r=r,
                                              persona=result.persona or "", layer=result.config.layer)}
