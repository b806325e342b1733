"""persona_lens.stats: against scikit-learn / scipy directly and against small hand-computed examples."""

import math

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from persona_lens import stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    pos = rng.normal(0.7, 1.0, size=37)
    neg = rng.normal(0.0, 1.3, size=23)
    pos[:5], neg[:5] = np.round(pos[:5]), np.round(neg[:5])  # ties across the classes
    expected = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    assert stats.auroc(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_auroc_by_hand():
    # pairs (pos, neg): (3,2) win, (3,0) win, (1,2) loss, (1,0) win -> 3/4
    assert stats.auroc([3.0, 1.0], [2.0, 0.0]) == 0.75
    # (1,1) tie counts 1/2, (2,1) win -> 1.5/2
    assert stats.auroc([1.0, 2.0], [1.0]) == 0.75
    assert stats.auroc([1, 2, 3], [0, -1]) == 1.0
    assert stats.auroc([0, -1], [1, 2, 3]) == 0.0
    assert stats.auroc([1, 1], [1, 1]) == 0.5
    assert stats.auroc([1.0, float("nan"), 2.0], [0.0]) == 1.0  # NaN skipped
    # one class only (an empty group after skipping): undefined -> NaN, no exception
    assert math.isnan(stats.auroc([], [1.0]))
    assert math.isnan(stats.auroc([1.0], [float("nan")]))


def test_cohens_d_by_hand():
    # pos mean 5, var 20/3; neg mean 2, var 1; pooled = sqrt((3 * 20/3 + 2 * 1) / 5) = sqrt(22/5)
    pos, neg = [2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0]
    assert stats.cohens_d(pos, neg) == pytest.approx(3.0 / math.sqrt(22 / 5))
    assert stats.cohens_d(neg, pos) == pytest.approx(-3.0 / math.sqrt(22 / 5))
    assert math.isnan(stats.cohens_d([1.0], [0.0, 1.0]))
    assert stats.cohens_d([1.0, 1.0], [0.0, 0.0]) == math.inf
    assert stats.cohens_d([1.0, 1.0], [1.0, 1.0]) == 0.0


def test_pearson_by_hand():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0]
    out = stats.pearson(x, y)
    # means 2.5, 2.5; sxy = 3, sxx = syy = 5 -> r = 0.6
    assert out["r"] == pytest.approx(0.6) and out["n"] == 4
    # t = r sqrt((n-2)/(1-r^2)) = 0.6 sqrt(2/0.64); with 2 df, P(T > t) = (1 - t/sqrt(t^2+2))/2 = 0.2
    assert out["p_value"] == pytest.approx(0.4)
    # Fisher z: atanh(0.6) = ln 2, standard error 1/sqrt(n-3) = 1
    z = sps.norm.ppf(0.975)
    assert out["ci_low"] == pytest.approx(math.tanh(math.log(2) - z))
    assert out["ci_high"] == pytest.approx(math.tanh(math.log(2) + z))
    assert out["confidence"] == 0.95


def test_pearson_matches_scipy_and_skips_missing():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    ref = sps.pearsonr(x, y)
    ci = ref.confidence_interval(0.9)
    out = stats.pearson(list(x) + [None, 1.0, float("nan")], list(y) + [2.0, None, 3.0], confidence=0.9)
    assert out["n"] == 40
    assert out["r"] == pytest.approx(ref.statistic, abs=1e-12)
    assert out["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (out["ci_low"], out["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))


def test_pearson_degenerate():
    assert stats.pearson([1.0], [2.0])["r"] is None
    assert stats.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["r"] is None  # constant side
    two = stats.pearson([1.0, 2.0], [2.0, 1.0])
    assert two["r"] == pytest.approx(-1.0) and two["p_value"] is None and two["ci_low"] is None


def test_mean_std_and_nanmean_by_hand():
    # mean 4; sample variance ((2-4)^2 + 0 + (6-4)^2) / 2 = 4 -> std 2
    assert stats.mean_std([2.0, 4.0, None, float("nan"), 6.0]) == (4.0, 2.0, 3)
    assert stats.mean_std([3.0]) == (3.0, 0.0, 1)
    m, s, n = stats.mean_std([])
    assert math.isnan(m) and math.isnan(s) and n == 0
    assert stats.mean_std(np.arange(10.0))[1] == pytest.approx(np.std(np.arange(10.0), ddof=1))
    assert stats.nanmean([1.0, None, 3.0, float("nan")]) == 2.0
    assert math.isnan(stats.nanmean([None]))


def test_mean_t_interval_and_mean_ci_equal_scipy():
    """One Student-t rule for dose cards (sample std) and the screen (population std of a stream)."""
    mean_ci, mean_t_interval = stats.mean_ci, stats.mean_t_interval
    x = np.array([3.0, 7.5, 1.0, 9.0, 4.25])
    want = sps.t.interval(0.9, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert mean_t_interval(x.mean(), x.std(ddof=0), len(x), 0.9) == pytest.approx(want)
    assert mean_t_interval(x.mean(), x.std(ddof=1), len(x), 0.9, ddof=1) == pytest.approx(want)
    got = mean_ci([*x.tolist(), None, float("nan")], 0.9)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx(want) and got["n"] == 5
    assert mean_t_interval(1.0, 0.0, 1) == (None, None)
