"""Generation (persona_lens.generation): greedy/sampled, batching, contrastive rows and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from persona_lens.chat import as_messages, prompt_ids
from persona_lens.generation import (
    contrastive_items,
    eos_ids,
    generate,
    generate_contrastive,
    generate_ids,
    row_key,
)
from persona_lens.personas import PersonaSpec, load_persona

pytestmark = pytest.mark.slow

PROMPTS = ["Name three colours.", "What is 2 + 2? Answer briefly.", "Describe the sea in one sentence, please."]


def small_spec(n_pairs: int = 2, n_questions: int = 2) -> PersonaSpec:
    spec = load_persona("humorous")
    return PersonaSpec(name="humorous", instruction=spec.instruction[:n_pairs], questions=spec.questions[:n_questions],
                       eval_prompt=spec.eval_prompt, negative_style=spec.negative_style)


# --------------------------------------------------------------------------- plain generation


def test_greedy_batched_equals_one_by_one(default_model):
    batched = generate_ids(default_model, PROMPTS, max_new_tokens=12, batch_size=8, progress=False)
    single = [generate_ids(default_model, [p], max_new_tokens=12, progress=False)[0] for p in PROMPTS]
    assert [g.response_ids for g in batched] == [g.response_ids for g in single]
    assert [g.text for g in batched] == [g.text for g in single]
    # generate() returns the same texts; batch_size smaller than the number of prompts too
    assert generate(default_model, PROMPTS, max_new_tokens=12, batch_size=2, progress=False) == [g.text for g in single]


def test_generation_fields(default_model):
    tok = default_model.tokenizer
    stops = eos_ids(default_model)
    assert tok.eos_token_id in stops
    gens = generate_ids(default_model, PROMPTS + [[{"role": "system", "content": "Be terse."},
                                                    {"role": "user", "content": "Hi"}]],
                        max_new_tokens=10, progress=False)
    for p, g in zip(PROMPTS + [None], gens):
        if p is not None:
            assert g.prompt_ids == prompt_ids(tok, as_messages(p))
        assert 0 < len(g.response_ids) <= 10
        assert not stops & set(g.response_ids)  # cut at the first stop token
        assert g.text == tok.decode(g.response_ids, skip_special_tokens=True).strip()


def test_sampling_is_seeded(default_model):
    kw = dict(max_new_tokens=12, temperature=1.0, progress=False)
    a = generate(default_model, PROMPTS, seed=123, **kw)
    b = generate(default_model, PROMPTS, seed=123, **kw)
    c = generate(default_model, PROMPTS, seed=124, **kw)
    assert a == b
    assert a != c


def test_gemma_generates_without_chat_template(gemma_model):
    gens = generate_ids(gemma_model, ["What is the capital of France?"], max_new_tokens=6, progress=False)
    assert gens[0].prompt_ids[0] == gemma_model.tokenizer.bos_token_id
    assert gens[0].prompt_ids[1] != gemma_model.tokenizer.bos_token_id
    assert 0 < len(gens[0].response_ids) <= 6


# --------------------------------------------------------------------------- contrastive generation


def test_contrastive_items_order():
    spec = small_spec()
    items = contrastive_items(spec, n_per_question=2)
    assert len(items) == 2 * 2 * 2 * 2
    assert [row_key(i) for i in items[:4]] == [(0, 0, 0, "pos"), (0, 0, 0, "neg"), (0, 0, 1, "pos"), (0, 0, 1, "neg")]
    assert items[0]["system"] == spec.instruction[0].pos and items[1]["system"] == spec.instruction[0].neg
    assert items[-1]["question"] == spec.questions[1]
    assert len({row_key(i) for i in items}) == len(items)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


@pytest.fixture(scope="module")
def full_runs(default_model, tmp_path_factory):
    """Uninterrupted contrastive runs: greedy and sampled (8 rows, batches of 3)."""
    out = {}
    for name, temperature in (("greedy", 0.0), ("sampled", 1.0)):
        path = tmp_path_factory.mktemp(name) / "responses.jsonl"
        rows = generate_contrastive(default_model, small_spec(), path, max_new_tokens=8, temperature=temperature,
                                    seed=7, batch_size=3, progress=False)
        out[name] = (path, rows)
    return out


def test_contrastive_rows(full_runs):
    path, rows = full_runs["greedy"]
    spec = small_spec()
    assert len(rows) == 8
    assert [row_key(r) for r in rows] == [row_key(i) for i in contrastive_items(spec)]
    for r in rows:
        assert set(r) == {"persona", "pair_index", "question_index", "sample", "polarity", "system", "question",
                          "response", "fingerprint"}
        assert r["persona"] == "humorous" and isinstance(r["response"], str)
    on_disk = [json.loads(line) for line in _lines(path)]
    assert sorted(map(row_key, on_disk)) == sorted(map(row_key, rows))
    assert full_runs["sampled"][1] != rows  # sampling changed something


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
@pytest.mark.parametrize("cut", ["mid_line", "last_batch", "mid_batch"])
def test_resume_equals_uninterrupted(default_model, full_runs, tmp_path, mode, cut):
    full_path, full_rows = full_runs[mode]
    lines = _lines(full_path)
    if cut == "mid_line":  # killed while writing the last batch: its last line is half written
        text = "".join(lines[:7]) + lines[7][: len(lines[7]) // 2]
    elif cut == "last_batch":  # killed between batches: the last batch (rows 6-7) is missing
        text = "".join(lines[:6])
    else:  # killed in the middle of a batch: rows 3-4 of batch 3-5 present, row 5 half written
        text = "".join(lines[:5]) + lines[5][:10]
    path = tmp_path / "responses.jsonl"
    path.write_text(text, encoding="utf-8")
    rows = generate_contrastive(default_model, small_spec(), path, max_new_tokens=8,
                                temperature=1.0 if mode == "sampled" else 0.0, seed=7, batch_size=3, progress=False)
    assert rows == full_rows
    on_disk = [json.loads(line) for line in _lines(path)]  # every line parses: the torn line was dropped
    assert len(on_disk) == 8
    assert {row_key(r): r for r in on_disk} == {row_key(r): r for r in full_rows}


def test_resume_of_a_complete_file_generates_nothing(default_model, full_runs, tmp_path, monkeypatch):
    import importlib

    gen_module = importlib.import_module("persona_lens.generation")  # the package re-exports a function of that name

    full_path, full_rows = full_runs["greedy"]
    path = tmp_path / "responses.jsonl"
    path.write_bytes(full_path.read_bytes())

    def fail(*a, **k):
        raise AssertionError("nothing should be generated")

    monkeypatch.setattr(gen_module, "generate", fail)
    assert generate_contrastive(default_model, small_spec(), path, max_new_tokens=8, seed=7, batch_size=3,
                                progress=False) == full_rows
    assert path.read_bytes() == full_path.read_bytes()


def test_gemma_response_text_round_trips_to_generated_ids(gemma_model):
    """Plain-text format: the generated first token carries the space after 'Assistant:'; the
    stripped text must tokenize back to exactly the generated ids (what capture will see)."""
    from persona_lens.chat import response_ids

    tok = gemma_model.tokenizer
    gens = generate_ids(gemma_model, ["What is the capital of France?", "Name a colour."],
                        max_new_tokens=8, progress=False)
    for g in gens:
        assert g.text and not g.text[0].isspace()
        assert tok.decode(g.response_ids[:1]).startswith(" ")  # the space belongs to the response
        expected = list(g.response_ids)
        while expected and not tok.decode(expected[-1:]).strip():  # text is stripped at the end too
            expected.pop()
        assert response_ids(tok, g.text) == expected
