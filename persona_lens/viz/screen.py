"""Figures of data screening (:mod:`persona_lens.analysis.screen`): the projection difference ΔP
of training rows, from per-row values or fixed-bin counts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .generic import histogram
from .theme import as_array, color, graph_objects, style


def screening_histogram(
    projection_diff,
    groups: Sequence[str] | None = None,
    *,
    nbins: int = 30,
    title: str | None = None,
    mean: float | None = None,
):
    """Histogram of the projection difference ΔP of training rows (one colour per ``groups`` label).

    ``projection_diff`` is a sequence of values (None/NaN skipped), or fixed-bin counts
    ``{"edges": [...], "counts": [...]}`` as a :class:`~persona_lens.analysis.screen.ScreenResult` holds them.
    """
    go = graph_objects()
    xt = "ΔP = proj(candidate response) − proj(base model's response)"
    if isinstance(projection_diff, Mapping) and "edges" in projection_diff:
        edges, counts = as_array(projection_diff["edges"]), as_array(projection_diff["counts"])
        centers = (edges[:-1] + edges[1:]) / 2
        fig = go.Figure(go.Bar(x=centers, y=counts, width=np.diff(edges), name="rows", marker=dict(color=color(0))))
        fig.add_vline(x=0, line=dict(color="#999", width=1))
        if mean is not None:
            fig.add_vline(x=mean, line=dict(color=color(1), dash="dash"), annotation_text=f"mean {mean:.3g}")
        return style(fig, title or "Data screening: projection difference", xaxis_title=xt, yaxis_title="rows",
                     bargap=0.02)
    values = list(projection_diff)
    if groups is None:
        data: dict = {"rows": values}
    else:
        data = {}
        for g, v in zip(groups, values):
            data.setdefault(str(g), []).append(v)
    lines = {"0": 0.0}
    if mean is not None:
        lines[f"mean {mean:.3g}"] = mean
    return histogram(data, nbins=nbins, title=title or "Data screening: projection difference per row",
                     xaxis_title=xt, yaxis_title="rows", vlines=lines)


def screen_histogram_figure(hist: dict, *, persona: str = "", layer: int | None = None, mean: float | None = None):
    """:func:`screening_histogram` of a screen's fixed-bin counts (``edges``, ``counts``)."""
    return screening_histogram(hist, mean=mean, title=f"Projection difference ΔP along {persona} (layer {layer})")


def figures(result) -> dict:
    """The figures of a :class:`persona_lens.analysis.screen.ScreenResult`: ``hist`` (ΔP of the
    scored rows, fixed bins) when any row was scored, else none."""
    if not result.histogram.get("counts"):
        return {}
    return {"hist": screen_histogram_figure(result.histogram, persona=result.vector, layer=result.config.layer,
                                            mean=result.mean_projection_diff)}
