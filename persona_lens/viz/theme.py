"""The one look and the one way to save of every persona_lens figure.

* :func:`style` applies the ``persona_lens`` plotly template (:data:`PALETTE`, white
  background, the same fonts, margins and size everywhere); :func:`color` picks palette colours.
* :func:`save_figure` writes ``<path>.html`` atomically and never points at a CDN: by default
  ``plotly.min.js`` is written once into the figure's folder (atomically, shared by every figure
  there) and referenced by a relative ``<script src>``, so the HTML works from ``file://`` with
  no network; ``plotlyjs="inline"`` makes a single self-contained file instead. With ``data=``
  the numbers behind the figure are written next to it (``<path>.json`` and ``<path>.csv``).
  PNG/SVG are written only when a static exporter works offline (kaleido, which needs a
  Chrome): it is tried in a subprocess with a short timeout, and a failure is remembered for the
  rest of the process (:func:`static_export_status`). Static files are never required.
* :func:`figure_div` and :func:`plotly_js` embed figures in a page that loads plotly.js once
  (:mod:`persona_lens.report`).

plotly is imported on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_text, write_table

TEMPLATE_NAME = "persona_lens"
PALETTE = ("#3b6fb6", "#d1495b", "#2a9d8f", "#e9a03b", "#7b5ea7", "#6c757d", "#8c564b", "#17becf", "#bcbd22")
FONT = "Inter, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
WIDTH, HEIGHT = 760, 440
PLOTLY_JS_NAME = "plotly.min.js"

_STATIC_STATE: dict[str, Any] = {"ok": None, "reason": None}


# --------------------------------------------------------------------------- style


def graph_objects():
    """``plotly.graph_objects`` (imported on first use)."""
    import plotly.graph_objects as go

    return go


def subplots(**kw):
    """``plotly.subplots.make_subplots(**kw)``."""
    from plotly.subplots import make_subplots

    return make_subplots(**kw)


def template():
    """The ``persona_lens`` plotly template (registered with plotly.io on first use)."""
    import plotly.io as pio

    if TEMPLATE_NAME not in pio.templates:
        go = graph_objects()
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
    """Apply the persona_lens look to any figure (every figure function of this package does)."""
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


def rgba(hex_color: str, alpha: float) -> str:
    """``"#rrggbb"`` as a CSS ``rgba(...)`` string with opacity ``alpha`` (for bands)."""
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def as_array(x) -> np.ndarray:
    """A float64 array from a list, array or torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def layer_line(fig, layer: int | None, text: str = "recommended", **kw) -> None:
    """A dashed vertical line at ``layer`` (nothing for None)."""
    if layer is not None:
        fig.add_vline(x=layer, line=dict(color="#555", dash="dash", width=1), annotation_text=f"{text}: {layer}",
                      annotation_position="top", **kw)


# --------------------------------------------------------------------------- saving


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
) -> Path:
    """Write the figure (see the module docstring); returns the HTML path.

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
    if data is not None:
        write_table(data, base)
    if _want_static(static):
        _export_static(fig, base, static_formats, static_timeout)
    return html_path


def static_export_status() -> dict:
    """Whether static export (PNG/SVG) worked in this process: ``{"ok": bool|None, "reason": str|None}``."""
    return dict(_STATIC_STATE)


def _want_static(static: bool | None) -> bool:
    if static is False or os.environ.get("PERSONA_LENS_STATIC_EXPORT", "") == "0":
        return False
    if importlib.util.find_spec("kaleido") is None:
        _STATIC_STATE.update(ok=False, reason="kaleido is not installed")
        return False
    return not (static is None and _STATIC_STATE["ok"] is False)


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
            proc = subprocess.run([sys.executable, "-c", _STATIC_SCRIPT, spec, *tmp_outs], check=False,
                                  capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"})
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
