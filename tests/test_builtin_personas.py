"""The built-in persona library: every file loads cleanly, has the expected shape, and is
written for persona_lens (not copied from the third-party reference data)."""

from __future__ import annotations

import difflib
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from persona_lens.personas import PersonaSpec, builtin_names

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "persona_lens" / "personas" / "builtin"
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"

BILLY_PERSONAS = (
    "creative_professional",
    "environmentalist",
    "futurist",
    "analytical_thinker",
    "empathetic_counselor",
    "startup_founder",
    "academic_researcher",
)
PV_TRAITS = ("evil", "sycophantic", "hallucinating", "humorous", "optimistic", "impolite", "apathetic")
EXPECTED_STYLE = {**{n: "neutral_assistant" for n in BILLY_PERSONAS}, **{n: "opposite" for n in PV_TRAITS}}

SIMILARITY_LIMIT = 0.8
MIN_FUZZY_LEN = 30


def _builtin_files() -> list[Path]:
    return sorted(BUILTIN_DIR.glob("*.json"))


def _load_strict(path: Path) -> PersonaSpec:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return PersonaSpec.load(path)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _spec_strings(spec: PersonaSpec) -> list[str]:
    out: list[str] = []
    for pair in spec.instruction:
        out += [pair.pos, pair.neg]
    out += spec.questions + spec.eval_questions + [spec.eval_prompt]
    return out


def _all_strings(obj) -> list[str]:
    """Every string value (not keys) anywhere in a JSON document."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _all_strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _all_strings(v)]
    return []


def _reference_documents() -> Iterator:
    """Each JSON document of the reference data, parsed (unparseable files are passed over);
    skips the test when the reference data is absent."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE_DIR}")
    for path in sorted(REFERENCE_DIR.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        yield data


@pytest.fixture(scope="module")
def reference_strings() -> list[str]:
    strings: set[str] = set()
    for data in _reference_documents():
        strings.update(_norm(s) for s in _all_strings(data) if s.strip())
    if not strings:
        pytest.skip(f"no reference JSON strings under {REFERENCE_DIR}")
    return sorted(strings)


@pytest.fixture(scope="module")
def reference_negatives() -> set[str]:
    negs: set[str] = set()
    for data in _reference_documents():
        if isinstance(data, dict) and isinstance(data.get("instruction"), list):
            negs.update(_norm(p["neg"]) for p in data["instruction"] if isinstance(p, dict) and "neg" in p)
    return negs


def test_builtin_names_cover_the_library():
    names = set(builtin_names())
    missing = set(EXPECTED_STYLE) - names
    assert not missing, f"built-in personas missing: {sorted(missing)}"
    assert {p.stem for p in _builtin_files()} == names


@pytest.mark.parametrize("name", sorted(EXPECTED_STYLE))
def test_builtin_file_shape(name):
    path = BUILTIN_DIR / f"{name}.json"
    assert path.exists(), path
    spec = _load_strict(path)
    assert spec.name == name
    assert spec.description.strip()
    assert spec.negative_style == EXPECTED_STYLE[name]
    assert len(spec.instruction) == 5
    assert len(spec.questions) >= 20
    if spec.negative_style == "opposite":
        assert len(spec.questions) == 20
    assert len(spec.eval_questions) == 20
    assert len(set(spec.questions)) == len(spec.questions), "duplicate extraction questions"
    assert len(set(spec.eval_questions)) == len(spec.eval_questions), "duplicate eval questions"
    overlap = {_norm(q) for q in spec.questions} & {_norm(q) for q in spec.eval_questions}
    assert not overlap, f"eval questions repeat extraction questions: {overlap}"
    assert spec.eval_prompt_has_placeholders
    assert "0" in spec.eval_prompt and "100" in spec.eval_prompt
    if spec.negative_style == "opposite":
        assert "REFUSAL" in spec.eval_prompt
    else:
        assert "neutral assistant" in spec.description.lower()
        assert "billy" in spec.description.lower()
    for pair in spec.instruction:
        assert pair.pos.strip() != pair.neg.strip()
    # the formatted judge prompt carries the question and the answer
    judged = spec.format_eval_prompt("QQQ-question", "AAA-answer")
    assert "QQQ-question" in judged and "AAA-answer" in judged


@pytest.mark.parametrize("name", BILLY_PERSONAS)
def test_billy_negatives_are_varied_neutral_assistants(name):
    spec = _load_strict(BUILTIN_DIR / f"{name}.json")
    negs = [p.neg for p in spec.instruction]
    assert len(set(negs)) == 5, "the 5 neutral negatives should differ from each other"
    for neg in negs:
        assert "assistant" in neg.lower()
        assert name.split("_")[0] not in neg.lower()


def test_neutral_negatives_are_not_the_reference_ones(reference_negatives):
    for name in BILLY_PERSONAS:
        spec = _load_strict(BUILTIN_DIR / f"{name}.json")
        for pair in spec.instruction:
            assert _norm(pair.neg) not in reference_negatives, f"{name}: negative copied from reference: {pair.neg!r}"


def test_builtin_text_is_not_copied_from_reference(reference_strings):
    ref_by_norm = set(reference_strings)
    ref_long = [r for r in reference_strings if len(r) > MIN_FUZZY_LEN]
    problems: list[str] = []
    for path in _builtin_files():
        spec = _load_strict(path)
        for text in _spec_strings(spec):
            mine = _norm(text)
            if mine in ref_by_norm:
                problems.append(f"{path.name}: exact copy of a reference string: {text!r}")
                continue
            if len(mine) <= MIN_FUZZY_LEN:
                continue
            matcher = difflib.SequenceMatcher(None, autojunk=False)
            matcher.set_seq2(mine)
            for ref in ref_long:
                # ratio <= 2*min(len)/(sum len): skip pairs whose lengths alone rule out a match
                if 2 * min(len(ref), len(mine)) / (len(ref) + len(mine)) < SIMILARITY_LIMIT:
                    continue
                matcher.set_seq1(ref)
                if matcher.real_quick_ratio() < SIMILARITY_LIMIT or matcher.quick_ratio() < SIMILARITY_LIMIT:
                    continue
                ratio = matcher.ratio()
                if ratio >= SIMILARITY_LIMIT:
                    problems.append(f"{path.name}: {text!r} is {ratio:.2f} similar to reference {ref!r}")
    assert not problems, "\n".join(problems)
