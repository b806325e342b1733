"""Figures of the autotuner (:mod:`persona_lens.analysis.autotune`): the Pareto scatter of trait
effect vs coherence (colour: diversity; error bars: bootstrap CIs; the front and the best point
highlighted) and the judge-call budget used per rung."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..io import json_safe
from .theme import color, graph_objects, save_figure, style, subplots


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _label(r: Mapping) -> str:
    w = f", w={r['weights']}" if r.get("weights") is not None else ""
    return f"#{r['candidate']}: L{r['layer']}, α={r['alpha_value']:g}, {r['positions']}{w}"


def _errors(rows: Sequence[Mapping], key: str) -> dict:
    mean = [_num(r.get(key)) for r in rows]
    lo = [_num(r.get(f"{key}_lo")) for r in rows]
    hi = [_num(r.get(f"{key}_hi")) for r in rows]
    return dict(type="data", symmetric=False, array=[h - m for h, m in zip(hi, mean)],
                arrayminus=[m - lo_ for m, lo_ in zip(mean, lo)], thickness=1, width=2, color="#999")


def pareto_scatter(candidates: Sequence[Mapping], *, front: Sequence[int] = (), best: int | None = None,
                   coherence_name: str = "coherence", floors: Mapping | None = None, title: str | None = None):
    """Trait effect (x) vs coherence (y) of every candidate at the last rung it reached: marker
    colour = diversity, size = rung reached, error bars = CIs; the front (outlined, joined by a
    line) and the best point (star). ``floors``: dashed line at the coherence floor."""
    go = graph_objects()
    fig = go.Figure()
    rows = list(candidates)
    on_front = [r for r in rows if r["candidate"] in set(front)]
    if on_front:
        line = sorted(on_front, key=lambda r: _num(r["trait_effect"]))
        fig.add_trace(go.Scatter(x=[_num(r["trait_effect"]) for r in line], y=[_num(r["coherence"]) for r in line],
                                 mode="lines", name="Pareto front (last rung)", hoverinfo="skip",
                                 line=dict(color="#333", dash="dot", width=1)))
    max_rung = max((int(r.get("rung_reached", r.get("rung", 0))) for r in rows), default=0)
    for subset, name, outline in ((([r for r in rows if r["candidate"] not in set(front)]), "pruned or dominated", 0),
                                  (on_front, "on the front", 2)):
        if not subset:
            continue
        fig.add_trace(go.Scatter(
            x=[_num(r["trait_effect"]) for r in subset], y=[_num(r["coherence"]) for r in subset], mode="markers",
            name=name, text=[_label(r) for r in subset], error_x=_errors(subset, "trait_effect"),
            error_y=_errors(subset, "coherence"),
            customdata=[[_num(r["diversity"]), r.get("rung_reached", r.get("rung")), r.get("n_questions")]
                        for r in subset],
            hovertemplate="%{text}<br>trait effect %{x:.3g}<br>" + coherence_name + " %{y:.3g}<br>diversity "
                          "%{customdata[0]:.3g}<br>rung %{customdata[1]} (n=%{customdata[2]})<extra></extra>",
            marker=dict(color=[_num(r["diversity"]) for r in subset], colorscale="Viridis", cmin=0, cmax=1,
                        size=[8 + 5 * int(r.get("rung_reached", r.get("rung", 0))) for r in subset],
                        line=dict(color="black", width=outline), showscale=outline == 2 or not on_front,
                        colorbar=dict(title=dict(text="diversity", side="right")))))
    chosen = [r for r in rows if r["candidate"] == best]
    if chosen:
        fig.add_trace(go.Scatter(x=[_num(chosen[0]["trait_effect"])], y=[_num(chosen[0]["coherence"])], mode="markers",
                                 name=f"best: {_label(chosen[0])}", hoverinfo="skip",
                                 marker=dict(symbol="star", size=22, color="rgba(0,0,0,0)",
                                             line=dict(color=color(1), width=2.5))))
    if floors and floors.get("coherence") is not None:
        fig.add_hline(y=float(floors["coherence"]), line=dict(color=color(1), dash="dash", width=1),
                      annotation_text="coherence floor", annotation_position="bottom right")
    fig.add_vline(x=0, line=dict(color="#aaa", width=1, dash="dot"))
    return style(fig, title or f"Autotune: trait effect vs {coherence_name} (max rung {max_rung})",
                 xaxis_title="trait effect (judge score − unsteered)", yaxis_title=coherence_name, height=520,
                 legend=dict(orientation="h", y=-0.2))


def budget_by_rung(rungs: Sequence[Mapping], budget: int, *, title: str | None = None):
    """Judge calls made at each rung (bars, cumulative line, the budget dashed) and the number
    of candidates alive (right axis)."""
    go = graph_objects()
    fig = subplots(specs=[[{"secondary_y": True}]])
    x = [f"rung {r['rung']} (n={r['questions']})" for r in rungs]
    cumulative, total = [], 0
    for r in rungs:
        total += int(r["calls"])
        cumulative.append(total)
    fig.add_trace(go.Bar(x=x, y=[r["calls"] for r in rungs], name="judge calls", marker_color=color(0)),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=cumulative, mode="lines+markers", name="cumulative calls",
                             line=dict(color=color(0), dash="dot")), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[r["candidates"] for r in rungs], mode="lines+markers", name="candidates alive",
                             line=dict(color=color(2))), secondary_y=True)
    fig.add_hline(y=budget, line=dict(color=color(1), dash="dash"), annotation_text=f"budget {budget}",
                  annotation_position="top left", secondary_y=False)
    fig.update_yaxes(title_text="judge calls", rangemode="tozero", secondary_y=False)
    most = max((int(r["candidates"]) for r in rungs), default=1)
    fig.update_yaxes(title_text="candidates", range=[0, most * 1.05], dtick=max(1, math.ceil(most / 5)),
                     showgrid=False, secondary_y=True)
    return style(fig, title or f"Judge calls per rung ({total} of {budget})", legend=dict(orientation="h", y=-0.2))


def figures(result) -> dict:
    """``autotune_pareto`` and ``autotune_budget`` of an :class:`~persona_lens.analysis.autotune.AutotuneResult`."""
    s = result.settings
    coherence_name = "coherence (judge, 0-100)" if str(s.get("coherence_source", "")).startswith("judge") \
        else "coherence (text proxy, 0-1)"
    name = s.get("persona", "")
    return {
        "autotune_pareto": pareto_scatter(
            result.candidates, front=result.front, best=None if result.best is None else result.best["candidate"],
            coherence_name=coherence_name, floors=s.get("floors"),
            title=f"{name}: autotune Pareto front ({len(result.candidates)} candidates, judge {s.get('judge')})"),
        "autotune_budget": budget_by_rung(result.rungs, result.config.budget,
                                          title=f"{name}: judge calls per rung "
                                                f"({result.judge_calls} of {result.config.budget})"),
    }


def save_figures(result, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write :func:`figures` into ``out_dir`` with their numbers beside them; name -> HTML path."""
    data = {"autotune_pareto": result.candidates, "autotune_budget": result.rungs}
    return {key: str(save_figure(fig, Path(out_dir) / key, data=json_safe(data[key])))
            for key, fig in figures(result).items()}
