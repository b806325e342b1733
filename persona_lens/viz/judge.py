"""The calibrated judge's agreement figure: cross-validated scores against the teacher's."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .theme import color, graph_objects, save_figure, style


def _fmt(value) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _ci(pair) -> str:
    low, high = (list(pair) + [None, None])[:2] if pair else (None, None)
    return "" if low is None or high is None else f" [{low:.2f}, {high:.2f}]"


def agreement_scatter(rows: Sequence[Mapping], agreement: Mapping, *, title: str | None = None):
    """One point per answer: the teacher's score (x) and the calibrated judge's cross-validated
    score (y), the identity line, and Pearson r / kappa (bootstrap CIs) in the subtitle."""
    go = graph_objects()
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 100], y=[0, 100], mode="lines", name="identity",
                             line=dict(color="#888", dash="dash", width=1), hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=[r["teacher"] for r in rows], y=[r["cross_validated"] for r in rows], mode="markers",
        name=f"answers (n={len(rows)})", marker=dict(color=color(0), size=7, opacity=0.7),
        text=[str(r.get("answer", ""))[:160] for r in rows],
        hovertemplate="teacher %{x:.1f}<br>calibrated %{y:.1f}<br>%{text}<extra></extra>"))
    subtitle = (f"Pearson r {_fmt(agreement.get('pearson_r'))}{_ci(agreement.get('pearson_ci_bootstrap'))}, "
                f"quadratic kappa (5 bins) {_fmt(agreement.get('kappa_quadratic_5bins'))}"
                f"{_ci(agreement.get('kappa_quadratic_5bins_ci_bootstrap'))}, "
                f"kappa at 50 {_fmt(agreement.get('kappa_binary_50'))}{_ci(agreement.get('kappa_binary_50_ci_bootstrap'))}")
    heading = title or "Calibrated judge vs teacher (cross-validated)"
    style(fig, f"{heading}<br><sup>{subtitle}</sup>", xaxis_title="teacher score",
          yaxis_title="calibrated judge score (held-out fold)", height=560, width=640)
    fig.update_xaxes(range=[-3, 103])
    fig.update_yaxes(range=[-3, 103], scaleanchor="x", scaleratio=1)
    return fig


def save_agreement_figure(rows: Sequence[Mapping], agreement: Mapping, path_without_suffix: str | os.PathLike,
                          *, title: str | None = None) -> Path:
    """``<path>.html`` with the per-answer rows beside it as ``<path>.json`` and ``<path>.csv``."""
    return save_figure(agreement_scatter(rows, agreement, title=title), path_without_suffix, data=list(rows))
