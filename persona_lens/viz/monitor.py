"""Figures of monitoring (:mod:`persona_lens.analysis.monitor`): monitor score vs judged trait
expression, with Pearson r (:func:`persona_lens.stats.pearson`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..stats import pearson
from .theme import as_array, color, graph_objects, style


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


def figures(result) -> dict:
    """The figures of a :class:`persona_lens.analysis.monitor.MonitorResult`: ``scatter`` (monitor
    score vs judged trait score, from the result's sample) when it was judged, else none."""
    if not result.scatter or not result.scatter["score"]:
        return {}
    r = (result.correlation or {}).get("r")
    return {"scatter": monitor_scatter_figure(result.scatter["score"], result.scatter["trait_score"], r=r,
                                              persona=result.persona or "", layer=result.config.layer)}
