"""The graded monitoring experiment (Persona Vectors Sec. 3, Fig. 4) on the tiny model: rows, r and
projections against independent references, K answers per prompt, levels, CLI, rescore."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_monitor import _hf_last_prompt_projection

from persona_lens.analysis import monitor, monitor_graded
from persona_lens.viz import monitor as monitor_viz

# ------------------------------------------------------------------------ graded monitoring experiment (tiny model)

class ByteSumJudge:
    """A deterministic stand-in TraitScorer that varies with the answer: byte sum mod 101."""

    name = "byte-sum"

    def score_trait(self, spec, question, answer):
        return float(sum(answer.encode()) % 101)

    def score_trait_many(self, spec, qa, *, progress=False):
        return [self.score_trait(spec, q, a) for q, a in qa]


def _graded(tiny_model, **changes):
    from persona_lens.personas import load_persona
    from persona_lens.testing import tiny_vector

    spec = load_persona("humorous")
    vec = tiny_vector(tiny_model, persona="humorous")
    config = monitor.GradedMonitorConfig(**{"persona": "humorous", "layers": (0, 1, 2), "n_questions": 3,
                                            "max_new_tokens": 6, "batch_size": 4, **changes})
    return spec, vec, config, monitor.run(tiny_model, config, vector=vec, judge=ByteSumJudge(), spec=spec,
                                          progress=False)


def test_graded_rows_r_and_projection_against_independent_references(tiny_model):
    from scipy.stats import pearsonr

    spec, vec, config, result = _graded(tiny_model)
    assert result.n == 3 * 5 and [lv["name"] for lv in result.levels] == [lv["name"] for lv in monitor.DEFAULT_LEVELS]
    # question i uses instruction pair i mod 5; {pos}/{neg} are filled in
    first = [r for r in result.rows if r["question"] == spec.eval_questions[1]]
    assert [r["system"] for r in first] == [spec.instruction[1].neg, monitor_graded.LIGHTLY + spec.instruction[1].neg,
                                            "You are a helpful assistant.", monitor_graded.LIGHTLY + spec.instruction[1].pos,
                                            spec.instruction[1].pos]
    for row in result.rows:
        assert row["trait_score"] == float(sum(row["answer"].encode()) % 101)
    for corr in result.per_layer:
        x = [r["projection"][str(corr["layer"])] for r in result.rows]
        ref = pearsonr(x, [r["trait_score"] for r in result.rows])
        assert corr["r"] == pytest.approx(ref.statistic, abs=1e-12) and corr["n"] == 15
        ci = ref.confidence_interval(0.95)
        assert (corr["ci_low"], corr["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert result.best_layer == max(result.per_layer, key=lambda c: c["r"])["layer"]
    # projection = HF hidden_states[l+1] of the last prompt token . v[l]/|v[l]|, by plain transformers
    msgs = [([{"role": "system", "content": r["system"]}] if r["system"] else []) +
            [{"role": "user", "content": r["question"]}] for r in result.rows]
    for layer in (0, 1):  # HF's last hidden_states entry (layer 2 here) is after the final norm
        ref = _hf_last_prompt_projection(tiny_model, vec, layer, msgs)
        np.testing.assert_allclose([r["projection"][str(layer)] for r in result.rows], ref, rtol=1e-4, atol=1e-5)
    for level in result.levels:
        mine = [r for r in result.rows if r["level"] == level["name"]]
        assert level["n"] == 3
        assert level["mean_trait_score"] == pytest.approx(np.mean([r["trait_score"] for r in mine]))
        assert level["mean_projection"]["2"] == pytest.approx(np.mean([r["projection"]["2"] for r in mine]))


def test_graded_samples_per_prompt_mean_and_r_by_hand(tiny_model, tmp_path):
    import csv

    from scipy.stats import pearsonr

    k, before = 3, torch.random.get_rng_state()
    _, _, config, result = _graded(tiny_model, layers=(1, 2), samples_per_prompt=k, temperature=1.0, seed=3,
                                   n_questions=2)
    assert torch.equal(torch.random.get_rng_state(), before)  # seeded sampling leaves the global RNG alone
    assert result.n == 2 * 5 and all(len(r["answers"]) == k and "answer" not in r for r in result.rows)
    assert any(len(set(r["answers"])) > 1 for r in result.rows)  # K samples, not K copies of one answer
    folder = result.save(tmp_path / "graded")
    back = monitor.GradedMonitorResult.load(folder)
    assert back.to_dict() == json.loads(json.dumps(result.to_dict())) and back.config == config
    table = list(csv.DictReader((folder / "rows.csv").open(encoding="utf-8", newline="")))
    assert len(table) == 2 * 5 * k
    groups: dict = {}
    for t in table:  # each saved per-answer score is the judge's score of that saved answer
        assert float(t["answer_score"]) == float(sum(t["answer"].encode()) % 101)
        groups.setdefault((t["level"], t["question"]), []).append(t)
    assert len(groups) == 10 and all([int(t["sample"]) for t in g] == [0, 1, 2] for g in groups.values())
    means = {key: sum(float(t["answer_score"]) for t in g) / k for key, g in groups.items()}  # by hand
    for row in back.rows:
        assert row["trait_score"] == pytest.approx(means[(row["level"], row["question"])], abs=1e-12)
        assert float(groups[(row["level"], row["question"])][0]["trait_score"]) == pytest.approx(row["trait_score"])
    for corr in back.per_layer:  # r over prompts: projection vs the prompt's mean score
        x = [float(g[0][f"projection_L{corr['layer']}"]) for g in groups.values()]
        ref = pearsonr(x, list(means.values()))
        assert corr["n"] == 10 and corr["r"] == pytest.approx(ref.statistic, abs=1e-9)
    for level in back.levels:
        mine = [m for (name, _), m in means.items() if name == level["name"]]
        assert level["n"] == 2 and level["mean_trait_score"] == pytest.approx(np.mean(mine))
    assert set(monitor_viz.figures(back)) == {"scatter", "r_by_layer"}
    # rescoring a K-sample result re-judges every answer and averages again
    judge = ByteSumJudge()
    again = monitor.rescore(back, judge, None)
    assert [r["trait_score"] for r in again.rows] == pytest.approx([r["trait_score"] for r in back.rows])


class EchoBackend:
    """A generation backend that answers with the prompt it was given and the row index."""

    name = "echo"

    def __init__(self, model):
        from persona_lens.models import model_id

        self.model_id, self.calls = model_id(model), []

    def generate_ids(self, messages, **kwargs):
        self.calls.append((len(messages), kwargs))
        return [SimpleNamespace(text=f"{m[-1]['content']}|{m[0]['content']}|{i}") for i, m in enumerate(messages)]


def test_graded_samples_are_grouped_by_prompt_and_k1_is_unchanged(tiny_model, tmp_path):
    echo = EchoBackend(tiny_model)
    _, _, config, result = _graded(tiny_model, layers=(1,), samples_per_prompt=4, temperature=0.7, seed=5,
                                   n_questions=2, batch_size=3)
    assert result.n == 10  # (the default backend sampled this one; now the echo backend, one call)
    spec, vec, _, _ = _graded(tiny_model, layers=(1,), n_questions=1)
    rows = monitor.run(tiny_model, config, vector=vec, judge=ByteSumJudge(), spec=spec, progress=False,
                       backend=echo).rows
    assert echo.calls == [(2 * 5 * 4, {"max_new_tokens": 6, "temperature": 0.7, "top_p": 1.0, "seed": 5,
                                       "batch_size": 3 * 4, "steering": None, "progress": False})]
    for p, row in enumerate(rows):  # prompt p's answers are rows 4p .. 4p+3, all from its own messages
        first = row["system"] if row["system"] else row["question"]
        assert row["answers"] == [f"{row['question']}|{first}|{4 * p + s}" for s in range(4)]
        assert row["answer_scores"] == [float(sum(a.encode()) % 101) for a in row["answers"]]
    # K = 1: one answer per row as before, the old rows.csv columns
    one = _graded(tiny_model, layers=(1,), n_questions=1)[3]
    assert all(set(r) >= {"answer", "trait_score"} and "answers" not in r for r in one.rows)
    with (one.save(tmp_path / "k1") / "rows.csv").open(encoding="utf-8") as f:
        assert f.readline().strip() == "level,strength,pair,question,system,answer,trait_score,projection_L1"
    for bad, needle in [({"samples_per_prompt": 2}, "temperature > 0"), ({"samples_per_prompt": 0}, ">= 1")]:
        with pytest.raises(ValueError, match=needle):
            config.replace(temperature=0.0, **bad)
    legacy = {**monitor.GradedMonitorConfig(persona="humorous", layers=(1,)).to_dict(), "n_samples": 1}
    del legacy["samples_per_prompt"]
    assert monitor.GradedMonitorConfig.from_dict(legacy).samples_per_prompt == 1  # results saved before K


def test_graded_levels_validation(tmp_path):
    from persona_lens.errors import MonitorLevelsError

    good = [{"name": "a", "strength": -1, "system": "{neg}"}, {"name": "b", "strength": 1, "system": ""}]
    path = tmp_path / "levels.json"
    path.write_text(json.dumps({"levels": good}))
    assert monitor.load_levels(path)[1] == {"name": "b", "strength": 1.0, "system": ""}
    for bad, needle in [(good[:1], "at least 2"), ([good[0], {**good[1], "name": "a"}], "unique"),
                        ([good[0], {"name": "c", "strength": 1}], "exactly the keys"),
                        ([good[0], {**good[1], "strength": "high"}], "finite number")]:
        with pytest.raises(MonitorLevelsError, match=needle):
            monitor.check_levels(bad)
    path.write_text("[oops")
    with pytest.raises(MonitorLevelsError, match="not readable JSON"):
        monitor.load_levels(path)


def test_cli_graded_end_to_end_on_tiny_model(tiny_model, tmp_path, monkeypatch):
    from persona_lens.cli import main
    from persona_lens.testing import tiny_vector

    vpath = tiny_vector(tiny_model, persona="humorous").save(tmp_path / "h.safetensors")
    lexicon = tmp_path / "chars.json"  # random-weight text: score its visible characters so scores vary
    lexicon.write_text(json.dumps({"trait": "humorous", "patterns": {"\\S": 1}, "scale": 2000}))
    levels = tmp_path / "levels.json"
    levels.write_text(json.dumps([{"name": "anti", "strength": -1, "system": "{neg}"},
                                  {"name": "pro", "strength": 1, "system": "{pos}"}]))
    monkeypatch.setattr("persona_lens.models.load_model", lambda *a, **k: tiny_model)
    out = tmp_path / "graded"
    assert main(["monitor", "--graded", "--vector", str(vpath), "--persona", "humorous", "--layers", "0-2",
                 "--levels", str(levels), "--n-questions", "4", "--max-new-tokens", "8", "--judge", f"lexicon:{lexicon}",
                 "--out", str(out)]) == 0
    result = monitor.GradedMonitorResult.load(out)
    assert result.n == 8 and [c["layer"] for c in result.per_layer] == [0, 1, 2]
    assert result.judge == "lexicon:humorous" and result.config.levels[0]["name"] == "anti"
    import re

    for r in result.rows:  # 100 (1 - exp(-rate / 2000)), rate = 100 visible characters / words
        words = len(re.findall(r"\w+(?:['’]\w+)*", r["answer"]))
        rate = 100 * len(re.findall(r"\S", r["answer"])) / words if words else None
        assert r["trait_score"] == (None if rate is None else pytest.approx(100 * (1 - math.exp(-rate / 2000))))
    assert any(c["r"] is not None for c in result.per_layer)
    assert (out / "scatter.html").exists() and (out / "r_by_layer.html").exists() and (out / "rows.csv").exists()
    base = ["monitor", "--graded", "--vector", str(vpath), "--persona", "humorous", "--layers", "1", "--levels",
            str(levels), "--n-questions", "2", "--max-new-tokens", "4", "--judge", f"lexicon:{lexicon}"]
    assert main([*base, "--samples-per-prompt", "2", "--out", str(tmp_path / "greedy")]) == 2  # greedy: refused
    assert not (tmp_path / "greedy").exists()
    assert main(["monitor", str(levels), "--vector", str(vpath), "--layer", "1", "--samples-per-prompt", "2",
                 "--out", str(tmp_path / "o.jsonl")]) == 2  # only with --graded
    assert main([*base, "--samples-per-prompt", "2", "--temperature", "1", "--out", str(tmp_path / "k2")]) == 0
    k2 = monitor.GradedMonitorResult.load(tmp_path / "k2")
    assert k2.config.samples_per_prompt == 2 and k2.n == 4 and all(len(r["answers"]) == 2 for r in k2.rows)


def test_graded_rescore_rejudges_saved_answers(tiny_model):
    from scipy.stats import pearsonr

    from persona_lens.judges import LexiconJudge

    spec, _, _, result = _graded(tiny_model)
    judge = LexiconJudge({"trait": "humorous", "patterns": {"[a-m]": 1}, "scale": 300})
    again = monitor.rescore(result, judge, spec)
    assert [r["answer"] for r in again.rows] == [r["answer"] for r in result.rows] and again.judge == judge.name
    assert [r["trait_score"] for r in again.rows] == [judge.score_text(r["answer"]) for r in result.rows]
    pairs = [(r["projection"]["1"], r["trait_score"]) for r in again.rows if r["trait_score"] is not None]
    assert again.per_layer[1]["r"] == pytest.approx(pearsonr(*zip(*pairs)).statistic, abs=1e-12)
