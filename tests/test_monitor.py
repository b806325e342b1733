"""Monitoring: last-prompt projection scores (hand-computed, vs plain transformers, AUROC), files, CLI."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from persona_lens.analysis.monitor import RunningPearson, RunningStats, monitor_file, monitor_scores, pearson
from persona_lens.capture import Captured
from persona_lens.vectors import PersonaVector

from conftest import HUMOROUS_EXTRACT_PAIRS, HUMOROUS_LAYER


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
    acc = RunningPearson()
    for a, b in zip(x, y):
        acc.add(a, b)
    assert acc.r == pytest.approx(np.corrcoef(x, y)[0, 1])


def _hf_last_prompt_projection(model, vector, layer, messages_list):
    """Independent: plain transformers, our own chat-template tokenization, hidden_states[l+1]."""
    from persona_lens.models import native

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


class LengthJudge:
    """A deterministic stand-in judge: the 'trait score' is the judge prompt's length in words (mod 100)."""

    name = "length-judge"

    def __init__(self):
        self.prompts = []

    def score_many(self, prompts, progress=False):
        self.prompts.extend(prompts)
        out = []
        for p in prompts:
            out.append(None if "SKIP" in p else float(len(p.split()) % 100))
        return out


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
    summary = monitor_file(default_model, vec, HUMOROUS_LAYER, inp, out, judge=judge, spec=spec, max_new_tokens=8,
                           chunk_size=4, batch_size=4, progress=False)
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
    assert summary.figure and (tmp_path / "scores.scatter.html").exists()
    saved = json.loads((tmp_path / "scores.summary.json").read_text())
    assert saved["n"] == 6 and saved["judge"] == "length-judge"


@pytest.mark.slow
def test_cli_monitor(default_model, humorous_extraction, tmp_path, monkeypatch):
    from persona_lens.cli import main

    vec, _, spec = humorous_extraction
    vpath = vec.save(tmp_path / "h.safetensors")
    inp = tmp_path / "p.jsonl"
    rows = [{"system": spec.instruction[3].pos, "prompt": "Why do cats purr?"}, {"prompt": "Why do cats purr?"}]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr("persona_lens.cli.analysis._load", lambda name, args: default_model)
    out = tmp_path / "s.jsonl"
    assert main(["monitor", str(inp), "--vector", str(vpath), "--layer", str(HUMOROUS_LAYER), "--out", str(out),
                 "--chunk-size", "1"]) == 0
    got = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["prompt"] for r in got] == ["Why do cats purr?"] * 2
    assert got[0]["score"] > got[1]["score"]  # the humorous system prompt raises the score
