"""Monitoring: last-prompt projection scores (hand-computed, vs plain transformers, AUROC), files, CLI."""

import importlib
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import HUMOROUS_EXTRACT_PAIRS, HUMOROUS_LAYER

from persona_lens.activations import Captured
from persona_lens.analysis import monitor
from persona_lens.analysis.monitor import MonitorConfig, MonitorResult, monitor_scores
from persona_lens.generation import Generation
from persona_lens.judges import PromptJudge
from persona_lens.stats import RunningStats, pearson
from persona_lens.vectors import PersonaVector
from persona_lens.viz import monitor as monitor_viz


def fake_model(n_layers=3, d=2):
    from transformers import LlamaConfig

    cfg = LlamaConfig(num_hidden_layers=n_layers, hidden_size=d, num_attention_heads=1, intermediate_size=4,
                      vocab_size=10)
    return SimpleNamespace(original_model=SimpleNamespace(config=cfg))


def test_monitor_scores_by_hand(monkeypatch):
    # last-prompt activations at layer 1 for three prompts; v[1] = (3, 4) -> unit (0.6, 0.8)
    h = torch.tensor([[1.0, 1.0], [5.0, 0.0], [-1.0, 2.0]])
    seen = {}

    def fake_capture(model, prompts, responses, *, layers, reductions, **kw):
        seen.update(layers=layers, reductions=reductions, responses=responses)
        return Captured([1], {"last_prompt": h[:, None, :]})

    monkeypatch.setattr("persona_lens.analysis.monitor.capture", fake_capture)
    v = PersonaVector(torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 1.0]]), {"persona": "t"})
    s = monitor_scores(fake_model(), v, 1, ["a", "b", "c"])
    # (1,1).(0.6,0.8) = 1.4 ; (5,0) -> 3.0 ; (-1,2) -> -0.6 + 1.6 = 1.0
    np.testing.assert_allclose(s, [1.4, 3.0, 1.0], atol=1e-12)
    assert seen == {"layers": [1], "reductions": ["last_prompt"], "responses": None}


def test_running_stats_and_pearson_by_hand():
    x = [1.0, 2.0, 3.0, 4.0]
    y = [2.0, 1.0, 4.0, 3.0]
    # means 2.5, 2.5; sxy = (-1.5)(-0.5)+(-0.5)(-1.5)+(0.5)(1.5)+(1.5)(0.5) = 3; sxx = syy = 5 -> r = 0.6
    out = pearson(x, y)
    assert out["r"] == pytest.approx(0.6) and out["n"] == 4
    assert out["p_value"] is None or 0 < out["p_value"] < 1
    assert pearson(x + [None], y + [7.0])["n"] == 4
    assert pearson([1.0], [2.0])["r"] is None
    s = RunningStats()
    s.update(x)
    assert (s.mean, s.std, s.min, s.max) == (2.5, pytest.approx(math.sqrt(1.25)), 1.0, 4.0)
    s.update([])
    s.add(10.0)  # merged with the batch above: numpy on all five values
    assert (s.n, s.mean, s.std) == (5, pytest.approx(4.0), pytest.approx(np.std([1.0, 2.0, 3.0, 4.0, 10.0])))
    assert RunningStats().to_dict() == {"n": 0, "mean": None, "std": None, "min": None, "max": None}


def test_monitor_config_round_trip_and_result_save_load(monkeypatch, tmp_path):
    rows = [{"prompt": "Tell me about taxes."}, {"messages": [{"role": "user", "content": "Any tips?"}]}]
    spec, v, inp, _ = _offline_monitor(monkeypatch, tmp_path, rows)
    config = MonitorConfig(prompts=str(inp), out=str(tmp_path / "s.jsonl"), layer=1, chunk_size=1)
    assert MonitorConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    result = monitor.run(fake_model(), config, vector=v, progress=False)
    # capture is scripted per chunk of one row: last_prompt (0, 1) at layer 1, v[1] = (3, 4): 0.8
    assert result.n == 2 and result.score["mean"] == pytest.approx(0.8) and result.correlation is None
    assert [json.loads(l)["score"] for l in (tmp_path / "s.jsonl").read_text().splitlines()] == pytest.approx([0.8, 0.8])
    back = MonitorResult.load(result.save(tmp_path / "res"))
    assert back == result and monitor_viz.figures(back) == {}


def _hf_last_prompt_projection(model, vector, layer, messages_list):
    """Independent: plain transformers, our own chat-template tokenization, hidden_states[l+1]."""
    from persona_lens.native import native

    tok = model.tokenizer
    u = (vector.layer(layer) / vector.layer(layer).norm()).double()
    out = []
    with native(model) as hf, torch.no_grad():
        for msgs in messages_list:
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            hs = hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
            out.append(float(hs[layer + 1][0, -1].double() @ u))
    return np.array(out)


@pytest.mark.slow
def test_monitor_matches_plain_transformers(default_model, humorous_extraction):
    vec, _, spec = humorous_extraction
    prompts = [[{"role": "system", "content": spec.instruction[2].pos}, {"role": "user", "content": q}]
               for q in spec.eval_questions[:2]] + [[{"role": "user", "content": "Hi!"}]]
    ours = monitor_scores(default_model, vec, HUMOROUS_LAYER, prompts, batch_size=4)
    ref = _hf_last_prompt_projection(default_model, vec, HUMOROUS_LAYER, prompts)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_monitor_auroc_pos_vs_neg_system_prompts(default_model, humorous_extraction):
    """Held-out questions (eval_questions) and held-out system-prompt pairs: AUROC >= 0.8."""
    from sklearn.metrics import roc_auc_score

    vec, _, spec = humorous_extraction
    qs = spec.eval_questions
    assert len(qs) >= 20
    held_out = [i for i in range(len(spec.instruction)) if i not in HUMOROUS_EXTRACT_PAIRS]
    # (measured: pairs 2, 3, 4 -> 1.00, 1.00, 0.985; the extraction pairs 0, 1 -> 1.00, 0.905)
    aurocs = {}
    for i in held_out:
        pair = spec.instruction[i]
        pos = [[{"role": "system", "content": pair.pos}, {"role": "user", "content": q}] for q in qs]
        neg = [[{"role": "system", "content": pair.neg}, {"role": "user", "content": q}] for q in qs]
        s = monitor_scores(default_model, vec, HUMOROUS_LAYER, pos + neg, batch_size=20)
        aurocs[i] = roc_auc_score([1] * len(qs) + [0] * len(qs), s)
    print(f"monitor AUROC at layer {HUMOROUS_LAYER} per instruction pair: {aurocs}")
    for i in held_out:
        assert aurocs[i] >= 0.8, aurocs


class LengthJudge(PromptJudge):
    """A deterministic stand-in judge: the 'trait score' is the judge prompt's length in words (mod 100)."""

    name = "length-judge"

    def __init__(self):
        self.prompts = []

    def score(self, prompt):
        self.prompts.append(prompt)
        return None if "SKIP" in prompt else float(len(prompt.split()) % 100)


@pytest.mark.slow
def test_monitor_file_streams_with_judge(default_model, humorous_extraction, tmp_path):
    vec, _, spec = humorous_extraction
    rows = [{"system": spec.instruction[0].pos, "prompt": q} for q in spec.eval_questions[:3]]
    rows += [{"messages": [{"role": "user", "content": q}]} for q in spec.eval_questions[3:5]]
    rows += [{"messages": [{"role": "user", "content": "Say SKIP"}, {"role": "assistant", "content": "SKIP ok"}]}]
    inp = tmp_path / "prompts.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    judge = LengthJudge()
    config = MonitorConfig(prompts=str(inp), out=str(out), layer=HUMOROUS_LAYER, max_new_tokens=8, chunk_size=4,
                           batch_size=4)
    summary = monitor.run(default_model, config, vector=vec, judge=judge, spec=spec, progress=False)
    got = [json.loads(l) for l in out.read_text().splitlines()]
    assert len(got) == 6 and all("score" in r for r in got)
    assert got[5]["response"] == "SKIP ok"  # the row's own assistant turn is used, not generated
    assert got[5]["trait_score"] is None
    from persona_lens.analysis.projection import row_prompt

    expected = monitor_scores(default_model, vec, HUMOROUS_LAYER, [row_prompt(r) for r in rows])
    np.testing.assert_allclose([r["score"] for r in got], expected, rtol=1e-4, atol=1e-4)
    pairs = [(r["score"], r["trait_score"]) for r in got if r["trait_score"] is not None]
    assert summary.correlation["n"] == 5 and summary.correlation["n_unscored"] == 1
    assert summary.correlation["r"] == pytest.approx(np.corrcoef(*zip(*pairs))[0, 1], abs=1e-9)
    assert spec.eval_questions[0] in judge.prompts[0]  # the spec's eval prompt carries the question
    assert sorted(zip(*summary.scatter.values())) == sorted(pairs)
    assert set(monitor_viz.figures(summary)) == {"scatter"}
    saved = MonitorResult.load(summary.save(tmp_path / "result"))
    assert saved.n == 6 and saved.judge == "length-judge" and saved.config == config


@pytest.mark.slow
def test_cli_monitor(default_model, humorous_extraction, tmp_path, monkeypatch):
    from persona_lens.cli import main

    vec, _, spec = humorous_extraction
    vpath = vec.save(tmp_path / "h.safetensors")
    inp = tmp_path / "p.jsonl"
    rows = [{"system": spec.instruction[3].pos, "prompt": "Why do cats purr?"}, {"prompt": "Why do cats purr?"}]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("persona_lens.models.load_model", lambda *a, **k: default_model)
    out = tmp_path / "s.jsonl"
    assert main(["monitor", str(inp), "--vector", str(vpath), "--layer", str(HUMOROUS_LAYER), "--out", str(out),
                 "--chunk-size", "1"]) == 0
    got = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["prompt"] for r in got] == ["Why do cats purr?"] * 2
    assert got[0]["score"] > got[1]["score"]  # the humorous system prompt raises the score


# ------------------------------------------------------------------------ monitor + embedding judge (offline)

FUNNY_ANSWERS = [
    "Ha! Taxes are like a surprise party where you pay for everyone else's cake.",
    "Exercise is great, especially the part where you lie on the floor afterwards and question life. LOL!",
    "My plants and I have a deal: I forget to water them, they dramatically faint. Oscar-worthy!",
    "Coffee: because adulting is hard and naps are frowned upon at work. Ha!",
    "The secret to cooking is confidence and a fire extinguisher within arm's reach. Bon appetit!",
    "Cats are tiny furry landlords who let you live in their house if you pay rent in tuna. Meow!",
]
PLAIN_ANSWERS = [
    "Taxes are calculated from taxable income using the brackets set by law.",
    "Regular exercise improves cardiovascular fitness, strength and sleep quality.",
    "Water plants when the top centimetre of soil is dry and provide indirect light.",
    "Coffee contains caffeine, which increases alertness for several hours.",
    "Good cooking starts with fresh ingredients, accurate measurement and controlled heat.",
    "Cats need a balanced diet, fresh water, and regular veterinary checkups.",
]


def _offline_monitor(monkeypatch, tmp_path, rows):
    """monitor.run on a fake 3-layer model: capture and generation are scripted, the judge is real."""
    from persona_lens.personas import InstructionPair, PersonaSpec

    def fake_capture(model, prompts, responses, *, layers, reductions, **kw):
        return Captured(list(layers), {"last_prompt": torch.arange(len(prompts) * 2.0).reshape(-1, 1, 2)})

    calls = []

    def fake_generate(model, prompts, **kw):
        calls.append(prompts)
        out = []
        for p in prompts:
            system = p[0]["content"] if isinstance(p, list) and p[0]["role"] == "system" else ""
            i = len(calls) + len(out)
            out.append(FUNNY_ANSWERS[i % 6] if system == "Be very funny." else PLAIN_ANSWERS[i % 6])
        return [Generation(text, [], []) for text in out]

    monkeypatch.setattr("persona_lens.analysis.monitor.capture", fake_capture)
    # the HF generation path (the package re-exports a function named like the module)
    monkeypatch.setattr(importlib.import_module("persona_lens.generation"), "generate_ids", fake_generate)
    spec = PersonaSpec(name="humorous", instruction=[InstructionPair("Be very funny.", "Be very serious.")],
                       questions=["Why do cats purr?", "How do taxes work?", "How should I cook rice?"],
                       eval_prompt="Rate how funny this is. Question: {question} Answer: {answer}")
    v = PersonaVector(torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 1.0]]), {"persona": "humorous"})
    inp = tmp_path / "prompts.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return spec, v, inp, calls


def test_monitor_embedding_judge_scores_the_answer(monkeypatch, tmp_path):
    """Bug: the fitted embedding judge scored the whole judge prompt (55.5) instead of the answer (62.1)."""
    from persona_lens.judges.embedding import EmbeddingJudge

    answers = [FUNNY_ANSWERS[0], PLAIN_ANSWERS[1]]
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in zip(["How do taxes work?", "Is exercise good?"], answers)]
    spec, v, inp, _ = _offline_monitor(monkeypatch, tmp_path, rows)
    judge = EmbeddingJudge().fit(FUNNY_ANSWERS[1:] + PLAIN_ANSWERS[2:], [1] * 5 + [0] * 4)
    expected = judge.score_texts(answers)  # the answer text alone
    out = tmp_path / "scores.jsonl"
    monitor.run(fake_model(), MonitorConfig(prompts=str(inp), out=str(out), layer=1), vector=v, judge=judge, spec=spec,
                progress=False)
    got = [json.loads(l)["trait_score"] for l in out.read_text().splitlines()]
    assert got == pytest.approx(expected, abs=1e-4)


def test_monitor_fits_an_unfitted_embedding_judge(monkeypatch, tmp_path):
    """Bug: ``persona-lens monitor --judge embedding`` raised 'EmbeddingJudge is not fitted'."""
    from persona_lens.judges.embedding import EmbeddingJudge

    rows = [{"prompt": "Tell me about taxes."},
            {"messages": [{"role": "user", "content": "Any tips?"}, {"role": "assistant", "content": FUNNY_ANSWERS[3]}]},
            {"messages": [{"role": "user", "content": "Any facts?"}, {"role": "assistant", "content": PLAIN_ANSWERS[3]}]}]
    spec, v, inp, calls = _offline_monitor(monkeypatch, tmp_path, rows)
    judge = EmbeddingJudge()
    out = tmp_path / "scores.jsonl"
    summary = monitor.run(fake_model(), MonitorConfig(prompts=str(inp), out=str(out), layer=1), vector=v, judge=judge,
                          spec=spec, progress=False)
    assert judge.is_fitted
    # fitted like extract/sweep: the model's answers to the spec's questions under the pos and neg prompts
    fit_prompts = [p for batch in calls for p in batch if isinstance(p, list) and p[0]["role"] == "system"]
    systems = {p[0]["content"] for p in fit_prompts}
    assert systems == {"Be very funny.", "Be very serious."}
    assert {p[1]["content"] for p in fit_prompts} == set(spec.questions)
    got = [json.loads(l) for l in out.read_text().splitlines()]
    assert all(r["trait_score"] is not None for r in got) and summary.correlation["n"] == 3
    assert summary.judge_fit["n_pos"] == 3 and summary.judge_fit["n_neg"] == 3
    assert got[1]["trait_score"] > got[2]["trait_score"]  # the funny answer scores higher
