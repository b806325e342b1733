"""The autotuner's :func:`run` on a model: candidates, baseline, steered generation and judging
per rung, driven by :func:`persona_lens.analysis.autotune.search.successive_halving`."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ...blend import blend
from ...chat import make_messages
from ...errors import BudgetError, JudgeError
from ...generation import backend_generation
from ...io import json_safe
from ...judges import CoherenceScorer, TraitScorer, coherence_scores, needs_fit
from ...models import check_layer, model_id, n_layers
from ...positions import check_positions
from ...stats import nanmean
from ...steering import Steering
from ...vectors import PersonaVector, check_compatible
from ..sweep import default_sweep_layers, heldout_items, response_statistics, text_coherence, vector_digest
from .result import AutotuneConfig, AutotuneResult
from .schedule import plan
from .search import OBJECTIVES, answer_diversity, successive_halving

BEST_RULE = ("argmax mean trait effect over the last rung's candidates with trait effect > 0, mean coherence >= the "
             "coherence floor and mean diversity >= the diversity floor (ties: smaller |alpha_frac|, earlier layer)")


def question_pool(spec, config: AutotuneConfig) -> list[str]:
    """``config.questions``, else the persona's eval questions (its extraction questions, last
    first, when it has none): the first ``n_questions``."""
    pool = list(config.questions) or list(spec.eval_questions) or list(spec.questions)[::-1]
    return pool[:config.n_questions]


def _steer_vectors(vectors: Sequence[PersonaVector], config: AutotuneConfig) -> tuple[list[PersonaVector], list]:
    """One steering vector per blend-weight candidate (the vector itself when there is one)."""
    if len(vectors) == 1:
        if any(len(w) != 1 for w in config.weights):
            raise ValueError("blend weights are for several vectors; one vector was given")
        return [vectors[0]], [None]
    check_compatible(list(vectors))
    weight_sets = list(config.weights) or [tuple([1.0 / len(vectors)] * len(vectors))]
    for w in weight_sets:
        if len(w) != len(vectors):
            raise ValueError(f"blend weights {list(w)} have {len(w)} values for {len(vectors)} vectors")
    return [blend(vectors, config.blend_method, w) for w in weight_sets], [list(w) for w in weight_sets]


def _candidates(steer: list[PersonaVector], weights: list, resid: dict[int, float], config: AutotuneConfig) -> list[dict]:
    out: list[dict] = []
    for (b, (vec, w)), layer, a, pos in itertools.product(enumerate(zip(steer, weights)), config.layers or (),
                                                          config.alphas, config.positions):
        vnorm = max(float(vec.layer(layer).norm()), 1e-12)
        raw = a * resid[layer] / vnorm if config.alpha_mode == "fraction" else a
        frac = a if config.alpha_mode == "fraction" else a * vnorm / resid[layer]
        out.append({"candidate": len(out), "layer": layer, "alpha_value": a, "alpha": float(raw),
                    "alpha_frac": float(frac), "positions": pos, "blend": b, "weights": w})
    return out


class _Ledger:
    """Counts judge calls and refuses any call past the budget."""

    def __init__(self, budget: int):
        self.budget, self.calls = budget, 0

    def charge(self, n: int) -> None:
        if self.calls + n > self.budget:
            raise BudgetError(f"{n} more judge calls would pass the budget ({self.calls} of {self.budget} used)")
        self.calls += n


def run(
    model,
    config: AutotuneConfig,
    *,
    vectors: PersonaVector | Sequence[PersonaVector],
    spec,
    judge,
    progress: bool = True,
    backend=None,
) -> AutotuneResult:
    """Search layer x alpha x positions (x blend weights) for the Pareto front of trait effect,
    coherence and answer diversity with successive halving under ``config.budget`` judge calls
    (definitions: the package docstring). ``judge`` must score the trait
    (:class:`persona_lens.judges.TraitScorer`); a judge that must be fitted first (embedding) is
    fitted on answers written under the persona's pos/neg system prompts (no judge calls).
    ``backend``: a generation backend serving ``model``'s checkpoint (None: HF on ``model``).
    Numbers only: save with :meth:`AutotuneResult.save`, draw with :mod:`persona_lens.viz.autotune`."""
    started = time.perf_counter()
    vecs = [vectors] if isinstance(vectors, PersonaVector) else list(vectors)
    if not vecs:
        raise ValueError("autotune needs at least one vector")
    for v in vecs:
        v.check_model(model)
    if not isinstance(judge, TraitScorer):
        raise JudgeError(f"autotune needs a judge that scores the trait (a TraitScorer), got {judge!r}")
    steer, weight_sets = _steer_vectors(vecs, config)
    layers = default_sweep_layers(n_layers(model)) if config.layers is None \
        else sorted({check_layer(model, int(l)) for l in config.layers})
    config = config.replace(layers=tuple(layers), alphas=tuple(sorted({float(a) for a in config.alphas if a != 0})),
                            positions=tuple(dict.fromkeys(config.positions)))
    pool = question_pool(spec, config)
    pool = [pool[i] for i in np.random.default_rng([config.seed, 0]).permutation(len(pool))]
    judge_coh = config.judge_coherence and isinstance(judge, CoherenceScorer)
    n_candidates = len(steer) * len(layers) * len(config.alphas) * len(config.positions)
    schedule = plan(n_candidates, len(pool), config.budget, calls_per_answer=2 if judge_coh else 1, eta=config.eta,
                    final_size=config.final_size, n_rungs=config.n_rungs, min_questions=config.min_questions)
    _, gen = backend_generation(model, backend)
    gen_kw: dict[str, Any] = dict(max_new_tokens=config.max_new_tokens, temperature=0.0, top_p=1.0, seed=None,
                                  batch_size=config.batch_size)
    settings: dict[str, Any] = {}
    if needs_fit(judge):
        items, _ = heldout_items(spec, config.n_questions)
        texts = [g.text for g in gen([make_messages(it["question"], it["system"]) for it in items], progress=progress, **gen_kw)]
        judge.fit([t for t in texts if t], [int(it["polarity"] == "pos") for it, t in zip(items, texts) if t])
        settings["judge_fit"] = f"{len(items)} answers under the persona's pos/neg system prompts (no judge calls)"

    # unsteered baseline on every question the schedule uses; its residual norms scale fraction alphas
    n_used = schedule["rungs"][-1]["questions"]
    base_prompts = [make_messages(q) for q in pool[:n_used]]
    base_text = [g.text for g in gen(base_prompts, progress=progress, **gen_kw)]
    token_norm = response_statistics(model, base_prompts, base_text, layers, batch_size=config.batch_size)["token_norm"]
    resid = {l: nanmean(token_norm[:, i].tolist()) for i, l in enumerate(layers)}
    if config.alpha_mode == "fraction" and not all(np.isfinite(list(resid.values()))):
        raise ValueError("every unsteered answer is empty: no residual norm to scale fraction alphas by "
                         "(raise max_new_tokens or use alpha_mode='raw')")
    cands = _candidates(steer, weight_sets, resid, config)

    ledger = _Ledger(config.budget)
    base_trait: dict[int, Any] = {}
    base_jcoh: dict[int, Any] = {}
    answers: dict[tuple[int, int], dict] = {}

    def judge_qa(qa: list[tuple[str, str]]) -> tuple[list, list]:
        ledger.charge(len(qa) * (2 if judge_coh else 1))
        trait = list(judge.score_trait_many(spec, qa, progress=progress))
        return trait, (coherence_scores(judge, qa, progress=progress) if judge_coh else [None] * len(qa))

    def evaluate(alive: list[int], n: int, new: range):
        trait, jcoh = judge_qa([(pool[q], base_text[q]) for q in new])
        base_trait.update(zip(new, trait))
        base_jcoh.update(zip(new, jcoh))
        rows = [(c, q) for c in alive for q in new]
        for pos in config.positions:
            group = [(c, q) for c, q in rows if cands[c]["positions"] == pos]
            if not group:
                continue
            deltas = {l: torch.zeros(len(group), steer[0].d_model) for l in layers}
            for i, (c, _) in enumerate(group):
                cand = cands[c]
                deltas[cand["layer"]][i] = cand["alpha"] * steer[cand["blend"]].layer(cand["layer"])
            texts = [g.text for g in gen([make_messages(pool[q]) for _, q in group], progress=progress,
                                         steering=Steering(deltas, check_positions(pos), {"autotune": True}), **gen_kw)]
            trait, jcoh = judge_qa([(pool[q], t) for (_, q), t in zip(group, texts)])
            for (c, q), t, s, jc in zip(group, texts, trait, jcoh):
                answers[c, q] = {"response": t, "trait_score": s, "judge_coherence": jc}
        per_candidate = {}
        for c in alive:
            got = [answers[c, q] for q in range(n)]
            effect = [np.nan if a["trait_score"] is None or base_trait[q] is None
                      else float(a["trait_score"]) - float(base_trait[q]) for q, a in enumerate(got)]
            per_candidate[c] = {"trait_effect": effect, "coherence": _coherence(got, judge_coh),
                                "diversity": answer_diversity([a["response"] for a in got]).tolist()}
        base_rows = [{"response": base_text[q], "judge_coherence": base_jcoh[q]} for q in range(n)]
        return per_candidate, {"coherence": _coherence(base_rows, judge_coh),
                               "diversity": answer_diversity(base_text[:n]).tolist(),
                               "trait": [np.nan if base_trait[q] is None else base_trait[q] for q in range(n)]}

    def floors(base: Mapping[str, float]) -> dict[str, float]:
        coh = config.judge_coherence_min if judge_coh else config.coherence_min * base["coherence"]
        return {"coherence": coh, "diversity": config.diversity_min * base["diversity"]}

    def order_key(c: int) -> tuple:
        cand = cands[c]
        return abs(cand["alpha_frac"]), cand["layer"], config.positions.index(cand["positions"]), cand["blend"], c

    found = successive_halving(len(cands), schedule, evaluate, floors, rng=np.random.default_rng([config.seed, 1]),
                               n_boot=config.n_boot, confidence=config.confidence, order_key=order_key,
                               progress=progress)
    evaluations = [{**cands[e["candidate"]], **e} for e in found["evaluations"]]
    latest = {e["candidate"]: e for e in evaluations}
    candidates = [{**latest[c["candidate"]], "rung_reached": latest[c["candidate"]]["rung"],
                   "on_front": c["candidate"] in found["front"], "is_best": c["candidate"] == found["best"]}
                  for c in cands]
    rungs = [{**r, "calls_cumulative": sum(x["calls"] for x in schedule["rungs"][:i + 1])}
             for i, r in enumerate(schedule["rungs"])]
    if ledger.calls != schedule["total_calls"]:
        raise RuntimeError(f"judge calls {ledger.calls} differ from the planned {schedule['total_calls']}")
    generations = [{"candidate": None, "question_index": q, "question": pool[q], "response": base_text[q],
                    "trait_score": base_trait.get(q), "judge_coherence": base_jcoh.get(q)} for q in range(n_used)]
    generations += [{"candidate": c, **cands[c], "question_index": q, "question": pool[q], **a}
                    for (c, q), a in sorted(answers.items())]
    settings.update({
        "persona": spec.name, "vectors": [v.name for v in vecs], "vector_digests": [vector_digest(v) for v in vecs],
        "model_id": model_id(model), "judge": getattr(judge, "name", type(judge).__name__),
        "coherence_source": "judge (0-100)" if judge_coh else "text_coherence proxy (0-1)",
        "diversity": "1 - mean pairwise Jaccard similarity of the answers' word sets (across questions)",
        "objectives": list(OBJECTIVES), "decoding": "greedy", "question_order": pool,
        "baseline": found["baseline"], "floors": found["floors"], "best_rule": BEST_RULE,
        "resid_norm": {str(l): v for l, v in resid.items()}, "n0": schedule["n0"],
        "judge_calls": ledger.calls, "judge_calls_planned": schedule["total_calls"], "budget": config.budget,
        "wall_s": time.perf_counter() - started})
    best = next((c for c in candidates if c["is_best"]), None)
    return AutotuneResult(config=config, candidates=json_safe(candidates), evaluations=json_safe(evaluations),
                          rungs=json_safe(rungs), front=list(found["front"]), best=json_safe(best),
                          settings=json_safe(settings), generations=json_safe(generations))


def _coherence(rows: list[dict], judge_coh: bool) -> list[float]:
    """Per answer: the judge's coherence score (0-100), or the sweep's text_coherence proxy (0-1)."""
    if judge_coh:
        return [np.nan if r["judge_coherence"] is None else float(r["judge_coherence"]) for r in rows]
    return [text_coherence(r["response"])["coherence"] for r in rows]
