"""The layer sweep's rules on plain rows: the coherence guard's text measure, the default
layers and the recommendation (definitions: :mod:`persona_lens.analysis.sweep`)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_ALPHAS = (-0.25, 0.0, 0.1, 0.2, 0.35, 0.5)
ALPHA_MODES = ("fraction", "raw")

_WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")
CHAR_NGRAM = 8


def words(text: str | None) -> list[str]:
    """The lower-cased words of ``text`` (``\\w+`` runs): what the text proxies (coherence here,
    the autotuner's answer diversity) count."""
    return _WORD.findall((text or "").lower())


def text_coherence(text: str) -> dict:
    """A cheap degeneration check of one text (no judge needed).

    ``words``; ``distinct`` = distinct words / words; ``repetition`` = share of repeated
    character 8-grams (lower-cased, whitespace collapsed: catches "The beach. The beach. ..." and
    "TheHHHHHH" alike; ordinary prose scores ~0-0.2); ``coherence = distinct * (1 - repetition)``,
    0 for an empty text.
    """
    text = text or ""
    tokens = words(text)
    n = len(tokens)
    if n == 0:
        return {"words": 0, "distinct": 0.0, "repetition": 1.0, "coherence": 0.0}
    distinct = len(set(tokens)) / n
    s = _SPACE.sub(" ", text.lower()).strip()
    grams = [s[i:i + CHAR_NGRAM] for i in range(len(s) - CHAR_NGRAM + 1)]
    repetition = 1.0 - len(set(grams)) / len(grams) if grams else 0.0
    return {"words": n, "distinct": distinct, "repetition": repetition, "coherence": distinct * (1.0 - repetition)}


def default_sweep_layers(total: int, n: int = 6) -> list[int]:
    """About ``n`` evenly spaced layers from ~1/6 to ~5/6 of the depth."""
    lo, hi = max(1, round(total / 6)), min(total - 2, round(5 * total / 6))
    if hi <= lo:
        return list(range(total))
    return sorted({int(round(x)) for x in np.linspace(lo, hi, n)})


def _finite_or(value: Any, default: float) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else default


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
    out: dict[str, Any] = {"rule": "argmax_l max(0, 2 AUROC[l] - 1) * max(0, best coherent effect[l] with alpha > 0)",
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
        layer = max(swept, key=lambda l: (_finite_or(auc.get(l), -1.0), -l))
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
