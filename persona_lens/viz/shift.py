"""Figures of the fine-tuning shift (:mod:`persona_lens.analysis.shift`) along a persona vector."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .theme import as_array, color, graph_objects, rgba, style


def shift_per_layer(
    layers,
    shift=None,
    std=None,
    *,
    names: Sequence[str] | None = None,
    title: str | None = None,
    yaxis_title: str = "mean(proj_finetuned − proj_base)",
):
    """Fine-tuning shift along a persona vector per layer (± std band).

    ``layers`` may be a ``ShiftResult`` (or its ``to_dict()``); ``shift`` may be one series
    or a list of series with ``names`` (one line each).
    """
    go = graph_objects()
    if shift is None:
        r = layers
        get = (lambda k: r[k]) if isinstance(r, Mapping) else (lambda k: getattr(r, k))
        layers, shift, std = get("layers"), get("shift"), get("std")
    x = list(layers)
    series = as_array(shift)
    series = series[None] if series.ndim == 1 else series
    sds = None if std is None else as_array(std).reshape(series.shape)
    names = list(names) if names else (["shift"] if len(series) == 1 else [f"series {i}" for i in range(len(series))])
    fig = go.Figure()
    for i, (m, n) in enumerate(zip(series, names)):
        c = color(i)
        if sds is not None:
            s = sds[i]
            fig.add_trace(go.Scatter(x=x + x[::-1], y=list(m + s) + list((m - s)[::-1]), fill="toself",
                                     fillcolor=rgba(c, 0.15), line=dict(width=0), hoverinfo="skip",
                                     showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=m, mode="lines+markers", name=n, line=dict(color=c), marker=dict(color=c)))
    fig.add_hline(y=0, line=dict(color="#999", width=1, dash="dot"))
    return style(fig, title or "Fine-tuning shift along the persona vector per layer", xaxis_title="layer",
                 yaxis_title=yaxis_title)


def shift_figure(result, title: str | None = None):
    """:func:`shift_per_layer` of a ``ShiftResult`` (mean ± std over prompts), titled with its settings."""
    st = result.settings
    title = title or f"Fine-tuning shift along {st.get('vector')} ({st.get('position')}, n={result.n})"
    return shift_per_layer(result.layers, result.shift, result.std, title=title)


def figures(result) -> dict:
    """The figures of a :class:`persona_lens.analysis.shift.ShiftResult`: ``shift`` (per layer, ± std)."""
    return {"shift": shift_figure(result)}
