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
* :class:`RunningCovariance` - covariance / correlation of many columns over a stream of batches
  (Chan et al.'s parallel update; the screen's cross-trait leakage matrix).
* :func:`mean_t_interval` / :func:`mean_ci` - Student-t interval of a mean (dose cards, screen).
* :func:`bootstrap_ci` - percentile bootstrap interval of any statistic of paired samples
  (judge agreement); :func:`bootstrap_mean_ci` - the same for a mean, vectorised, from a
  caller's ``numpy.random.Generator`` (autotune). Neither touches a global RNG.
* :func:`cohens_kappa` / :func:`score_bins` - (weighted) Cohen's kappa of binned 0-100 scores.
* :func:`kendall_tau` - Kendall's tau-b (``scipy.stats.kendalltau``; dose-response monotonicity).

Heavy libraries (sklearn.metrics takes ~2 s to import) are imported on first use.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

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


def score_bins(values: Iterable[float], n_bins: int = 5, low: float = 0.0, high: float = 100.0) -> np.ndarray:
    """Bin index (0..n_bins-1) of each score on ``n_bins`` equal bins over [low, high]: scores are
    clipped to [low, high] first and ``high`` falls in the last bin (0-100 in 5 bins: [0, 20),
    [20, 40), [40, 60), [60, 80), [80, 100])."""
    a = np.clip(np.asarray(list(values), dtype=float), low, high)
    return np.minimum(np.floor((a - low) / (high - low) * n_bins), n_bins - 1).astype(int)


def cohens_kappa(a: Iterable[int], b: Iterable[int], *, n_labels: int | None = None,
                 weights: str | None = None) -> float:
    """Cohen's kappa of two raters' labels (``sklearn.metrics.cohen_kappa_score``); ``weights``:
    None, ``"linear"`` or ``"quadratic"``. ``n_labels``: the labels are the ordered categories
    0..n_labels-1 even when some are unused (weighted kappa's distances are then those of the
    scale, not of the labels that happen to occur). NaN for no pairs or when kappa is undefined
    (both raters constant on one label)."""
    from sklearn.metrics import cohen_kappa_score

    x, y = np.asarray(list(a)), np.asarray(list(b))
    if len(x) != len(y):
        raise ValueError(f"cohens_kappa: {len(x)} labels against {len(y)}")
    if len(x) == 0:
        return float("nan")
    labels = list(range(n_labels)) if n_labels is not None else None
    with warnings.catch_warnings():  # undefined kappa (0/0): sklearn warns and returns nan
        warnings.simplefilter("ignore")
        value = float(cohen_kappa_score(x, y, labels=labels, weights=weights))
    return value


def bootstrap_ci(statistic, *samples: Iterable, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap confidence interval of ``statistic(*samples)``: the rows (paired
    across ``samples``) are resampled with replacement ``n_boot`` times from
    ``numpy.random.default_rng(seed)`` (the global RNGs are never touched, so the interval is
    the same on every call). Resamples where the statistic is undefined (NaN/None, e.g. a
    constant resample for a correlation) are left out; ``(None, None)`` when fewer than half
    are usable or there are fewer than 2 rows."""
    arrays = [np.asarray(list(s)) for s in samples]
    n = len(arrays[0]) if arrays else 0
    if any(len(a) != n for a in arrays):
        raise ValueError("bootstrap_ci: the samples differ in length")
    if n < 2 or n_boot < 1:
        return None, None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, size=n)
        v = statistic(*(a[idx] for a in arrays))
        if v is not None and math.isfinite(float(v)):
            values.append(float(v))
    if len(values) < n_boot / 2:
        return None, None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def mean_ci(values: list[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """Mean of the present values and its Student-t interval (None for fewer than 2 values)."""
    mean, sd, n = mean_std(values)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    lo, hi = mean_t_interval(mean, sd, n, confidence, ddof=1)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}


def kendall_tau(xs: list[float], ys: list[float]) -> float | None:
    """Kendall's tau-b of ``ys`` against ``xs`` (None below 3 points or for a constant side)."""
    from scipy.stats import kendalltau

    if len(xs) < 3 or len(set(ys)) < 2:
        return None
    return float(kendalltau(xs, ys).statistic)


def bootstrap_mean_ci(values, rng: np.random.Generator, *, n_boot: int = 1000,
                      confidence: float = 0.95) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the present (finite) values: the percentile bootstrap
    interval of the mean (``n_boot`` resamples with replacement drawn from ``rng``). One value:
    the interval is that value; none: all NaN."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n == 1 or n_boot <= 0:
        return mean, mean, mean, n
    means = v[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return mean, float(lo), float(hi), n


class RunningCovariance:
    """Covariance and correlation of ``k`` columns over a stream of ``[rows, k]`` batches.
    Rows with a non-finite value are the caller's to drop (they would poison every moment)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.n = 0
        self.mean = np.zeros(k)
        self.comoment = np.zeros((k, k))

    def update(self, batch: np.ndarray) -> None:
        x = np.asarray(batch, dtype=float).reshape(-1, self.k)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        centred = x - mean_b
        n = self.n + n_b
        delta = mean_b - self.mean
        self.comoment += centred.T @ centred + np.outer(delta, delta) * (self.n * n_b / n)
        self.mean = self.mean + delta * (n_b / n)
        self.n = n

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """``[k, k]`` covariance (NaN with fewer than ``ddof + 1`` rows)."""
        if self.n <= ddof:
            return np.full((self.k, self.k), np.nan)
        return self.comoment / (self.n - ddof)

    def correlation(self) -> np.ndarray:
        """``[k, k]`` Pearson correlation; NaN rows and columns for a constant column (as numpy)."""
        if self.n < 2:
            return np.full((self.k, self.k), np.nan)
        sd = np.sqrt(np.diag(self.comoment))
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = self.comoment / np.outer(sd, sd)
        return np.clip(corr, -1.0, 1.0)


def mean_t_interval(mean: float, std: float, n: int, confidence: float = 0.95, *, ddof: int = 0) -> tuple:
    """Student-t interval ``mean +- t(n-1) * sem`` of a mean from its count and its std with
    ``ddof`` (0: population std, as :class:`RunningStats` keeps; 1: sample std, as :func:`mean_std`).
    ``(None, None)`` below 2 values."""
    if n < 2 or not math.isfinite(std):
        return None, None
    from scipy import stats  # scipy.stats takes ~0.5 s to import: on first use

    sample_sd = std * math.sqrt(n / (n - 1)) if ddof == 0 else std
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sample_sd / math.sqrt(n)
    return mean - half, mean + half
