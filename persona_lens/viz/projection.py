"""Figures of the BILLY projection analysis (:mod:`persona_lens.analysis.projection`): one panel
per persona axis, layers on x, one line (± std band) per condition."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .theme import WIDTH, as_array, color, graph_objects, rgba, style, subplots


def _projection_arrays(result, conditions, axes, layers, position, std):
    """(mean [C,A,L], std or None, conditions, axes, layers) from a result object, dict or array."""
    mean = result
    if hasattr(result, "mean") and hasattr(result, "conditions") and not isinstance(result, np.ndarray):
        conditions = conditions or list(result.conditions)
        axes = axes or list(result.axes)
        layers = layers or list(result.layers)
        mean = result.mean[position] if isinstance(result.mean, Mapping) else result.mean
        if std is None and getattr(result, "std", None) is not None:
            std = result.std[position] if isinstance(result.std, Mapping) else result.std
        sel_c = [list(result.conditions).index(c) for c in conditions]
        sel_a = [list(result.axes).index(a) for a in axes]
        sel_l = [list(result.layers).index(layer) for layer in layers]
        mean = as_array(mean)[np.ix_(sel_c, sel_a, sel_l)]
        std = None if std is None else as_array(std)[np.ix_(sel_c, sel_a, sel_l)]
        return mean, std, conditions, axes, layers
    if isinstance(result, Mapping) and "mean" in result:
        d = result
        conditions = conditions or list(d["conditions"])
        axes = axes or list(d["axes"])
        layers = layers or list(d["layers"])
        m = d["mean"][position] if isinstance(d["mean"], Mapping) else d["mean"]
        s = d.get("std")
        s = (s[position] if isinstance(s, Mapping) else s) if s is not None and std is None else std
        m, s = as_array(m), (None if s is None else as_array(s))
        sel_c = [list(d["conditions"]).index(c) for c in conditions]
        sel_a = [list(d["axes"]).index(a) for a in axes]
        sel_l = [list(d["layers"]).index(layer) for layer in layers]
        ix = np.ix_(sel_c, sel_a, sel_l)
        return m[ix], (None if s is None else s[ix]), conditions, axes, layers
    if isinstance(result, Mapping):  # {condition: [A, L] array}
        conditions = conditions or list(result)
        mean = np.stack([as_array(result[c]) for c in conditions])
    mean = as_array(mean)
    if conditions is None or axes is None or layers is None:
        raise ValueError("projection_panels with arrays needs conditions, axes and layers")
    if mean.shape != (len(conditions), len(axes), len(layers)):
        raise ValueError(f"projection array has shape {mean.shape}, expected "
                         f"[{len(conditions)} conditions, {len(axes)} axes, {len(layers)} layers]")
    return mean, (None if std is None else as_array(std)), list(conditions), list(axes), list(layers)


def condition_label(condition: str) -> str:
    if condition == "multi_role":
        return "multi-role prompt"
    if condition == "merged":
        return "BILLY merged steering"
    if condition.startswith("steer:"):
        return f"steer {condition[6:]}"
    return condition


def projection_panels(
    result,
    conditions: Sequence[str] | None = None,
    axes: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    *,
    position: str = "response_mean",
    std=None,
    steer_layer: int | None = None,
    title: str | None = None,
):
    """BILLY projection: one panel per persona axis, layers on x, one line per condition.

    ``result`` is a ``ProjectionResult``, its ``to_dict()``, a ``{condition: [axis, layer]}``
    mapping, or a ``[condition, axis, layer]`` array (then ``conditions``, ``axes`` and
    ``layers`` are required). ``std`` (same shape) draws ± bands.
    """
    go = graph_objects()
    mean, sd, conditions, axes, layers = _projection_arrays(result, conditions, axes, layers, position, std)
    fig = subplots(rows=1, cols=len(axes), shared_yaxes=True, subplot_titles=[f"axis: {a}" for a in axes],
                        horizontal_spacing=0.04)
    x = list(layers)
    for ci, cond in enumerate(conditions):
        c = color(ci)
        for ai in range(len(axes)):
            m = mean[ci, ai]
            if sd is not None:
                s = sd[ci, ai]
                fig.add_trace(go.Scatter(x=x + x[::-1], y=list(m + s) + list((m - s)[::-1]), fill="toself",
                                         fillcolor=rgba(c, 0.12), line=dict(width=0), hoverinfo="skip",
                                         showlegend=False, legendgroup=cond), row=1, col=ai + 1)
            fig.add_trace(go.Scatter(x=x, y=m, mode="lines+markers", name=condition_label(cond), legendgroup=cond,
                                     line=dict(color=c), marker=dict(size=5, color=c), showlegend=ai == 0),
                          row=1, col=ai + 1)
    for ai in range(len(axes)):
        fig.add_hline(y=0, line=dict(color="#999", width=1, dash="dot"), row=1, col=ai + 1)
        if steer_layer is not None:
            fig.add_vline(x=steer_layer, line=dict(color="#555", width=1, dash="dash"), row=1, col=ai + 1)
        fig.update_xaxes(title_text="layer", row=1, col=ai + 1)
    fig.update_yaxes(title_text="Δa · v/‖v‖", row=1, col=1)
    return style(fig, title or f"Projection of Δa = a(condition) − a(none) on each persona axis ({position})",
                 width=max(360 * len(axes), WIDTH), height=460, legend=dict(orientation="h", y=-0.2))


def projection_figure(result, position: str = "response_mean", title: str | None = None):
    """:func:`projection_panels` of a ``ProjectionResult``, titled with its steering settings."""
    st = result.settings
    title = title or (f"Projection of Δa = a_condition − a_none ({position}); steering layer {st.get('layer')}, "
                      f"α={st.get('alpha')}, n={result.n_prompts}")
    return projection_panels(result, position=position, steer_layer=st.get("layer"), title=title)


def figures(result) -> dict:
    """The figures of a :class:`persona_lens.analysis.projection.ProjectionResult`:
    ``projection_<position>`` for each position it holds (``last_prompt``, ``response_mean``)."""
    return {f"projection_{pos}": projection_figure(result, pos) for pos in result.positions}
