"""The 26 reference spec files (Persona Vectors + BILLY) load, round-trip, and bad specs fail by name."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from persona_lens.errors import PersonaSpecError
from persona_lens.personas.spec import EvalPromptPlaceholderWarning, PersonaSpec

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
PV_EXTRACT = REFERENCE / "persona_vectors" / "trait_data_extract"
PV_EVAL = REFERENCE / "persona_vectors" / "trait_data_eval"
BILLY = REFERENCE / "billy" / "trait_data_extract"


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


PV_FILES = _files(PV_EXTRACT) + _files(PV_EVAL)
BILLY_FILES = _files(BILLY)
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference data not found at {REFERENCE}")


@needs_reference
def test_all_26_reference_files_present():
    assert len(_files(PV_EXTRACT)) == 7
    assert len(_files(PV_EVAL)) == 7
    assert len(BILLY_FILES) == 12


@needs_reference
@pytest.mark.parametrize("path", PV_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_persona_vectors_file_loads_and_round_trips(path: Path):
    original = json.loads(path.read_text(encoding="utf-8"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvalPromptPlaceholderWarning)  # these have both placeholders
        spec = PersonaSpec.load(path)
    assert spec.name == path.stem
    assert spec.eval_prompt_has_placeholders
    assert len(spec.instruction) == 5 and len(spec.questions) == 20
    assert spec.to_dict(persona_vectors_format=True) == original
    prompt = spec.format_eval_prompt("Q-TEXT", "A-TEXT")
    assert "Q-TEXT" in prompt and "A-TEXT" in prompt and "{question}" not in prompt


@needs_reference
@pytest.mark.parametrize("path", BILLY_FILES, ids=lambda p: p.stem)
def test_billy_file_loads_with_placeholder_warning(path: Path):
    original = json.loads(path.read_text(encoding="utf-8"))
    with pytest.warns(EvalPromptPlaceholderWarning):
        spec = PersonaSpec.load(path)
    assert not spec.eval_prompt_has_placeholders
    assert len(spec.questions) == 5
    assert spec.to_dict(persona_vectors_format=True) == original
    prompt = spec.format_eval_prompt("Q-TEXT", "A-TEXT")
    assert prompt.startswith(spec.eval_prompt) and prompt.endswith("A-TEXT") and "Q-TEXT" in prompt


GOOD = {
    "instruction": [{"pos": "Be funny.", "neg": "Be serious."}],
    "questions": ["What is rain?"],
    "eval_prompt": "Score {question} {answer}",
}


def _write(tmp_path: Path, data, name="spec.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_good_spec_loads(tmp_path):
    spec = PersonaSpec.load(_write(tmp_path, GOOD))
    assert spec.to_dict(persona_vectors_format=True) == GOOD


@pytest.mark.parametrize("key", ["instruction", "questions", "eval_prompt"])
def test_missing_key_is_named(tmp_path, key):
    bad = {k: v for k, v in GOOD.items() if k != key}
    with pytest.raises(PersonaSpecError, match=f"missing required key.*{key}"):
        PersonaSpec.load(_write(tmp_path, bad))


def test_empty_instruction(tmp_path):
    with pytest.raises(PersonaSpecError, match="'instruction' is an empty list"):
        PersonaSpec.load(_write(tmp_path, {**GOOD, "instruction": []}))


def test_empty_questions(tmp_path):
    with pytest.raises(PersonaSpecError, match="'questions' is an empty list"):
        PersonaSpec.load(_write(tmp_path, {**GOOD, "questions": []}))


def test_pos_equal_neg(tmp_path):
    bad = {**GOOD, "instruction": [{"pos": "Be funny.", "neg": " Be funny. "}]}
    with pytest.raises(PersonaSpecError, match="pos equal to its neg"):
        PersonaSpec.load(_write(tmp_path, bad))


def test_not_json(tmp_path):
    with pytest.raises(PersonaSpecError, match="not valid JSON"):
        PersonaSpec.load(_write(tmp_path, "{'instruction': oops", name="broken.json"))


def test_not_an_object(tmp_path):
    with pytest.raises(PersonaSpecError, match="must be a JSON object"):
        PersonaSpec.load(_write(tmp_path, [1, 2]))
