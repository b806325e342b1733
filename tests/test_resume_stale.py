"""Resumed runs never reuse rows written with other settings (stale rows), and reuse every row
written with the same settings (counted generation calls), on the embedded model with tiny
settings: contrastive generation, the creativity harness, screening's base responses and the
judge cache."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib

import pytest
import torch

from persona_lens.analysis.screen import base_response_store
from persona_lens.errors import StoreLockedError
from persona_lens.evals.creativity import CreativityConfig, CreativityHarness
from persona_lens.evals.creativity import methods as methods_mod
from persona_lens.judges.cache import JudgeCache, cache_key
from persona_lens.models import hf_causal_lm
from persona_lens.personas import load_persona
from persona_lens.runs.fingerprint import model_fingerprint
from persona_lens.runs.store import ResumeStore

try:
    from openai_server import OpenAITestServer, logprob_reply
except ImportError:  # pragma: no cover - tests/ imported as a package
    from tests.openai_server import OpenAITestServer, logprob_reply

gen_module = importlib.import_module("persona_lens.generation")  # the package re-exports a function of that name

TOKENS = 4


def tiny_spec(questions=None):
    spec = load_persona("humorous")
    return dataclasses.replace(spec, instruction=list(spec.instruction[:1]),
                               questions=list(questions or spec.questions[:2]))


@contextlib.contextmanager
def perturbed(model):
    """The same model object with other weights (a fine-tune under the same name), restored after."""
    weight = hf_causal_lm(model).get_input_embeddings().weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.5)
    try:
        yield model
    finally:
        with torch.no_grad():
            weight.copy_(original)


@pytest.fixture
def generated(monkeypatch):
    """Prompts sent to generation by generate_contrastive, one list per batch."""
    calls: list[list] = []
    real = gen_module.generate_ids

    def counting(model, prompts, **kw):
        calls.append(list(prompts))
        return real(model, prompts, **kw)

    monkeypatch.setattr(gen_module, "generate_ids", counting)
    return calls


def contrastive(model, path, spec=None, **kw):
    settings = dict(max_new_tokens=TOKENS, temperature=0.0, seed=0, batch_size=2, progress=False)
    return gen_module.generate_contrastive(model, spec or tiny_spec(), path, **{**settings, **kw})


# --------------------------------------------------------------------------- contrastive generation


def test_contrastive_unchanged_settings_resume_exactly(default_model, tmp_path, generated):
    path = tmp_path / "r.jsonl"
    first = contrastive(default_model, path)
    assert len(generated) == 2 and len(first) == 4  # 1 pair x 2 questions x pos/neg, batches of 2
    before = path.read_bytes()
    assert contrastive(default_model, path) == first
    assert len(generated) == 2  # nothing generated again
    assert path.read_bytes() == before


@pytest.mark.parametrize("change", [{"max_new_tokens": TOKENS + 2}, {"temperature": 0.8}])
def test_contrastive_changed_decoding_regenerates(default_model, tmp_path, generated, change):
    path = tmp_path / "r.jsonl"
    first = contrastive(default_model, path)
    again = contrastive(default_model, path, **change)
    assert len(generated) == 4  # both batches generated again
    assert [r["fingerprint"] for r in again] != [r["fingerprint"] for r in first]
    assert len({r["fingerprint"] for r in again} & {r["fingerprint"] for r in first}) == 0
    # the stale rows stay in the file but are never returned; the first settings still resume
    assert contrastive(default_model, path) == first and len(generated) == 4


def test_contrastive_changed_question_text_regenerates_its_rows(default_model, tmp_path, generated):
    path = tmp_path / "r.jsonl"
    spec = tiny_spec()
    first = contrastive(default_model, path, spec)
    edited = tiny_spec([spec.questions[0], spec.questions[1] + " Answer in one sentence."])
    again = contrastive(default_model, path, edited)
    assert len(generated) == 3  # only the batch of the edited question (question_index 1)
    assert generated[-1][0][1]["content"].endswith("Answer in one sentence.")
    assert again[:2] == first[:2]
    assert [r["question"] for r in again[2:]] == [edited.questions[1]] * 2


def test_contrastive_changed_model_weights_regenerate(default_model, tmp_path, generated):
    path = tmp_path / "r.jsonl"
    first = contrastive(default_model, path)
    original = model_fingerprint(default_model)
    with perturbed(default_model):
        assert model_fingerprint(default_model) != original
        again = contrastive(default_model, path)
        assert len(generated) == 4
        assert all(a["fingerprint"] != b["fingerprint"] for a, b in zip(again, first))
    assert model_fingerprint(default_model) == original  # restored weights: the old rows are current again
    assert contrastive(default_model, path) == first and len(generated) == 4


def test_contrastive_refuses_a_second_writer(default_model, tmp_path, generated):
    path = tmp_path / "r.jsonl"
    with ResumeStore(path, ("pair_index",)).writing(), \
            pytest.raises(StoreLockedError, match="another persona-lens process is writing"):
        contrastive(default_model, path)
    assert generated == []


# --------------------------------------------------------------------------- creativity harness


@pytest.fixture
def harness_calls(monkeypatch):
    """Items per SingleCall.run call."""
    calls: list[int] = []
    real = methods_mod.SingleCall.run

    def counting(self, model, items, **kw):
        calls.append(len(items))
        return real(self, model, items, **kw)

    monkeypatch.setattr(methods_mod.SingleCall, "run", counting)
    return calls


def harness(model, out, **kw):
    cfg = dict(tasks=["aut"], methods=["sa"], n=2, max_new_tokens=TOKENS, batch_size=2, judge="none")
    return CreativityHarness(model, CreativityConfig(**{**cfg, **kw}), out=out, progress=False)


def test_harness_unchanged_settings_resume_exactly(default_model, tmp_path, harness_calls):
    first = harness(default_model, tmp_path).generate()
    assert harness_calls == [2]
    assert harness(default_model, tmp_path).generate() == first
    assert harness_calls == [2]


@pytest.mark.parametrize("change", [{"max_new_tokens": TOKENS + 2}, {"temperature": 0.9}])
def test_harness_changed_settings_regenerate(default_model, tmp_path, harness_calls, change):
    first = harness(default_model, tmp_path).generate()
    again = harness(default_model, tmp_path, **change).generate()
    assert harness_calls == [2, 2]
    assert all(a["fingerprint"] != b["fingerprint"] for a, b in zip(again, first))
    if "max_new_tokens" in change:
        assert {r["max_new_tokens"] for r in again} == {TOKENS + 2}


def test_harness_changed_question_text_regenerates(default_model, tmp_path, harness_calls):
    first = harness(default_model, tmp_path).generate()
    h = harness(default_model, tmp_path)
    item = h.items["aut"][0]
    h.items["aut"][0] = dataclasses.replace(item, question=item.question + " Think of unusual ones.")
    again = h.generate()
    assert harness_calls == [2, 2]  # the whole chunk runs again (same seed and batch), one row is new
    assert again[0]["question"].endswith("Think of unusual ones.") and again[1] == first[1]


def test_harness_changed_model_weights_regenerate(default_model, tmp_path, harness_calls):
    harness(default_model, tmp_path).generate()
    with perturbed(default_model):
        harness(default_model, tmp_path).generate()
    assert harness_calls == [2, 2]


# --------------------------------------------------------------------------- screening base responses


def test_base_cache_refuses_a_second_writer(tmp_path):
    path = tmp_path / "base.jsonl"
    first, second = base_response_store(path, "m", 8), base_response_store(path, "m", 8)
    fp = first.fingerprint()
    with first.writing():
        first.append([{"key": "k1", "fingerprint": fp, "response": "r1"}])
        with pytest.raises(StoreLockedError), second.writing():
            pass
    with second.writing():
        second.append([{"key": "k2", "fingerprint": fp, "response": "r2"}])
    assert base_response_store(path, "m", 8).get(("k2",), fp)["response"] == "r2"


# --------------------------------------------------------------------------- judge cache


def test_judge_cache_key_includes_the_endpoint():
    kw = dict(model="gpt", prompt="rate this", settings="logprobs")
    assert cache_key(endpoint="http://a/v1", **kw) != cache_key(endpoint="http://b/v1", **kw)
    assert cache_key(endpoint="http://a/v1", **kw) != cache_key(endpoint="http://a/v1", **{**kw, "prompt": "rate it"})
    assert cache_key(endpoint="http://a/v1", **kw) != cache_key(endpoint="http://a/v1", **{**kw, "settings": "text"})


def test_same_model_name_on_another_endpoint_is_asked_again(tmp_path):
    from persona_lens.judges.openai import OpenAIJudge

    with OpenAITestServer() as a, OpenAITestServer() as b:
        a.push(logprob_reply({"10": 0.0}))
        b.push(logprob_reply({"90": 0.0}), logprob_reply({"90": 0.0}))
        judge_a = OpenAIJudge("same-name", base_url=a.base_url, cache_dir=tmp_path)
        judge_b = OpenAIJudge("same-name", base_url=b.base_url, cache_dir=tmp_path)
        assert judge_a.score("p") == 10.0
        assert judge_b.score("p") == 90.0  # not the other server's cached answer
        assert OpenAIJudge("same-name", base_url=a.base_url, cache_dir=tmp_path).score("p") == 10.0
        assert (a.request_count, b.request_count) == (1, 1)
    assert len(JudgeCache(tmp_path)) == 2
