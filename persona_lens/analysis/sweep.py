"""Layer sweep: which layer (and which steering strength) to use for a persona vector.

For one persona vector ``v`` and its spec, per layer ``l`` (``blocks.{l}.hook_resid_post``):

**Norms.** ``vector_norm = ||v[l]||``; ``resid_norm`` = the typical residual norm, the mean of
``||h_t[l]||`` over every response token ``t`` of the held-out responses (pos and neg);
``norm_ratio = vector_norm / resid_norm``.

**Held-out separation.** Held-out responses are generated (greedy) for the spec's
``eval_questions`` (never used for extraction) under the positive and the negative system prompt
(question ``i`` uses instruction pair ``i mod n_pairs``). Each response's mean activation over
its response tokens is projected on ``v[l]/||v[l]||``; ``auroc`` (pos vs neg, ties count 1/2,
= the Mann-Whitney U statistic / (n_pos n_neg)) and ``cohens_d`` ((mean_pos - mean_neg) /
pooled standard deviation with ddof=1) measure the separation, and ``gap = mean_pos - mean_neg``
is the prompt-induced shift along ``v``. ``auroc_last_prompt`` is the same AUROC for the last
prompt token (the monitoring position, before any response). ``auroc_text`` reads the same
answers back with only the user question (no system prompt), the way data screening reads a
training set: how well layer ``l`` tells the trait-styled *text* apart (the layer to screen at,
:func:`persona_lens.analysis.screen.screen_file`; on SmolLM2 it peaks later than ``auroc``).
These use every layer (one forward each).

**Steering effect** (at the swept ``layers`` only). The held-out questions without a system
prompt are answered (greedy) while ``alpha * v[l]`` is added at layer ``l`` (response
positions); every layer x alpha x prompt row runs in one batched generation with per-row
deltas. ``alphas`` are fractions ``f = alpha ||v[l]|| / resid_norm[l]`` by default
(``alpha_mode="fraction"``; ``alpha`` raw values with ``"raw"``): both are recorded. Each
generated text is then read back by the *unsteered* model and its response-mean activation at
one fixed *readout layer* ``r`` (default: the layer with the largest held-out Cohen's d) is
projected on ``v[r]/||v[r]||``: this measures what the text expresses, not the injected vector,
with the same meter for every steered layer. ``delta_projection`` = mean over prompts of
(projection - projection of the alpha = 0 text for the same prompt); ``effect =
delta_projection / gap[r]`` (1.0 = the text moved along ``v`` as far as the positive system
prompt moves held-out answers). With a ``judge``, ``trait_score`` (0-100) and ``delta_trait``
are recorded too (an unfitted embedding judge is first fitted on the held-out pos/neg answers).

**Coherence guard.** Per text (:func:`text_coherence`): ``distinct`` = distinct words / words,
``repetition`` = share of repeated character 8-grams, ``coherence = distinct * (1 -
repetition)`` (0 for an empty text).
A (layer, alpha) cell passes when its mean coherence is at least ``coherence_min`` (default
0.75) times the unsteered texts' mean coherence, at most ``max_empty`` (default 0.25) of its
texts are empty, and, when the judge scores coherence, its mean judged coherence is >= 50.

**Recommendation.** ``score[l] = max(0, 2 auroc[l] - 1) * max(0, best_effect[l])`` (chance-level
separation scores 0) where ``best_effect[l]``
is the largest effect among the cells with ``alpha > 0`` at layer ``l`` that pass the guard
(effect in trait points / 100 when a judge gave trait scores, ``delta_projection / gap``
otherwise). The recommended layer maximises ``score`` (ties: the earlier layer); if no layer
has a positive coherent effect it falls back to the swept layer with the highest AUROC. The
recommended alpha is that layer's best cell; the recommended range spans the passing cells with
``alpha > 0`` whose effect is at least half the best.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..capture import resid_hooks
from ..chat import make_batch, make_messages, prompt_ids, response_ids
from ..io import JsonlAppender, atomic_write_json, atomic_write_text, iter_jsonl, json_safe
from ..models import check_layer, d_model, model_device, model_id, n_layers
from ..steering import Steering
from ..vectors import PersonaVector

DEFAULT_ALPHAS = (-0.25, 0.0, 0.1, 0.2, 0.35, 0.5)
ALPHA_MODES = ("fraction", "raw")


# --------------------------------------------------------------------------- statistics


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(score_pos > score_neg) + P(tie)/2 (= ROC AUC with pos as the positive class)."""
    pos = np.asarray(pos, dtype=float)
    neg = np.asarray(neg, dtype=float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    # midranks (average rank of ties), 1-based
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv), dtype=float)
    sorted_v = allv[order]
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def cohens_d(pos: Sequence[float], neg: Sequence[float]) -> float:
    """(mean_pos - mean_neg) / pooled SD, SD with ddof=1; NaN when undefined."""
    pos = np.asarray(pos, dtype=float)
    neg = np.asarray(neg, dtype=float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    n1, n2 = len(pos), len(neg)
    if n1 < 2 or n2 < 2:
        return float("nan")
    pooled = math.sqrt(((n1 - 1) * pos.var(ddof=1) + (n2 - 1) * neg.var(ddof=1)) / (n1 + n2 - 2))
    diff = float(pos.mean() - neg.mean())
    if pooled == 0:
        return float("inf") * np.sign(diff) if diff else 0.0
    return diff / pooled


_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")
CHAR_NGRAM = 8


def text_coherence(text: str) -> dict:
    """A cheap degeneration check of one text (no judge needed).

    ``words``; ``distinct`` = distinct words / words; ``repetition`` = share of repeated
    character 8-grams (lower-cased, whitespace collapsed: catches "The beach. The beach. ..." and
    "TheHHHHHH" alike; ordinary prose scores ~0-0.2); ``coherence = distinct * (1 - repetition)``,
    0 for an empty text.
    """
    text = text or ""
    words = _WORD.findall(text.lower())
    n = len(words)
    if n == 0:
        return {"words": 0, "distinct": 0.0, "repetition": 1.0, "coherence": 0.0}
    distinct = len(set(words)) / n
    s = _SPACE.sub(" ", text.lower()).strip()
    grams = [s[i:i + CHAR_NGRAM] for i in range(len(s) - CHAR_NGRAM + 1)]
    repetition = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
    return {"words": n, "distinct": distinct, "repetition": repetition, "coherence": distinct * (1.0 - repetition)}


def _nanmean(x) -> float:
    a = np.asarray([np.nan if v is None else float(v) for v in x], dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else float("nan")


# --------------------------------------------------------------------------- recommendation


def recommend(
    layer_rows: Sequence[dict],
    steering_rows: Sequence[dict],
    *,
    effect_key: str = "effect",
    min_relative_effect: float = 0.5,
) -> dict:
    """The recommended layer and alpha range from the sweep tables (rule: module docstring).

    ``layer_rows``: dicts with ``layer`` and ``auroc``; ``steering_rows``: dicts with ``layer``,
    ``alpha``, ``alpha_frac``, ``passes_guard`` and ``effect_key``. Returns ``layer``,
    ``alpha``/``alpha_frac`` (best cell), ``alpha_range``/``alpha_frac_range``, ``score``
    (per swept layer), ``rule`` and ``fallback`` (True when chosen by AUROC alone).
    """
    auc = {int(r["layer"]): r.get("auroc") for r in layer_rows}
    swept = sorted({int(r["layer"]) for r in steering_rows})
    scores: dict[int, float] = {}
    best_cell: dict[int, dict | None] = {}
    for l in swept:
        cells = [r for r in steering_rows if int(r["layer"]) == l and r["alpha_frac"] is not None
                 and float(r["alpha"]) > 0 and r.get("passes_guard")
                 and r.get(effect_key) is not None and math.isfinite(float(r[effect_key]))]
        best = max(cells, key=lambda r: (float(r[effect_key]), -float(r["alpha"])), default=None)
        best_cell[l] = best
        a = auc.get(l)
        sep = max(0.0, 2.0 * float(a) - 1.0) if a is not None and math.isfinite(float(a)) else 0.0
        scores[l] = sep * max(0.0, float(best[effect_key])) if best is not None else 0.0
    out = {"rule": "argmax_l max(0, 2 AUROC[l] - 1) * max(0, best coherent effect[l] with alpha > 0)",
           "effect_key": effect_key, "score": {str(l): s for l, s in scores.items()},
           "layer": None, "alpha": None, "alpha_frac": None, "alpha_range": None, "alpha_frac_range": None,
           "fallback": False}
    if not swept:
        return out
    best_score = max(scores.values())
    if best_score > 0:
        layer = min(l for l in swept if scores[l] == best_score)
    else:
        out["fallback"] = True
        out["rule"] += "; no coherent positive effect: the swept layer with the highest AUROC"
        layer = max(swept, key=lambda l: (float(auc.get(l) or 0.0) if auc.get(l) is not None
                                          and math.isfinite(float(auc.get(l))) else -1.0, -l))
    out["layer"] = layer
    best = best_cell.get(layer)
    if best is not None and float(best[effect_key]) > 0:
        thresh = min_relative_effect * float(best[effect_key])
        good = [r for r in steering_rows if int(r["layer"]) == layer and float(r["alpha"]) > 0
                and r.get("passes_guard") and r.get(effect_key) is not None
                and math.isfinite(float(r[effect_key])) and float(r[effect_key]) >= thresh]
        out.update(alpha=float(best["alpha"]), alpha_frac=float(best["alpha_frac"]),
                   alpha_range=[min(float(r["alpha"]) for r in good), max(float(r["alpha"]) for r in good)],
                   alpha_frac_range=[min(float(r["alpha_frac"]) for r in good),
                                     max(float(r["alpha_frac"]) for r in good)])
    return out


# --------------------------------------------------------------------------- activations


def response_statistics(
    model,
    prompts: Sequence,
    responses: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """Per row and layer: ``response_mean`` ``[n, L, d]``, ``token_norm`` (mean over response
    tokens of ``||h_t||``) ``[n, L]`` and ``last_prompt`` ``[n, L, d]``, unsteered, one forward.

    Rows whose response has no tokens get NaN.
    """
    tok = model.tokenizer
    layers = sorted({check_layer(model, l) for l in layers})
    n, L = len(prompts), len(layers)
    p_ids = [prompt_ids(tok, make_messages(p) if isinstance(p, str) else list(p)) for p in prompts]
    r_ids = [response_ids(tok, r or "") for r in responses]
    width = d_model(model)
    rmean = torch.full((n, L, width), float("nan"))
    lastp = torch.full((n, L, width), float("nan"))
    tnorm = torch.full((n, L), float("nan"))
    keep = [i for i in range(n) if r_ids[i]]
    if not keep:
        return {"response_mean": rmean, "token_norm": tnorm, "last_prompt": lastp}
    pos = {l: i for i, l in enumerate(layers)}
    state: dict = {}

    def on_resid(layer: int, h: torch.Tensor) -> None:
        rows, li = state["rows"], pos[layer]
        m = state["mask"]
        cnt = m.sum(1)
        rmean[rows, li] = ((h * m).sum(1) / cnt).cpu()
        tnorm[rows, li] = ((h.norm(dim=-1, keepdim=True) * m).sum(1)[:, 0] / cnt[:, 0]).cpu()
        lastp[rows, li] = h[state["arange"], state["last"]].cpu()

    device = model_device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    with resid_hooks(model, layers, on_resid) as forward:
        for start in range(0, len(keep), batch_size):
            idx = keep[start:start + batch_size]
            batch = make_batch([p_ids[i] for i in idx], [r_ids[i] for i in idx], pad).to(device)
            state.update(rows=torch.as_tensor(idx), mask=batch.response_mask[:, :, None].float(),
                         last=batch.last_prompt_index, arange=torch.arange(len(idx), device=device))
            forward(batch)
    return {"response_mean": rmean, "token_norm": tnorm, "last_prompt": lastp}


# --------------------------------------------------------------------------- result


@dataclass
class SweepResult:
    """``layers``: one row per model layer; ``steering``: one row per swept layer x alpha."""

    layers: list[dict]
    steering: list[dict]
    recommendation: dict
    config: dict
    generations: list[dict] = field(default_factory=list)
    heldout: list[dict] = field(default_factory=list)
    files: dict = field(default_factory=dict)

    @property
    def recommended_layer(self) -> int | None:
        return self.recommendation.get("layer")

    @property
    def recommended_alpha(self) -> float | None:
        return self.recommendation.get("alpha")

    @property
    def recommended_alpha_range(self) -> list[float] | None:
        return self.recommendation.get("alpha_range")

    @property
    def swept_layers(self) -> list[int]:
        return sorted({int(r["layer"]) for r in self.steering})

    @property
    def alpha_values(self) -> list[float]:
        return list(self.config.get("alphas", []))

    def layer_row(self, layer: int) -> dict:
        return next(r for r in self.layers if r["layer"] == layer)

    def to_dict(self) -> dict:
        return json_safe({"config": self.config, "recommendation": self.recommendation, "layers": self.layers,
                          "steering": self.steering, "files": self.files})

    @classmethod
    def from_dict(cls, d: dict, generations: list[dict] | None = None, heldout: list[dict] | None = None):
        return cls(layers=d["layers"], steering=d["steering"], recommendation=d["recommendation"],
                   config=d["config"], generations=generations or [], heldout=heldout or [],
                   files=d.get("files", {}))

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "SweepResult":
        out_dir = Path(out_dir)
        d = json.loads((out_dir / "sweep.json").read_text(encoding="utf-8"))
        gp, hp = out_dir / "generations.scored.jsonl", out_dir / "heldout.scored.jsonl"
        gens = list(iter_jsonl(gp)) if gp.exists() else []
        held = list(iter_jsonl(hp)) if hp.exists() else []
        return cls.from_dict(d, gens, held)

    # ---------------------------------------------------------------- figures
    def _grid(self, key: str):
        layers, alphas = self.swept_layers, self.alpha_values
        z = np.full((len(layers), len(alphas)), np.nan)
        ok = np.ones_like(z, dtype=bool)
        for r in self.steering:
            i, j = layers.index(int(r["layer"])), alphas.index(r["alpha_value"])
            v = r.get(key)
            z[i, j] = np.nan if v is None else float(v)
            ok[i, j] = bool(r.get("passes_guard"))
        return layers, alphas, z, ok

    def figures(self) -> dict:
        from .. import plots

        rec = self.recommendation
        name = self.config.get("persona", "")
        figs = {
            "sweep_separation": plots.sweep_separation(
                self.layers, recommended_layer=rec.get("layer"),
                title=f"{name}: held-out separation along v/‖v‖ per layer (n={self.config.get('n_heldout')})"),
            "sweep_norms": plots.sweep_norms(
                self.layers, recommended_layer=rec.get("layer"), title=f"{name}: ‖v‖ vs residual norm per layer"),
        }
        alpha_name = "α·‖v‖/‖h‖" if self.config.get("alpha_mode") == "fraction" else "α"
        recommended = None
        if rec.get("layer") is not None and rec.get("alpha") is not None:
            cell = next((r for r in self.steering if r["layer"] == rec["layer"] and r["alpha"] == rec["alpha"]), None)
            if cell is not None:
                recommended = (rec["layer"], cell["alpha_value"])
        layers, alphas, z, ok = self._grid("effect")
        figs["sweep_effect"] = plots.sweep_heatmap(
            layers, alphas, z, valid=ok, value_name="effect (Δproj / held-out gap)", alpha_name=alpha_name,
            recommended=recommended,
            title=f"{name}: steering effect on the generated text (✗ = fails the coherence guard)")
        layers, alphas, z, ok = self._grid("coherence")
        figs["sweep_coherence"] = plots.sweep_heatmap(
            layers, alphas, z, valid=ok, value_name="coherence", alpha_name=alpha_name, colorscale="Viridis", zmid=None,
            title=f"{name}: text coherence (distinct words × (1 − repetition))")
        if any(r.get("trait_score") is not None for r in self.steering):
            layers, alphas, z, ok = self._grid("delta_trait")
            figs["sweep_trait"] = plots.sweep_heatmap(
                layers, alphas, z, valid=ok, value_name="Δ trait score", alpha_name=alpha_name, text_format=".1f",
                recommended=recommended, title=f"{name}: judged trait score change vs α = 0")
        return figs

    def save(self, out_dir: str | os.PathLike, *, figures: bool = True) -> dict:
        """``sweep.json`` (everything), ``sweep_layers.{csv,json}``, ``sweep_steering.{csv,json}``
        and the figures (each with its numbers next to it)."""
        from .. import plots

        out_dir = Path(out_dir)
        files = {"json": str(out_dir / "sweep.json")}
        plots.write_table(json_safe(self.layers), out_dir / "sweep_layers")
        plots.write_table(json_safe(self.steering), out_dir / "sweep_steering")
        files.update(layers_csv=str(out_dir / "sweep_layers.csv"), steering_csv=str(out_dir / "sweep_steering.csv"))
        if figures:
            for key, fig in self.figures().items():
                data = json_safe(self.layers if key in ("sweep_separation", "sweep_norms") else self.steering)
                plots.save_figure(fig, out_dir / key, data=data)
                files[key] = str(out_dir / f"{key}.html")
        self.files = files
        atomic_write_json(out_dir / "sweep.json", self.to_dict())
        return files

    def summary_text(self) -> str:
        """A few sentences computed from the numbers."""
        rec = self.recommendation
        rows = [r for r in self.layers if r.get("auroc") is not None and math.isfinite(r["auroc"])]
        if not rows:
            return "No held-out separation could be computed."
        best = max(rows, key=lambda r: r["auroc"])
        parts = [f"Held-out AUROC (pos vs neg system prompt, projection on v/‖v‖) peaks at {best['auroc']:.2f} "
                 f"at layer {best['layer']} (Cohen's d {best['cohens_d']:.2f}); "
                 f"{sum(r['auroc'] >= 0.9 for r in rows)} of {len(rows)} layers reach 0.9."]
        text_rows = [r for r in rows if r.get("auroc_text") is not None and math.isfinite(r["auroc_text"])]
        if text_rows:
            bt = max(text_rows, key=lambda r: r["auroc_text"])
            parts.append(f"Read without their system prompt (as data screening reads text), the answers separate "
                         f"best at layer {bt['layer']} (AUROC {bt['auroc_text']:.2f}): the layer to screen at.")
        if rec.get("layer") is not None:
            lr = self.layer_row(rec["layer"])
            s = f"Recommended layer: {rec['layer']} (AUROC {lr['auroc']:.2f}, ‖v‖/‖h‖ = {lr['norm_ratio']:.3f})"
            if rec.get("alpha") is not None:
                s += (f", α = {rec['alpha']:.3g} (α·‖v‖/‖h‖ = {rec['alpha_frac']:.2f}); coherent range "
                      f"α ∈ [{rec['alpha_range'][0]:.3g}, {rec['alpha_range'][1]:.3g}]")
                cell = next(r for r in self.steering if r["layer"] == rec["layer"] and r["alpha"] == rec["alpha"])
                s += (f", which moves the generated text's projection (read at layer {self.config.get('readout_layer')}) "
                      f"by {cell['effect']:.2f}× the held-out pos−neg gap")
                if cell.get("delta_trait") is not None:
                    s += f" and the trait score by {cell['delta_trait']:+.1f} points"
            if rec.get("fallback"):
                s += " — chosen by AUROC alone: no α > 0 gave a coherent positive effect"
            parts.append(s + ".")
        broken = [r for r in self.steering if not r.get("passes_guard")]
        if broken:
            parts.append(f"{len(broken)} of {len(self.steering)} layer×α cells fail the coherence guard "
                         f"(e.g. layer {broken[0]['layer']}, α·‖v‖/‖h‖ = {broken[0]['alpha_frac']:.2f}).")
        return " ".join(parts)


# --------------------------------------------------------------------------- the sweep


def default_sweep_layers(total: int, n: int = 6) -> list[int]:
    """About ``n`` evenly spaced layers from ~1/6 to ~5/6 of the depth."""
    lo, hi = max(1, round(total / 6)), min(total - 2, round(5 * total / 6))
    if hi <= lo:
        return list(range(total))
    return sorted({int(round(x)) for x in np.linspace(lo, hi, n)})


def _vector_digest(vector: PersonaVector) -> str:
    return hashlib.sha256(vector.vectors.numpy().tobytes()).hexdigest()[:16]


def _heldout_items(spec, n_eval: int) -> tuple[list[dict], bool]:
    questions = list(spec.eval_questions)
    held_out = bool(questions)
    if not questions:  # no held-out questions in the spec: the last extraction questions
        questions = list(spec.questions)[::-1]
    questions = questions[:n_eval]
    items = []
    for i, q in enumerate(questions):
        pair = spec.instruction[i % len(spec.instruction)]
        for polarity, system in (("pos", pair.pos), ("neg", pair.neg)):
            items.append({"key": f"{polarity}:{i}", "question_index": i, "polarity": polarity, "system": system,
                          "question": q})
    return items, held_out


def _resumable_generate(model, path: Path | None, items: list[dict], prompts: list, *, steering: Steering | None,
                        max_new_tokens: int, batch_size: int, progress: bool, desc: str) -> list[str]:
    """Greedy texts for ``items`` (each with a unique ``key``), appended per batch to ``path``."""
    from ..generate import generate
    from tqdm.auto import tqdm

    done: dict[str, str] = {}
    if path is not None and path.exists():
        done = {r["key"]: r["response"] for r in iter_jsonl(path)}
    todo = [i for i, it in enumerate(items) if it["key"] not in done]
    sink = JsonlAppender(path) if path is not None and todo else None
    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, disable=not progress, leave=False)
    try:
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            st = steering.select(idx) if steering is not None else None
            texts = generate(model, [prompts[i] for i in idx], max_new_tokens=max_new_tokens, temperature=0.0,
                             batch_size=len(idx), steering=st, progress=False)
            rows = [{**items[i], "response": t} for i, t in zip(idx, texts)]
            if sink is not None:
                sink.write(rows)
            done.update((r["key"], r["response"]) for r in rows)
            bar.update(len(idx))
    finally:
        if sink is not None:
            sink.close()
        bar.close()
    return [done[it["key"]] for it in items]


def _judge_scores(judge, spec, qa: list[tuple[str, str]], progress: bool) -> tuple[list, list]:
    """(trait scores, coherence scores or Nones)."""
    if hasattr(judge, "score_trait_many"):
        trait = list(judge.score_trait_many(spec, qa, progress=progress))
    else:
        trait = list(judge.score_many([spec.format_eval_prompt(q, a) for q, a in qa]))
    coh: list = [None] * len(qa)
    if getattr(judge, "supports_coherence", False) and hasattr(judge, "score_coherence_many"):
        coh = list(judge.score_coherence_many(qa, progress=progress))
    return trait, coh


def layer_sweep(
    model,
    vector: PersonaVector | str | os.PathLike,
    spec,
    layers: Sequence[int] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    alpha_mode: str = "fraction",
    n_eval: int = 8,
    n_steer: int | None = 4,
    max_new_tokens: int = 48,
    judge=None,
    out_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    positions: str = "response",
    coherence_min: float = 0.75,
    max_empty: float = 0.25,
    readout_layer: int | None = None,
    figures: bool = True,
    progress: bool = True,
) -> SweepResult:
    """Sweep layers and steering strengths for one persona vector (see the module docstring).

    ``layers``: the layers to steer at (default :func:`default_sweep_layers`); norms and
    held-out separation are computed at every layer. ``alphas``: fractions of the residual norm
    (``alpha_mode="fraction"``) or raw coefficients (``"raw"``); 0 is always added (the
    baseline). ``n_eval`` held-out questions (x pos/neg) for separation; the first ``n_steer``
    of them (default 4) are the steering prompts. ``readout_layer``: where generated texts are
    measured (default: the layer with the largest held-out Cohen's d). With ``out_dir``, generations are cached
    there (resumable JSONL, discarded when the settings change) and tables/figures written.
    """
    from ..personas import load_persona

    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}")
    if not isinstance(vector, PersonaVector):
        vector = PersonaVector.load(vector)
    if isinstance(spec, (str, os.PathLike)):
        spec = load_persona(str(spec))
    vector.check_model(model)
    total = n_layers(model)
    layers = default_sweep_layers(total) if layers is None else sorted({check_layer(model, int(l)) for l in layers})
    alpha_values = sorted({float(a) for a in alphas} | {0.0})
    n_steer = n_eval if n_steer is None else min(n_steer, n_eval)
    items, held_out = _heldout_items(spec, n_eval)
    if not items:
        raise ValueError(f"persona {spec.name!r} has no questions to evaluate on")
    config = {
        "persona": spec.name, "vector": vector.name, "vector_digest": _vector_digest(vector), "model_id": model_id(model),
        "layers": layers, "alphas": alpha_values, "alpha_mode": alpha_mode, "n_eval": n_eval, "n_steer": n_steer,
        "max_new_tokens": max_new_tokens, "positions": positions, "coherence_min": coherence_min,
        "max_empty": max_empty, "judge": getattr(judge, "name", None) if judge is not None else None,
        "heldout_source": "eval_questions" if held_out else "questions (spec has no eval_questions)",
        "decoding": "greedy",
    }
    out = Path(out_dir) if out_dir is not None else None
    held_path = gen_path = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(json.dumps({k: config[k] for k in config if k not in ("layers", "alphas", "coherence_min",
                                                                                 "max_empty", "judge")},
                                        sort_keys=True).encode()).hexdigest()[:16]
        key_path = out / "cache_key.txt"
        if not key_path.exists() or key_path.read_text().strip() != key:
            for f in ("heldout.jsonl", "generations.jsonl"):
                (out / f).unlink(missing_ok=True)
            atomic_write_text(key_path, key + "\n")
        held_path, gen_path = out / "heldout.jsonl", out / "generations.jsonl"

    # ---- held-out responses under pos / neg system prompts
    held_prompts = [[{"role": "system", "content": it["system"]}, {"role": "user", "content": it["question"]}]
                    for it in items]
    held_texts = _resumable_generate(model, held_path, items, held_prompts, steering=None,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                                     desc="sweep: held-out")
    all_layers = list(range(total))
    stats = response_statistics(model, held_prompts, held_texts, all_layers, batch_size=batch_size)
    units = vector.vectors / vector.norms().clamp_min(1e-12)[:, None]  # [L, d]
    proj = torch.einsum("nld,ld->nl", stats["response_mean"].double(), units.double()).numpy()
    proj_lp = torch.einsum("nld,ld->nl", stats["last_prompt"].double(), units.double()).numpy()
    text_only = response_statistics(model, [make_messages(it["question"]) for it in items], held_texts, all_layers,
                                    batch_size=batch_size)
    proj_text = torch.einsum("nld,ld->nl", text_only["response_mean"].double(), units.double()).numpy()
    is_pos = np.array([it["polarity"] == "pos" for it in items])
    tnorm = stats["token_norm"].numpy()
    vnorm = vector.norms().numpy()
    layer_rows = []
    for l in all_layers:
        p, q = proj[is_pos, l], proj[~is_pos, l]
        resid = float(np.nanmean(tnorm[:, l])) if np.isfinite(tnorm[:, l]).any() else float("nan")
        layer_rows.append({
            "layer": l, "vector_norm": float(vnorm[l]), "resid_norm": resid,
            "norm_ratio": float(vnorm[l] / resid) if resid and math.isfinite(resid) else float("nan"),
            "auroc": auroc(p, q), "cohens_d": cohens_d(p, q),
            "mean_pos": _nanmean(p), "mean_neg": _nanmean(q), "gap": _nanmean(p) - _nanmean(q),
            "auroc_last_prompt": auroc(proj_lp[is_pos, l], proj_lp[~is_pos, l]),
            "auroc_text": auroc(proj_text[is_pos, l], proj_text[~is_pos, l]),
            "swept": l in layers,
        })
    if readout_layer is None:
        finite = [r for r in layer_rows if math.isfinite(r["cohens_d"])]
        readout_layer = max(finite, key=lambda r: (r["cohens_d"], -r["layer"]))["layer"] if finite else layers[-1]
    readout_layer = check_layer(model, int(readout_layer))
    config["readout_layer"] = readout_layer
    ro = layer_rows[readout_layer]
    heldout_rows = [{**it, "response": t, "projection_readout": json_safe(float(proj[i, readout_layer]))}
                    for i, (it, t) in enumerate(zip(items, held_texts))]

    # ---- steering grid: every swept layer x alpha x prompt in one batched generation
    steer_q = [it["question"] for it in items if it["polarity"] == "pos"][:n_steer]
    steer_prompts = [make_messages(q) for q in steer_q]
    grid: list[dict] = []
    for qi, q in enumerate(steer_q):
        grid.append({"key": f"base:{qi}", "layer": None, "alpha_value": 0.0, "alpha": 0.0, "alpha_frac": 0.0,
                     "prompt_index": qi, "question": q})
    for l in layers:
        resid = layer_rows[l]["resid_norm"]
        for a in alpha_values:
            if a == 0.0:
                continue
            raw = a * resid / max(float(vnorm[l]), 1e-12) if alpha_mode == "fraction" else a
            frac = a if alpha_mode == "fraction" else a * float(vnorm[l]) / resid
            for qi, q in enumerate(steer_q):
                grid.append({"key": f"L{l}:a{a:g}:{qi}", "layer": l, "alpha_value": a, "alpha": float(raw),
                             "alpha_frac": float(frac), "prompt_index": qi, "question": q})
    d = vector.d_model
    deltas = {l: torch.zeros(len(grid), d) for l in layers}
    for i, g in enumerate(grid):
        if g["layer"] is not None:
            deltas[g["layer"]][i] = g["alpha"] * vector.layer(g["layer"])
    steering = Steering(deltas, positions, {"layers": layers, "persona": vector.name, "sweep": True})
    grid_prompts = [steer_prompts[g["prompt_index"]] for g in grid]
    texts = _resumable_generate(model, gen_path, grid, grid_prompts, steering=steering,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                                desc="sweep: steered generation")
    # read back by the unsteered model at the readout layer: what the text expresses
    gstats = response_statistics(model, grid_prompts, texts, [readout_layer], batch_size=batch_size)
    gproj = (gstats["response_mean"][:, 0].double() @ units[readout_layer].double()).numpy()  # [rows]
    coh = [text_coherence(t) for t in texts]
    trait: list = [None] * len(grid)
    jcoh: list = [None] * len(grid)
    if judge is not None:
        if hasattr(judge, "is_fitted") and not judge.is_fitted and hasattr(judge, "fit"):
            judge.fit([t for t, p in zip(held_texts, is_pos) if p and t], [t for t, p in zip(held_texts, is_pos) if not p and t])
            config["judge_fit"] = "held-out pos/neg responses"
        trait, jcoh = _judge_scores(judge, spec, [(g["question"], t) for g, t in zip(grid, texts)], progress)
    base_idx = {g["prompt_index"]: i for i, g in enumerate(grid) if g["layer"] is None}
    generations = []
    for i, (g, t) in enumerate(zip(grid, texts)):
        row = {**g, "response": t, **coh[i], "trait_score": trait[i], "judge_coherence": jcoh[i]}
        row["projection"] = json_safe(float(gproj[i]))
        generations.append(row)
    base_coh = _nanmean([coh[i]["coherence"] for i in base_idx.values()])
    base_trait = _nanmean([trait[i] for i in base_idx.values()])
    steering_rows = []
    gap = ro["gap"]
    for l in layers:
        for a in alpha_values:
            if a == 0.0:
                rows_i = list(base_idx.values())
                raw, frac = 0.0, 0.0
            else:
                rows_i = [i for i, g in enumerate(grid) if g["layer"] == l and g["alpha_value"] == a]
                raw, frac = grid[rows_i[0]]["alpha"], grid[rows_i[0]]["alpha_frac"]
            deltas_p = [gproj[i] - gproj[base_idx[grid[i]["prompt_index"]]] for i in rows_i]
            dp = _nanmean(deltas_p)
            mean_coh = _nanmean([coh[i]["coherence"] for i in rows_i])
            empty = float(np.mean([coh[i]["words"] == 0 for i in rows_i]))
            mean_trait = _nanmean([trait[i] for i in rows_i])
            mean_jcoh = _nanmean([jcoh[i] for i in rows_i])
            passes = (mean_coh >= coherence_min * base_coh if math.isfinite(base_coh) else True) and empty <= max_empty
            if math.isfinite(mean_jcoh):
                passes = passes and mean_jcoh >= 50.0
            eff = dp / gap if gap and math.isfinite(gap) and abs(gap) > 1e-9 else float("nan")
            steering_rows.append({
                "layer": l, "alpha_value": a, "alpha": float(raw), "alpha_frac": float(frac),
                "projection": _nanmean([gproj[i] for i in rows_i]), "delta_projection": dp, "effect": eff,
                "coherence": mean_coh, "distinct": _nanmean([coh[i]["distinct"] for i in rows_i]),
                "repetition": _nanmean([coh[i]["repetition"] for i in rows_i]), "empty_fraction": empty,
                "trait_score": mean_trait if math.isfinite(mean_trait) else None,
                "delta_trait": (mean_trait - base_trait) if math.isfinite(mean_trait) and math.isfinite(base_trait) else None,
                "judge_coherence": mean_jcoh if math.isfinite(mean_jcoh) else None,
                "passes_guard": bool(passes), "n": len(rows_i),
            })
    if any(r["delta_trait"] is not None for r in steering_rows):
        for r in steering_rows:
            r["effect_trait"] = None if r["delta_trait"] is None else r["delta_trait"] / 100.0
        rec = recommend(layer_rows, steering_rows, effect_key="effect_trait")
    else:
        rec = recommend(layer_rows, steering_rows, effect_key="effect")
    config["n_heldout"] = int(len(items))
    config["base_coherence"] = base_coh
    result = SweepResult(layers=json_safe(layer_rows), steering=json_safe(steering_rows), recommendation=json_safe(rec),
                         config=json_safe(config), generations=json_safe(generations), heldout=json_safe(heldout_rows))
    if out is not None:
        atomic_write_text(out / "generations.scored.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.generations))
        atomic_write_text(out / "heldout.scored.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.heldout))
        result.save(out, figures=figures)
    return result
