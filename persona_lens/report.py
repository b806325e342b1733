"""HTML report assembly: one self-contained file, plotly.js inlined once, no network needed.

:class:`Report` collects sections (paragraphs, figures, tables, raw HTML) and writes one HTML
file atomically. Figures are embedded as ``<div>``s (:func:`persona_lens.plots.figure_div`)
sharing a single inline copy of the installed plotly.js, so the report opens from ``file://``
on a machine without internet. :func:`build_demo_report` builds the demo's report from the
files its stages wrote (so a cached rerun rebuilds the same report).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._version import __version__
from .io import atomic_write_text, read_jsonl

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

    def paragraph(self, text: str, *, cls: str = "finding") -> "Section":
        self.parts.append(f'<p class="{cls}">{_esc(text)}</p>')
        return self

    def bullets(self, items: Sequence[str]) -> "Section":
        self.parts.append('<ul class="findings">' + "".join(f"<li>{_esc(i)}</li>" for i in items) + "</ul>")
        return self

    def heading(self, text: str) -> "Section":
        self.parts.append(f"<h3>{_esc(text)}</h3>")
        return self

    def table(self, rows: Sequence[Mapping], columns: Sequence[str] | None = None, **kw) -> "Section":
        self.parts.append(table_html(rows, columns, **kw))
        return self

    def html(self, raw: str) -> "Section":
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
        from .plots import figure_div

        items = []
        for i, fig in enumerate(figs):
            self._n += 1
            cap = captions[i] if captions and i < len(captions) and captions[i] else ""
            div = figure_div(fig, div_id=f"fig-{self._n}")
            items.append(f'<div class="figure">{div}' + (f'<div class="caption">{_esc(cap)}</div>' if cap else "")
                         + "</div>")
        section.parts.append('<div class="figures">' + "".join(items) + "</div>")

    def render(self) -> str:
        from .plots import plotly_js

        nav = "".join(f'<a href="#{s.anchor}">{_esc(s.title)}</a>' for s in self.sections)
        body = "".join(f'<section id="{s.anchor}"><h2>{_esc(s.title)}</h2>{"".join(s.parts)}</section>'
                       for s in self.sections)
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        # plotly.js inline once; '</script' cannot occur inside it unescaped
        js = plotly_js().replace("</script", "<\\/script")
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


# --------------------------------------------------------------------------- the demo's report


def _load_json(p: Path):
    return json.loads(p.read_text(encoding="utf-8"))


def build_demo_report(out: str | os.PathLike, cfg, results: dict, findings: dict) -> Path:
    """``out/report.html`` from the demo's stage outputs; each figure is also saved with its
    numbers under ``out/figures/``."""
    import numpy as np

    from . import plots
    from .analysis.sweep import SweepResult

    out = Path(out)
    figdir = out / "figures"
    personas = list(cfg.personas)
    text = findings["text"]
    nums = findings["numbers"]
    rep = Report("persona_lens demo: Persona Vectors and BILLY on "
                 f"{nums.get('model_id', cfg.model)}",
                 f"{'quick' if cfg.quick else 'full'} run · personas {', '.join(personas)} · screening trait "
                 f"{cfg.screen_trait} · judge {cfg.judge} · greedy decoding")

    def save(fig, name: str, data=None):
        plots.save_figure(fig, figdir / name, data=data, static=False)
        return fig

    s = rep.section("Summary", "summary")
    for key, title in (("extraction", "Persona vectors"), ("sweep", "Layer sweep"), ("billy", "BILLY"),
                       ("monitor", "Monitoring"), ("screen", "Data screening")):
        s.heading(title).bullets(text.get(key, []))

    # ------------------------------------------------------------ vectors
    blend = results["blend"]
    layer = nums["blend"]["layer"]
    s = rep.section("Persona vectors and the merged vector", "vectors")
    s.paragraph("Difference-of-means vectors (mean response activation under the positive minus the negative "
                "system prompt) per layer; BILLY's merged vector is the plain mean of the three raw vectors.")
    cos = np.asarray(blend["cosine"])[layer]
    f1 = save(plots.similarity_heatmap(cos, blend["names"], title=f"Cosine similarity at layer {layer}"),
              "vector_cosine", data={"layer": layer, "names": blend["names"], "cosine": cos.tolist()})
    n_layers = len(blend["merged_norms"])
    series = {p: blend["component_norms"][p] for p in personas}
    series["billy_merged"] = blend["merged_norms"]
    f2 = save(plots.lines_per_layer(list(range(n_layers)), series, title="‖v‖ per layer", yaxis_title="L2 norm",
                                    mark_layer=layer),
              "vector_norms", data=[{"layer": l, **{k: v[l] for k, v in series.items()}} for l in range(n_layers)])
    rep.figures(s, [f1, f2])
    s.table([{"persona": p, **results["extract"][p]} for p in list(results["extract"])],
            ["persona", "n_pos", "n_neg", "n_pairs", "n_questions", "norm_max", "norm_argmax", "vector"])

    # ------------------------------------------------------------ sweep
    sw = SweepResult.load(out / "sweep")
    s = rep.section(f"Layer sweep ({sw.config.get('persona')})", "sweep")
    s.paragraph(sw.summary_text())
    s.paragraph("Rule: recommended layer = argmax over swept layers of max(0, 2·AUROC − 1) × (largest steering effect "
                "among α > 0 cells that pass the coherence guard); effect = change of the generated text's projection "
                f"(read back unsteered at layer {sw.config.get('readout_layer')}) as a fraction of the held-out pos−neg "
                "gap" + (", or trait points / 100 when a judge scored the texts" if sw.config.get("judge") else "")
                + ". Coherence guard: mean coherence ≥ 0.75 × the unsteered texts' and ≤ 25% empty answers.",
                cls="caption")
    figs = sw.figures()
    rep.figures(s, [figs[k] for k in ("sweep_separation", "sweep_norms")])
    rep.figures(s, [figs[k] for k in ("sweep_effect", "sweep_trait", "sweep_coherence") if k in figs])
    rec_layer = sw.recommended_layer
    s.heading(f"Steering cells at layer {rec_layer}")
    s.table([r for r in sw.steering if r["layer"] == rec_layer],
            ["alpha_frac", "alpha", "projection", "delta_projection", "effect", "trait_score", "delta_trait",
             "coherence", "repetition", "empty_fraction", "passes_guard"])
    ex = [g for g in sw.generations if g.get("prompt_index") == 0 and (g.get("layer") in (None, rec_layer))]
    s.heading("Example generations (first steering prompt)")
    s.table(ex, ["layer", "alpha_frac", "coherence", "trait_score", "response"], max_chars=500)

    # ------------------------------------------------------------ BILLY
    billy = results["billy"]
    proj = _load_json(out / "billy" / "projection.json")
    answers = _load_json(out / "billy" / "answers.json")
    s = rep.section("BILLY: multi-persona steering vs prompting", "billy")
    s.bullets(text.get("billy", []))
    fp = save(plots.projection_panels(proj, position="response_mean", steer_layer=billy["layer"],
                                      title="Δa (response mean) projected on each persona axis"),
              "projection_response_mean", data=[r for r in _projection_rows(proj) if r["position"] == "response_mean"])
    fl = save(plots.projection_panels(proj, position="last_prompt", steer_layer=billy["layer"],
                                      title="Δa (last prompt token) projected on each persona axis"),
              "projection_last_prompt", data=[r for r in _projection_rows(proj) if r["position"] == "last_prompt"])
    rep.figures(s, [fp, fl], ["Conditions vs no persona; dashed line: steering layer. Steering adds α·v at the last "
                              "prompt token and every generated token.", ""])
    cstats = nums["billy"]["conditions"]
    if any(cstats[c].get(f"trait_{p}") is not None for c in cstats for p in personas):
        trows = [{"condition": plots.condition_label(c), "persona judge": p, "score": cstats[c][f"trait_{p}"]}
                 for c in cstats for p in personas]
        ft = save(plots.grouped_bars(trows, "condition", "persona judge", "score",
                                     title="Trait score of the AUT answers per persona judge (0-100)",
                                     yaxis_title="trait score", xaxis_title=""), "billy_trait_scores", data=trows)
    else:
        ft = None
    lrows = [{"condition": plots.condition_label(c), "metric": m, "value": cstats[c][m]}
             for c in cstats for m in ("words", "ideas")]
    fw = save(plots.grouped_bars(lrows, "condition", "metric", "value", title="Answer length and ideas per condition",
                                 yaxis_title="mean per answer", xaxis_title=""), "billy_length", data=lrows)
    rep.figures(s, [f for f in (ft, fw) if f is not None])
    s.table([{"condition": plots.condition_label(c), **{k: v for k, v in cstats[c].items()}} for c in cstats])
    s.heading("Answers to the first AUT prompt")
    first = [r for r in answers if r["prompt_index"] == 0]
    if first:
        s.paragraph(first[0]["question"], cls="caption")
    s.table([{"condition": plots.condition_label(r["condition"]), "words": r["words"], "coherence": r["coherence"],
              "response": r["response"]} for r in first], max_chars=900)

    # ------------------------------------------------------------ monitor
    mon = results["monitor"]
    mrows = _load_json(out / "monitor" / "monitor.json")
    s = rep.section("Monitoring (before generation)", "monitor")
    s.bullets(text.get("monitor", []))
    fh = save(plots.histogram({"pos system prompt": [r["monitor_score"] for r in mrows if r["polarity"] == "pos"],
                               "neg system prompt": [r["monitor_score"] for r in mrows if r["polarity"] == "neg"]},
                              nbins=15, title=f"Monitor score at layer {mon['layer']} (AUROC {_f(mon['auroc'])})",
                              xaxis_title="h_last_prompt · v/‖v‖", yaxis_title="prompts"),
              "monitor_hist", data=mrows)
    figs = [fh]
    if any(r["trait_score"] is not None for r in mrows):
        figs.append(save(plots.monitor_scatter([r["monitor_score"] for r in mrows], [r["trait_score"] for r in mrows],
                                               [r["polarity"] for r in mrows],
                                               r=(mon.get("pearson") or {}).get("r")), "monitor_scatter", data=mrows))
    rep.figures(s, figs)

    # ------------------------------------------------------------ screen
    sc = results["screen"]
    srows = read_jsonl(out / "screen" / "screened.jsonl")
    s = rep.section(f"Training-data screening ({sc['trait']})", "screen")
    s.bullets(text.get("screen", []))
    from .demo import _row_label

    labels = [str(_row_label(r)) for r in srows]
    fs = save(plots.screening_histogram([r.get("projection_diff") for r in srows], labels, nbins=15,
                                        mean=sc.get("mean_projection_diff"),
                                        title=f"Projection difference along {sc['trait']} (layer {sc['layer']})"),
              "screen_hist", data=[{"label": l, "projection_diff": r.get("projection_diff"),
                                    "projection": r.get("projection"), "base_projection": r.get("base_projection")}
                                   for l, r in zip(labels, srows)])
    rep.figures(s, [fs])
    top = sorted([(r.get("projection_diff"), i) for i, r in enumerate(srows) if r.get("projection_diff") is not None],
                 reverse=True)[:5]
    s.heading("Top flagged rows")
    s.table([{"ΔP": d, "label": labels[i], "prompt": _prompt_text(srows[i]), "response": _response_text(srows[i])}
             for d, i in top], max_chars=300)

    # ------------------------------------------------------------ run info
    s = rep.section("Run", "run")
    stages_path = out / "stages"
    stage_rows = []
    for p in sorted(stages_path.glob("*.json")):
        rec = _load_json(p)
        stage_rows.append({"stage": rec["name"], "seconds (first run)": rec.get("seconds"),
                           "config hash": rec.get("config_hash")})
    s.table(stage_rows)
    s.heading("Configuration")
    s.html(f"<pre>{_esc(json.dumps(cfg.to_dict(), indent=2))}</pre>")
    return rep.write(out / "report.html")


def _f(x, spec=".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _projection_rows(d: dict) -> list[dict]:
    rows = []
    for pos in d["mean"]:
        for ci, c in enumerate(d["conditions"]):
            for ai, a in enumerate(d["axes"]):
                for li, l in enumerate(d["layers"]):
                    rows.append({"position": pos, "condition": c, "axis": a, "layer": l,
                                 "mean": d["mean"][pos][ci][ai][li], "std": d["std"][pos][ci][ai][li]})
    return rows


def _prompt_text(row: dict) -> str:
    if "messages" in row:
        users = [m["content"] for m in row["messages"] if m.get("role") == "user"]
        return users[-1] if users else ""
    return row.get("prompt", row.get("question", ""))


def _response_text(row: dict) -> str:
    if "messages" in row and row["messages"] and row["messages"][-1].get("role") == "assistant":
        return row["messages"][-1]["content"]
    return row.get("response", "")
