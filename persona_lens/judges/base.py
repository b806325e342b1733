"""The judge protocol, the 0-100 scoring rule shared by all judges, and the factories.

A judge turns a prompt into a score in [0, 100] or ``None`` (refusal, or too little probability
on numbers). The scoring rule is the one of Persona Vectors (Chen et al. 2025): the
probability-weighted mean of the integers 0..100 over the judge's next-token distribution,
normalised by the probability mass on those integers, and ``None`` when that mass is < 0.25.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence, Union, runtime_checkable

from ..errors import JudgeError
from .prompts import coherence_prompt, trait_prompt

if TYPE_CHECKING:  # pragma: no cover
    from ..personas.spec import PersonaSpec

MIN_NUMBER_MASS = 0.25
MAX_SCORE = 100


@runtime_checkable
class Judge(Protocol):
    """Anything that scores a judge prompt 0-100 (``None`` = no usable score)."""

    def score(self, prompt: str) -> float | None: ...

    def score_many(self, prompts: Sequence[str]) -> list[float | None]: ...


@runtime_checkable
class Generator(Protocol):
    """Anything that continues a chat: used to write persona specs and by the creativity harness."""

    def complete(self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 512) -> str: ...


class BaseJudge:
    """Shared helpers: trait and coherence scoring on top of ``score``/``score_many``."""

    #: a short description such as ``"openai:gpt-4.1-mini"`` (used in reports and cache keys)
    name: str = "judge"
    #: whether ``score_coherence`` gives a real score (the embedding proxy cannot)
    supports_coherence: bool = True

    def score(self, prompt: str) -> float | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_many(self, prompts: Sequence[str], *, progress: bool = False) -> list[float | None]:
        return [self.score(p) for p in _progress(prompts, progress, self.name)]

    # -- prompts -------------------------------------------------------------------------
    def trait_prompt(self, spec_or_eval_prompt: Union["PersonaSpec", str], question: str, answer: str) -> str:
        return trait_prompt(spec_or_eval_prompt, question, answer)

    def coherence_prompt(self, question: str, answer: str) -> str:
        return coherence_prompt(question, answer)

    # -- scoring -------------------------------------------------------------------------
    def score_trait(self, spec_or_eval_prompt: Union["PersonaSpec", str], question: str, answer: str) -> float | None:
        """How strongly ``answer`` shows the trait, 0-100, with the spec's own eval prompt."""
        return self.score(self.trait_prompt(spec_or_eval_prompt, question, answer))

    def score_coherence(self, question: str, answer: str) -> float | None:
        """How coherent ``answer`` is, 0-100, with persona_lens' coherence prompt."""
        return self.score(self.coherence_prompt(question, answer))

    def score_trait_many(
        self, spec_or_eval_prompt: Union["PersonaSpec", str], qa: Iterable[tuple[str, str]], *, progress: bool = False
    ) -> list[float | None]:
        prompts = [self.trait_prompt(spec_or_eval_prompt, q, a) for q, a in qa]
        return self.score_many(prompts, progress=progress)

    def score_coherence_many(self, qa: Iterable[tuple[str, str]], *, progress: bool = False) -> list[float | None]:
        prompts = [self.coherence_prompt(q, a) for q, a in qa]
        return self.score_many(prompts, progress=progress)

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


# ---------------------------------------------------------------------------------------
# factories
# ---------------------------------------------------------------------------------------
JUDGE_SPECS = ("none", "openai:MODEL", "local:MODEL", "embedding")


def parse_backend(spec: str) -> tuple[str, str | None]:
    """``"openai:gpt-4.1-mini"`` -> ``("openai", "gpt-4.1-mini")``; ``"embedding"`` -> ``("embedding", None)``."""
    if not isinstance(spec, str) or not spec.strip():
        raise JudgeError(f"empty judge spec; expected one of {', '.join(JUDGE_SPECS)}")
    kind, sep, rest = spec.strip().partition(":")
    kind = kind.lower()
    if kind not in ("none", "openai", "local", "embedding"):
        raise JudgeError(f"unknown judge {spec!r}; expected one of {', '.join(JUDGE_SPECS)}")
    if kind == "openai" and not rest:
        raise JudgeError(f"judge {spec!r} needs a model name, e.g. openai:gpt-4.1-mini")
    if kind == "local":
        rest = rest or "default"
    return kind, (rest or None)


def make_judge(spec: str, **kwargs: Any) -> BaseJudge | None:
    """A judge from ``"none" | "openai:MODEL" | "local:MODEL" | "embedding"``; None for ``"none"``.

    Keyword arguments go to the judge's constructor (``base_url=``, ``cache_dir=``,
    ``max_concurrency=`` for OpenAI; ``model=`` an already loaded model, ``device=`` for local).
    """
    kind, name = parse_backend(spec)
    if kind == "none":
        return None
    if kind == "openai":
        from .openai import OpenAIJudge

        return OpenAIJudge(name, **kwargs)
    if kind == "local":
        from .local import LocalJudge

        return LocalJudge.from_name(name, **kwargs)
    from .embedding import EmbeddingJudge

    if name:
        raise JudgeError(f"judge {spec!r}: the embedding judge takes no model name")
    return EmbeddingJudge(**kwargs)


def make_generator(spec: str, **kwargs: Any) -> Generator:
    """A text generator (``.complete``) from ``"openai:MODEL" | "local:MODEL"``."""
    kind, _ = parse_backend(spec)
    if kind not in ("openai", "local"):
        raise JudgeError(f"generator {spec!r}: expected openai:MODEL or local:MODEL")
    judge = make_judge(spec, **kwargs)
    assert judge is not None
    return judge  # type: ignore[return-value]


def _progress(items: Sequence[Any], enabled: bool, desc: str):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, leave=False)
