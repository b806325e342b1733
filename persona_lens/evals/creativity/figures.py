"""Plotly figures of a creativity run (offline HTML via ``persona_lens.plots.save_figure``).

* ``scores`` — one panel per metric: mean ± std per task (x) and method (colour);
* ``efficiency`` — wall time, model calls, prompt and generated tokens per query, per method
  (log scale: the discussion costs orders of magnitude more);
* ``ablation`` — originality (with a judge) or the offline semantic-diversity proxy vs the
  number of blended persona vectors (``billy_k{k}`` methods), one line per task.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from .metrics import EFFICIENCY, METRICS, mean_std


def _plots():
    try:
        from ... import plots
    except ImportError:  # pragma: no cover - plots.py is part of the package
        return None
    return plots


def _save(fig, path: Path, data=None) -> Path:
    plots = _plots()
    if plots is not None:
        return Path(plots.save_figure(fig, path, data=data, static=False)[0])
    from ...io import atomic_write_text

    html = Path(f"{path}.html")
    atomic_write_text(html, fig.to_html(include_plotlyjs=True))
    return html


def _color(i: int) -> str | None:
    plots = _plots()
    return plots.color(i) if plots is not None else None


def _style(fig, title: str, **kw):
    plots = _plots()
    if plots is not None:
        return plots.style(fig, title, **kw)
    fig.update_layout(title=title, **kw)
    return fig


def _clean(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def scores_figure(rows: Sequence[dict], methods: Sequence[str], tasks: Sequence[str], metrics: Sequence[str]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    get = {(r["task"], r["method"], r["metric"]): r for r in rows}
    metrics = [m for m in metrics if m != "n_ideas"] or list(metrics)
    titles = [METRICS[m][0] + (" — offline proxy" if METRICS[m][1] else "") for m in metrics]
    fig = make_subplots(rows=len(metrics), cols=1, subplot_titles=titles, vertical_spacing=0.35 / max(1, len(metrics)))
    for mi, metric in enumerate(metrics, 1):
        for k, meth in enumerate(methods):
            ys = [_clean(get[(t, meth, metric)]["mean"]) if (t, meth, metric) in get else None for t in tasks]
            es = [_clean(get[(t, meth, metric)]["std"]) or 0.0 if (t, meth, metric) in get else 0.0 for t in tasks]
            fig.add_trace(go.Bar(x=list(tasks), y=ys, name=meth, legendgroup=meth, showlegend=mi == 1,
                                 marker=dict(color=_color(k)),
                                 error_y=dict(type="data", array=es, visible=True, thickness=1.2, width=3)),
                          row=mi, col=1)
    fig = _style(fig, "Creativity scores per task and method (mean ± std over responses)",
                 barmode="group", height=max(420, 300 * len(metrics)), legend=dict(orientation="h", y=-0.08))
    return fig


def efficiency_figure(rows: Sequence[dict], methods: Sequence[str]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    get = {(r["method"], r["metric"]): r for r in rows if r["task"] == "all"}
    keys = list(EFFICIENCY)
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=[EFFICIENCY[k] for k in keys])
    for ci, metric in enumerate(keys, 1):
        ys = [_clean(get[(m, metric)]["mean"]) if (m, metric) in get else None for m in methods]
        es = [_clean(get[(m, metric)]["std"]) or 0.0 if (m, metric) in get else 0.0 for m in methods]
        fig.add_trace(go.Bar(x=list(methods), y=ys, showlegend=False,
                             marker=dict(color=[_color(i) for i in range(len(methods))]),
                             error_y=dict(type="data", array=es, visible=True, thickness=1.2, width=3),
                             text=[f"{y:.3g}" if y is not None else "" for y in ys], textposition="outside",
                             cliponaxis=False),
                      row=1, col=ci)
        fig.update_yaxes(type="log", row=1, col=ci)
    return _style(fig, "Cost per query (log scale)", height=460, width=max(900, 260 * len(keys)))


def ablation_figure(scores: Sequence[dict], tasks: Sequence[str], metric: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    for ti, task in enumerate(list(tasks) + ["all"]):
        pts = {}
        for s in scores:
            if not str(s["method"]).startswith("billy_k") or (task != "all" and s["task"] != task):
                continue
            pts.setdefault(int(s["method"][len("billy_k"):]), []).append(s.get(metric))
        if not pts:
            continue
        ks = sorted(pts)
        stats = [mean_std(pts[k]) for k in ks]
        fig.add_trace(go.Scatter(x=ks, y=[_clean(m) for m, _, _ in stats], name=task, mode="lines+markers",
                                 line=dict(color=_color(ti), width=3 if task == "all" else 1.5,
                                           dash="solid" if task == "all" else "dot"),
                                 error_y=dict(type="data", array=[_clean(sd) or 0.0 for _, sd, _ in stats],
                                              visible=task == "all")))
    label = METRICS[metric][0] + (" — offline proxy" if METRICS[metric][1] else "")
    return _style(fig, f"{label} vs number of blended persona vectors", xaxis_title="number of blended vectors (k)",
                  yaxis_title=label)


def write_figures(folder: Path, rows: Sequence[dict], methods: Sequence[str], tasks: Sequence[str],
                  metrics: Sequence[str], scores: Sequence[dict], judged: bool) -> dict[str, Path]:
    folder = Path(folder)
    out: dict[str, Path] = {}
    shown = [m for m in metrics if m in METRICS]
    if shown:
        out["scores"] = _save(scores_figure(rows, methods, tasks, shown), folder / "scores",
                              data=[r for r in rows if r["metric"] in shown])
    out["efficiency"] = _save(efficiency_figure(rows, methods), folder / "efficiency",
                              data=[r for r in rows if r["metric"] in EFFICIENCY and r["task"] == "all"])
    if any(str(m).startswith("billy_k") for m in methods):
        metric = "originality" if judged and any("originality" in s for s in scores) else "diversity_proxy"
        if any(metric in s for s in scores):
            out["ablation"] = _save(ablation_figure(scores, tasks, metric), folder / "ablation",
                                    data=[{k: s.get(k) for k in ("task", "item_id", "method", "seed", metric)}
                                          for s in scores if str(s["method"]).startswith("billy_k")])
    return out
