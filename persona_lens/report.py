"""HTML report assembly: one self-contained file, plotly.js inlined once, no network needed.

:class:`Report` collects sections (paragraphs, figures, tables, raw HTML) and writes one HTML
file atomically. Figures are embedded as ``<div>``s (:func:`persona_lens.viz.figure_div`)
sharing a single inline copy of the installed plotly.js, so the report opens from ``file://``
on a machine without internet. The demo's report (:mod:`persona_lens.demo.report`) is built with it.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import viz
from ._version import __version__
from .io import atomic_write_text

CSS = """
:root { --fg:#222; --muted:#666; --accent:#3b6fb6; --line:#e3e3e3; --bg:#fafafa; }
* { box-sizing: border-box; }
body { font-family: Inter, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif; color: var(--fg);
       margin: 0; background: #fff; line-height: 1.5; }
header { background: var(--bg); border-bottom: 1px solid var(--line); padding: 24px 40px 12px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header .sub { color: var(--muted); font-size: 14px; }
nav { padding: 8px 40px; border-bottom: 1px solid var(--line); font-size: 14px; }
nav a { margin-right: 16px; color: var(--accent); text-decoration: none; }
main { padding: 8px 40px 40px; max-width: 1500px; }
section { margin-top: 28px; }
h2 { font-size: 21px; border-bottom: 2px solid var(--accent); padding-bottom: 4px; }
h3 { font-size: 16px; margin-bottom: 4px; }
p.finding { margin: 6px 0; }
ul.findings li { margin: 4px 0; }
.figures { display: flex; flex-wrap: wrap; gap: 12px; }
.figure { border: 1px solid var(--line); border-radius: 6px; padding: 4px; background: #fff; max-width: 100%;
          overflow-x: auto; }
.caption { color: var(--muted); font-size: 13px; padding: 2px 6px 6px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 16px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: var(--bg); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { max-width: 560px; white-space: pre-wrap; }
footer { color: var(--muted); font-size: 12px; padding: 16px 40px; border-top: 1px solid var(--line); }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _cell(v: Any, float_fmt: str, max_chars: int) -> tuple[str, str]:
    if v is None:
        return "", "num"
    if isinstance(v, bool):
        return ("yes" if v else "no"), ""
    if isinstance(v, float):
        return ("" if not math.isfinite(v) else format(v, float_fmt)), "num"
    if isinstance(v, int):
        return str(v), "num"
    if isinstance(v, (dict, list)):
        v = json.dumps(v, ensure_ascii=False)
    s = str(v)
    if len(s) > max_chars:
        s = s[: max_chars - 1] + "…"
    return _esc(s), "text"


def table_html(rows: Sequence[Mapping], columns: Sequence[str] | None = None, *, headers: Mapping[str, str] | None = None,
               float_fmt: str = ".3g", max_chars: int = 400) -> str:
    """An escaped HTML table of dict rows (columns: given, else the union of keys in order)."""
    if not rows:
        return "<p><em>(no rows)</em></p>"
    if columns is None:
        columns = []
        for r in rows:
            columns.extend(k for k in r if k not in columns)
    headers = headers or {}
    head = "".join(f"<th>{_esc(headers.get(c, c))}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            text, cls = _cell(r.get(c), float_fmt, max_chars)
            cells.append(f'<td class="{cls}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


@dataclass
class Section:
    title: str
    anchor: str
    parts: list[str] = field(default_factory=list)

    def paragraph(self, text: str, *, cls: str = "finding") -> Section:
        self.parts.append(f'<p class="{cls}">{_esc(text)}</p>')
        return self

    def bullets(self, items: Sequence[str]) -> Section:
        self.parts.append('<ul class="findings">' + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>")
        return self

    def heading(self, text: str) -> Section:
        self.parts.append(f"<h3>{_esc(text)}</h3>")
        return self

    def table(self, rows: Sequence[Mapping], columns: Sequence[str] | None = None, **kw) -> Section:
        self.parts.append(table_html(rows, columns, **kw))
        return self

    def html(self, raw: str) -> Section:
        self.parts.append(raw)
        return self


class Report:
    """A single-file HTML report (plotly.js inline once; every figure a div)."""

    def __init__(self, title: str, subtitle: str = ""):
        self.title = title
        self.subtitle = subtitle
        self.sections: list[Section] = []
        self._figures: list[str] = []
        self._n = 0

    def section(self, title: str, anchor: str | None = None) -> Section:
        anchor = anchor or "s" + str(len(self.sections) + 1)
        s = Section(title, anchor)
        self.sections.append(s)
        return s

    def figures(self, section: Section, figs: Sequence[Any], captions: Sequence[str] | None = None) -> None:
        """Add figures (plotly figures) to a section, side by side when they fit."""
        items = []
        for i, fig in enumerate(figs):
            self._n += 1
            cap = captions[i] if captions and i < len(captions) and captions[i] else ""
            div = viz.figure_div(fig, div_id=f"fig-{self._n}")
            items.append(f'<div class="figure">{div}' + (f'<div class="caption">{_esc(cap)}</div>' if cap else "")
                         + "</div>")
        section.parts.append('<div class="figures">' + "".join(items) + "</div>")

    def render(self) -> str:
        nav = "".join(f'<a href="#{s.anchor}">{_esc(s.title)}</a>' for s in self.sections)
        body = "".join(f'<section id="{s.anchor}"><h2>{_esc(s.title)}</h2>{"".join(s.parts)}</section>'
                       for s in self.sections)
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        # plotly.js inline once; '</script' cannot occur inside it unescaped
        js = viz.plotly_js().replace("</script", "<\\/script")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(self.title)}</title><style>{CSS}</style>"
            f"<script type=\"text/javascript\">{js}</script></head><body>"
            f"<header><h1>{_esc(self.title)}</h1><div class=\"sub\">{_esc(self.subtitle)}</div></header>"
            f"<nav>{nav}</nav><main>{body}</main>"
            f"<footer>persona_lens {__version__} · generated {stamp} · self-contained: opens offline</footer>"
            "</body></html>\n"
        )

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(Path(path), self.render())
