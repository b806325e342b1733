"""Layer sweep: which layer (and which steering strength) to use for a persona vector.

``run(model, SweepConfig(...), vector=v, spec=spec) -> SweepResult`` (the pattern of
:mod:`persona_lens.analysis.base`); figures: :func:`persona_lens.viz.sweep.figures`.

For one persona vector ``v`` and its spec, per layer ``l`` (``blocks.{l}.hook_resid_post``):

**Norms.** ``vector_norm = ||v[l]||``; ``resid_norm`` = the typical residual norm, the mean of
``||h_t[l]||`` over every response token ``t`` of the held-out responses (pos and neg);
``norm_ratio = vector_norm / resid_norm``.

**Held-out separation.** Held-out responses are generated (greedy) for the spec's
``eval_questions`` (never used for extraction) under the positive and the negative system prompt
(question ``i`` uses instruction pair ``i mod n_pairs``). Each response's mean activation over
its response tokens is projected on ``v[l]/||v[l]||``; ``auroc`` (pos vs neg, ties count 1/2,
= the Mann-Whitney U statistic / (n_pos n_neg)) and ``cohens_d`` ((mean_pos - mean_neg) /
pooled standard deviation with ddof=1) measure the separation, and ``gap = mean_pos - mean_neg``
is the prompt-induced shift along ``v``. ``auroc_last_prompt`` is the same AUROC for the last
prompt token (the monitoring position, before any response). ``auroc_text`` reads the same
answers back with only the user question (no system prompt), the way data screening reads a
training set: how well layer ``l`` tells the trait-styled *text* apart (the layer to screen at,
:func:`persona_lens.analysis.screen.run`; on SmolLM2 it peaks later than ``auroc``).
These use every layer (one forward each).

**Steering effect** (at the swept ``layers`` only). The held-out questions without a system
prompt are answered (greedy) while ``alpha * v[l]`` is added at layer ``l`` (response
positions); every layer x alpha x prompt row runs in one batched generation with per-row
deltas. ``alphas`` are fractions ``f = alpha ||v[l]|| / resid_norm[l]`` by default
(``alpha_mode="fraction"``; ``alpha`` raw values with ``"raw"``): both are recorded. Each
generated text is then read back by the *unsteered* model and its response-mean activation at
one fixed *readout layer* ``r`` (default: the layer with the largest held-out Cohen's d) is
projected on ``v[r]/||v[r]||``: this measures what the text expresses, not the injected vector,
with the same meter for every steered layer. ``delta_projection`` = mean over prompts of
(projection - projection of the alpha = 0 text for the same prompt); ``effect =
delta_projection / gap[r]`` (1.0 = the text moved along ``v`` as far as the positive system
prompt moves held-out answers). With a ``judge``, ``trait_score`` (0-100) and ``delta_trait``
are recorded too (an unfitted embedding judge is first fitted on the held-out pos/neg answers).

**Coherence guard.** Per text (:func:`text_coherence`): ``distinct`` = distinct words / words,
``repetition`` = share of repeated character 8-grams, ``coherence = distinct * (1 -
repetition)`` (0 for an empty text).
A (layer, alpha) cell passes when its mean coherence is at least ``coherence_min`` (default
0.75) times the unsteered texts' mean coherence, at most ``max_empty`` (default 0.25) of its
texts are empty, and, when the judge scores coherence, its mean judged coherence is >= 50.

**Recommendation.** ``score[l] = max(0, 2 auroc[l] - 1) * max(0, best_effect[l])`` (chance-level
separation scores 0) where ``best_effect[l]``
is the largest effect among the cells with ``alpha > 0`` at layer ``l`` that pass the guard
(effect in trait points / 100 when a judge gave trait scores, ``delta_projection / gap``
otherwise). The recommended layer maximises ``score`` (ties: the earlier layer); if no layer
has a positive coherent effect it falls back to the swept layer with the highest AUROC. The
recommended alpha is that layer's best cell; the recommended range spans the passing cells with
``alpha > 0`` whose effect is at least half the best.
"""


from .core import heldout_items, response_statistics, run, vector_digest
from .result import SweepConfig, SweepResult
from .scoring import ALPHA_MODES, DEFAULT_ALPHAS, default_sweep_layers, recommend, text_coherence

__all__ = [
    "ALPHA_MODES", "DEFAULT_ALPHAS", "SweepConfig", "SweepResult", "default_sweep_layers", "heldout_items",
    "recommend", "response_statistics", "run", "text_coherence", "vector_digest",
]
