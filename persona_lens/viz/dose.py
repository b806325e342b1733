"""The dose-response figure of a dose card (:mod:`persona_lens.dose`, made by
:mod:`persona_lens.analysis.calibrate`): trait score vs steering strength per layer with its
confidence band, the unsteered and positive-prompt levels, where coherence breaks down, and
coherence on a second panel."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..dose import DoseCard
from ..io import json_safe
from .theme import HEIGHT, color, graph_objects, rgba, save_figure, style, subplots


def _nan(x: Any) -> float:
    return float("nan") if x is None or not math.isfinite(float(x)) else float(x)


def dose_figure(card: DoseCard | dict, *, layers: list[int] | None = None, title: str | None = None):
    """Top: mean trait score vs ``alpha * ||v|| / ||h||`` per layer (solid over the coherent range,
    dotted beyond it; band: the confidence interval; ✕: the breakdown alpha), with the unsteered
    baseline and the positive-system-prompt score as horizontal lines (strength 0 and 1). Bottom:
    mean text coherence per layer and the breakdown threshold."""
    card = DoseCard.from_dict(card) if isinstance(card, dict) else card
    go = graph_objects()
    use_frac = all(len(c.alpha_fracs) == len(c.alphas) for c in card.curves)
    fig = subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.68, 0.32], vertical_spacing=0.06)
    for i, curve in enumerate(c for c in card.curves if layers is None or c.layer in layers):
        col = color(i)
        xs = [float(x) for x in (curve.alpha_fracs if use_frac else curve.alphas)]
        mean = [_nan(t) for t in curve.trait_mean]
        lo, hi = [_nan(t) for t in curve.trait_ci_low], [_nan(t) for t in curve.trait_ci_high]
        up = math.inf if curve.breakdown_alpha is None else curve.breakdown_alpha
        down = -math.inf if curve.breakdown_alpha_negative is None else curve.breakdown_alpha_negative
        inside = [down < a < up for a in curve.alphas]
        hover = [f"layer {curve.layer}<br>α = {a:.4g}<br>α·‖v‖/‖h‖ = {f:.3g}<br>trait {m:.1f}"
                 for a, f, m in zip(curve.alphas, curve.alpha_fracs or curve.alphas, mean)]
        band_x = [x for x, l, h in zip(xs, lo, hi) if math.isfinite(l) and math.isfinite(h)]
        band_y = [h for l, h in zip(lo, hi) if math.isfinite(l) and math.isfinite(h)]
        band_y += [l for l, h in zip(lo, hi) if math.isfinite(l) and math.isfinite(h)][::-1]
        if band_x:
            fig.add_trace(go.Scatter(x=band_x + band_x[::-1], y=band_y, fill="toself", fillcolor=rgba(col, 0.15),
                                     line=dict(width=0), hoverinfo="skip", showlegend=False,
                                     legendgroup=str(curve.layer)), row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=mean, mode="lines", line=dict(color=col, dash="dot", width=1),
                                 hoverinfo="skip", showlegend=False, legendgroup=str(curve.layer)), row=1, col=1)
        fig.add_trace(go.Scatter(x=[x for x, ok in zip(xs, inside) if ok], y=[m for m, ok in zip(mean, inside) if ok],
                                 mode="lines+markers", name=f"layer {curve.layer}", line=dict(color=col, width=2.5),
                                 marker=dict(color=col), legendgroup=str(curve.layer),
                                 text=[h for h, ok in zip(hover, inside) if ok], hoverinfo="text"), row=1, col=1)
        broken = [j for j, a in enumerate(curve.alphas) if a in (curve.breakdown_alpha, curve.breakdown_alpha_negative)]
        if broken:
            fig.add_trace(go.Scatter(x=[xs[j] for j in broken], y=[mean[j] for j in broken], mode="markers",
                                     marker=dict(symbol="x", size=12, color=col, line=dict(width=1)),
                                     name="✕ coherence breaks", legendgroup=str(curve.layer),
                                     showlegend=i == 0, text=[hover[j] + "<br>coherence breaks" for j in broken],
                                     hoverinfo="text"), row=1, col=1)
        fig.add_trace(go.Scatter(x=xs, y=[_nan(c) for c in curve.coherence_mean], mode="lines+markers",
                                 line=dict(color=col, width=1.5), marker=dict(color=col, size=5), showlegend=False,
                                 legendgroup=str(curve.layer), name=f"coherence, layer {curve.layer}"), row=2, col=1)
    for key, label, dash in (("baseline", "unsteered (strength 0)", "dash"),
                             ("positive", "positive system prompt (strength 1)", "dashdot")):
        y = card.baseline.get("mean") if key == "baseline" else card.positive.get("mean")
        if y is not None:
            fig.add_hline(y=float(y), line=dict(color="#555", dash=dash, width=1.2), annotation_text=label,
                          annotation_position="top left", row=1, col=1)
    rule = card.coherence_rule or {}
    if rule.get("base_coherence") is not None and rule.get("coherence_min") is not None:
        fig.add_hline(y=float(rule["base_coherence"]) * float(rule["coherence_min"]),
                      line=dict(color="#d1495b", dash="dot", width=1), annotation_text="breakdown threshold",
                      annotation_position="bottom right", row=2, col=1)
    fig.update_yaxes(title_text=f"trait score ({card.judge})", row=1, col=1)
    fig.update_yaxes(title_text="coherence", row=2, col=1)
    fig.update_xaxes(title_text="α·‖v‖/‖h‖ (fraction of the residual norm)" if use_frac else "α", row=2, col=1)
    return style(fig, title or f"{card.persona}: dose-response ({card.model_id})", height=int(HEIGHT * 1.5),
                 legend=dict(orientation="h", y=-0.14))


def save_figures(result, out_dir: str | os.PathLike) -> dict[str, str]:
    """``dose_response.html`` (with ``dose_response.{json,csv}``: the curve rows) of a
    :class:`persona_lens.analysis.calibrate.CalibrateResult`; name -> HTML path."""
    fig = dose_figure(result.card_data)
    return {"dose_response": str(save_figure(fig, Path(out_dir) / "dose_response", data=json_safe(result.curve)))}
