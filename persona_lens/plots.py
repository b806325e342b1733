"""Plotly figures for persona_lens: one function per figure, one style, offline output.

Every figure function takes plain data (lists, arrays, dicts, or an analysis' result object)
and returns a ``plotly.graph_objects.Figure`` styled with the ``persona_lens`` template
(:data:`PALETTE`, white background, the same fonts and margins everywhere).

:func:`save_figure` writes ``<path>.html`` atomically and never points at a CDN: by default
``plotly.min.js`` is written once into the figure's folder (atomically, shared by every figure
there) and referenced by a relative ``<script src>``, so the HTML works from ``file://`` with
no network; ``plotlyjs="inline"`` makes a single self-contained file instead. PNG/SVG are
written only when a static exporter works offline (kaleido, which needs a Chrome): it is tried
in a subprocess with a short timeout, and a failure is remembered for the rest of the process
(:func:`static_export_status`). Static files are never required. With ``data=`` the numbers
behind the figure are written next to it (``<path>.json`` and ``<path>.csv``).

Figures: :func:`sweep_separation`, :func:`sweep_norms`, :func:`sweep_heatmap`,
:func:`projection_panels`, :func:`monitor_scatter`, :func:`screening_histogram`,
:func:`histogram`, :func:`shift_per_layer`, :func:`grouped_bars`, :func:`similarity_heatmap`,
:func:`lines_per_layer`.
"""

from __future__ import annotations

import csv
import importlib.util
import io as _io
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .io import atomic_write_json, atomic_write_text

TEMPLATE_NAME = "persona_lens"
PALETTE = ("#3b6fb6", "#d1495b", "#2a9d8f", "#e9a03b", "#7b5ea7", "#6c757d", "#8c564b", "#17becf", "#bcbd22")
FONT = "Inter, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
WIDTH, HEIGHT = 760, 440
PLOTLY_JS_NAME = "plotly.min.js"

_STATIC_STATE: dict[str, Any] = {"ok": None, "reason": None}


# --------------------------------------------------------------------------- style


def _go():
    import plotly.graph_objects as go

    return go


def template():
    """The ``persona_lens`` plotly template (registered with plotly.io on first use)."""
    import plotly.io as pio

    if TEMPLATE_NAME not in pio.templates:
        go = _go()
        base = pio.templates["plotly_white"]
        t = go.layout.Template(base)
        t.layout.colorway = list(PALETTE)
        t.layout.font = dict(family=FONT, size=13, color="#222")
        t.layout.title = dict(font=dict(size=16), x=0.02, xanchor="left")
        t.layout.margin = dict(l=70, r=30, t=70, b=60)
        t.layout.legend = dict(bgcolor="rgba(255,255,255,0.7)", bordercolor="#ddd", borderwidth=1)
        t.layout.hoverlabel = dict(font=dict(family=FONT))
        t.layout.xaxis = dict(base.layout.xaxis.to_plotly_json(), zeroline=False, showline=True, linecolor="#888")
        t.layout.yaxis = dict(base.layout.yaxis.to_plotly_json(), showline=True, linecolor="#888")
        pio.templates[TEMPLATE_NAME] = t
    return pio.templates[TEMPLATE_NAME]


def style(fig, title: str | None = None, *, xaxis_title: str | None = None, yaxis_title: str | None = None,
          height: int | None = None, width: int | None = None, **layout: Any):
    """Apply the persona_lens look to any figure (used by every function here)."""
    template()
    fig.update_layout(template=TEMPLATE_NAME, height=height or HEIGHT, width=width or WIDTH, **layout)
    if title is not None:
        fig.update_layout(title_text=title)
    if xaxis_title is not None:
        fig.update_xaxes(title_text=xaxis_title)
    if yaxis_title is not None:
        fig.update_yaxes(title_text=yaxis_title)
    return fig


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _arr(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def _finite(values) -> np.ndarray:
    a = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    return a[np.isfinite(a)]


def _mark_layer(fig, layer: int | None, text: str = "recommended", **kw) -> None:
    if layer is not None:
        fig.add_vline(x=layer, line=dict(color="#555", dash="dash", width=1), annotation_text=f"{text}: {layer}",
                      annotation_position="top", **kw)


# --------------------------------------------------------------------------- saving


class SavedFigure(list):
    """The paths :func:`save_figure` wrote (HTML first). Also ``os.PathLike`` (the HTML path),
    so ``Path(save_figure(...))`` gives the HTML file."""

    def __fspath__(self) -> str:
        return str(self[0])

    @property
    def html(self) -> Path:
        return self[0]


def plotly_js() -> str:
    """The plotly.js source bundled with the installed plotly package (no network)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def write_plotly_js(folder: str | os.PathLike) -> Path:
    """``folder/plotly.min.js`` (written atomically once; reused when it matches the installed plotly)."""
    path = Path(folder) / PLOTLY_JS_NAME
    js = plotly_js()
    if not path.exists() or path.stat().st_size != len(js.encode("utf-8")):
        atomic_write_text(path, js)
    return path


def figure_div(fig, *, div_id: str | None = None, responsive: bool = True) -> str:
    """An HTML fragment for one figure, without plotly.js (the page must load it once)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"responsive": responsive, "displaylogo": False})


def save_figure(
    fig,
    path_without_suffix: str | os.PathLike,
    *,
    data: Sequence[Mapping] | Mapping | None = None,
    plotlyjs: str = "directory",
    static: bool | None = None,
    static_formats: Sequence[str] = ("png",),
    static_timeout: float = 45.0,
) -> SavedFigure:
    """Write the figure; returns the paths written, HTML first (see the module docstring).

    ``plotlyjs``: ``"directory"`` (default; ``plotly.min.js`` once per folder) or ``"inline"``
    (self-contained HTML). ``static``: ``None`` tries PNG/SVG only when kaleido is importable and
    an earlier try in this process did not fail; ``True`` tries even after a failure; ``False``
    never. ``data``: rows (list of dicts) or a dict, written as ``<path>.json`` (+ ``.csv`` for rows).
    """
    if plotlyjs not in ("directory", "inline"):
        raise ValueError("plotlyjs must be 'directory' or 'inline' (never a CDN: reports must work offline)")
    base = Path(path_without_suffix)
    if base.suffix in (".html", ".png", ".svg"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    html_path = Path(f"{base}.html")
    if plotlyjs == "directory":
        write_plotly_js(base.parent)
        html = fig.to_html(full_html=True, include_plotlyjs="directory", config={"displaylogo": False})
    else:
        html = fig.to_html(full_html=True, include_plotlyjs=True, config={"displaylogo": False})
    atomic_write_text(html_path, html)
    out = SavedFigure([html_path])
    if data is not None:
        out.extend(write_table(data, base))
    if _want_static(static):
        out.extend(_export_static(fig, base, static_formats, static_timeout))
    return out


def write_table(data: Sequence[Mapping] | Mapping, path_without_suffix: str | os.PathLike) -> list[Path]:
    """``<path>.json`` (and ``<path>.csv`` when ``data`` is a list of flat dicts), atomically."""
    base = Path(path_without_suffix)
    paths = [atomic_write_json(Path(f"{base}.json"), data)]
    if isinstance(data, Sequence) and data and all(isinstance(r, Mapping) for r in data):
        fields: list[str] = []
        for r in data:
            fields.extend(k for k in r if k not in fields)
        buf = _io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        for r in data:
            w.writerow({k: _csv_cell(r.get(k)) for k in fields})
        paths.append(atomic_write_text(Path(f"{base}.csv"), buf.getvalue()))
    return paths


def _csv_cell(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return "" if v is None else v


def static_export_status() -> dict:
    """Whether static export (PNG/SVG) worked in this process: ``{"ok": bool|None, "reason": str|None}``."""
    return dict(_STATIC_STATE)


def _want_static(static: bool | None) -> bool:
    if static is False or os.environ.get("PERSONA_LENS_STATIC_EXPORT", "") == "0":
        return False
    if importlib.util.find_spec("kaleido") is None:
        _STATIC_STATE.update(ok=False, reason="kaleido is not installed")
        return False
    if static is None and _STATIC_STATE["ok"] is False:
        return False
    return True


_STATIC_SCRIPT = r"""
import sys, plotly.io as pio
fig = pio.read_json(sys.argv[1])
for out in sys.argv[2:]:
    fig.write_image(out, format=out.rsplit(".", 1)[1])
"""


def _export_static(fig, base: Path, formats: Sequence[str], timeout: float) -> list[Path]:
    """Static images via kaleido in a subprocess (it may hang looking for a browser): a failure
    or a timeout is remembered, and nothing is raised."""
    tmpdir = tempfile.mkdtemp(prefix=".static-", dir=base.parent)
    try:
        spec = os.path.join(tmpdir, "fig.json")
        Path(spec).write_text(fig.to_json(), encoding="utf-8")
        tmp_outs = [os.path.join(tmpdir, f"out.{f}") for f in formats]
        try:
            proc = subprocess.run([sys.executable, "-c", _STATIC_SCRIPT, spec, *tmp_outs], capture_output=True,
                                  text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        except subprocess.TimeoutExpired:
            _STATIC_STATE.update(ok=False, reason=f"static export timed out after {timeout:.0f}s")
            return []
        if proc.returncode != 0 or not all(os.path.exists(p) for p in tmp_outs):
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            _STATIC_STATE.update(ok=False, reason=f"static export failed: {tail[0][:300]}")
            return []
        written = []
        for f, tmp in zip(formats, tmp_outs):
            target = Path(f"{base}.{f}")
            os.replace(tmp, target)
            written.append(target)
        _STATIC_STATE.update(ok=True, reason=None)
        return written
    finally:
        for p in Path(tmpdir).glob("*"):
            p.unlink(missing_ok=True)
        os.rmdir(tmpdir)


# --------------------------------------------------------------------------- layer sweep


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
    from plotly.subplots import make_subplots

    go = _go()
    rows = None
    if auroc is None:
        rows = list(layers)  # type: ignore[arg-type]
        layers, auroc, cohens_d = _rows_to_columns(rows, "layer", "auroc", "cohens_d")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
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
    _mark_layer(fig, recommended_layer)
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
    from plotly.subplots import make_subplots

    go = _go()
    if vector_norm is None:
        layers, vector_norm, resid_norm = _rows_to_columns(layers, "layer", "vector_norm", "resid_norm")  # type: ignore[arg-type]
    v, h = _arr(vector_norm), _arr(resid_norm)
    ratio = v / np.where(h > 0, h, np.nan)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("norms", "‖v‖ / ‖h‖"), horizontal_spacing=0.12)
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
    go = _go()
    z = _arr(values).reshape(len(layers), len(alphas))
    ok = np.ones_like(z, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(z.shape)
    text = [[("" if not np.isfinite(z[i, j]) else format(z[i, j], text_format)) + ("" if ok[i, j] else " ✗")
             for j in range(len(alphas))] for i in range(len(layers))]
    xlab = [format(a, "g") for a in alphas]
    fig = go.Figure(go.Heatmap(
        z=z, x=xlab, y=[str(l) for l in layers], text=text, texttemplate="%{text}", colorscale=colorscale,
        zmid=zmid, colorbar=dict(title=dict(text=value_name, side="right")),
        hovertemplate=f"layer %{{y}}<br>{alpha_name} = %{{x}}<br>{value_name} = %{{z:.3g}}<extra></extra>"))
    if recommended is not None:
        l, a = recommended
        fig.add_trace(go.Scatter(x=[format(a, "g")], y=[str(l)], mode="markers", name="recommended",
                                 marker=dict(symbol="square-open", size=26, color="black", line=dict(width=2))))
    fig.update_yaxes(type="category", title_text="layer")
    fig.update_xaxes(type="category", title_text=alpha_name)
    return style(fig, title or f"{value_name} by layer and α (✗ = fails the coherence guard)",
                 height=max(HEIGHT, 28 * len(layers) + 160), showlegend=recommended is not None,
                 legend=dict(orientation="h", y=-0.15))


# --------------------------------------------------------------------------- projection (BILLY)


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
        sel_l = [list(result.layers).index(l) for l in layers]
        mean = _arr(mean)[np.ix_(sel_c, sel_a, sel_l)]
        std = None if std is None else _arr(std)[np.ix_(sel_c, sel_a, sel_l)]
        return mean, std, conditions, axes, layers
    if isinstance(result, Mapping) and "mean" in result:
        d = result
        conditions = conditions or list(d["conditions"])
        axes = axes or list(d["axes"])
        layers = layers or list(d["layers"])
        m = d["mean"][position] if isinstance(d["mean"], Mapping) else d["mean"]
        s = d.get("std")
        s = (s[position] if isinstance(s, Mapping) else s) if s is not None and std is None else std
        m, s = _arr(m), (None if s is None else _arr(s))
        sel_c = [list(d["conditions"]).index(c) for c in conditions]
        sel_a = [list(d["axes"]).index(a) for a in axes]
        sel_l = [list(d["layers"]).index(l) for l in layers]
        ix = np.ix_(sel_c, sel_a, sel_l)
        return m[ix], (None if s is None else s[ix]), conditions, axes, layers
    if isinstance(result, Mapping):  # {condition: [A, L] array}
        conditions = conditions or list(result)
        mean = np.stack([_arr(result[c]) for c in conditions])
    mean = _arr(mean)
    if conditions is None or axes is None or layers is None:
        raise ValueError("projection_panels with arrays needs conditions, axes and layers")
    if mean.shape != (len(conditions), len(axes), len(layers)):
        raise ValueError(f"projection array has shape {mean.shape}, expected "
                         f"[{len(conditions)} conditions, {len(axes)} axes, {len(layers)} layers]")
    return mean, (None if std is None else _arr(std)), list(conditions), list(axes), list(layers)


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
    from plotly.subplots import make_subplots

    go = _go()
    mean, sd, conditions, axes, layers = _projection_arrays(result, conditions, axes, layers, position, std)
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True, subplot_titles=[f"axis: {a}" for a in axes],
                        horizontal_spacing=0.04)
    x = list(layers)
    for ci, cond in enumerate(conditions):
        c = color(ci)
        for ai in range(len(axes)):
            m = mean[ci, ai]
            if sd is not None:
                s = sd[ci, ai]
                fig.add_trace(go.Scatter(x=x + x[::-1], y=list(m + s) + list((m - s)[::-1]), fill="toself",
                                         fillcolor=_rgba(c, 0.12), line=dict(width=0), hoverinfo="skip",
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


# --------------------------------------------------------------------------- monitoring, screening, shift


def pearson_r(x, y) -> float | None:
    x, y = _arr(x), _arr(y)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def monitor_scatter(
    monitor_scores,
    trait_scores,
    labels: Sequence[str] | None = None,
    *,
    r: float | None = None,
    title: str | None = None,
    xaxis_title: str = "monitor score (h_last_prompt · v/‖v‖)",
    yaxis_title: str = "trait score (0-100)",
):
    """Monitor score (x) vs trait score (y), coloured by ``labels`` (e.g. pos/neg prompt), with r."""
    go = _go()
    x = _arr(monitor_scores)
    y = np.asarray([np.nan if v is None else float(v) for v in trait_scores], dtype=float)
    if r is None:
        r = pearson_r(x, y)
    fig = go.Figure()
    groups = list(dict.fromkeys(labels)) if labels is not None else [None]
    for gi, g in enumerate(groups):
        sel = np.ones(len(x), bool) if g is None else np.asarray([lab == g for lab in labels])
        fig.add_trace(go.Scatter(x=x[sel], y=y[sel], mode="markers", name=str(g) if g is not None else "prompts",
                                 marker=dict(size=8, opacity=0.75, color=color(gi))))
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() >= 2 and np.ptp(x[keep]) > 0:
        a, b = np.polyfit(x[keep], y[keep], 1)
        xs = np.array([x[keep].min(), x[keep].max()])
        fig.add_trace(go.Scatter(x=xs, y=a * xs + b, mode="lines", name="least squares",
                                 line=dict(color="#444", dash="dash")))
    r_txt = "n/a" if r is None else f"{r:.2f}"
    return style(fig, title or f"Monitoring: projection before generation vs trait expression (r = {r_txt})",
                 xaxis_title=xaxis_title, yaxis_title=yaxis_title)


def histogram(
    groups: Mapping[str, Sequence[float]] | Sequence[float],
    *,
    nbins: int = 30,
    title: str | None = None,
    xaxis_title: str = "value",
    yaxis_title: str = "count",
    vlines: Mapping[str, float] | None = None,
):
    """Overlaid histograms, one per group (shared bins)."""
    go = _go()
    if not isinstance(groups, Mapping):
        groups = {"values": groups}
    data = {k: _finite(v) for k, v in groups.items()}
    allv = np.concatenate([v for v in data.values() if len(v)] or [np.zeros(0)])
    fig = go.Figure()
    if len(allv):
        lo, hi = float(allv.min()), float(allv.max())
        size = (hi - lo) / nbins if hi > lo else 1.0
        for gi, (k, v) in enumerate(data.items()):
            fig.add_trace(go.Histogram(x=v, name=f"{k} (n={len(v)})", opacity=0.65 if len(data) > 1 else 0.9,
                                       marker=dict(color=color(gi)), xbins=dict(start=lo, end=hi + size, size=size)))
    for i, (name, x) in enumerate((vlines or {}).items()):
        fig.add_vline(x=x, line=dict(color="#333", dash="dash", width=1), annotation_text=name,
                      annotation_position="top right" if i % 2 == 0 else "top left")
    return style(fig, title or "Distribution", xaxis_title=xaxis_title, yaxis_title=yaxis_title, barmode="overlay",
                 legend=dict(orientation="h", y=-0.2))


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
    ``{"edges": [...], "counts": [...]}`` as ``screen_file`` writes them.
    """
    go = _go()
    xt = "ΔP = proj(candidate response) − proj(base model's response)"
    if isinstance(projection_diff, Mapping) and "edges" in projection_diff:
        edges, counts = _arr(projection_diff["edges"]), _arr(projection_diff["counts"])
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
    go = _go()
    if shift is None:
        r = layers
        get = (lambda k: r[k]) if isinstance(r, Mapping) else (lambda k: getattr(r, k))
        layers, shift, std = get("layers"), get("shift"), get("std")
    x = list(layers)
    series = _arr(shift)
    series = series[None] if series.ndim == 1 else series
    sds = None if std is None else _arr(std).reshape(series.shape)
    names = list(names) if names else (["shift"] if len(series) == 1 else [f"series {i}" for i in range(len(series))])
    fig = go.Figure()
    for i, (m, n) in enumerate(zip(series, names)):
        c = color(i)
        if sds is not None:
            s = sds[i]
            fig.add_trace(go.Scatter(x=x + x[::-1], y=list(m + s) + list((m - s)[::-1]), fill="toself",
                                     fillcolor=_rgba(c, 0.15), line=dict(width=0), hoverinfo="skip",
                                     showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=m, mode="lines+markers", name=n, line=dict(color=c), marker=dict(color=c)))
    fig.add_hline(y=0, line=dict(color="#999", width=1, dash="dot"))
    return style(fig, title or "Fine-tuning shift along the persona vector per layer", xaxis_title="layer",
                 yaxis_title=yaxis_title)


# --------------------------------------------------------------------------- generic


def grouped_bars(
    table_rows: Sequence[Mapping],
    x: str,
    group: str | None,
    value: str,
    error: str | None = None,
    *,
    title: str | None = None,
    yaxis_title: str | None = None,
    xaxis_title: str | None = None,
    barmode: str = "group",
    text_format: str | None = ".3g",
):
    """Bars of ``row[value]`` at ``row[x]``, one colour per ``row[group]`` (e.g. method × task),
    with ``row[error]`` as error bars. Row order sets the category order."""
    go = _go()
    xs = list(dict.fromkeys(str(r[x]) for r in table_rows))
    groups = list(dict.fromkeys(str(r[group]) for r in table_rows)) if group else [None]
    fig = go.Figure()
    for gi, g in enumerate(groups):
        rows = [r for r in table_rows if g is None or str(r[group]) == g]
        by_x = {str(r[x]): r for r in rows}
        ys = [by_x[k].get(value) if k in by_x else None for k in xs]
        ys = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in ys]
        err = None
        if error:
            err = dict(type="data", array=[(by_x[k].get(error) or 0.0) if k in by_x else 0.0 for k in xs],
                       visible=True, thickness=1.2, width=4)
        fig.add_trace(go.Bar(x=xs, y=ys, name=g if g is not None else value, marker=dict(color=color(gi)),
                             error_y=err,
                             text=[format(v, text_format) if (v is not None and text_format) else "" for v in ys],
                             textposition="outside" if barmode == "group" else "inside", cliponaxis=False))
    return style(fig, title or f"{value} by {x}" + (f" and {group}" if group else ""),
                 xaxis_title=xaxis_title if xaxis_title is not None else x,
                 yaxis_title=yaxis_title if yaxis_title is not None else value, barmode=barmode,
                 showlegend=group is not None,
                 legend=dict(orientation="h", x=1.0, xanchor="right", y=1.02, yanchor="bottom"),
                 margin=dict(t=90, b=110))


def lines_per_layer(
    layers: Sequence[int],
    series: Mapping[str, Sequence[float]],
    *,
    title: str | None = None,
    yaxis_title: str = "value",
    mark_layer: int | None = None,
):
    """One line per named series over layers."""
    go = _go()
    fig = go.Figure()
    for i, (name, ys) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=list(layers), y=_arr(ys), mode="lines+markers", name=name,
                                 line=dict(color=color(i)), marker=dict(color=color(i))))
    _mark_layer(fig, mark_layer, "layer")
    return style(fig, title or "Per-layer values", xaxis_title="layer", yaxis_title=yaxis_title,
                 legend=dict(orientation="h", y=-0.2))


def similarity_heatmap(matrix, names: Sequence[str], *, title: str | None = None, value_name: str = "cosine"):
    """A symmetric similarity matrix (e.g. cosine between persona vectors at one layer)."""
    go = _go()
    z = _arr(matrix)
    fig = go.Figure(go.Heatmap(z=z, x=list(names), y=list(names), zmin=-1, zmax=1, colorscale="RdBu", zmid=0,
                               text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
                               colorbar=dict(title=dict(text=value_name, side="right"))))
    fig.update_yaxes(autorange="reversed")
    return style(fig, title or "Similarity between persona vectors", height=max(360, 70 * len(names) + 160),
                 width=max(480, 90 * len(names) + 260))
