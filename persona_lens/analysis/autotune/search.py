"""Successive halving on per-question objective values, independent of any model (definitions:
the package docstring): the model-facing :func:`persona_lens.analysis.autotune.run` supplies
``evaluate``; tests supply synthetic objectives."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ...stats import bootstrap_mean_ci
from ..sweep.scoring import words
from .pareto import crowding_distance, non_dominated_sort, promote

OBJECTIVES = ("trait_effect", "coherence", "diversity")


#: ``evaluate(alive, n_questions, new_questions) -> (per_candidate, baseline)``: for each alive
#: candidate id, ``{objective: per-question values on the first n_questions}``; ``baseline``:
#: ``{"coherence": ..., "diversity": ...}`` per-question values of the unsteered answers.
Evaluate = Callable[[list[int], int, range], tuple[Mapping[int, Mapping[str, Sequence[float]]], Mapping[str, Any]]]
#: ``floors(baseline_means) -> {"coherence": c, "diversity": d}``: the best point's constraints.
Floors = Callable[[Mapping[str, float]], Mapping[str, float]]


def answer_diversity(texts: Sequence[str]) -> np.ndarray:
    """Per answer ``i``: ``1 - mean_{j != i} J(i, j)``, ``J`` = Jaccard similarity of the two
    answers' lower-cased word sets (two empty answers: 1). The mean over answers is
    ``1 - mean pairwise similarity``: 0 when every answer is the same text, near 1 when the
    answers to different questions share few words. NaN for fewer than two answers."""
    sets = [set(words(t)) for t in texts]
    n = len(sets)
    out = np.full(n, np.nan)
    if n < 2:
        return out
    sim = np.ones((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            union = sets[i] | sets[j]
            sim[i, j] = sim[j, i] = len(sets[i] & sets[j]) / len(union) if union else 1.0
    return 1.0 - (sim.sum(axis=1) - 1.0) / (n - 1)


def summarise(values: Mapping[str, Sequence[float]], rng: np.random.Generator, *, n_boot: int,
              confidence: float) -> dict:
    """Mean, bootstrap CI (``_lo``/``_hi``) and count (``_n``) of each objective's per-question values."""
    out: dict = {}
    for key in OBJECTIVES:
        mean, lo, hi, n = bootstrap_mean_ci(values[key], rng, n_boot=n_boot, confidence=confidence)
        out.update({key: mean, f"{key}_lo": lo, f"{key}_hi": hi, f"{key}_n": n})
    return out


def pick_best(rows: Sequence[Mapping], floors: Mapping[str, float], order_key: Callable[[int], Any]) -> int | None:
    """The candidate id with the largest mean trait effect among those with a positive effect,
    mean coherence >= ``floors["coherence"]`` and mean diversity >= ``floors["diversity"]``
    (ties: smaller ``order_key``); None when no row qualifies."""
    def ok(r: Mapping) -> bool:
        vals = [r["trait_effect"], r["coherence"], r["diversity"]]
        if not all(v is not None and math.isfinite(v) for v in vals):
            return False
        return r["trait_effect"] > 0 and r["coherence"] >= floors["coherence"] and r["diversity"] >= floors["diversity"]

    feasible = [r for r in rows if ok(r)]
    if not feasible:
        return None
    return int(min(feasible, key=lambda r: (-r["trait_effect"], order_key(int(r["candidate"]))))["candidate"])


def successive_halving(n_candidates: int, schedule: Mapping, evaluate: Evaluate, floors: Floors, *,
                       rng: np.random.Generator, n_boot: int = 1000, confidence: float = 0.95,
                       order_key: Callable[[int], Any] | None = None, progress: bool = False) -> dict:
    """Run the rungs of ``schedule`` (:func:`persona_lens.analysis.autotune.schedule.plan`).

    At each rung the alive candidates are evaluated, summarised (mean + bootstrap CI over
    questions), ranked by non-dominated sorting with crowding distance, and the next rung's
    ``candidates`` are promoted: the rung's best point (:func:`pick_best`) always, then by front
    and crowding. Returns ``{"evaluations": rows (one per candidate x rung), "alive": the last
    rung's candidate ids, "front": their non-dominated ids, "best": id or None, "floors",
    "baseline": the last rung's baseline means}``.
    """
    key = order_key or (lambda i: i)
    rungs = schedule["rungs"]
    alive = list(range(n_candidates))
    rows: list[dict] = []
    prev_n = 0
    result: dict = {}
    for r, rung in enumerate(tqdm(rungs, desc="autotune: rungs", disable=not progress, leave=False)):
        if len(alive) != rung["candidates"]:
            raise RuntimeError(f"rung {r}: {len(alive)} candidates alive, the schedule has {rung['candidates']}")
        n = rung["questions"]
        per_candidate, baseline = evaluate(alive, n, range(prev_n, n))
        prev_n = n
        base_means = {k: float(np.nanmean(v)) if np.isfinite(np.asarray(v, dtype=float)).any() else float("nan")
                      for k, v in baseline.items()}
        rung_floors = dict(floors(base_means))
        rung_rows = [{"candidate": c, "rung": r, "n_questions": n,
                      **summarise(per_candidate[c], rng, n_boot=n_boot, confidence=confidence)} for c in alive]
        points = np.array([[row[k] for k in OBJECTIVES] for row in rung_rows], dtype=float)
        ranks = non_dominated_sort(points)
        crowd = np.zeros(len(alive))
        for rank in np.unique(ranks):
            members = np.flatnonzero(ranks == rank)
            crowd[members] = crowding_distance(points[members])
        best = pick_best(rung_rows, rung_floors, key)
        last = r == len(rungs) - 1
        keep = len(alive) if last else rungs[r + 1]["candidates"]
        kept_pos = promote(points, keep, always=[alive.index(best)] if best is not None else [])
        for i, row in enumerate(rung_rows):
            row.update(pareto_rank=int(ranks[i]), crowding=float(crowd[i]), promoted=(not last) and i in kept_pos,
                       feasible=best is not None and pick_best([row], rung_floors, key) is not None)
        rows += rung_rows
        result = {"front": [alive[i] for i in np.flatnonzero(ranks == 0)], "best": best, "floors": rung_floors,
                  "baseline": base_means, "alive": list(alive)}
        if not last:
            alive = [alive[i] for i in kept_pos]
    result["evaluations"] = rows
    return result
