"""Figures of data screening (:mod:`persona_lens.analysis.screen`): the projection difference ΔP
of training rows, from per-row values or fixed-bin counts; for a multi-trait screen
(:class:`~persona_lens.analysis.screen.MultiScreenResult`) the mean ΔP per trait with its
interval, the ΔP distribution per trait, the cross-trait leakage heatmap and the top rows table
(:func:`multi_figures`, :func:`save_multi_figures`: each HTML with its JSON/CSV beside)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..analysis.screen import MultiScreenResult, training_row
from .generic import histogram, similarity_heatmap
from .theme import as_array, color, graph_objects, save_figure, style

XT = "ΔP = proj(candidate response) − proj(base model's response)"


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


# --------------------------------------------------------------------------- several traits


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


def trait_means_figure(result: MultiScreenResult, layer: int | None = None):
    """Mean ΔP of every trait at ``layer`` (default: the first) with its confidence interval,
    largest first: which traits the dataset pushes the model towards."""
    go = graph_objects()
    cols = result.ranking(layer)
    at = cols[0]["layer"] if cols else layer
    means = [_nan(c["mean"]) for c in cols]
    fig = go.Figure(go.Bar(
        x=[c["trait"] for c in cols], y=means, marker=dict(color=[color(result.traits.index(c["trait"])) for c in cols]),
        error_y=dict(type="data", symmetric=False, array=[_nan(c["ci_high"]) - m for c, m in zip(cols, means)],
                     arrayminus=[m - _nan(c["ci_low"]) for c, m in zip(cols, means)])))
    fig.add_hline(y=0, line=dict(color="#999", width=1))
    conf = int(round(100 * result.config.confidence))
    return style(fig, f"Dataset mean ΔP per trait (layer {at}, {conf} % CI, n = {result.n_scored})",
                 xaxis_title="trait", yaxis_title="mean ΔP")


def trait_distributions_figure(result: MultiScreenResult, layer: int | None = None):
    """Fixed-bin ΔP histograms of every trait at ``layer`` (default: the first), overlaid."""
    go = graph_objects()
    at = result.layers[0] if layer is None else layer
    fig = go.Figure()
    for ti, trait in enumerate(result.traits):
        hist = result.histograms.get(f"{trait}@{at}", {})
        if not hist.get("counts"):
            continue
        edges = as_array(hist["edges"])
        fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=hist["counts"], width=np.diff(edges), name=trait,
                             opacity=0.6, marker=dict(color=color(ti))))
    fig.add_vline(x=0, line=dict(color="#999", width=1))
    return style(fig, f"ΔP per trait (layer {at})", xaxis_title=XT, yaxis_title="rows", barmode="overlay",
                 bargap=0.02, legend=dict(orientation="h", y=-0.2))


def leakage_figure(result: MultiScreenResult, layer: int | None = None):
    """Correlation over the dataset of per-row ΔP between traits at ``layer`` (default: the
    first): how screening for one trait co-moves with the others."""
    at = result.layers[0] if layer is None else layer
    corr = np.array([[_nan(x) for x in row] for row in result.leakage[str(at)]["correlation"]])
    return similarity_heatmap(corr, result.traits, value_name="r",
                              title=f"Cross-trait leakage: correlation of per-row ΔP (layer {at}, "
                                    f"n = {result.leakage[str(at)]['n']})")


def top_rows(result: MultiScreenResult, layer: int | None = None, per_trait: int = 5) -> list[dict]:
    """The ``per_trait`` largest-ΔP rows of every trait at ``layer`` (default: the first), as
    flat table rows (rank, trait, row index, ΔP, prompt and response, shortened)."""
    at = result.layers[0] if layer is None else layer
    out = []
    for trait in result.traits:
        for rank, r in enumerate(result.top.get(f"{trait}@{at}", [])[:per_trait], 1):
            prompt, response = training_row(r["row"])
            out.append({"trait": trait, "rank": rank, "index": r["index"], "layer": at,
                        "projection_diff": r["projection_diff"], "prompt": prompt[-1]["content"][:120],
                        "response": response[:200]})
    return out


def top_rows_table(rows: Sequence[Mapping], *, title: str = "Most flagged rows per trait"):
    """A table of :func:`top_rows`."""
    go = graph_objects()
    keys = ["trait", "rank", "index", "projection_diff", "prompt", "response"]
    cells = [[f"{r[k]:+.4f}" if k == "projection_diff" else r[k] for r in rows] for k in keys]
    fig = go.Figure(go.Table(columnwidth=[70, 40, 50, 70, 220, 320],
                             header=dict(values=["trait", "rank", "row", "ΔP", "prompt", "response"], align="left"),
                             cells=dict(values=cells, align="left")))
    return style(fig, title, height=max(300, 60 + 48 * len(rows)), width=1000)


def multi_figures(result: MultiScreenResult) -> dict:
    """``{name: (figure, data)}`` of a multi-trait screen, per layer: ``means_L<l>`` (mean ΔP per
    trait with CI), ``dist_L<l>`` (ΔP histograms), ``leakage_L<l>`` (correlation heatmap) and
    ``top_L<l>`` (top rows table); no figure when no row was scored."""
    if not result.n_scored:
        return {}
    out: dict = {}
    for layer in result.layers:
        cols = [c for c in result.columns if c["layer"] == layer]
        leak = result.leakage[str(layer)]
        out[f"means_L{layer}"] = (trait_means_figure(result, layer), cols)
        out[f"dist_L{layer}"] = (trait_distributions_figure(result, layer),
                                 {t: result.histograms[f"{t}@{layer}"] for t in result.traits})
        out[f"leakage_L{layer}"] = (leakage_figure(result, layer),
                                    [{"trait": t, **{f"r[{u}]": leak["correlation"][i][j] for j, u in enumerate(result.traits)},
                                      **{f"cov[{u}]": leak["covariance"][i][j] for j, u in enumerate(result.traits)}}
                                     for i, t in enumerate(result.traits)])
        rows = top_rows(result, layer)
        out[f"top_L{layer}"] = (top_rows_table(rows, title=f"Most flagged rows per trait (layer {layer})"), rows)
    return out


def save_multi_figures(result: MultiScreenResult, folder: str | os.PathLike) -> dict[str, Path]:
    """Write :func:`multi_figures` into ``folder``: ``<name>.html`` with ``<name>.json``/``.csv`` beside."""
    return {name: save_figure(fig, Path(folder) / name, data=data) for name, (fig, data) in multi_figures(result).items()}
