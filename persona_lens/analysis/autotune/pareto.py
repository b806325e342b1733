"""Pareto ranking on plain arrays: dominance, non-dominated sorting, crowding distance,
promotion, and the percentile bootstrap of a mean.

Every objective is **maximised**. A missing value (NaN) counts as the worst possible value
(-inf) when points are compared, so a candidate without a score never dominates one with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _worst_for_missing(points) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"points must be [n, n_objectives], got shape {p.shape}")
    return np.where(np.isnan(p), -np.inf, p)


def dominates(a, b) -> bool:
    """``a`` dominates ``b``: at least as good on every objective, better on one (maximising)."""
    pa, pb = _worst_for_missing([a, b])
    return bool(np.all(pa >= pb) and np.any(pa > pb))


def non_dominated_sort(points) -> np.ndarray:
    """Front index of each point (0 = non-dominated; 1 = non-dominated once front 0 is removed; ...),
    as NSGA-II's fast non-dominated sort (Deb et al. 2002)."""
    p = _worst_for_missing(points)
    n = len(p)
    ge = np.all(p[:, None, :] >= p[None, :, :], axis=2)
    gt = np.any(p[:, None, :] > p[None, :, :], axis=2)
    dom = ge & gt  # dom[i, j]: i dominates j
    n_dominating = dom.sum(axis=0)
    ranks = np.full(n, -1, dtype=int)
    current = [i for i in range(n) if n_dominating[i] == 0]
    rank = 0
    while current:
        for i in current:
            ranks[i] = rank
        nxt = []
        for i in current:
            for j in np.flatnonzero(dom[i]):
                n_dominating[j] -= 1
                if n_dominating[j] == 0:
                    nxt.append(int(j))
        current = sorted(nxt)
        rank += 1
    return ranks


def pareto_front(points) -> list[int]:
    """Indices of the non-dominated points, in order."""
    return [int(i) for i in np.flatnonzero(non_dominated_sort(points) == 0)] if len(points) else []


def crowding_distance(points) -> np.ndarray:
    """NSGA-II crowding distance of each point within its set: per objective, the points at the
    two ends get +inf and the others the gap between their neighbours divided by the objective's
    range, summed over objectives. Missing values are read as the objective's smallest present
    value (an objective missing everywhere adds nothing)."""
    p = np.asarray(points, dtype=float)
    n, m = p.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        col = p[:, k]
        finite = np.isfinite(col)
        if not finite.any():
            continue
        col = np.where(finite, col, col[finite].min())
        order = np.argsort(col, kind="stable")
        span = col[order[-1]] - col[order[0]]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span <= 0:
            continue
        for pos in range(1, n - 1):
            dist[order[pos]] += (col[order[pos + 1]] - col[order[pos - 1]]) / span
    return dist


def normalized_sum(points) -> np.ndarray:
    """Per point, the sum over objectives of its min-max normalised value (missing: 0; a
    constant objective adds 0): a balanced-utility tie-break."""
    p = np.asarray(points, dtype=float)
    total = np.zeros(len(p))
    for col in p.T:
        finite = np.isfinite(col)
        if finite.sum() < 2 or col[finite].max() == col[finite].min():
            continue
        lo, hi = col[finite].min(), col[finite].max()
        total += np.where(finite, (np.where(finite, col, lo) - lo) / (hi - lo), 0.0)
    return total


def promotion_order(points) -> list[int]:
    """All indices, best first: by front (lower first), then crowding distance within the front
    (larger first: keeps the front spread out), then :func:`normalized_sum` (larger first: with
    three objectives a small front is often all ends, every crowding distance infinite), then index."""
    p = np.asarray(points, dtype=float)
    ranks = non_dominated_sort(p)
    crowd = np.zeros(len(p))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding_distance(p[members])
    utility = normalized_sum(p)
    return sorted(range(len(p)), key=lambda i: (int(ranks[i]), -crowd[i], -utility[i], i))


def promote(points, keep: int, *, always: Sequence[int] = ()) -> list[int]:
    """The ``keep`` indices promoted to the next rung: ``always`` first (the rung's best point,
    so the recommendation is never pruned), then by :func:`promotion_order`; returned sorted."""
    order = [i for i in always if 0 <= i < len(points)]
    order += [i for i in promotion_order(points) if i not in order]
    return sorted(order[:max(0, keep)])
