"""`persona-lens persona ...`: new (against a local OpenAI-compatible test server), list, show, validate;
and generate_spec's JSON extraction and retry-with-feedback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_lens.cli import main
from persona_lens.errors import PersonaSpecError
from persona_lens.personas.generate_spec import extract_json, generate_spec
from persona_lens.personas.spec import PersonaSpec

try:
    from openai_server import completion, openai_server  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover
    from tests.openai_server import completion, openai_server  # noqa: F401

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"

VALID = {
    "instruction": [
        {"pos": "You are witty: answer with clever wordplay and light jokes.", "neg": "You are dry: answer plainly, never joking."},
        {"pos": "Make every answer playful and funny.", "neg": "Make every answer sober and matter-of-fact."},
    ],
    "questions": ["How do I boil an egg?", "What should I name my dog?", "Why is the sky blue?"],
    "eval_questions": ["How do I tie a tie?", "What is a good first car?"],
    "eval_prompt": "Does the answer show wit?\nQuestion: {question}\nAnswer: {answer}\n"
                   "Reply REFUSAL if the model refused, otherwise a number from 0 to 100 and nothing else.",
}
SIZES = ["--n-pairs", "2", "--n-questions", "3", "--n-eval-questions", "2"]


def _new(server, out, *extra):
    return main(["persona", "new", "witty", "Makes clever, playful jokes.", "--generator", "openai:test-gen",
                 "--base-url", server.base_url, "--out", str(out), *SIZES, *extra])


def test_persona_new_valid_json(openai_server, tmp_path, capsys):
    openai_server.push(completion(json.dumps(VALID)))
    out = tmp_path / "witty.json"
    assert _new(openai_server, out) == 0
    assert openai_server.request_count == 1
    request = openai_server.requests[0].json
    assert request["model"] == "test-gen"
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    asked = request["messages"][1]["content"]
    assert "witty" in asked and "Makes clever, playful jokes." in asked and "{question}" in asked
    assert "list of 2 objects" in asked and "list of 3 distinct" in asked
    spec = PersonaSpec.load(out)
    assert spec.name == "witty" and spec.description == "Makes clever, playful jokes."
    assert spec.negative_style == "opposite"
    assert spec.questions == VALID["questions"] and spec.eval_questions == VALID["eval_questions"]
    assert spec.to_dict(persona_vectors_format=True) == {k: VALID[k] for k in ("instruction", "questions", "eval_prompt")}
    capsys.readouterr()
    assert main(["persona", "validate", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    # --out exists: refused without --force
    assert _new(openai_server, out) == 1
    assert "exists" in capsys.readouterr().err
    openai_server.push(completion(json.dumps(VALID)))
    assert _new(openai_server, out, "--force") == 0


def test_persona_new_malformed_then_valid(openai_server, tmp_path):
    openai_server.push(
        completion("Sure! Here is the spec: {\"instruction\": [oops"),
        completion("Here you go:\n```json\n" + json.dumps(VALID, indent=1) + "\n```\nHope this helps!"),
    )
    out = tmp_path / "witty.json"
    assert _new(openai_server, out) == 0
    assert openai_server.request_count == 2
    second = openai_server.requests[1].json["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"].startswith("Sure! Here is the spec")
    assert "could not be used" in second[3]["content"] and "no valid JSON object" in second[3]["content"]
    assert main(["persona", "validate", str(out)]) == 0


def test_persona_new_feedback_names_the_problem(openai_server, tmp_path):
    no_answer = {**VALID, "eval_prompt": "Score {question} from 0 to 100."}
    too_few = {**VALID, "questions": VALID["questions"][:1]}
    overlap = {**VALID, "eval_questions": [VALID["questions"][0], "Another?"]}
    openai_server.push(completion(json.dumps(no_answer)), completion(json.dumps(too_few)),
                       completion(json.dumps(overlap)), completion(json.dumps(VALID)))
    out = tmp_path / "witty.json"
    assert _new(openai_server, out, "--max-attempts", "4") == 0
    feedback = [r.json["messages"][-1]["content"] for r in openai_server.requests[1:]]
    assert "lacks the placeholder {answer}" in feedback[0]
    assert '"questions" has 1 items; 3 are needed' in feedback[1]
    assert 'appear in both "questions" and "eval_questions"' in feedback[2]


def test_persona_new_gives_up(openai_server, tmp_path, capsys):
    openai_server.responder = lambda req: completion("I cannot do that.")
    out = tmp_path / "witty.json"
    assert _new(openai_server, out, "--max-attempts", "2") == 1
    assert openai_server.request_count == 2
    err = capsys.readouterr().err
    assert "PersonaSpecError" in err and "2 attempt" in err
    assert not out.exists()


class ScriptedGenerator:
    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def complete(self, messages, temperature=0.0, max_tokens=512):
        self.calls.append((list(messages), temperature, max_tokens))
        return self.replies.pop(0)


def test_generate_spec_with_any_generator():
    gen = ScriptedGenerator(["{}", json.dumps({**VALID, "instruction": VALID["instruction"] * 2})])
    spec = generate_spec("witty", "jokes", gen, n_pairs=3, n_questions=3, n_eval_questions=2)
    assert len(spec.instruction) == 3 and len(gen.calls) == 2  # extra items are cut to the asked count
    assert '"instruction" must be a list' in gen.calls[1][0][-1]["content"]
    with pytest.raises(PersonaSpecError, match="1 attempt"):
        generate_spec("witty", "jokes", ScriptedGenerator(["nope"]), max_attempts=1)


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1}',
        'Here is it: {"a": 1} -- enjoy',
        '```json\n{"a": 1}\n```',
        '```\n{"a": 1}\n```',
        'Prose with {braces} first, then {"a": 1}',
    ],
)
def test_extract_json(text):
    assert extract_json(text) == {"a": 1}


@pytest.mark.parametrize("text", ["", "no json at all", "[1, 2]", '{"a": '])
def test_extract_json_failures(text):
    with pytest.raises(ValueError):
        extract_json(text)


# ------------------------------------------------------------------------ list / show / validate


def test_persona_list(capsys):
    from persona_lens.personas import builtin_names

    assert main(["persona", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == builtin_names()
    for r in rows:
        assert set(r) >= {"name", "negative_style", "n_pairs", "n_questions", "description"}
    assert main(["persona", "list"]) == 0
    table = capsys.readouterr().out
    for name in builtin_names():
        assert name in table


def test_persona_show_and_validate(tmp_path, capsys):
    spec_file = tmp_path / "witty.json"
    spec_file.write_text(json.dumps({**VALID, "name": "witty"}), encoding="utf-8")
    assert main(["persona", "show", str(spec_file)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "witty" and shown["questions"] == VALID["questions"]
    assert main(["persona", "show", str(spec_file), "--persona-vectors-format"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"instruction", "questions", "eval_prompt"}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**VALID, "questions": []}), encoding="utf-8")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    assert main(["persona", "validate", str(spec_file), str(bad), str(broken)]) == 1
    out = capsys.readouterr().out
    assert f"OK   {spec_file}" in out
    assert f"FAIL {bad}" in out and "'questions' is an empty list" in out
    assert f"FAIL {broken}" in out and "not valid JSON" in out
    assert main(["persona", "show", "no-such-persona"]) == 1


@pytest.mark.skipif(not (REFERENCE / "billy").is_dir(), reason="reference data absent")
def test_validate_reports_placeholder_warning(capsys):
    path = REFERENCE / "billy" / "trait_data_extract" / "futurist.json"
    assert main(["persona", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "warning:" in out and "placeholders" in out
