"""Figures of the layer sweep (:mod:`persona_lens.analysis.sweep`): held-out separation and
norms per layer, and layer x alpha heatmaps of the steering outcome."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..io import json_safe
from .theme import HEIGHT, as_array, color, graph_objects, layer_line, save_figure, style, subplots


def _rows_to_columns(rows: Sequence[Mapping], *keys: str) -> list[list]:
    return [[r.get(k) for r in rows] for k in keys]


def sweep_separation(
    layers: Sequence[int] | Sequence[Mapping],
    auroc: Sequence[float] | None = None,
    cohens_d: Sequence[float] | None = None,
    *,
    recommended_layer: int | None = None,
    title: str | None = None,
):
    """Held-out separation per layer: AUROC (left axis) and Cohen's d (right axis).

    Pass the three sequences, or the sweep's per-layer rows (dicts with ``layer``, ``auroc``,
    ``cohens_d``, and optionally ``auroc_last_prompt`` / ``auroc_text``, drawn as thinner lines)
    as the first argument.
    """
    go = graph_objects()
    rows: list[Mapping] | None = None
    if auroc is None:
        rows = [r for r in layers if isinstance(r, Mapping)]
        if len(rows) != len(layers):
            raise ValueError("sweep_separation: pass layers, auroc and cohens_d, or the sweep's per-layer rows (dicts)")
        layers, auroc, cohens_d = _rows_to_columns(rows, "layer", "auroc", "cohens_d")
    if cohens_d is None:
        raise ValueError("sweep_separation: cohens_d is needed with auroc")
    fig = subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=list(layers), y=list(auroc), mode="lines+markers", name="AUROC",
                             line=dict(color=color(0), width=2.5), marker=dict(color=color(0))), secondary_y=False)
    fig.add_trace(go.Scatter(x=list(layers), y=list(cohens_d), mode="lines+markers", name="Cohen's d",
                             line=dict(color=color(1), dash="dot"), marker=dict(color=color(1))), secondary_y=True)
    if rows is not None:  # the other read-outs of the same held-out answers, when the rows have them
        for i, (key, label) in enumerate((("auroc_last_prompt", "AUROC, last prompt token (monitoring)"),
                                          ("auroc_text", "AUROC, answer text only (screening)"))):
            ys = [r.get(key) for r in rows]
            if any(y is not None for y in ys):
                fig.add_trace(go.Scatter(x=list(layers), y=[float("nan") if y is None else y for y in ys],
                                         mode="lines", name=label, line=dict(color=color(2 + i), width=1.5)),
                              secondary_y=False)
    fig.add_hline(y=0.5, line=dict(color="#aaa", width=1, dash="dot"), secondary_y=False)
    layer_line(fig, recommended_layer)
    fig.update_yaxes(title_text="AUROC (held-out pos vs neg)", range=[0.0, 1.05], secondary_y=False)
    fig.update_yaxes(title_text="Cohen's d", secondary_y=True, showgrid=False, tickmode="auto", nticks=8,
                     tickformat=".2g")
    return style(fig, title or "Held-out separation along v/‖v‖ per layer", xaxis_title="layer",
                 legend=dict(orientation="h", y=-0.18))


def sweep_norms(
    layers: Sequence[int] | Sequence[Mapping],
    vector_norm: Sequence[float] | None = None,
    resid_norm: Sequence[float] | None = None,
    *,
    recommended_layer: int | None = None,
    title: str | None = None,
):
    """‖v‖ and the typical residual norm ‖h‖ per layer (left), and their ratio (right)."""
    go = graph_objects()
    if vector_norm is None:
        layers, vector_norm, resid_norm = _rows_to_columns(layers, "layer", "vector_norm", "resid_norm")  # type: ignore[arg-type]
    v, h = as_array(vector_norm), as_array(resid_norm)
    ratio = v / np.where(h > 0, h, np.nan)
    fig = subplots(rows=1, cols=2, subplot_titles=("norms", "‖v‖ / ‖h‖"), horizontal_spacing=0.12)
    x = list(layers)
    fig.add_trace(go.Scatter(x=x, y=h, mode="lines+markers", name="‖h‖ (mean over response tokens)",
                             line=dict(color=color(5)), marker=dict(color=color(5))), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=v, mode="lines+markers", name="‖v‖", line=dict(color=color(0)),
                             marker=dict(color=color(0))), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=ratio, mode="lines+markers", name="‖v‖/‖h‖", line=dict(color=color(2)),
                             marker=dict(color=color(2))),
                  row=1, col=2)
    if recommended_layer is not None:
        for c in (1, 2):
            fig.add_vline(x=recommended_layer, line=dict(color="#555", dash="dash", width=1), row=1, col=c)
    fig.update_yaxes(type="log", title_text="L2 norm", row=1, col=1)
    fig.update_yaxes(title_text="ratio", row=1, col=2)
    fig.update_xaxes(title_text="layer")
    return style(fig, title or "Vector norm vs residual-stream norm per layer", width=960,
                 legend=dict(orientation="h", y=-0.2))


def sweep_heatmap(
    layers: Sequence[int],
    alphas: Sequence[float],
    values,
    *,
    valid=None,
    value_name: str = "steering effect",
    alpha_name: str = "α·‖v‖/‖h‖",
    title: str | None = None,
    text_format: str = ".2f",
    recommended: tuple[int, float] | None = None,
    colorscale: str = "RdBu",
    zmid: float | None = 0.0,
):
    """Layer (y) × α (x) heatmap of a steering outcome; cells where ``valid`` is False (the
    coherence guard failed) are marked ✗."""
    go = graph_objects()
    z = as_array(values).reshape(len(layers), len(alphas))
    ok = np.ones_like(z, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(z.shape)
    text = [[("" if not np.isfinite(z[i, j]) else format(z[i, j], text_format)) + ("" if ok[i, j] else " ✗")
             for j in range(len(alphas))] for i in range(len(layers))]
    xlab = [format(a, "g") for a in alphas]
    fig = go.Figure(go.Heatmap(
        z=z, x=xlab, y=[str(layer) for layer in layers], text=text, texttemplate="%{text}", colorscale=colorscale,
        zmid=zmid, colorbar=dict(title=dict(text=value_name, side="right")),
        hovertemplate=f"layer %{{y}}<br>{alpha_name} = %{{x}}<br>{value_name} = %{{z:.3g}}<extra></extra>"))
    if recommended is not None:
        rec_layer, rec_alpha = recommended
        fig.add_trace(go.Scatter(x=[format(rec_alpha, "g")], y=[str(rec_layer)], mode="markers", name="recommended",
                                 marker=dict(symbol="square-open", size=26, color="black", line=dict(width=2))))
    fig.update_yaxes(type="category", title_text="layer")
    fig.update_xaxes(type="category", title_text=alpha_name)
    return style(fig, title or f"{value_name} by layer and α (✗ = fails the coherence guard)",
                 height=max(HEIGHT, 28 * len(layers) + 160), showlegend=recommended is not None,
                 legend=dict(orientation="h", y=-0.15))


# --------------------------------------------------------------------------- a sweep result


def _grid(result, key: str):
    """(swept layers, alpha values, [layer, alpha] values of ``key``, passes-guard mask)."""
    layers, alphas = result.swept_layers, result.alpha_values
    z = np.full((len(layers), len(alphas)), np.nan)
    ok = np.ones_like(z, dtype=bool)
    for r in result.steering:
        i, j = layers.index(int(r["layer"])), alphas.index(r["alpha_value"])
        v = r.get(key)
        z[i, j] = np.nan if v is None else float(v)
        ok[i, j] = bool(r.get("passes_guard"))
    return layers, alphas, z, ok


#: The figures drawn from the per-layer rows; the others are drawn from the steering rows.
LAYER_FIGURES = ("sweep_separation", "sweep_norms")


def figures(result) -> dict:
    """The figures of a :class:`persona_lens.analysis.sweep.SweepResult`: ``sweep_separation``,
    ``sweep_norms`` (per layer), ``sweep_effect``, ``sweep_coherence`` and, with judged trait
    scores, ``sweep_trait`` (layer x alpha heatmaps)."""
    rec = result.recommendation
    name = result.settings.get("persona", "")
    figs = {
        "sweep_separation": sweep_separation(
            result.layers, recommended_layer=rec.get("layer"),
            title=f"{name}: held-out separation along v/‖v‖ per layer (n={result.settings.get('n_heldout')})"),
        "sweep_norms": sweep_norms(
            result.layers, recommended_layer=rec.get("layer"), title=f"{name}: ‖v‖ vs residual norm per layer"),
    }
    alpha_name = "α·‖v‖/‖h‖" if result.config.alpha_mode == "fraction" else "α"
    recommended = None
    if rec.get("layer") is not None and rec.get("alpha") is not None:
        cell = next((r for r in result.steering if r["layer"] == rec["layer"] and r["alpha"] == rec["alpha"]), None)
        if cell is not None:
            recommended = (rec["layer"], cell["alpha_value"])
    layers, alphas, z, ok = _grid(result, "effect")
    figs["sweep_effect"] = sweep_heatmap(
        layers, alphas, z, valid=ok, value_name="effect (Δproj / held-out gap)", alpha_name=alpha_name,
        recommended=recommended, title=f"{name}: steering effect on the generated text (✗ = fails the coherence guard)")
    layers, alphas, z, ok = _grid(result, "coherence")
    figs["sweep_coherence"] = sweep_heatmap(
        layers, alphas, z, valid=ok, value_name="coherence", alpha_name=alpha_name, colorscale="Viridis", zmid=None,
        title=f"{name}: text coherence (distinct words × (1 − repetition))")
    if any(r.get("trait_score") is not None for r in result.steering):
        layers, alphas, z, ok = _grid(result, "delta_trait")
        figs["sweep_trait"] = sweep_heatmap(
            layers, alphas, z, valid=ok, value_name="Δ trait score", alpha_name=alpha_name, text_format=".1f",
            recommended=recommended, title=f"{name}: judged trait score change vs α = 0")
    return figs


def save_figures(result, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write :func:`figures` into ``out_dir`` (each with its numbers beside it); name -> HTML path."""
    out = {}
    for key, fig in figures(result).items():
        data = json_safe(result.layers if key in LAYER_FIGURES else result.steering)
        out[key] = str(save_figure(fig, Path(out_dir) / key, data=data))
    return out
