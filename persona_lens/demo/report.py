"""The demo's ``report.html``, built from the files its stages wrote (so a cached rerun rebuilds
the same report) with :class:`persona_lens.report.Report`; each figure is also saved with its
numbers under ``figures/``."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import numpy as np

from .. import viz
from ..analysis.sweep import SweepResult
from ..io import read_jsonl
from ..report import Report
from .findings import row_label


def _load_json(p: Path):
    return json.loads(p.read_text(encoding="utf-8"))


def build_demo_report(out: str | os.PathLike, cfg, results: dict, findings: dict) -> Path:
    """``out/report.html`` from the demo's stage outputs; each figure is also saved with its
    numbers under ``out/figures/``."""
    out = Path(out)
    figdir = out / "figures"
    personas = list(cfg.personas)
    text = findings["text"]
    nums = findings["numbers"]
    rep = Report("persona_lens demo: Persona Vectors and BILLY on "
                 f"{nums.get('model_id', cfg.model)}",
                 f"{'quick' if cfg.quick else 'full'} run · personas {', '.join(personas)} · screening trait "
                 f"{cfg.screen_trait} · judge {cfg.judge} · greedy decoding ({cfg.backend})")

    def save(fig, name: str, data=None):
        viz.save_figure(fig, figdir / name, data=data, static=False)
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
    f1 = save(viz.similarity_heatmap(cos, blend["names"], title=f"Cosine similarity at layer {layer}"),
              "vector_cosine", data={"layer": layer, "names": blend["names"], "cosine": cos.tolist()})
    n_layers = len(blend["merged_norms"])
    series = {p: blend["component_norms"][p] for p in personas}
    series["billy_merged"] = blend["merged_norms"]
    f2 = save(viz.lines_per_layer(list(range(n_layers)), series, title="‖v‖ per layer", yaxis_title="L2 norm",
                                    mark_layer=layer),
              "vector_norms", data=[{"layer": l, **{k: v[l] for k, v in series.items()}} for l in range(n_layers)])
    rep.figures(s, [f1, f2])
    s.table([{"persona": p, **results["extract"][p]} for p in list(results["extract"])],
            ["persona", "n_pos", "n_neg", "n_pairs", "n_questions", "norm_max", "norm_argmax", "vector"])

    # ------------------------------------------------------------ sweep
    sw = SweepResult.load(out / "sweep")
    s = rep.section(f"Layer sweep ({sw.settings.get('persona')})", "sweep")
    s.paragraph(sw.summary_text())
    s.paragraph("Rule: recommended layer = argmax over swept layers of max(0, 2·AUROC − 1) × (largest steering effect "
                "among α > 0 cells that pass the coherence guard); effect = change of the generated text's projection "
                f"(read back unsteered at layer {sw.config.readout_layer}) as a fraction of the held-out pos−neg "
                "gap" + (", or trait points / 100 when a judge scored the texts" if sw.settings.get("judge") else "")
                + ". Coherence guard: mean coherence ≥ 0.75 × the unsteered texts' and ≤ 25% empty answers.",
                cls="caption")
    figs = viz.sweep.figures(sw)
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
    proj = _load_json(out / "billy" / "result.json")
    answers = _load_json(out / "billy" / "answers.json")
    s = rep.section("BILLY: multi-persona steering vs prompting", "billy")
    s.bullets(text.get("billy", []))
    fp = save(viz.projection_panels(proj, position="response_mean", steer_layer=billy["layer"],
                                      title="Δa (response mean) projected on each persona axis"),
              "projection_response_mean", data=[r for r in _projection_rows(proj) if r["position"] == "response_mean"])
    fl = save(viz.projection_panels(proj, position="last_prompt", steer_layer=billy["layer"],
                                      title="Δa (last prompt token) projected on each persona axis"),
              "projection_last_prompt", data=[r for r in _projection_rows(proj) if r["position"] == "last_prompt"])
    rep.figures(s, [fp, fl], ["Conditions vs no persona; dashed line: steering layer. Steering adds α·v at the last "
                              "prompt token and every generated token.", ""])
    cstats = nums["billy"]["conditions"]
    if any(cstats[c].get(f"trait_{p}") is not None for c in cstats for p in personas):
        trows = [{"condition": viz.condition_label(c), "persona judge": p, "score": cstats[c][f"trait_{p}"]}
                 for c in cstats for p in personas]
        ft = save(viz.grouped_bars(trows, "condition", "persona judge", "score",
                                     title="Trait score of the AUT answers per persona judge (0-100)",
                                     yaxis_title="trait score", xaxis_title=""), "billy_trait_scores", data=trows)
    else:
        ft = None
    lrows = [{"condition": viz.condition_label(c), "metric": m, "value": cstats[c][m]}
             for c in cstats for m in ("words", "ideas")]
    fw = save(viz.grouped_bars(lrows, "condition", "metric", "value", title="Answer length and ideas per condition",
                                 yaxis_title="mean per answer", xaxis_title=""), "billy_length", data=lrows)
    rep.figures(s, [f for f in (ft, fw) if f is not None])
    s.table([{"condition": viz.condition_label(c), **{k: v for k, v in cstats[c].items()}} for c in cstats])
    s.heading("Answers to the first AUT prompt")
    first = [r for r in answers if r["prompt_index"] == 0]
    if first:
        s.paragraph(first[0]["question"], cls="caption")
    s.table([{"condition": viz.condition_label(r["condition"]), "words": r["words"], "coherence": r["coherence"],
              "response": r["response"]} for r in first], max_chars=900)

    # ------------------------------------------------------------ monitor
    mon = results["monitor"]
    mrows = _load_json(out / "monitor" / "monitor.json")
    s = rep.section("Monitoring (before generation)", "monitor")
    s.bullets(text.get("monitor", []))
    fh = save(viz.histogram({"pos system prompt": [r["monitor_score"] for r in mrows if r["polarity"] == "pos"],
                               "neg system prompt": [r["monitor_score"] for r in mrows if r["polarity"] == "neg"]},
                              nbins=15, title=f"Monitor score at layer {mon['layer']} (AUROC {_f(mon['auroc'])})",
                              xaxis_title="h_last_prompt · v/‖v‖", yaxis_title="prompts"),
              "monitor_hist", data=mrows)
    monitor_figs = [fh]
    if any(r["trait_score"] is not None for r in mrows):
        monitor_figs.append(save(viz.monitor_scatter([r["monitor_score"] for r in mrows], [r["trait_score"] for r in mrows],
                                               [r["polarity"] for r in mrows],
                                               r=(mon.get("pearson") or {}).get("r")), "monitor_scatter", data=mrows))
    rep.figures(s, monitor_figs)

    # ------------------------------------------------------------ screen
    sc = results["screen"]
    srows = read_jsonl(out / "screen" / "screened.jsonl")
    s = rep.section(f"Training-data screening ({sc['trait']})", "screen")
    s.bullets(text.get("screen", []))
    labels = [str(row_label(r)) for r in srows]
    fs = save(viz.screening_histogram([r.get("projection_diff") for r in srows], labels, nbins=15,
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
    s.html(f"<pre>{html.escape(json.dumps(cfg.to_dict(), indent=2))}</pre>")
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
