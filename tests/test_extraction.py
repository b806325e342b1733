"""Extraction (persona_lens.extraction): directions, the whole pipeline, resume, persona spec errors."""

from __future__ import annotations

import json

import pytest
import torch

from persona_lens.errors import PersonaSpecError
from persona_lens.extraction import direction_from_activations, extract, extract_from_rows, rows_to_prompts
from persona_lens.personas import PersonaSpec, load_persona
from persona_lens.vectors import PersonaVector

# --------------------------------------------------------------------------- directions (no model)


def _synthetic(n=24, layers=3, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(layers, d, generator=g)
    neg = torch.randn(n, layers, d, generator=g)
    pos = neg + true + 0.1 * torch.randn(n, layers, d, generator=g)  # paired
    return pos, neg, true


def test_mean_diff_is_difference_of_means():
    pos, neg, _ = _synthetic()
    got = direction_from_activations(pos, neg, "mean_diff")
    assert torch.equal(got, pos.mean(0) - neg.mean(0))
    # unpaired, different counts are fine for mean_diff
    got = direction_from_activations(pos[:5], neg, "mean_diff")
    assert torch.allclose(got, pos[:5].mean(0) - neg.mean(0))


def test_pca_and_probe_point_the_same_way():
    pos, neg, true = _synthetic()
    diff = pos.mean(0) - neg.mean(0)
    for method in ("pca", "probe"):
        got = direction_from_activations(pos, neg, method)
        assert got.shape == diff.shape
        cos = torch.nn.functional.cosine_similarity(got, diff, dim=-1)
        assert bool((cos > 0).all()), f"{method} sign"
        assert torch.allclose(got.norm(dim=-1), diff.norm(dim=-1), rtol=1e-4)  # scaled to mean_diff's norm
    pca = direction_from_activations(pos, neg, "pca")
    assert bool((torch.nn.functional.cosine_similarity(pca, true, dim=-1) > 0.99).all())


def test_direction_errors():
    pos, neg, _ = _synthetic()
    with pytest.raises(ValueError, match="unknown method"):
        direction_from_activations(pos, neg, "svm")
    with pytest.raises(ValueError, match="need positive and negative"):
        direction_from_activations(pos[:0], neg, "mean_diff")
    with pytest.raises(ValueError, match="paired"):
        direction_from_activations(pos[:3], neg, "pca")


def test_rows_to_prompts():
    rows = [{"system": "S", "question": "Q"}, {"system": "", "question": "Q2"}, {"question": "Q3"}]
    assert rows_to_prompts(rows) == [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        [{"role": "user", "content": "Q2"}],
        [{"role": "user", "content": "Q3"}],
    ]


# --------------------------------------------------------------------------- persona spec errors


GOOD = {
    "instruction": [{"pos": "Be funny.", "neg": "Be serious."}],
    "questions": ["Why is the sky blue?"],
    "eval_prompt": "Rate {question} {answer}",
}


@pytest.mark.parametrize(
    "data, match",
    [
        ({k: v for k, v in GOOD.items() if k != "instruction"}, "missing required key"),
        ({k: v for k, v in GOOD.items() if k != "questions"}, "missing required key"),
        ({k: v for k, v in GOOD.items() if k != "eval_prompt"}, "missing required key"),
        ({**GOOD, "instruction": []}, "empty list"),
        ({**GOOD, "questions": []}, "empty list"),
        ({**GOOD, "instruction": [{"pos": "x"}]}, "'pos' and 'neg'"),
        ({**GOOD, "instruction": [{"pos": "same", "neg": "same"}]}, "pos equal to its neg"),
        ({**GOOD, "instruction": [{"pos": "", "neg": "b"}]}, "empty"),
        ({**GOOD, "questions": ["ok", "  "]}, r"questions\[1\]"),
        ({**GOOD, "questions": "not a list"}, "list"),
        ({**GOOD, "eval_prompt": ""}, "eval_prompt"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_malformed_persona_spec(tmp_path, data, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PersonaSpecError, match=match):
        load_persona(path)


def test_persona_spec_file_errors(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"instruction": [', encoding="utf-8")
    with pytest.raises(PersonaSpecError, match="not valid JSON"):
        load_persona(bad)
    with pytest.raises(PersonaSpecError, match="not found"):
        load_persona(tmp_path / "missing.json")
    with pytest.raises(PersonaSpecError, match="unknown persona"):
        load_persona("no_such_persona")
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(GOOD), encoding="utf-8")
    assert load_persona(good).name == "ok"


# --------------------------------------------------------------------------- the pipeline (model)


def small_spec() -> PersonaSpec:
    spec = load_persona("humorous")
    return PersonaSpec(name="humorous", instruction=spec.instruction[:2], questions=spec.questions[:2],
                       eval_prompt=spec.eval_prompt, negative_style=spec.negative_style)


KW = dict(n_per_question=1, max_new_tokens=8, batch_size=3, progress=False)


@pytest.fixture(scope="module")
def uninterrupted(default_model, tmp_path_factory):
    out = {}
    for name, temperature in (("greedy", 0.0), ("sampled", 0.9)):
        folder = tmp_path_factory.mktemp(name)
        vector, report = extract(default_model, small_spec(), folder / "humorous.safetensors",
                                 temperature=temperature, seed=3, **KW)
        out[name] = (folder, vector, report)
    return out


@pytest.mark.slow
def test_extract_writes_vector_responses_and_report(uninterrupted, default_model):
    folder, vector, report = uninterrupted["greedy"]
    assert sorted(p.name for p in folder.iterdir()) == [  # the .lock guards the resumable responses file
        ".humorous.responses.jsonl.lock", "humorous.report.json", "humorous.responses.jsonl", "humorous.safetensors"]
    loaded = PersonaVector.load(folder / "humorous.safetensors")
    assert torch.equal(loaded.vectors, vector.vectors)
    assert loaded.n_layers == 30 and loaded.d_model == 576
    md = loaded.metadata
    assert md["persona"] == "humorous" and md["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert md["method"] == "mean_diff" and md["positions"] == "response_mean"
    assert md["n_pos"] == report["n_pos"] and md["n_neg"] == report["n_neg"] and md["max_new_tokens"] == 8
    assert md["n_pos"] + md["n_neg"] + report.get("dropped_empty", 0) == 8
    on_disk = json.loads((folder / "humorous.report.json").read_text())
    assert on_disk["n_rows"] == 8 and on_disk["persona"] == "humorous"
    rows = [json.loads(line) for line in (folder / "humorous.responses.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    # the vector is extract_from_rows of the saved responses
    again = extract_from_rows(default_model, [r for r in rows if r["response"].strip()], progress=False)
    torch.testing.assert_close(again.vectors, vector.vectors, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
@pytest.mark.parametrize("cut", ["mid_line", "last_batch"])
def test_resumed_extract_equals_uninterrupted(default_model, uninterrupted, tmp_path, mode, cut):
    folder, vector, _ = uninterrupted[mode]
    lines = (folder / "humorous.responses.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # batches of 3 rows: [0 1 2] [3 4 5] [6 7]
    text = "".join(lines[:4]) + lines[4][:25] if cut == "mid_line" else "".join(lines[:6])
    responses = tmp_path / "humorous.responses.jsonl"
    responses.write_text(text, encoding="utf-8")
    resumed, report = extract(default_model, small_spec(), tmp_path / "humorous.safetensors",
                              temperature=0.9 if mode == "sampled" else 0.0, seed=3, **KW)
    assert torch.equal(resumed.vectors, vector.vectors)  # exactly
    full_rows = [json.loads(x) for x in lines]
    got_rows = [json.loads(x) for x in responses.read_text(encoding="utf-8").splitlines()]
    key = lambda r: (r["pair_index"], r["question_index"], r["sample"], r["polarity"])  # noqa: E731
    assert sorted(got_rows, key=key) == sorted(full_rows, key=key)
    assert torch.equal(PersonaVector.load(tmp_path / "humorous.safetensors").vectors, vector.vectors)


@pytest.mark.slow
def test_extract_methods_from_rows(default_model, uninterrupted):
    folder, vector, _ = uninterrupted["greedy"]
    rows = [json.loads(x) for x in (folder / "humorous.responses.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["response"].strip()]
    for method in ("pca", "probe"):
        v = extract_from_rows(default_model, rows, method=method, progress=False)
        assert v.metadata["method"] == method and v.n_layers == 30
        assert torch.allclose(v.norms(), vector.norms(), rtol=1e-3)
    lp = extract_from_rows(default_model, rows, position="last_prompt", progress=False)
    assert lp.metadata["positions"] == "last_prompt"
    with pytest.raises(ValueError, match="position"):
        extract_from_rows(default_model, rows, position="everything", progress=False)
    with pytest.raises(ValueError, match="pos and neg"):
        extract_from_rows(default_model, [r for r in rows if r["polarity"] == "pos"], progress=False)


@pytest.mark.slow
def test_failed_extract_writes_no_vector(default_model, uninterrupted, tmp_path, monkeypatch):
    """A failure after generation leaves the resumable responses, but no vector and no report."""
    import importlib

    extract_module = importlib.import_module("persona_lens.extraction")
    folder, vector, _ = uninterrupted["greedy"]
    (tmp_path / "humorous.responses.jsonl").write_bytes((folder / "humorous.responses.jsonl").read_bytes())

    def broken(*args, **kwargs):
        raise MemoryError("out of memory while capturing")

    monkeypatch.setattr(extract_module, "capture", broken)
    with pytest.raises(MemoryError):
        extract(default_model, small_spec(), tmp_path / "humorous.safetensors", seed=3, **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".humorous.responses.jsonl.lock", "humorous.responses.jsonl"]
    monkeypatch.undo()
    # and rerunning finishes from the saved responses
    again, _ = extract(default_model, small_spec(), tmp_path / "humorous.safetensors", seed=3, **KW)
    assert torch.equal(again.vectors, vector.vectors)


class _AlwaysNeutralJudge:
    """Scores every answer 10 (trait) and 90 (coherence): no positive answer passes pos >= 50."""

    name = "always-neutral"

    def score_trait(self, spec, question, answer):
        return 10.0

    def score_trait_many(self, spec, qa, *, progress=False):
        return [10.0 for _ in qa]

    def score_coherence(self, question, answer):
        return 90.0

    def score_coherence_many(self, qa, *, progress=False):
        return [90.0 for _ in qa]


def test_filter_leaving_nothing_is_a_named_error_with_counts(tiny_model, tmp_path):
    import dataclasses

    from persona_lens.errors import NoEffectivePairsError
    from persona_lens.extraction import extract
    from persona_lens.personas import load_persona

    spec = load_persona("humorous")
    spec = dataclasses.replace(spec, instruction=spec.instruction[:1], questions=spec.questions[:2])
    with pytest.raises(NoEffectivePairsError, match=r"kept 0 of 2 pairs .*dropped by: 2 x pos trait # < #"):
        extract(tiny_model, spec, tmp_path / "v.safetensors", max_new_tokens=3, judge=_AlwaysNeutralJudge(),
                progress=False)
    assert not (tmp_path / "v.safetensors").exists()
