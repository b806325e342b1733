"""The statistics persona_lens reports, in one place, on scikit-learn / scipy.

Every function takes plain sequences and skips missing values (``None`` and NaN) first, so a
row without a score never shifts a result:

* :func:`auroc` - ROC AUC of ``pos`` vs ``neg`` scores (``sklearn.metrics.roc_auc_score``; ties
  count 1/2); NaN when a group is empty (a one-class AUROC is undefined).
* :func:`cohens_d` - (mean_pos - mean_neg) / pooled SD (ddof=1); scipy has no Cohen's d.
* :func:`pearson` - Pearson r with its two-sided p-value and Fisher-z confidence interval
  (``scipy.stats.pearsonr`` and its ``confidence_interval()``).
* :func:`mean_std` / :func:`nanmean` - mean and sample std (ddof=1) of the present values.
* :class:`RunningStats` - count, mean, std (ddof=0), min, max of a stream (monitor, screen).

Heavy libraries (sklearn.metrics takes ~2 s to import) are imported on first use.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np


def present(values: Iterable[float | None]) -> np.ndarray:
    """The values as float64, with ``None`` and NaN (missing values) left out."""
    a = np.asarray([np.nan if v is None else float(v) for v in values], dtype=float)
    return a[~np.isnan(a)]


def nanmean(values: Iterable[float | None]) -> float:
    """Mean of the present values; NaN when there are none."""
    a = present(values)
    return float(a.mean()) if len(a) else float("nan")


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, sample std (ddof=1; 0.0 for one value), count) of the present values;
    ``(nan, nan, 0)`` when there are none."""
    a = present(values)
    if len(a) == 0:
        return float("nan"), float("nan"), 0
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def auroc(pos: Iterable[float | None], neg: Iterable[float | None]) -> float:
    """P(score_pos > score_neg) + P(tie)/2, i.e. ROC AUC with ``pos`` as the positive class.

    Non-finite scores are skipped; NaN when either group is then empty.
    """
    from sklearn.metrics import roc_auc_score

    p, q = np.asarray(list(pos), dtype=float), np.asarray(list(neg), dtype=float)
    p, q = p[np.isfinite(p)], q[np.isfinite(q)]
    if len(p) == 0 or len(q) == 0:
        return float("nan")
    labels = np.r_[np.ones(len(p)), np.zeros(len(q))]
    return float(roc_auc_score(labels, np.r_[p, q]))


def cohens_d(pos: Iterable[float | None], neg: Iterable[float | None]) -> float:
    """(mean_pos - mean_neg) / pooled SD (ddof=1); non-finite scores skipped.

    NaN when a group has fewer than 2 values; +-inf (or 0.0 for equal means) when both groups
    are constant.
    """
    p, q = np.asarray(list(pos), dtype=float), np.asarray(list(neg), dtype=float)
    p, q = p[np.isfinite(p)], q[np.isfinite(q)]
    n1, n2 = len(p), len(q)
    if n1 < 2 or n2 < 2:
        return float("nan")
    pooled = math.sqrt(((n1 - 1) * p.var(ddof=1) + (n2 - 1) * q.var(ddof=1)) / (n1 + n2 - 2))
    diff = float(p.mean() - q.mean())
    if pooled == 0:
        return math.copysign(math.inf, diff) if diff else 0.0
    return diff / pooled


def pearson(x: Iterable[float | None], y: Iterable[float | None], *, confidence: float = 0.95) -> dict:
    """Pearson r of paired values, skipping pairs with a missing or non-finite value.

    Returns ``{"r", "n", "p_value", "ci_low", "ci_high", "confidence"}``: ``r`` is None for
    fewer than 2 pairs or a constant side; ``p_value`` (two-sided, exact under normality) and
    the confidence interval (Fisher z; ``(-1, 1)`` for n = 3) are None below 3 pairs.
    """
    pairs = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None]
    xy = np.asarray(pairs, dtype=float).reshape(-1, 2)
    xy = xy[np.isfinite(xy).all(axis=1)]
    n = len(xy)
    out: dict = {"r": None, "n": n, "p_value": None, "ci_low": None, "ci_high": None, "confidence": confidence}
    if n < 2 or np.ptp(xy[:, 0]) == 0 or np.ptp(xy[:, 1]) == 0:
        return out
    from scipy import stats

    with warnings.catch_warnings():  # n = 2: scipy warns that p is meaningless; we drop it below
        warnings.simplefilter("ignore")
        res = stats.pearsonr(xy[:, 0], xy[:, 1])
    out["r"] = float(res.statistic)
    if n >= 3:
        ci = res.confidence_interval(confidence_level=confidence)
        out.update(p_value=float(res.pvalue), ci_low=float(ci.low), ci_high=float(ci.high))
    return out


class RunningStats:
    """Count, mean, population std (ddof=0), min and max of a stream too long to keep.

    Each batch's moments come from numpy; batches are merged with Chan et al.'s parallel
    update of (n, mean, M2), so the result equals numpy on the whole stream up to rounding.
    Non-finite values are the caller's to skip (they would poison every moment).
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def update(self, values: Iterable[float]) -> None:
        a = np.asarray(list(values), dtype=float)
        if a.size == 0:
            return
        n_b, mean_b = a.size, float(a.mean())
        m2_b = float(((a - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n
        self.min = min(self.min, float(a.min()))
        self.max = max(self.max, float(a.max()))

    def add(self, value: float) -> None:
        self.update([value])

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else float("nan")

    def to_dict(self) -> dict:
        if not self.n:
            return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"n": self.n, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}
