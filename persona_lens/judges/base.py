"""What a judge is (small protocols), the 0-100 scoring rule, and the base of the LLM judges.

Protocols (a judge implements the ones it can; callers check capabilities, never judge kinds):

- :class:`TraitScorer` - how strongly an answer shows the persona's trait, 0-100.
- :class:`CoherenceScorer` - how coherent an answer is, 0-100 (the embedding proxy cannot).
- :class:`Fittable` - learns from labelled example answers before it scores (the embedding proxy).
- :class:`TextGenerator` - continues a chat (writes persona specs, rates creativity answers).

The scoring rule of the LLM judges is the one of Persona Vectors (Chen et al. 2025): the
probability-weighted mean of the integers 0..100 over the judge's next-token distribution,
normalised by the probability mass on those integers, and ``None`` when that mass is < 0.25.
:class:`PromptJudge` turns ``score(filled judge prompt)`` into trait and coherence scores.
"""

from __future__ import annotations

import abc
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeGuard, runtime_checkable

from tqdm.auto import tqdm

from ..errors import JudgeError
from .prompts import SpecOrPrompt, coherence_prompt, trait_prompt

MIN_NUMBER_MASS = 0.25
MAX_SCORE = 100

QA = Sequence[tuple[str, str]]


# ---------------------------------------------------------------------------------------
# protocols
# ---------------------------------------------------------------------------------------
@runtime_checkable
class TraitScorer(Protocol):
    """Scores how strongly ``answer`` (to ``question``) shows a trait: 0-100, None = no usable score."""

    name: str

    def score_trait(self, spec: SpecOrPrompt, question: str, answer: str) -> float | None: ...

    def score_trait_many(self, spec: SpecOrPrompt, qa: QA, *, progress: bool = False) -> list[float | None]: ...


@runtime_checkable
class CoherenceScorer(Protocol):
    """Scores how coherent ``answer`` (to ``question``) is: 0-100, None = no usable score."""

    name: str

    def score_coherence(self, question: str, answer: str) -> float | None: ...

    def score_coherence_many(self, qa: QA, *, progress: bool = False) -> list[float | None]: ...


@runtime_checkable
class Fittable(Protocol):
    """Learns from example answers (label 1: written under the positive system prompt, 0: negative)."""

    @property
    def is_fitted(self) -> bool: ...

    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> Any: ...

    def cross_fit(self, texts: Sequence[str], labels: Sequence[int], folds: Sequence[int]) -> list[float | None]:
        """Score each text with a model fitted on the other folds only; then fit on everything."""
        ...


@runtime_checkable
class TextGenerator(Protocol):
    """Continues a chat; ``max_concurrency`` calls of ``complete`` may run at once."""

    name: str
    max_concurrency: int

    def complete(self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 512) -> str: ...


def needs_fit(judge: object) -> TypeGuard[Fittable]:
    """Whether ``judge`` must be fitted on example answers before it can score."""
    return isinstance(judge, Fittable) and not judge.is_fitted


def coherence_scores(judge: object, qa: QA, *, progress: bool = False) -> list[float | None]:
    """Coherence scores of answers, all None from a judge that is no :class:`CoherenceScorer`."""
    if isinstance(judge, CoherenceScorer):
        return list(judge.score_coherence_many(list(qa), progress=progress))
    return [None] * len(qa)


# ---------------------------------------------------------------------------------------
# LLM judges: score a filled judge prompt
# ---------------------------------------------------------------------------------------
class PromptJudge(abc.ABC):
    """A judge that reads a filled judge prompt and gives 0-100 (``score``); implements
    :class:`TraitScorer` with the spec's eval prompt and :class:`CoherenceScorer` with
    persona_lens' coherence prompt."""

    #: a short description such as ``"openai:gpt-4.1-mini"`` (used in reports and cache keys)
    name: str = "judge"
    #: how many ``complete``/``score`` calls may run at once
    max_concurrency: int = 1

    @abc.abstractmethod
    def score(self, prompt: str) -> float | None:
        """0-100 for a filled judge prompt, None when there is no usable score."""

    def score_many(self, prompts: Sequence[str], *, progress: bool = False) -> list[float | None]:
        return [self.score(p) for p in tqdm(prompts, desc=self.name, leave=False, disable=not progress)]

    def score_trait(self, spec: SpecOrPrompt, question: str, answer: str) -> float | None:
        """How strongly ``answer`` shows the trait, 0-100, with the spec's own eval prompt."""
        return self.score(trait_prompt(spec, question, answer))

    def score_trait_many(self, spec: SpecOrPrompt, qa: QA, *, progress: bool = False) -> list[float | None]:
        return self.score_many([trait_prompt(spec, q, a) for q, a in qa], progress=progress)

    def score_coherence(self, question: str, answer: str) -> float | None:
        """How coherent ``answer`` is, 0-100, with persona_lens' coherence prompt."""
        return self.score(coherence_prompt(question, answer))

    def score_coherence_many(self, qa: QA, *, progress: bool = False) -> list[float | None]:
        return self.score_many([coherence_prompt(q, a) for q, a in qa], progress=progress)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


# ---------------------------------------------------------------------------------------
# the 0-100 scoring rule
# ---------------------------------------------------------------------------------------
_DIGITS = re.compile(r"[0-9]+")


def number_token_value(token: str, max_value: int = MAX_SCORE) -> int | None:
    """The integer a token stands for (surrounding whitespace stripped), or None."""
    text = token.strip()
    if not text or not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if value <= max_value else None


def probs_from_top_logprobs(top_logprobs: Iterable[Any], max_value: int = MAX_SCORE) -> dict[int, float]:
    """Probability per integer 0..max_value from an OpenAI ``top_logprobs`` list.

    Accepts ``[{"token": "57", "logprob": -0.3}, ...]`` or a ``{token: logprob}`` mapping.
    Tokens that differ only by whitespace (``"30"`` and ``" 30"``) add up.
    """
    items: Iterable[tuple[Any, Any]]
    if isinstance(top_logprobs, Mapping):
        items = top_logprobs.items()
    else:
        items = []
        for entry in top_logprobs:
            if not isinstance(entry, Mapping) or "token" not in entry or "logprob" not in entry:
                raise JudgeError(f"malformed top_logprobs entry: {entry!r:.200}")
            items.append((entry["token"], entry["logprob"]))
    out: dict[int, float] = {}
    for token, logprob in items:
        if not isinstance(token, str):
            continue
        value = number_token_value(token, max_value)
        if value is None:
            continue
        try:
            p = math.exp(float(logprob))
        except (TypeError, ValueError, OverflowError):
            raise JudgeError(f"malformed logprob {logprob!r} for token {token!r}") from None
        out[value] = out.get(value, 0.0) + p
    return out


def weighted_score(probs: Mapping[int, float], min_mass: float = MIN_NUMBER_MASS) -> float | None:
    """Probability-weighted mean of the integers, normalised by their mass; None if mass < min_mass."""
    total = float(sum(probs.values()))
    if total < min_mass or total <= 0.0:
        return None
    return float(sum(int(k) * float(p) for k, p in probs.items()) / total)


_FIRST = re.compile(r"REFUSAL|[0-9]+", re.IGNORECASE)


def parse_text_score(text: str | None, max_value: int = MAX_SCORE) -> float | None:
    """The first integer 0..max_value in a judge's plain-text reply; None for REFUSAL or no number."""
    if not text:
        return None
    for match in _FIRST.finditer(text):
        token = match.group(0)
        if token.upper() == "REFUSAL":
            return None
        value = int(token)
        if value <= max_value:
            return float(value)
    return None
