"""Calibration: measure a persona vector's dose-response curve and make its dose card.

``run(model, CalibrateConfig(persona=...), vector=v, judge=j) -> CalibrateResult``;
``result.card()`` is the :class:`persona_lens.dose.DoseCard` that ``persona-lens calibrate``
stores in the vector file; figure: :func:`persona_lens.viz.dose.dose_figure`.

The layer x alpha grid is the layer sweep's (:func:`persona_lens.analysis.sweep.run`, greedy,
the same held-out questions, one batched generation); on top of it, per swept layer ``l`` and
alpha (0 included: the unsteered answers, shared by every layer):

* **trait score**: the judge's 0-100 score of each steered answer; the cell's mean and its
  ``confidence`` (default 95 %) Student-t interval ``mean +- t(n-1) * sd / sqrt(n)`` (sd with
  ddof=1; no interval for one answer);
* **coherence**: the sweep's text measure (distinct words x (1 - repetition)), mean per cell;
* **residual norm**: the sweep's mean ``||h[l]||`` over response tokens of the held-out answers;
* **breakdown alpha**: walking out from 0 on each side, the first alpha whose cell fails the
  sweep's coherence guard: mean coherence below ``coherence_min`` (default 0.75) x the unsteered
  answers' mean coherence, more than ``max_empty`` empty answers, or (when the judge scores
  coherence) a mean judged coherence below 50. Alphas beyond it are outside the coherent range.

**Baseline** = the unsteered answers' trait score (no system prompt); **positive** = the trait
score of the answers to the same steering questions under the persona's positive system prompt
(the sweep's held-out ``pos`` answers; when the judge must be fitted, as the embedding proxy,
it is fitted on the held-out answers, so the positive score is in-sample). ``strength`` =
``(trait - baseline) / (positive - baseline)``. **Best layer**: the one whose monotone coherent
curve (:func:`persona_lens.dose.strength_curve`) reaches the largest strength (ties: earlier).
**Monotonicity** per layer: ``monotone`` when the measured means never decrease (for a trait the
vector raises) from alpha to alpha over the coherent range, with ``kendall_tau`` of mean vs alpha
and ``rise`` = largest minus smallest coherent mean (a flat curve is trivially monotone: read
``rise`` beside it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..dose import DoseCard, LayerCurve, strength_curve
from ..errors import JudgeError, StrengthOutOfRangeError
from ..io import json_safe, write_table
from ..judges import TraitScorer
from ..models import model_id
from ..personas import load_persona
from ..positions import Positions
from ..stats import kendall_tau, mean_ci
from ..vectors import PersonaVector
from . import sweep
from .base import AnalysisConfig, AnalysisResult
from .sweep import SweepConfig, SweepResult

DEFAULT_DOSE_ALPHAS = (-0.25, 0.0, 0.1, 0.2, 0.3, 0.4, 0.55, 0.7)
CURVE_TABLE = "dose_curve"
SWEEP_DIR = "sweep"


@dataclass(frozen=True)
class CalibrateConfig(AnalysisConfig):
    """Settings of :func:`run`. ``persona``: the vector's spec (built-in name or JSON path);
    ``judge``: the judge spec recorded on the card; ``layers`` (None: the sweep's default),
    ``alphas`` (fractions of the residual norm with ``alpha_mode="fraction"``, raw coefficients
    with ``"raw"``; 0 is always added), ``n_eval`` held-out questions of which the first
    ``n_steer`` (None: all) are steered, ``confidence`` of the trait intervals; the rest as in
    :class:`persona_lens.analysis.sweep.SweepConfig`."""

    name = "calibrate"
    persona: str = ""
    judge: str | None = None
    layers: tuple[int, ...] | None = None
    alphas: tuple[float, ...] = DEFAULT_DOSE_ALPHAS
    alpha_mode: str = "fraction"
    n_eval: int = 8
    n_steer: int | None = None
    max_new_tokens: int = 48
    batch_size: int = 16
    positions: Positions = "response"
    coherence_min: float = 0.75
    max_empty: float = 0.25
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")

    def sweep_config(self) -> SweepConfig:
        return SweepConfig(layers=self.layers, alphas=self.alphas, alpha_mode=self.alpha_mode, n_eval=self.n_eval,
                           n_steer=self.n_steer, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                           positions=self.positions, coherence_min=self.coherence_min, max_empty=self.max_empty)


@dataclass
class CalibrateResult(AnalysisResult):
    """``card``: the dose card (a dict, :meth:`card` for the object); ``curve``: one row per
    layer x alpha (alpha 0 included); ``layer_summary``: per layer the coherent range, reachable
    strengths and monotonicity; ``sweep``: the underlying sweep (saved in ``sweep/``)."""

    config_type = CalibrateConfig
    config: CalibrateConfig
    card_data: dict
    curve: list[dict]
    layer_summary: list[dict]
    settings: dict = field(default_factory=dict)
    sweep: SweepResult | None = None

    def card(self) -> DoseCard:
        return DoseCard.from_dict(self.card_data)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"card": self.card_data, "curve": self.curve, "layer_summary": self.layer_summary,
                          "settings": self.settings})

    @classmethod
    def from_dict(cls, config: AnalysisConfig, data: dict[str, Any]) -> CalibrateResult:
        assert isinstance(config, CalibrateConfig)
        return cls(config=config, card_data=data["card"], curve=data["curve"], layer_summary=data["layer_summary"],
                   settings=data.get("settings", {}))

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json``, ``result.json``, ``dose_curve.{csv,json}``, ``dose_layers.{csv,json}``
        and the sweep in ``sweep/``."""
        out = super().save(directory)
        write_table(json_safe(self.curve), out / CURVE_TABLE)
        write_table(json_safe(self.layer_summary), out / "dose_layers")
        if self.sweep is not None:
            self.sweep.save(out / SWEEP_DIR)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CalibrateResult:
        result = super().load(directory)
        if (Path(directory) / SWEEP_DIR / "result.json").exists():
            result.sweep = SweepResult.load(Path(directory) / SWEEP_DIR)
        return result

    def summary_text(self) -> str:
        """A few sentences computed from the numbers."""
        card = self.card_data
        b, p = card["baseline"], card["positive"]
        parts = [f"Trait score ({card.get('judge')}): unsteered {_fmt(b)}, positive system prompt {_fmt(p)}."]
        if None not in (b.get("ci_high"), p.get("ci_low"), b.get("ci_low"), p.get("ci_high")) and \
                p["ci_low"] <= b["ci_high"] and b["ci_low"] <= p["ci_high"]:
            parts.append("The two intervals overlap: the positive prompt does not measurably move this judge's score, "
                         "so strength (a fraction of that gap) is poorly determined.")
        for row in self.layer_summary:
            s = (f"Layer {row['layer']}: coherent measured α from {_num(row['coherent_alpha_low'])} to "
                 f"{_num(row['coherent_alpha_high'])}, strengths {_num(row['strength_low'])}..{_num(row['strength_high'])}")
            if row.get("monotone") is not None:
                shape = "flat" if not row.get("rise") else "monotone" if row["monotone"] else "not monotone"
                s += f", {shape} (Kendall τ {_num(row['kendall_tau'])}, rise {_num(row.get('rise'))} points)"
            parts.append(s + ".")
        if card.get("best_layer") is not None:
            reached = any(row.get("strength_high") is not None for row in self.layer_summary)
            why = "reaches the largest strength coherently" if reached else "no strength range: the sweep's layer"
            parts.append(f"Best layer: {card['best_layer']} ({why}).")
        return " ".join(parts)


def _num(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{float(x):.3g}"


def _fmt(stat: dict) -> str:
    return f"{_num(stat.get('mean'))} [{_num(stat.get('ci_low'))}, {_num(stat.get('ci_high'))}] (n={stat.get('n')})"


# --------------------------------------------------------------------------- statistics


def breakdown_alphas(alphas: list[float], passes: list[bool]) -> tuple[float | None, float | None]:
    """(first alpha > 0, first alpha < 0) walking out from 0 whose cell fails the guard, or None."""
    pos = next((a for a, ok in sorted(zip(alphas, passes)) if a > 0 and not ok), None)
    neg = next((a for a, ok in sorted(zip(alphas, passes), reverse=True) if a < 0 and not ok), None)
    return pos, neg


# --------------------------------------------------------------------------- the run


def run(
    model,
    config: CalibrateConfig,
    *,
    vector: PersonaVector,
    judge,
    spec=None,
    resume_dir: str | os.PathLike | None = None,
    progress: bool = True,
    backend=None,
) -> CalibrateResult:
    """Measure the dose-response of ``vector`` (module docstring) with the trait ``judge``;
    ``spec`` defaults to ``load_persona(config.persona)``; ``resume_dir`` / ``backend`` as in
    :func:`persona_lens.analysis.sweep.run`."""
    if judge is None or not isinstance(judge, TraitScorer):
        raise JudgeError("calibrate needs a trait judge (e.g. --judge embedding, lexicon:TRAIT or openai:MODEL)")
    spec = load_persona(config.persona) if spec is None else spec
    config = config.replace(persona=config.persona or spec.name,
                            judge=config.judge or str(getattr(judge, "name", type(judge).__name__)))
    swept = sweep.run(model, config.sweep_config(), vector=vector, spec=spec, judge=judge, resume_dir=resume_dir,
                      progress=progress, backend=backend)
    n_steer = int(swept.config.n_steer or 0)
    config = config.replace(layers=swept.config.layers, alphas=swept.config.alphas, n_steer=n_steer)

    # the positive-prompt answers to the steering questions (the held-out pos rows of those questions)
    pos_rows = [h for h in swept.heldout if h["polarity"] == "pos" and h["question_index"] < n_steer]
    pos_scores = list(judge.score_trait_many(spec, [(h["question"], h["response"]) for h in pos_rows],
                                             progress=progress))
    base_gens = [g for g in swept.generations if g["layer"] is None]
    baseline = mean_ci([g["trait_score"] for g in base_gens], config.confidence)
    positive = mean_ci(pos_scores, config.confidence)
    base_coherence = swept.settings.get("base_coherence")
    gap = None if baseline["mean"] is None or positive["mean"] is None else positive["mean"] - baseline["mean"]

    curves, rows = [], []
    for layer in swept.swept_layers:
        lrow = swept.layer_row(layer)
        cells = []  # the sweep's rows of this layer; its alpha = 0 row holds the unsteered answers
        for r in swept.steering:
            if r["layer"] == layer:
                gens = base_gens if r["alpha_value"] == 0.0 else [
                    g for g in swept.generations if g["layer"] == layer and g["alpha_value"] == r["alpha_value"]]
                cells.append({**r, "scores": [g["trait_score"] for g in gens]})
        cells.sort(key=lambda c: c["alpha"])
        stats = [mean_ci(c["scores"], config.confidence) for c in cells]
        alphas = [float(c["alpha"]) for c in cells]
        hi, lo = breakdown_alphas(alphas, [bool(c["passes_guard"]) for c in cells])
        curves.append(LayerCurve(
            layer=layer, alphas=alphas, trait_mean=[s["mean"] for s in stats], trait_ci_low=[s["ci_low"] for s in stats],
            trait_ci_high=[s["ci_high"] for s in stats], coherence_mean=[c["coherence"] for c in cells],
            resid_norm=lrow.get("resid_norm"), vector_norm=lrow.get("vector_norm"),
            alpha_fracs=[float(c["alpha_frac"]) for c in cells], breakdown_alpha=hi, breakdown_alpha_negative=lo))
        for c, s in zip(cells, stats):
            a = float(c["alpha"])
            rows.append({
                "layer": layer, "alpha_value": c["alpha_value"], "alpha": a, "alpha_frac": c["alpha_frac"],
                "trait_mean": s["mean"], "trait_ci_low": s["ci_low"], "trait_ci_high": s["ci_high"], "n": s["n"],
                "strength": None if s["mean"] is None or not gap else (s["mean"] - baseline["mean"]) / gap,
                "coherence": c["coherence"], "judge_coherence": c.get("judge_coherence"),
                "passes_guard": bool(c["passes_guard"]),
                "coherent": (lo is None or a > lo) and (hi is None or a < hi),
                "resid_norm": lrow.get("resid_norm"), "vector_norm": lrow.get("vector_norm"),
            })
    card = DoseCard(persona=spec.name, model_id=model_id(model), judge=config.judge, positions=str(config.positions),
                    baseline=baseline, positive=positive, curves=curves,
                    coherence_rule={"measure": "text coherence: distinct words x (1 - repetition)",
                                    "breaks_below": f"{config.coherence_min} x unsteered mean coherence",
                                    "coherence_min": config.coherence_min, "max_empty": config.max_empty,
                                    "base_coherence": base_coherence, "judge_coherence_min": 50.0})
    summary = [layer_summary_of(card, c) for c in curves]
    reach = [s for s in summary if s["strength_high"] is not None]
    if reach:
        card.best_layer = max(reach, key=lambda s: (s["strength_high"], -s["layer"]))["layer"]
    elif curves:
        card.best_layer = swept.recommended_layer if swept.recommended_layer in card.layers else curves[0].layer
    settings = {"persona": spec.name, "vector": vector.name, "model_id": model_id(model), "judge": config.judge,
                "n_positive": positive["n"], "n_baseline": baseline["n"], "sweep_recommendation": swept.recommendation,
                "positive_scores": pos_scores}
    return CalibrateResult(config=config, card_data=card.to_dict(), curve=json_safe(rows),
                           layer_summary=json_safe(summary), settings=json_safe(settings), sweep=swept)


def layer_summary_of(card: DoseCard, curve: LayerCurve) -> dict:
    """Coherent range, reachable strengths and monotonicity of one layer's curve."""
    coherent = curve.coherent_points()
    out: dict[str, Any] = {
        "layer": curve.layer, "resid_norm": curve.resid_norm, "breakdown_alpha": curve.breakdown_alpha,
        "breakdown_alpha_negative": curve.breakdown_alpha_negative,
        "coherent_alpha_low": min((a for a, _ in coherent), default=None),
        "coherent_alpha_high": max((a for a, _ in coherent), default=None),
        "n_coherent": len(coherent), "strength_low": None, "strength_high": None, "monotone": None,
        "kendall_tau": None, "decreases": None, "rise": None,
    }
    try:
        s = [v for _, v in strength_curve(card, curve.layer)]
        out.update(strength_low=min(s), strength_high=max(s))
    except StrengthOutOfRangeError:
        pass
    if len(coherent) >= 2:
        b, p = card.baseline.get("mean"), card.positive.get("mean")
        sign = -1.0 if b is not None and p is not None and p < b else 1.0
        ys = [sign * t for _, t in coherent]
        drops = [y0 - y1 for y0, y1 in zip(ys, ys[1:]) if y1 < y0]
        out.update(monotone=not drops, decreases=len(drops), largest_decrease=max(drops, default=0.0),
                   kendall_tau=kendall_tau([a for a, _ in coherent], ys), rise=max(ys) - min(ys))
    return out
