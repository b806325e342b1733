"""Plotly figures of the analyses (projection, monitoring, screening, fine-tuning shift).

Each function takes plain data (the analyses' result objects or arrays) and returns a
``plotly.graph_objects.Figure``. The shared figure functions of :mod:`persona_lens.plots`
(``projection_panels``, ``monitor_scatter``, ``screening_histogram``, ``shift_per_layer``)
are used when present, so every figure shares one style; the local versions below are the
fallback. :func:`save_figure` is ``persona_lens.plots.save_figure`` returning the HTML path, and
condition labels come from ``persona_lens.plots.condition_label``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from . import plots

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def save_figure(fig, path_without_suffix: str | os.PathLike) -> Path:
    """:func:`persona_lens.plots.save_figure` with its defaults (offline ``<path>.html``, plus
    static images when kaleido works); returns the HTML path."""
    return Path(plots.save_figure(fig, path_without_suffix))


def _shared(name: str):
    """A figure function of ``persona_lens.plots``, or None when that module lacks it."""
    return getattr(plots, name, None)


def _label(condition: str) -> str:
    """:func:`persona_lens.plots.condition_label`, but for the merged vector's wording."""
    return "merged vector (steer)" if condition == "merged" else plots.condition_label(condition)


def _axis_label(name: str) -> str:
    return f"v_{name[:3].upper()} ({name})"


def projection_figure(result, position: str = "response_mean", title: str | None = None):
    """One panel per persona axis; layers on x; one line (mean ± std band) per condition."""
    st = result.settings
    title = title or (f"Projection of Δa = a_condition − a_none ({position}); steering layer {st.get('layer')}, "
                      f"α={st.get('alpha')}, n={result.n_prompts}")
    shared = _shared("projection_panels")
    if shared is not None:
        return shared(result, position=position, steer_layer=st.get("layer"), title=title)
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    mean, std = result.mean[position], result.std[position]
    n_axes = len(result.axes)
    fig = make_subplots(rows=1, cols=n_axes, shared_yaxes=True,
                        subplot_titles=[_axis_label(a) for a in result.axes])
    x = list(result.layers)
    for ci, cond in enumerate(result.conditions):
        color = _PALETTE[ci % len(_PALETTE)]
        for ai in range(n_axes):
            m, s = mean[ci, ai], std[ci, ai]
            fig.add_trace(go.Scatter(x=x + x[::-1], y=list(m + s) + list((m - s)[::-1]), fill="toself",
                                     fillcolor=color, opacity=0.12, line=dict(width=0), hoverinfo="skip",
                                     showlegend=False, legendgroup=cond), row=1, col=ai + 1)
            fig.add_trace(go.Scatter(x=x, y=m, mode="lines+markers", name=_label(cond), legendgroup=cond,
                                     line=dict(color=color), marker=dict(size=4), showlegend=ai == 0),
                          row=1, col=ai + 1)
        for ai in range(n_axes):
            fig.update_xaxes(title_text="layer", row=1, col=ai + 1)
    for ai in range(n_axes):
        fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"), row=1, col=ai + 1)
    fig.update_yaxes(title_text="Δa · v/‖v‖", row=1, col=1)
    fig.update_layout(
        title=title, template="plotly_white", height=420, width=max(420 * n_axes, 700), legend=dict(orientation="h", y=-0.2))
    return fig


def monitor_scatter_figure(scores: Sequence[float], trait_scores: Sequence[float], *, r: float | None = None,
                           persona: str = "", layer: int | None = None):
    """Monitor score (x) against judged trait expression (y)."""
    r_txt = "n/a" if r is None else f"{r:.3f}"
    title = f"Monitoring {persona}: last-prompt projection (layer {layer}) vs trait score, r = {r_txt}"
    shared = _shared("monitor_scatter")
    if shared is not None:
        return shared(scores, trait_scores, r=r, title=title)
    import plotly.graph_objects as go

    x, y = np.asarray(scores, float), np.asarray(trait_scores, float)
    fig = go.Figure(go.Scatter(x=x, y=y, mode="markers", marker=dict(size=6, opacity=0.6), name="prompts"))
    if len(x) >= 2 and np.ptp(x) > 0:
        a, b = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        fig.add_trace(go.Scatter(x=xs, y=a * xs + b, mode="lines", name="least squares", line=dict(dash="dash")))
    fig.update_layout(title=title,
                      xaxis_title="monitor score (h_last_prompt · v/‖v‖)", yaxis_title="trait score (judge, 0-100)",
                      template="plotly_white", height=480, width=720)
    return fig


def screen_histogram_figure(hist: dict, *, persona: str = "", layer: int | None = None, mean: float | None = None):
    """Histogram of the projection difference ΔP from fixed-bin counts (``edges``, ``counts``)."""
    title = f"Projection difference ΔP along {persona} (layer {layer})"
    shared = _shared("screening_histogram")
    if shared is not None:
        return shared(hist, mean=mean, title=title)
    import plotly.graph_objects as go

    edges = np.asarray(hist["edges"], float)
    counts = np.asarray(hist["counts"])
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centers, y=counts, width=np.diff(edges), name="rows", marker=dict(color=_PALETTE[0])))
    if mean is not None:
        fig.add_vline(x=mean, line=dict(color="red", dash="dash"), annotation_text=f"mean ΔP = {mean:.3g}")
    fig.add_vline(x=0, line=dict(color="black", width=1))
    fig.update_layout(title=title,
                      xaxis_title="ΔP = proj(candidate response) − proj(base response)", yaxis_title="rows",
                      template="plotly_white", bargap=0.02, height=420, width=720)
    return fig


def shift_figure(result, title: str | None = None):
    """Fine-tuning shift per layer (mean ± std over prompts)."""
    st = result.settings
    title = title or f"Fine-tuning shift along {st.get('vector')} ({st.get('position')}, n={result.n})"
    shared = _shared("shift_per_layer")
    if shared is not None:
        return shared(result.layers, result.shift, result.std, title=title)
    import plotly.graph_objects as go

    x = list(result.layers)
    m, s = np.asarray(result.shift), np.asarray(result.std)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x + x[::-1], y=list(m + s) + list((m - s)[::-1]), fill="toself", opacity=0.15,
                             line=dict(width=0), hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=x, y=m, mode="lines+markers", name="shift"))
    fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    fig.update_layout(title=title,
                      xaxis_title="layer", yaxis_title="mean(proj_ft − proj_base)", template="plotly_white",
                      height=420, width=720)
    return fig
