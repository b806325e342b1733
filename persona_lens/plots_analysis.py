"""Plotly figures of the analyses (projection, monitoring, screening, fine-tuning shift).

Each function takes plain data (the analyses' result objects or arrays) and returns a
``plotly.graph_objects.Figure``. The shared figure functions of :mod:`persona_lens.plots`
(``projection_panels``, ``monitor_scatter``, ``screening_histogram``, ``shift_per_layer``)
are used when present, so every figure shares one style; the local versions below are the
fallback. :func:`save_figure` likewise uses ``persona_lens.plots.save_figure`` when present,
otherwise writes the HTML atomically, plus a PNG through kaleido when kaleido is importable.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .io import atomic_write, atomic_write_text

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def save_figure(fig, path_without_suffix: str | os.PathLike) -> Path:
    """Write ``<path>.html`` (and ``<path>.png`` when kaleido is installed); returns the HTML path."""
    shared = _shared("save_figure")
    if shared is not None:
        out = shared(fig, path_without_suffix)
        if isinstance(out, (str, os.PathLike)):
            return Path(out)
        if isinstance(out, dict) and out.get("html"):
            return Path(out["html"])
        if isinstance(out, (list, tuple)) and out:
            return Path(out[0])
        return Path(f"{path_without_suffix}.html")
    base = Path(path_without_suffix)
    html = Path(f"{base}.html")
    atomic_write_text(html, fig.to_html(include_plotlyjs="cdn", full_html=True))
    if importlib.util.find_spec("kaleido") is not None:
        try:
            atomic_write(Path(f"{base}.png"), lambda tmp: fig.write_image(tmp, format="png"))
        except Exception:  # kaleido present but no browser/renderer: the HTML is the artifact
            pass
    return html


def _shared(name: str):
    """A figure function of ``persona_lens.plots``, or None when that module lacks it."""
    try:
        from . import plots
    except ImportError:
        return None
    return getattr(plots, name, None)


def _label(condition: str) -> str:
    if condition == "multi_role":
        return "multi-role prompt"
    if condition == "merged":
        return "merged vector (steer)"
    if condition.startswith("steer:"):
        return f"steer {condition[6:]}"
    return condition


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
