"""Multi-objective autotuner: the Pareto front of trait effect, coherence and answer diversity
over layer x alpha x positions (x blend weights), under a judge-call budget.

``run(model, AutotuneConfig(...), vectors=v | [v, w], spec=spec, judge=judge) -> AutotuneResult``
(the pattern of :mod:`persona_lens.analysis.base`); figures: :mod:`persona_lens.viz.autotune`;
command line: ``persona-lens autotune``.

**Candidates.** Every ``layer x alpha x positions x weights``. ``alphas`` follow the layer
sweep: fractions ``f = alpha ||v[l]|| / resid_norm[l]`` by default (``alpha_mode="raw"``: the
coefficient), with ``resid_norm[l]`` the mean over response tokens of ``||h_t[l]||`` of the
unsteered answers; both the raw alpha and the fraction are recorded. With several vectors,
each weight tuple gives one steering vector ``blend(vectors, blend_method, weights)``
(:mod:`persona_lens.blend`; default ``normalized``: a weighted sum of unit vectors, so the
weights set the mix and alpha the strength).

**Objectives** (all maximised), per question ``q`` of the candidate's answers (greedy, one
answer per question, no system prompt), summarised by the mean over questions and a
percentile bootstrap CI (resampling questions):

* ``trait_effect`` = judge trait score (0-100) of the steered answer - that of the unsteered
  answer to the same question (paired; a missing score drops the question);
* ``coherence`` = the judge's coherence score (0-100) when the judge is a
  :class:`~persona_lens.judges.CoherenceScorer` (and ``judge_coherence``), else the sweep's
  :func:`~persona_lens.analysis.sweep.text_coherence` proxy (0-1, no judge call);
* ``diversity`` = per answer ``1 - mean_{j != i} Jaccard(words_i, words_j)`` over the
  candidate's answers to the other questions; its mean is ``1 - mean pairwise similarity``.
  Steering too hard makes every answer the same text (diversity -> 0). The bootstrap of this
  objective treats the per-answer values as independent (they are not quite: an approximation).

**Search: successive halving** (Jamieson & Talwalkar 2016) with Pareto promotion. The
question pool (``questions`` or the persona's eval questions, first ``n_questions``) is
shuffled once with ``seed``. Rung ``r`` evaluates its ``c_r`` candidates on the first ``n_r``
questions (a survivor only answers the new ones): ``c_{r+1} = max(min(final_size, c_r),
ceil(c_r / eta))``, ``n_r = min(pool, n_0 eta^r)``
(:mod:`~persona_lens.analysis.autotune.schedule`; rungs after the first one that reaches the
whole pool are dropped, so the last rung may keep more than ``final_size``). Promotion: the rung's best point (below)
always, then by NSGA-II non-dominated sorting (front 0 first) and, within a front, crowding
distance (larger first; ties: candidate id) (:mod:`~persona_lens.analysis.autotune.pareto`).
The Pareto front reported is the non-dominated set of the last rung (all evaluated on the same
questions).

**Budget.** One judge call = one trait score or one coherence score of one answer (fitting an
embedding judge is not a call). The schedule's calls are ``k (sum_r c_r (n_r - n_{r-1}) +
n_last)`` (``k`` = 2 with judge coherence, else 1; the last term: the baseline's answers);
``n_0`` is the largest in ``[min_questions, pool]`` that fits ``budget``; a budget too small for
``n_0 = min_questions`` raises :class:`~persona_lens.errors.BudgetError` before anything runs.
Every call is counted and a call past the budget is refused.

**Best point** (the recommendation): among the last rung's candidates, the largest mean trait
effect with trait effect > 0, mean coherence >= the floor (``judge_coherence_min`` = 50 with
judge coherence, else ``coherence_min`` = 0.75 x the unsteered answers' proxy coherence, as the
sweep's guard) and mean diversity >= ``diversity_min`` (0.9) x the unsteered answers'
diversity; ties: smaller ``|alpha_frac|``, then the earlier layer. None when nothing qualifies.
:meth:`AutotuneResult.recommendation` gives it as a dose-card recommendation.
"""

from ...stats import bootstrap_mean_ci
from .core import BEST_RULE, question_pool, run
from .pareto import crowding_distance, dominates, non_dominated_sort, pareto_front, promote
from .result import AutotuneConfig, AutotuneResult
from .schedule import plan, survivors
from .search import OBJECTIVES, answer_diversity, pick_best, successive_halving

__all__ = [
    "BEST_RULE", "OBJECTIVES", "AutotuneConfig", "AutotuneResult", "answer_diversity", "bootstrap_mean_ci",
    "crowding_distance", "dominates", "non_dominated_sort", "pareto_front", "pick_best", "plan", "promote",
    "question_pool", "run", "successive_halving", "survivors",
]
