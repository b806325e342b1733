"""Figures that fit any analysis: overlaid histograms, grouped bars, lines per layer and a
similarity heatmap."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..stats import present
from .theme import as_array, color, graph_objects, layer_line, style


def _finite(values) -> np.ndarray:
    a = present(values)
    return a[np.isfinite(a)]


def histogram(
    groups: Mapping[str, Sequence[float]] | Sequence[float],
    *,
    nbins: int = 30,
    title: str | None = None,
    xaxis_title: str = "value",
    yaxis_title: str = "count",
    vlines: Mapping[str, float] | None = None,
):
    """Overlaid histograms, one per group (shared bins)."""
    go = graph_objects()
    if not isinstance(groups, Mapping):
        groups = {"values": groups}
    data = {k: _finite(v) for k, v in groups.items()}
    allv = np.concatenate([v for v in data.values() if len(v)] or [np.zeros(0)])
    fig = go.Figure()
    if len(allv):
        lo, hi = float(allv.min()), float(allv.max())
        size = (hi - lo) / nbins if hi > lo else 1.0
        for gi, (k, v) in enumerate(data.items()):
            fig.add_trace(go.Histogram(x=v, name=f"{k} (n={len(v)})", opacity=0.65 if len(data) > 1 else 0.9,
                                       marker=dict(color=color(gi)), xbins=dict(start=lo, end=hi + size, size=size)))
    for i, (name, x) in enumerate((vlines or {}).items()):
        fig.add_vline(x=x, line=dict(color="#333", dash="dash", width=1), annotation_text=name,
                      annotation_position="top right" if i % 2 == 0 else "top left")
    return style(fig, title or "Distribution", xaxis_title=xaxis_title, yaxis_title=yaxis_title, barmode="overlay",
                 legend=dict(orientation="h", y=-0.2))


def grouped_bars(
    table_rows: Sequence[Mapping],
    x: str,
    group: str | None,
    value: str,
    error: str | None = None,
    *,
    title: str | None = None,
    yaxis_title: str | None = None,
    xaxis_title: str | None = None,
    barmode: str = "group",
    text_format: str | None = ".3g",
):
    """Bars of ``row[value]`` at ``row[x]``, one colour per ``row[group]`` (e.g. method × task),
    with ``row[error]`` as error bars. Row order sets the category order."""
    go = graph_objects()
    xs = list(dict.fromkeys(str(r[x]) for r in table_rows))
    groups = list(dict.fromkeys(str(r[group]) for r in table_rows)) if group else [None]
    fig = go.Figure()
    for gi, g in enumerate(groups):
        rows = [r for r in table_rows if g is None or str(r[group]) == g]
        by_x = {str(r[x]): r for r in rows}
        ys = [by_x[k].get(value) if k in by_x else None for k in xs]
        ys = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in ys]
        err = None
        if error:
            err = dict(type="data", array=[(by_x[k].get(error) or 0.0) if k in by_x else 0.0 for k in xs],
                       visible=True, thickness=1.2, width=4)
        fig.add_trace(go.Bar(x=xs, y=ys, name=g if g is not None else value, marker=dict(color=color(gi)),
                             error_y=err,
                             text=[format(v, text_format) if (v is not None and text_format) else "" for v in ys],
                             textposition="outside" if barmode == "group" else "inside", cliponaxis=False))
    return style(fig, title or f"{value} by {x}" + (f" and {group}" if group else ""),
                 xaxis_title=xaxis_title if xaxis_title is not None else x,
                 yaxis_title=yaxis_title if yaxis_title is not None else value, barmode=barmode,
                 showlegend=group is not None,
                 legend=dict(orientation="h", x=1.0, xanchor="right", y=1.02, yanchor="bottom"),
                 margin=dict(t=90, b=110))


def lines_per_layer(
    layers: Sequence[int],
    series: Mapping[str, Sequence[float]],
    *,
    title: str | None = None,
    yaxis_title: str = "value",
    mark_layer: int | None = None,
):
    """One line per named series over layers."""
    go = graph_objects()
    fig = go.Figure()
    for i, (name, ys) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=list(layers), y=as_array(ys), mode="lines+markers", name=name,
                                 line=dict(color=color(i)), marker=dict(color=color(i))))
    layer_line(fig, mark_layer, "layer")
    return style(fig, title or "Per-layer values", xaxis_title="layer", yaxis_title=yaxis_title,
                 legend=dict(orientation="h", y=-0.2))


def similarity_heatmap(matrix, names: Sequence[str], *, title: str | None = None, value_name: str = "cosine"):
    """A symmetric similarity matrix (e.g. cosine between persona vectors at one layer)."""
    go = graph_objects()
    z = as_array(matrix)
    fig = go.Figure(go.Heatmap(z=z, x=list(names), y=list(names), zmin=-1, zmax=1, colorscale="RdBu", zmid=0,
                               text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
                               colorbar=dict(title=dict(text=value_name, side="right"))))
    fig.update_yaxes(autorange="reversed")
    return style(fig, title or "Similarity between persona vectors", height=max(360, 70 * len(names) + 160),
                 width=max(480, 90 * len(names) + 260))
