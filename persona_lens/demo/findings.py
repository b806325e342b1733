"""The demo's numbers and sentences (``summary.json`` and the report), computed from the files
its stages wrote, and the per-answer metrics the stages record."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from ..analysis.sweep import text_coherence
from ..io import json_safe
from ..stats import nanmean
from ..vectors import PersonaVector
from .config import DemoConfig

_ITEM_LINE = re.compile(r"^\s*(?:\d+[.):]|[-*•])\s+(\S.*)$", re.M)


def answer_metrics(text: str) -> dict:
    """Length, a crude AUT fluency proxy (distinct list items, else distinct sentences) and coherence."""
    items = len({m.strip().lower() for m in _ITEM_LINE.findall(text or "")})
    sentences = len({" ".join(s.lower().split()) for s in re.split(r"[.!?\n]+", text or "") if s.strip()})
    c = text_coherence(text)
    return {"words": c["words"], "ideas": items if items else sentences, "coherence": c["coherence"],
            "distinct": c["distinct"], "repetition": c["repetition"]}


def _mean(xs) -> float | None:
    m = nanmean(xs)
    return None if math.isnan(m) else m


def _fmt(x, spec: str = ".2f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def row_label(row: dict):
    """The label a screening row is grouped by (the first of the usual label fields)."""
    for k in ("label", "source", "style", "trait", "kind", "category", "group"):
        if k in row:
            return row[k]
    return "rows"


def compute_findings(out: Path, cfg: DemoConfig, results: dict) -> dict:
    """Numbers and sentences for the report and summary.json, computed from the stage outputs."""
    nums: dict = {}
    text: dict[str, list[str]] = {}
    personas = list(cfg.personas)
    nums["model_id"] = PersonaVector.load(out / results["blend"]["merged"]).model_id or cfg.model

    # extraction + blend
    ex = results["extract"]
    nums["extraction"] = {p: {k: ex[p][k] for k in ("n_pos", "n_neg", "norm_max", "norm_argmax")} for p in ex}
    blend = results["blend"]
    sweep = results["sweep"]
    layer = int(sweep["recommendation"]["layer"])
    cos = np.asarray(blend["cosine"])[layer]
    names = blend["names"]
    pair_cos = {f"{names[i]}~{names[j]}": float(cos[i, j]) for i in range(len(personas))
                for j in range(i + 1, len(personas))}
    merged_cos = {p: float(cos[i, len(names) - 1]) for i, p in enumerate(personas)}
    nums["blend"] = {"layer": layer, "pairwise_cosine": pair_cos, "merged_cosine": merged_cos,
                     "merged_norm": blend["merged_norms"][layer],
                     "component_norms": {p: blend["component_norms"][p][layer] for p in personas}}
    lo = min(pair_cos, key=lambda k: pair_cos[k])
    hi = max(pair_cos, key=lambda k: pair_cos[k])
    text["extraction"] = [
        f"Extracted {len(personas) + 1} persona vectors from {ex[personas[0]]['n_pos']} positive and "
        f"{ex[personas[0]]['n_neg']} negative answers each ({cfg.n_pairs} instruction pairs × {cfg.n_questions} "
        f"questions, greedy, {cfg.extract_tokens} new tokens).",
        f"At layer {layer} the BILLY personas' vectors are {'similar' if min(pair_cos.values()) > 0.5 else 'partly aligned'}: "
        f"cosine {pair_cos[hi]:.2f} ({hi.replace('~', ' vs ')}) to {pair_cos[lo]:.2f} ({lo.replace('~', ' vs ')}); "
        f"the merged (mean) vector has norm {nums['blend']['merged_norm']:.2f} vs "
        f"{np.mean(list(nums['blend']['component_norms'].values())):.2f} for the components on average, "
        f"and cosine {min(merged_cos.values()):.2f}–{max(merged_cos.values()):.2f} with each of them.",
    ]

    # sweep
    nums["sweep"] = {"recommendation": sweep["recommendation"], "best_auroc_layer": sweep["best_auroc_layer"],
                     "best_auroc": sweep["best_auroc"], "readout_layer": sweep["readout_layer"]}
    text["sweep"] = [sweep["summary"]]

    # BILLY: projection + answers
    billy = results["billy"]
    proj = json.loads((out / "billy" / "result.json").read_text(encoding="utf-8"))
    answers = json.loads((out / "billy" / "answers.json").read_text(encoding="utf-8"))
    L = proj["layers"]
    later = [i for i, l in enumerate(L) if l >= billy["layer"]]
    mean_rm = np.asarray(proj["mean"]["response_mean"], dtype=float)  # [C, A, L]
    per_cond = {}
    for ci, c in enumerate(proj["conditions"]):
        per_cond[c] = {a: float(np.nanmean(mean_rm[ci, ai, later])) for ai, a in enumerate(proj["axes"])}
    nums["projection"] = {"steer_layer": billy["layer"], "alpha": billy["alpha"], "alpha_frac": billy["alpha_frac"],
                          "mean_over_layers_from_steer_layer": per_cond}
    cond_stats = {}
    for c in billy["conditions"]:
        rows = [r for r in answers if r["condition"] == c]
        cond_stats[c] = {"words": _mean(r["words"] for r in rows), "ideas": _mean(r["ideas"] for r in rows),
                         "coherence": _mean(r["coherence"] for r in rows),
                         **{f"trait_{p}": _mean(r.get(f"trait_{p}") for r in rows) for p in personas}}
        vals = [cond_stats[c][f"trait_{p}"] for p in personas]
        cond_stats[c]["trait_mean"] = _mean(vals) if any(v is not None for v in vals) else None
    nums["billy"] = {"conditions": cond_stats, "layer": billy["layer"], "alpha": billy["alpha"],
                     "alpha_choice": billy["alpha_choice"], "n_prompts": billy["n_prompts"]}
    t = [f"On {billy['n_prompts']} AUT prompts, steering at layer {billy['layer']} with α = {billy['alpha']:.3g} "
         f"(α·‖v_merged‖/‖h‖ = {billy['alpha_frac']:.2f}, {billy['alpha_choice']}):"]
    m, mr = per_cond.get("merged", {}), per_cond.get("multi_role", {})
    if m:
        t.append("Averaged over layers ≥ the steering layer, BILLY merged steering shifts the response activation by "
                 + ", ".join(f"{m[a]:+.2f} along {a}" for a in proj["axes"])
                 + (" and the multi-role prompt by " + ", ".join(f"{mr[a]:+.2f}" for a in proj["axes"]) if mr else "")
                 + " (Δa·v/‖v‖ relative to no persona).")
        both = [a for a in proj["axes"] if m[a] > 0]
        t.append(f"The merged vector moves the activation positively along {len(both)} of {len(proj['axes'])} persona axes"
                 + (f" ({', '.join(both)})" if both else "") + ".")
    resid = sweep.get("resid_norm", {}).get(str(billy["layer"]))
    if resid:
        eff = {p: billy["alpha"] * blend["component_norms"][p][billy["layer"]] / resid for p in personas}
        nums["billy"]["single_alpha_frac"] = eff
        t.append("The single persona vectors get the same raw α, i.e. α·‖v_i‖/‖h‖ = "
                 + ", ".join(f"{eff[p]:.2f} ({p})" for p in personas)
                 + ": each is longer than the merged vector, so it is steered harder.")
    if cond_stats.get("none", {}).get("trait_mean") is not None:
        order = sorted(cond_stats, key=lambda c: -(cond_stats[c]["trait_mean"] or 0))
        t.append("Mean trait score over the three persona judges (embedding proxy, 0-100): "
                 + "; ".join(f"{c} {cond_stats[c]['trait_mean']:.1f}" for c in order) + ".")
    t.append("Coherence (distinct words × (1 − repetition)): "
             + "; ".join(f"{c} {_fmt(cond_stats[c]['coherence'])}" for c in cond_stats) + ".")
    last = (billy.get("attempts") or [{}])[-1]
    if last and not last.get("passes_guard", True):
        t.append(f"Even at this strength the merged steering lowers coherence below 0.75× the unsteered answers "
                 f"({_fmt(last['coherence']['merged'])} vs {_fmt(last['coherence']['none'])}): this small model "
                 "tolerates little steering on long AUT answers.")
    text["billy"] = t

    # monitor
    mon = results["monitor"]
    nums["monitor"] = {k: mon[k] for k in ("layer", "n", "auroc", "cohens_d", "pearson", "trait_auroc")}
    r = (mon.get("pearson") or {}).get("r")
    text["monitor"] = [
        f"Monitoring at layer {mon['layer']}: the last-prompt projection, computed before any token is generated, "
        f"separates held-out prompts with the positive vs negative {personas[0]} system prompt with AUROC "
        f"{_fmt(mon['auroc'])} (Cohen's d {_fmt(mon['cohens_d'])}, n = {mon['n']})"
        + (f"; it correlates with the trait score of the answers at r = {r:.2f}." if r is not None else ".")]
    if mon.get("trait_auroc") is not None:
        text["monitor"].append(
            f"The trait judge ({cfg.judge}) itself separates the same held-out answers (pos vs neg prompt) with AUROC "
            f"{_fmt(mon['trait_auroc'])}" + (": near chance, so correlations with its scores carry little signal here."
                                             if abs(mon["trait_auroc"] - 0.5) < 0.15 else "."))

    # screen
    sc = results["screen"]
    nums["screen"] = {k: sc[k] for k in ("trait", "layer", "n", "n_scored", "mean_projection_diff", "by_label",
                                          "auroc_vs_neutral", "source")}
    by = sc["by_label"]
    s = [f"Screening {sc['n_scored']} training rows ({sc['source']}) by projection difference along {sc['trait']} "
         f"at layer {sc['layer']}: mean ΔP per label " + ", ".join(f"{k} {v['mean']:+.2f} (n={v['n']})" for k, v in by.items())
         + "."]
    if sc["auroc_vs_neutral"]:
        s.append("AUROC of ΔP against the neutral rows: "
                 + ", ".join(f"{k} {_fmt(v)}" for k, v in sc["auroc_vs_neutral"].items()) + ".")
    top_labels = [t_["label"] for t_ in sc["top"]]
    if top_labels:
        s.append(f"The top {len(top_labels)} flagged rows are labelled: {', '.join(map(str, top_labels))}.")
    text["screen"] = s
    return {"numbers": json_safe(nums, str_keys=True), "text": text}
