"""Dose cards: a persona vector's measured dose-response curve, stored in its file.

``persona-lens calibrate`` (:mod:`persona_lens.analysis.calibrate`) measures, per layer ``l`` and
steering coefficient ``alpha`` (the raw coefficient of ``steer --alpha``: ``alpha * v[l]`` is
added to ``blocks.{l}.hook_resid_post``), the judged trait score of the steered answers (mean and
confidence interval), their coherence, the residual-stream norm at ``l`` and the ``alpha`` where
coherence breaks down. It also measures, on the same questions, the **baseline** (unsteered, no
system prompt) and the **positive-prompt** score (unsteered, answered under the persona's positive
system prompt). The card is stored in the vector file's metadata under :data:`CARD_KEY`.

**The calibrated unit (strength).** ``strength S`` asks for the trait score
``target = baseline + S * (positive - baseline)``: ``S = 0`` is the unsteered model, ``S = 1``
is as strong as the positive system prompt, ``S = 0.5`` half-way, ``S < 0`` pushes below the
baseline (suppression, through negative ``alpha``, when the card measured negative alphas).

**The mapping** (:func:`alpha_for_strength`). At the chosen layer (the card's recommendation,
else its best layer), only the coherent range is used: the alphas strictly between the first
negative and the first positive alpha (walking out from 0) where coherence broke down. On each
side of 0 the measured trait means are made monotone by isotonic regression
(``scipy.optimize.isotonic_regression``: increasing in ``alpha`` when ``positive > baseline``)
and kept on their side of the baseline, so the curve passes through ``(0, baseline)``. The
``alpha`` returned is the linear interpolation where that curve first reaches the target, walking
out from 0. A target the coherent curve does not reach raises :class:`StrengthOutOfRangeError`
naming the reachable strengths.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .errors import NoDoseCardError, StrengthOutOfRangeError
from .io import json_safe
from .vectors import PersonaVector

CARD_KEY = "dose_card"
CARD_VERSION = 1
ALPHA_UNIT = "raw coefficient: alpha * v[layer] is added (the --alpha of steer/generate)"
STRENGTH_UNIT = "fraction of the measured trait gap: target = baseline + S * (positive_prompt - baseline)"


@dataclass
class LayerCurve:
    """The measured curve at one layer; lists are aligned with ``alphas`` (ascending, 0 included).

    ``trait_ci_low``/``trait_ci_high``: the confidence interval of the mean trait score;
    ``resid_norm``: the mean residual norm ``||h[l]||`` over response tokens; ``breakdown_alpha``
    (``breakdown_alpha_negative``): the first alpha > 0 (< 0) where coherence broke down, None
    if it never did within the measured alphas.
    """

    layer: int
    alphas: list[float]
    trait_mean: list[float | None]
    trait_ci_low: list[float | None]
    trait_ci_high: list[float | None]
    coherence_mean: list[float | None]
    resid_norm: float | None = None
    vector_norm: float | None = None
    alpha_fracs: list[float] = field(default_factory=list)
    breakdown_alpha: float | None = None
    breakdown_alpha_negative: float | None = None

    def coherent_points(self) -> list[tuple[float, float]]:
        """``(alpha, trait_mean)`` strictly inside the coherent range, with a finite mean."""
        hi = math.inf if self.breakdown_alpha is None else self.breakdown_alpha
        lo = -math.inf if self.breakdown_alpha_negative is None else self.breakdown_alpha_negative
        return [(float(a), float(t)) for a, t in zip(self.alphas, self.trait_mean)
                if lo < a < hi and t is not None and math.isfinite(float(t))]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerCurve:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class DoseCard:
    """A vector's dose-response card (module docstring). ``baseline``/``positive``:
    ``{"mean", "ci_low", "ci_high", "n"}``; ``judge``: the judge spec string; ``best_layer``: the
    layer calibrate found to reach the widest coherent strength range; ``recommendation``: an
    optional ``{"layer", "alpha", "positions", "source", ...}`` set later (e.g. by autotune), whose
    layer :func:`alpha_for_strength` prefers."""

    persona: str
    model_id: str | None
    judge: str | None
    positions: str
    baseline: dict[str, Any]
    positive: dict[str, Any]
    curves: list[LayerCurve]
    best_layer: int | None = None
    coherence_rule: dict[str, Any] = field(default_factory=dict)
    recommendation: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    alpha_unit: str = ALPHA_UNIT
    strength_unit: str = STRENGTH_UNIT
    version: int = CARD_VERSION

    @property
    def layers(self) -> list[int]:
        return [c.layer for c in self.curves]

    def curve(self, layer: int) -> LayerCurve:
        for c in self.curves:
            if c.layer == layer:
                return c
        raise StrengthOutOfRangeError(f"the dose card has no curve at layer {layer} (measured layers: {self.layers})")

    def default_layer(self) -> int:
        """The recommendation's layer when set and measured, else :attr:`best_layer`, else the first."""
        rec = self.recommendation or {}
        if rec.get("layer") is not None and int(rec["layer"]) in self.layers:
            return int(rec["layer"])
        if self.best_layer is not None:
            return int(self.best_layer)
        if not self.curves:
            raise NoDoseCardError("the dose card holds no curves: run `persona-lens calibrate` again")
        return self.curves[0].layer

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DoseCard:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["curves"] = [LayerCurve.from_dict(c) for c in data.get("curves", [])]
        return cls(**values)


# --------------------------------------------------------------------------- files


def _load(vector: PersonaVector | str | os.PathLike) -> PersonaVector:
    return vector if isinstance(vector, PersonaVector) else PersonaVector.load(vector)


def read_card(vector: PersonaVector | str | os.PathLike, *, source: str | os.PathLike | None = None) -> DoseCard:
    """The dose card of a vector (or vector file); :class:`NoDoseCardError` when it has none
    (``source``: the file named in that message, when ``vector`` was loaded from it)."""
    v = _load(vector)
    data = v.metadata.get(CARD_KEY)
    if not data:
        where = source if source is not None else vector if not isinstance(vector, PersonaVector) else repr(v.name)
        raise NoDoseCardError(f"{where} has no dose card: run `persona-lens calibrate VECTOR --persona NAME --judge J "
                              f"--out VECTOR` first (or steer with --alpha)")
    return DoseCard.from_dict(data)


def write_card(path_in: str | os.PathLike, card: DoseCard, path_out: str | os.PathLike | None = None) -> Path:
    """Write the vector at ``path_in`` with ``card`` in its metadata to ``path_out`` (default:
    ``path_in``), atomically (:meth:`PersonaVector.save`)."""
    v = PersonaVector.load(path_in)
    v.metadata = {**v.metadata, CARD_KEY: card.to_dict()}
    return v.save(path_in if path_out is None else path_out)


def set_recommendation(vector_path: str | os.PathLike, recommendation: dict[str, Any]) -> None:
    """Set the card's ``recommendation`` in the vector file (atomic rewrite); needs a card."""
    card = read_card(vector_path)
    card.recommendation = json_safe(dict(recommendation))
    write_card(vector_path, card, vector_path)


# --------------------------------------------------------------------------- strength -> alpha


def monotone_side(alphas: list[float], means: list[float], baseline: float, increasing: bool) -> list[float]:
    """Isotonic fit of one side's means (``alphas`` ordered outward from 0, all on one side),
    monotone outward in the direction the trait grows, clipped to stay on its side of the baseline."""
    from scipy.optimize import isotonic_regression  # scipy.optimize takes ~0.3 s to import

    if not alphas:
        return []
    y = np.asarray(means, dtype=float)
    # outward from 0 the trait should rise on the positive side (if increasing) and fall on the negative side
    rising = increasing == (alphas[0] > 0)
    fit = isotonic_regression(y if rising else -y).x
    fit = np.asarray(fit if rising else -fit, dtype=float)
    return [float(max(baseline, f)) if rising else float(min(baseline, f)) for f in fit]


def _gap(card: DoseCard) -> tuple[float, float]:
    b, p = card.baseline.get("mean"), card.positive.get("mean")
    if b is None or p is None or not math.isfinite(float(b)) or not math.isfinite(float(p)) or float(p) == float(b):
        raise StrengthOutOfRangeError(
            f"the dose card's baseline ({b}) and positive-prompt score ({p}) do not define a trait gap: "
            "--strength is undefined; use --alpha")
    return float(b), float(p)


def strength_curve(card: DoseCard, layer: int) -> list[tuple[float, float]]:
    """``(alpha, strength)`` of the monotone coherent curve at ``layer``, ascending in alpha,
    through ``(0, 0)``."""
    b, p = _gap(card)
    pts = [pt for pt in card.curve(layer).coherent_points() if pt[0] != 0.0]
    pos = sorted(pt for pt in pts if pt[0] > 0)
    neg = sorted((pt for pt in pts if pt[0] < 0), reverse=True)
    increasing = p > b
    out = [(0.0, 0.0)]
    for side in (pos, neg):
        fit = monotone_side([a for a, _ in side], [t for _, t in side], b, increasing)
        out += [(a, (f - b) / (p - b)) for (a, _), f in zip(side, fit)]
    return sorted(out)


def reachable_strengths(card: DoseCard, layer: int | None = None) -> tuple[float, float]:
    """The (lowest, highest) strength the coherent curve reaches at ``layer``."""
    curve = strength_curve(card, card.default_layer() if layer is None else int(layer))
    s = [v for _, v in curve]
    return min(s), max(s)


def alpha_for_strength(card: DoseCard, strength: float, layer: int | None = None) -> tuple[int, float]:
    """``(layer, alpha)`` whose steered trait score is ``baseline + strength * (positive -
    baseline)`` on the card's monotone coherent curve (module docstring); ``layer`` defaults to
    :meth:`DoseCard.default_layer`. :class:`StrengthOutOfRangeError` when the curve does not
    reach ``strength`` (the message names the reachable range)."""
    if not math.isfinite(float(strength)):
        raise StrengthOutOfRangeError(f"strength must be finite, got {strength}")
    layer = card.default_layer() if layer is None else int(layer)
    curve = strength_curve(card, layer)
    s = float(strength)
    if s == 0.0:
        return layer, 0.0
    # walk outward from alpha = 0 on the side whose strengths have the sign of s
    side = [pt for pt in curve if pt[0] >= 0] if s > 0 else sorted((pt for pt in curve if pt[0] <= 0), reverse=True)
    for (a0, s0), (a1, s1) in zip(side, side[1:]):
        if (s0 <= s <= s1) if s > 0 else (s1 <= s <= s0):
            if s1 == s0:
                return layer, float(a0)
            return layer, float(a0 + (s - s0) * (a1 - a0) / (s1 - s0))
    lo, hi = min(v for _, v in curve), max(v for _, v in curve)
    raise StrengthOutOfRangeError(
        f"strength {s:g} is outside what the coherent dose curve reaches at layer {layer}: "
        f"[{lo:.3g}, {hi:.3g}] (measured alphas {[a for a, _ in curve]}); pick a strength in that range, "
        "another --layer, or calibrate more alphas")
