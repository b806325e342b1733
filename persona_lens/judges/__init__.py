"""Judges: score how strongly a response shows a trait (0-100), and how coherent it is.

``make_judge("openai:MODEL" | "local:MODEL" | "embedding" | "none")`` builds one:

- :class:`OpenAIJudge` - any OpenAI-compatible endpoint; the Persona Vectors rule
  (logprob-weighted mean over the integers 0..100 among the top-20 tokens, None below 0.25).
- :class:`LocalJudge` - the same rule on a local model's exact number distribution.
- :class:`EmbeddingJudge` - an offline proxy (MiniLM embeddings + logistic regression), not
  the paper's judge.
"""

from .base import (
    BaseJudge,
    Generator,
    Judge,
    make_generator,
    make_judge,
    parse_text_score,
    probs_from_top_logprobs,
    weighted_score,
)
from .cache import JudgeCache, cache_key, default_cache_dir
from .prompts import COHERENCE_PROMPT, coherence_prompt, trait_prompt

__all__ = [
    "BaseJudge",
    "COHERENCE_PROMPT",
    "EmbeddingJudge",
    "Generator",
    "Judge",
    "JudgeCache",
    "LocalJudge",
    "OpenAIJudge",
    "cache_key",
    "coherence_prompt",
    "default_cache_dir",
    "embed_texts",
    "make_generator",
    "make_judge",
    "parse_text_score",
    "probs_from_top_logprobs",
    "trait_prompt",
    "weighted_score",
]


def __getattr__(name: str):
    # lazy: the local and embedding judges import torch/transformers/sklearn
    if name == "OpenAIJudge":
        from .openai import OpenAIJudge

        return OpenAIJudge
    if name == "LocalJudge":
        from .local import LocalJudge

        return LocalJudge
    if name in ("EmbeddingJudge", "embed_texts"):
        from . import embedding

        return getattr(embedding, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
