"""A deterministic lexicon judge: weighted marker words and regexes -> a 0-100 trait score.

**A lexical proxy, not the paper's judge.** It needs no model, no API and no fitting, and the
same text always gets the same score, which makes it useful offline (the monitoring experiment
on the embedded model) and in tests; it only sees surface markers of a trait.

A lexicon file (JSON) holds::

    {"trait": "humorous",                  # required: the persona it scores
     "description": "...",                 # optional
     "words": {"haha": 3, "pun": 2},       # word or phrase -> weight (> 0 adds, < 0 subtracts)
     "patterns": {"!{2,}": 1},             # Python regex -> weight
     "negative": {"seriously": 1},         # optional markers whose weight is subtracted
     "scale": 5,                           # K > 0, the marker rate that reaches 63 / 100
     "map": "exp"}                         # optional: "exp" (default) or "tanh" (signed)

Matching is case-insensitive; a word or phrase matches only as a whole word (not inside a
longer word; the spaces of a phrase match any whitespace); each non-overlapping match of a
pattern counts once. With ``words`` = the number of word tokens (``\\w+`` with inner
apostrophes) of the answer::

    rate  = 100 * (sum of weights of positive matches - sum of weights of negative matches) / words
    score = 100 * (1 - exp(-max(rate, 0) / K))            # "map": "exp", in [0, 100)
    score = 50 * (1 + tanh(rate / K))                     # "map": "tanh", in (0, 100)

so ``rate`` is the weighted marker count per 100 words. With ``exp`` a text with no markers
scores 0 and each further marker adds less (one weight-1 marker per 100 words with K = 5 gives
18.1; K per 100 words give 63.2); a net negative rate floors at 0. With ``tanh`` (for traits
whose opposite has markers too, e.g. politeness against rudeness) a text with no markers
scores 50, net trait markers push the score towards 100 and net opposite markers towards 0
(rate = K gives 88.1, rate = -K 11.9). An answer with no word at all gets no score (None).

Specs: ``lexicon:NAME`` (a built-in lexicon, ``persona_lens/personas/lexicons/NAME.json``) or
``lexicon:PATH.json``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..errors import LexiconFileError
from .base import QA
from .prompts import SpecOrPrompt

LEXICON_DIR = Path(__file__).resolve().parent.parent / "personas" / "lexicons"
KEYS = {"trait", "description", "words", "patterns", "negative", "scale", "map"}
MAPS = ("exp", "tanh")
DEFAULT_SCALE = 5.0
_WORD = re.compile(r"\w+(?:['’]\w+)*")


def builtin_lexicons() -> list[str]:
    """Names of the lexicons shipped with persona_lens."""
    return sorted(p.stem for p in LEXICON_DIR.glob("*.json"))


def lexicon_path(name_or_path: str) -> Path:
    """The file of ``lexicon:NAME`` (built-in) or ``lexicon:PATH``; raises :class:`LexiconFileError`."""
    text = (name_or_path or "").strip()
    if not text:
        raise LexiconFileError(f"lexicon judge: name a built-in lexicon ({', '.join(builtin_lexicons())}) or a file")
    looks_like_path = text.endswith(".json") or "/" in text or "\\" in text
    path = Path(text).expanduser() if looks_like_path else LEXICON_DIR / f"{text}.json"
    if not path.is_file():
        if looks_like_path:
            raise LexiconFileError(f"lexicon file {text!r} does not exist")
        raise LexiconFileError(f"no built-in lexicon {text!r}; built-in: {', '.join(builtin_lexicons())} "
                               "(or give a path to a .json lexicon file)")
    return path


def _weights(data: Mapping[str, Any], key: str, source: str) -> dict[str, float]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise LexiconFileError(f"{source}: {key!r} must be an object of marker -> weight, not {type(value).__name__}")
    out = {}
    for marker, weight in value.items():
        if not isinstance(marker, str) or not marker.strip():
            raise LexiconFileError(f"{source}: {key!r} holds an empty marker")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise LexiconFileError(f"{source}: weight of {key}[{marker!r}] must be a finite number, not {weight!r}")
        out[marker] = float(weight)
    return out


def _word_regex(word: str) -> str:
    return r"(?<!\w)" + r"\s+".join(re.escape(part) for part in word.split()) + r"(?!\w)"


class LexiconJudge:
    """Scores trait expression by weighted marker rate (see the module docstring); a
    :class:`persona_lens.judges.TraitScorer`, neither fittable nor a coherence scorer."""

    def __init__(self, data: Mapping[str, Any], *, source: str = "lexicon") -> None:
        if not isinstance(data, Mapping):
            raise LexiconFileError(f"{source}: a lexicon is a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - KEYS)
        if unknown:
            raise LexiconFileError(f"{source}: unknown key(s) {unknown}; known: {sorted(KEYS)}")
        trait = data.get("trait")
        if not isinstance(trait, str) or not trait.strip():
            raise LexiconFileError(f"{source}: 'trait' (the persona name it scores) is required")
        scale = data.get("scale", DEFAULT_SCALE)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise LexiconFileError(f"{source}: 'scale' must be a number > 0, not {scale!r}")
        self.trait, self.scale, self.source = trait.strip(), float(scale), source
        self.map = data.get("map", "exp")
        if self.map not in MAPS:
            raise LexiconFileError(f"{source}: 'map' must be one of {list(MAPS)}, not {self.map!r}")
        self.description = str(data.get("description", ""))
        words, patterns, negative = (_weights(data, k, source) for k in ("words", "patterns", "negative"))
        if not (words or patterns):
            raise LexiconFileError(f"{source}: no markers ('words' and 'patterns' are both empty)")
        self._markers: list[tuple[str, re.Pattern, float]] = []
        for word, weight in words.items():
            self._markers.append((word, re.compile(_word_regex(word), re.IGNORECASE), weight))
        for word, weight in negative.items():
            self._markers.append((word, re.compile(_word_regex(word), re.IGNORECASE), -weight))
        for pattern, weight in patterns.items():
            try:
                compiled = re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise LexiconFileError(f"{source}: bad regex {pattern!r} in 'patterns': {exc}") from None
            if compiled.search(""):
                raise LexiconFileError(f"{source}: regex {pattern!r} matches the empty string")
            self._markers.append((pattern, compiled, weight))
        self.name = f"lexicon:{self.trait}"

    @classmethod
    def load(cls, name_or_path: str) -> LexiconJudge:
        """A lexicon judge from a built-in name or a JSON file (raises :class:`LexiconFileError`)."""
        path = lexicon_path(name_or_path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LexiconFileError(f"lexicon file {path}: not readable JSON ({exc})") from None
        return cls(data, source=str(path))

    def matches(self, text: str) -> dict[str, int]:
        """How often each marker (word, negative word or pattern) occurs in ``text``."""
        counts = {}
        for marker, regex, _ in self._markers:
            n = sum(1 for _ in regex.finditer(text))
            if n:
                counts[marker] = n
        return counts

    def rate(self, text: str) -> float | None:
        """Net weighted markers per 100 words; None for a text without words."""
        n_words = len(_WORD.findall(text or ""))
        if n_words == 0:
            return None
        total = sum(weight * sum(1 for _ in regex.finditer(text)) for _, regex, weight in self._markers)
        return 100.0 * total / n_words

    def score_text(self, text: str) -> float | None:
        """``100 * (1 - exp(-max(rate, 0) / scale))`` (``tanh`` map: ``50 * (1 + tanh(rate / scale))``);
        None for a text without words."""
        rate = self.rate(text)
        if rate is None:
            return None
        if self.map == "tanh":
            return float(50.0 * (1.0 + math.tanh(rate / self.scale)))
        return float(min(100.0, max(0.0, 100.0 * (1.0 - math.exp(-max(rate, 0.0) / self.scale)))))

    def _check_spec(self, spec: SpecOrPrompt) -> None:
        persona = getattr(spec, "name", None)
        if persona is not None and persona != self.trait:
            raise LexiconFileError(f"{self.source} scores {self.trait!r}, not the persona {persona!r}")

    def score_trait(self, spec: SpecOrPrompt, question: str, answer: str) -> float | None:
        """The answer's score (the question is not read); the spec, when a persona spec, must be
        the lexicon's trait."""
        self._check_spec(spec)
        return self.score_text(answer)

    def score_trait_many(self, spec: SpecOrPrompt, qa: QA, *, progress: bool = False) -> list[float | None]:
        self._check_spec(spec)
        return [self.score_text(a) for _, a in tqdm(list(qa), desc=self.name, leave=False, disable=not progress)]

    def __repr__(self) -> str:
        return f"LexiconJudge({self.source!r})"
