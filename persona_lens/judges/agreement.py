"""How well a student scorer agrees with its teacher judge: the ridge student, its
cross-validated scores, and the agreement report (used by :mod:`.calibrated`).

* :func:`agreement_report` - Pearson r (Fisher-z and percentile-bootstrap CIs), Cohen's kappa
  quadratic-weighted over 5 bins of width 20 and unweighted at 50 (bootstrap CIs), MAE.
* :func:`cross_validated_scores` - each row scored by a pipeline fitted on the other folds of
  ``KFold(shuffle=True, random_state=seed)``.
* :class:`RidgeWeights` - ``StandardScaler`` + ``RidgeCV`` as plain float arrays.

Bootstraps use ``numpy.random.default_rng(seed)``; no global RNG is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CalibratedJudgeFileError
from ..stats import bootstrap_ci, cohens_kappa, pearson, score_bins

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))
KAPPA_BINS = 5
BINARY_CUT = 50.0


# --------------------------------------------------------------------------- agreement


def agreement_report(teacher: Sequence[float] | np.ndarray, predicted: Sequence[float] | np.ndarray, *, n_boot: int = 1000,
                     confidence: float = 0.95, seed: int = 0) -> dict:
    """Agreement of ``predicted`` (cross-validated) with the ``teacher``'s 0-100 scores: Pearson r
    (Fisher-z and bootstrap CIs), quadratic-weighted kappa over 5 bins, binary kappa at 50 (each
    with a bootstrap CI) and the mean absolute error. See the module docstring."""
    t, p = np.asarray(teacher, dtype=float), np.asarray(predicted, dtype=float)
    r = pearson(t, p, confidence=confidence)
    tb, pb = score_bins(t, KAPPA_BINS), score_bins(p, KAPPA_BINS)
    tc, pc = (t >= BINARY_CUT).astype(int), (p >= BINARY_CUT).astype(int)

    def r_of(a, b):
        return pearson(a, b)["r"]

    def kq(a, b):
        return cohens_kappa(a, b, n_labels=KAPPA_BINS, weights="quadratic")

    def kb(a, b):
        return cohens_kappa(a, b, n_labels=2)

    r_ci = bootstrap_ci(r_of, t, p, n_boot=n_boot, confidence=confidence, seed=seed)
    kq_ci = bootstrap_ci(kq, tb, pb, n_boot=n_boot, confidence=confidence, seed=seed)
    kb_ci = bootstrap_ci(kb, tc, pc, n_boot=n_boot, confidence=confidence, seed=seed)
    return {
        "n": int(len(t)),
        "pearson_r": r["r"], "pearson_p_value": r["p_value"],
        "pearson_ci_fisher": [r["ci_low"], r["ci_high"]], "pearson_ci_bootstrap": list(r_ci),
        "kappa_quadratic_5bins": _finite_or_none(kq(tb, pb)), "kappa_quadratic_5bins_ci_bootstrap": list(kq_ci),
        "kappa_binary_50": _finite_or_none(kb(tc, pc)), "kappa_binary_50_ci_bootstrap": list(kb_ci),
        "mae": float(np.abs(t - p).mean()) if len(t) else None,
        "teacher_mean": float(t.mean()) if len(t) else None,
        "predicted_mean": float(p.mean()) if len(p) else None,
        "confidence": confidence, "n_boot": n_boot, "seed": seed,
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------- the regressor


def ridge_pipeline(alphas: Sequence[float] = DEFAULT_ALPHAS):
    """``StandardScaler`` then ``RidgeCV(alphas)`` (the regressor of every calibrated judge)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas)))


def cross_validated_scores(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0,
                           alphas: Sequence[float] = DEFAULT_ALPHAS) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, fold)``: each row scored (clipped to 0-100) by a pipeline fitted on the other
    folds of ``KFold(folds, shuffle=True, random_state=seed)``."""
    from sklearn.model_selection import KFold

    scores, fold_of = np.zeros(len(y)), np.zeros(len(y), dtype=int)
    for k, (train, test) in enumerate(KFold(folds, shuffle=True, random_state=seed).split(x)):
        fitted = ridge_pipeline(alphas).fit(x[train], y[train])
        scores[test] = np.clip(fitted.predict(x[test]), 0.0, 100.0)
        fold_of[test] = k
    return scores, fold_of


@dataclass(frozen=True)
class RidgeWeights:
    """score = clip(((x - mean) / scale) @ coef + intercept, 0, 100)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    alpha: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = DEFAULT_ALPHAS) -> RidgeWeights:
        pipeline = ridge_pipeline(alphas).fit(x, y)
        scaler, ridge = pipeline[0], pipeline[-1]
        return cls(np.asarray(scaler.mean_, float), np.asarray(scaler.scale_, float), np.asarray(ridge.coef_, float),
                   float(ridge.intercept_), float(ridge.alpha_))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.clip(((np.asarray(x, float) - self.mean) / self.scale) @ self.coef + self.intercept, 0.0, 100.0)

    def to_dict(self) -> dict:
        return {"kind": "standardized_ridge", "alpha": self.alpha, "intercept": self.intercept, "clip": [0.0, 100.0],
                "mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist()}

    @classmethod
    def from_dict(cls, data: Any) -> RidgeWeights:
        if not isinstance(data, dict) or data.get("kind") != "standardized_ridge":
            raise CalibratedJudgeFileError(f"regressor must be a standardized_ridge object, got {data!r:.200}")
        try:
            arrays = [np.asarray(data[k], dtype=float) for k in ("mean", "scale", "coef")]
            intercept, alpha = float(data["intercept"]), float(data["alpha"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibratedJudgeFileError(f"regressor weights are malformed: {exc}") from None
        if any(a.ndim != 1 or len(a) != len(arrays[0]) or not np.isfinite(a).all() for a in arrays) or \
                not len(arrays[0]) or not (arrays[1] > 0).all() or not math.isfinite(intercept):
            raise CalibratedJudgeFileError("regressor weights must be equal-length finite vectors (scale > 0)")
        return cls(arrays[0], arrays[1], arrays[2], intercept, alpha)
