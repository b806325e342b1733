"""The judge registry: a judge spec such as ``"openai:gpt-4o-mini"`` names a scheme and a model.

``JUDGE_REGISTRY`` maps each scheme (``none``, ``openai``, ``local``, ``embedding``, ``lexicon``) to a
:class:`JudgeScheme` whose factory takes the part after ``"scheme:"`` (the model name, or None)
plus keyword options (``base_url=``, ``api_key_env=``, ``cache_dir=`` for openai; ``model=``,
``device=`` for local...). ``make_judge(spec, **options)`` parses the spec and calls the factory;
``register_judge`` adds a scheme (in the style of SAELens' ``sae_lens/registry.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import JudgeError
from .base import TextGenerator
from .calibrated import CalibratedJudge
from .embedding import EmbeddingJudge
from .lexicon import LexiconJudge
from .local import LocalJudge
from .openai import OpenAIJudge

JudgeFactory = Callable[..., Any]


@dataclass(frozen=True)
class JudgeScheme:
    """How one scheme is written and built."""

    #: ``factory(model_name_or_None, **options)`` -> a judge (None for the "none" scheme)
    factory: JudgeFactory
    #: how the spec is written, for error messages: ``"openai:MODEL"``
    usage: str
    #: "required", "optional" or "forbidden": whether the spec names a model after the colon
    model_name: str = "forbidden"
    #: the model name used when an optional one is left out
    default_model: str | None = None


JUDGE_REGISTRY: dict[str, JudgeScheme] = {}


def register_judge(scheme: str, scheme_info: JudgeScheme) -> None:
    """Make ``"scheme[:MODEL]"`` a judge spec that ``make_judge`` understands."""
    if scheme_info.model_name not in ("required", "optional", "forbidden"):
        raise ValueError(f"model_name must be 'required', 'optional' or 'forbidden', not {scheme_info.model_name!r}")
    JUDGE_REGISTRY[scheme.lower()] = scheme_info


def judge_usage() -> str:
    """``"none, openai:MODEL, local[:MODEL], embedding"``: the accepted judge specs."""
    return ", ".join(info.usage for info in JUDGE_REGISTRY.values())


def parse_backend(spec: str) -> tuple[str, str | None]:
    """``"openai:gpt-4.1-mini"`` -> ``("openai", "gpt-4.1-mini")``; ``"embedding"`` -> ``("embedding", None)``;
    ``"local"`` -> ``("local", "default")``."""
    if not isinstance(spec, str) or not spec.strip():
        raise JudgeError(f"empty judge spec; expected one of {judge_usage()}")
    scheme, _, name = spec.strip().partition(":")
    scheme = scheme.lower()
    info = JUDGE_REGISTRY.get(scheme)
    if info is None:
        raise JudgeError(f"unknown judge {spec!r}; expected one of {judge_usage()}")
    if info.model_name == "required" and not name:
        raise JudgeError(f"judge {spec!r} needs a model name: {info.usage}")
    if info.model_name == "forbidden" and name:
        raise JudgeError(f"judge {spec!r}: the {scheme} judge takes no model name ({info.usage})")
    return scheme, (name or info.default_model)


def make_judge(spec: str, **options: Any) -> Any:
    """A judge from a spec (see :func:`judge_usage`); None for ``"none"``.

    ``options`` go to the scheme's factory: ``base_url=``, ``api_key_env=``, ``cache_dir=``,
    ``max_concurrency=`` for openai; ``model=`` (an already loaded model), ``device=`` for local.
    """
    scheme, name = parse_backend(spec)
    return JUDGE_REGISTRY[scheme].factory(name, **options)


def make_generator(spec: str, **options: Any) -> TextGenerator:
    """A text generator (``.complete``) from a judge spec that can write text (openai:MODEL, local:MODEL)."""
    judge = make_judge(spec, **options)
    if not isinstance(judge, TextGenerator):
        raise JudgeError(f"generator {spec!r} cannot write text; expected openai:MODEL or local:MODEL")
    return judge


def _no_judge(name: str | None, **options: Any) -> None:
    return None


def _embedding_judge(name: str | None, **options: Any) -> EmbeddingJudge:
    return EmbeddingJudge(**options)


def _lexicon_judge(name: str | None, **options: Any) -> LexiconJudge:
    return LexiconJudge.load(name or "")


register_judge("none", JudgeScheme(_no_judge, "none"))
register_judge("openai", JudgeScheme(OpenAIJudge, "openai:MODEL", model_name="required"))
register_judge("local", JudgeScheme(LocalJudge.from_name, "local:MODEL", model_name="optional",
                                    default_model="default"))
register_judge("embedding", JudgeScheme(_embedding_judge, "embedding"))
register_judge("lexicon", JudgeScheme(_lexicon_judge, "lexicon:NAME|FILE.json", model_name="required"))
register_judge("calibrated", JudgeScheme(CalibratedJudge.load, "calibrated:PATH", model_name="required"))
