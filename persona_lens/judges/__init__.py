"""Judges: score how strongly a response shows a trait (0-100), and how coherent it is.

``make_judge("openai:MODEL" | "local:MODEL" | "embedding" | "lexicon:NAME" | "calibrated:PATH" | "none", **options)`` builds one
(:mod:`persona_lens.judges.registry`):

- :class:`OpenAIJudge` - any OpenAI-compatible endpoint; the Persona Vectors rule
  (logprob-weighted mean over the integers 0..100 among the top-20 tokens, None below 0.25).
- :class:`LocalJudge` - the same rule on a local model's exact number distribution.
- :class:`EmbeddingJudge` - an offline proxy (MiniLM embeddings + logistic regression), not
  the paper's judge; it must be fitted on example answers first (:func:`needs_fit`).
- :class:`LexiconJudge` - a deterministic offline proxy: weighted marker words/regexes per 100
  words mapped to 0-100 (``lexicon:NAME`` built-in or ``lexicon:FILE.json``); needs no fit.
- :class:`CalibratedJudge` - a small ridge scorer on activations (or embeddings) fitted to another
  judge's labels, refused unless its cross-validated agreement (Pearson r, Cohen's kappa) is high
  enough (``calibrated:PATH``, written by ``persona-lens judge calibrate``).

What a judge can do is described by protocols (:class:`TraitScorer`, :class:`CoherenceScorer`,
:class:`Fittable`, :class:`TextGenerator`), not by its class.
"""

from .base import (
    CoherenceScorer,
    Fittable,
    PromptJudge,
    TextGenerator,
    TraitScorer,
    coherence_scores,
    needs_fit,
    parse_text_score,
    probs_from_top_logprobs,
    weighted_score,
)
from .cache import JudgeCache, cache_key, default_cache_dir
from .calibrated import CalibratedJudge, fit_calibrated_judge
from .embedding import EmbeddingJudge, embed_texts
from .lexicon import LexiconJudge, builtin_lexicons
from .local import LocalJudge
from .openai import OpenAIJudge
from .prompts import COHERENCE_PROMPT, SpecOrPrompt, coherence_prompt, trait_prompt
from .registry import JUDGE_REGISTRY, JudgeScheme, make_generator, make_judge, parse_backend, register_judge

__all__ = [
    "COHERENCE_PROMPT",
    "CalibratedJudge",
    "CoherenceScorer",
    "EmbeddingJudge",
    "Fittable",
    "JUDGE_REGISTRY",
    "JudgeCache",
    "JudgeScheme",
    "LexiconJudge",
    "LocalJudge",
    "OpenAIJudge",
    "PromptJudge",
    "SpecOrPrompt",
    "TextGenerator",
    "TraitScorer",
    "builtin_lexicons",
    "cache_key",
    "coherence_prompt",
    "coherence_scores",
    "default_cache_dir",
    "embed_texts",
    "fit_calibrated_judge",
    "make_generator",
    "make_judge",
    "needs_fit",
    "parse_backend",
    "parse_text_score",
    "probs_from_top_logprobs",
    "register_judge",
    "trait_prompt",
    "weighted_score",
]
