"""Figures of a creativity run (:mod:`persona_lens.evals.creativity`).

* ``scores`` — one panel per metric: mean ± std per task (x) and method (colour);
* ``efficiency`` — wall time, model calls, prompt and generated tokens per query, per method
  (log scale: the discussion costs orders of magnitude more);
* ``ablation`` — originality (with a judge) or the offline semantic-diversity proxy vs the
  number of blended persona vectors (``billy_k{k}`` methods), one line per task.

:func:`figures` draws them from a :class:`~persona_lens.evals.creativity.CreativityResult`
(labels from the eval's ``METRICS`` and ``EFFICIENCY`` tables); :func:`save_figures` writes them
with their numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..evals.creativity.metrics import EFFICIENCY, METRICS
from ..stats import mean_std
from .theme import color, graph_objects, save_figure, style, subplots

#: metric -> (label, is an offline proxy), as ``persona_lens.evals.creativity.metrics.METRICS``
MetricInfo = Mapping[str, tuple[str, bool]]


def _clean(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _label(metric_info: MetricInfo, metric: str) -> str:
    label, proxy = metric_info[metric]
    return label + (" — offline proxy" if proxy else "")


def scores_figure(rows: Sequence[dict], methods: Sequence[str], tasks: Sequence[str], metrics: Sequence[str],
                  metric_info: MetricInfo):
    go = graph_objects()
    get = {(r["task"], r["method"], r["metric"]): r for r in rows}
    metrics = [m for m in metrics if m != "n_ideas"] or list(metrics)
    fig = subplots(rows=len(metrics), cols=1, subplot_titles=[_label(metric_info, m) for m in metrics],
                   vertical_spacing=0.35 / max(1, len(metrics)))
    for mi, metric in enumerate(metrics, 1):
        for k, meth in enumerate(methods):
            ys = [_clean(get[(t, meth, metric)]["mean"]) if (t, meth, metric) in get else None for t in tasks]
            es = [_clean(get[(t, meth, metric)]["std"]) or 0.0 if (t, meth, metric) in get else 0.0 for t in tasks]
            fig.add_trace(go.Bar(x=list(tasks), y=ys, name=meth, legendgroup=meth, showlegend=mi == 1,
                                 marker=dict(color=color(k)),
                                 error_y=dict(type="data", array=es, visible=True, thickness=1.2, width=3)),
                          row=mi, col=1)
    return style(fig, "Creativity scores per task and method (mean ± std over responses)",
                 barmode="group", height=max(420, 300 * len(metrics)), legend=dict(orientation="h", y=-0.08))


def efficiency_figure(rows: Sequence[dict], methods: Sequence[str], efficiency: Mapping[str, str]):
    go = graph_objects()
    get = {(r["method"], r["metric"]): r for r in rows if r["task"] == "all"}
    keys = list(efficiency)
    fig = subplots(rows=1, cols=len(keys), subplot_titles=[efficiency[k] for k in keys])
    for ci, metric in enumerate(keys, 1):
        ys = [_clean(get[(m, metric)]["mean"]) if (m, metric) in get else None for m in methods]
        es = [_clean(get[(m, metric)]["std"]) or 0.0 if (m, metric) in get else 0.0 for m in methods]
        fig.add_trace(go.Bar(x=list(methods), y=ys, showlegend=False,
                             marker=dict(color=[color(i) for i in range(len(methods))]),
                             error_y=dict(type="data", array=es, visible=True, thickness=1.2, width=3),
                             text=[f"{y:.3g}" if y is not None else "" for y in ys], textposition="outside",
                             cliponaxis=False),
                      row=1, col=ci)
        fig.update_yaxes(type="log", row=1, col=ci)
    return style(fig, "Cost per query (log scale)", height=460, width=max(900, 260 * len(keys)))


def ablation_figure(scores: Sequence[dict], tasks: Sequence[str], metric: str, metric_info: MetricInfo):
    go = graph_objects()
    fig = go.Figure()
    for ti, task in enumerate(list(tasks) + ["all"]):
        pts: dict[int, list] = {}
        for s in scores:
            if not str(s["method"]).startswith("billy_k") or (task != "all" and s["task"] != task):
                continue
            pts.setdefault(int(s["method"][len("billy_k"):]), []).append(s.get(metric))
        if not pts:
            continue
        ks = sorted(pts)
        stats = [mean_std(pts[k]) for k in ks]
        fig.add_trace(go.Scatter(x=ks, y=[_clean(m) for m, _, _ in stats], name=task, mode="lines+markers",
                                 line=dict(color=color(ti), width=3 if task == "all" else 1.5,
                                           dash="solid" if task == "all" else "dot"),
                                 error_y=dict(type="data", array=[_clean(sd) or 0.0 for _, sd, _ in stats],
                                              visible=task == "all")))
    label = _label(metric_info, metric)
    return style(fig, f"{label} vs number of blended persona vectors", xaxis_title="number of blended vectors (k)",
                 yaxis_title=label)


def _ablation_metric(result) -> str | None:
    """Originality with a judge that scored it, else the offline semantic-diversity proxy."""
    if not any(str(m).startswith("billy_k") for m in result.methods):
        return None
    metric = "originality" if result.config.judged and any("originality" in s for s in result.scores) \
        else "diversity_proxy"
    return metric if any(metric in s for s in result.scores) else None


def figures(result) -> dict:
    """The figures of a creativity result: ``scores`` (when a quality metric is present),
    ``efficiency`` and, with the ablation's ``billy_k{k}`` methods, ``ablation``."""
    tasks = list(result.tasks)
    figs = {}
    shown = [m for m in result.metrics if m in METRICS]
    if shown:
        figs["scores"] = scores_figure(result.table, result.methods, tasks, shown, METRICS)
    figs["efficiency"] = efficiency_figure(result.table, result.methods, EFFICIENCY)
    metric = _ablation_metric(result)
    if metric is not None:
        figs["ablation"] = ablation_figure(result.scores, tasks, metric, METRICS)
    return figs


def save_figures(result, folder: str | os.PathLike) -> dict[str, Path]:
    """Write :func:`figures` under ``folder`` (HTML + the numbers each is drawn from), by name."""
    folder = Path(folder)
    shown = [m for m in result.metrics if m in METRICS]
    metric = _ablation_metric(result)
    data = {
        "scores": [r for r in result.table if r["metric"] in shown],
        "efficiency": [r for r in result.table if r["metric"] in EFFICIENCY and r["task"] == "all"],
        "ablation": [{k: s.get(k) for k in ("task", "item_id", "method", "seed", metric)}
                     for s in result.scores if str(s["method"]).startswith("billy_k")],
    }
    return {name: save_figure(fig, folder / name, data=data[name], static=False)
            for name, fig in figures(result).items()}
