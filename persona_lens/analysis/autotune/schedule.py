"""The successive-halving schedule under a judge-call budget (definitions: the package docstring).

Rung ``r`` keeps ``c_r`` candidates, each evaluated (cumulatively) on the first ``n_r``
questions of the shuffled question pool:

* ``c_0`` = every candidate; ``c_{r+1} = max(min(final_size, c_r), ceil(c_r / eta))``; with
  ``n_rungs=None`` rungs are added until ``c_r <= final_size``.
* ``n_r = min(pool, n_0 * eta**r)``: a survivor answers only the questions it has not answered.
* judge calls = ``calls_per_answer * (sum_r c_r (n_r - n_{r-1}) + n_last)`` (the last term: the
  unsteered baseline, judged once on every question used). ``n_0`` is the largest value in
  ``[min_questions, pool]`` whose total fits the budget. Rungs after the one that reaches the
  whole pool are dropped (they would prune without new evidence), so the last rung may keep
  more than ``final_size`` candidates.
"""

from __future__ import annotations

import math

from ...errors import BudgetError


def survivors(n_candidates: int, eta: int, final_size: int, n_rungs: int | None = None) -> list[int]:
    """``c_r`` for every rung (see the module docstring)."""
    if n_candidates < 1:
        raise ValueError("autotune needs at least one candidate")
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    if final_size < 1:
        raise ValueError(f"final_size must be >= 1, got {final_size}")
    if n_rungs is not None and n_rungs < 1:
        raise ValueError(f"n_rungs must be >= 1, got {n_rungs}")
    counts = [n_candidates]
    while (len(counts) < n_rungs) if n_rungs is not None else counts[-1] > final_size:
        c = counts[-1]
        counts.append(max(min(final_size, c), math.ceil(c / eta)))
    return counts


def questions_per_rung(n0: int, eta: int, n_rungs: int, pool: int) -> list[int]:
    """``n_r = min(pool, n0 * eta**r)`` (cumulative questions per candidate at rung ``r``)."""
    return [min(pool, n0 * eta ** r) for r in range(n_rungs)]


def total_calls(counts: list[int], n_questions: list[int], calls_per_answer: int) -> int:
    """Judge calls of a schedule: every new (candidate, question) answer and the baseline's."""
    steered = sum(c * (n - prev) for c, n, prev in zip(counts, n_questions, [0, *n_questions[:-1]]))
    return calls_per_answer * (steered + n_questions[-1])


def plan(n_candidates: int, pool: int, budget: int, *, calls_per_answer: int, eta: int = 3, final_size: int = 3,
         n_rungs: int | None = None, min_questions: int = 2) -> dict:
    """The schedule with the largest ``n_0`` that fits ``budget`` judge calls: ``{"rungs": [{"rung",
    "candidates", "questions", "new_questions", "calls"}], "total_calls", "n0", "budget"}``.
    Raises :class:`BudgetError` when even ``n_0 = min_questions`` does not fit."""
    if min_questions < 1:
        raise ValueError(f"min_questions must be >= 1, got {min_questions}")
    if pool < min_questions:
        raise ValueError(f"the question pool has {pool} question(s); autotune needs at least {min_questions}")
    if calls_per_answer < 1:
        raise ValueError("calls_per_answer must be >= 1")
    counts = survivors(n_candidates, eta, final_size, n_rungs)
    best = None
    for n0 in range(min_questions, pool + 1):
        nq = questions_per_rung(n0, eta, len(counts), pool)
        if total_calls(counts, nq, calls_per_answer) > budget:
            break
        best = (n0, nq)
        if nq[0] >= pool:
            break
    if best is None:
        need = total_calls(counts, questions_per_rung(min_questions, eta, len(counts), pool), calls_per_answer)
        raise BudgetError(f"a budget of {budget} judge calls is too small for {n_candidates} candidates: the "
                          f"smallest schedule ({len(counts)} rung(s), {min_questions} questions at rung 0) needs "
                          f"{need}; raise the budget or search fewer layers/alphas/positions/weights")
    n0, nq = best
    while len(nq) > 1 and nq[-1] == nq[-2]:  # the pool ran out: a rung without new answers adds no evidence
        nq, counts = nq[:-1], counts[:-1]
    rungs = []
    prev = 0
    for r, (c, n) in enumerate(zip(counts, nq)):
        calls = calls_per_answer * (c * (n - prev) + (n - prev))  # steered answers + the baseline's new ones
        rungs.append({"rung": r, "candidates": c, "questions": n, "new_questions": n - prev, "calls": calls})
        prev = n
    return {"rungs": rungs, "total_calls": total_calls(counts, nq, calls_per_answer), "n0": n0, "budget": budget,
            "calls_per_answer": calls_per_answer}
