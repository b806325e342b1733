"""Effectiveness filtering of contrastive pairs: hand-made score tables, both modes, and judging."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from persona_lens.errors import JudgeError
from persona_lens.filtering import FilterInputError, filter_pairs, judge_rows
from persona_lens.personas.spec import InstructionPair, PersonaSpec

try:
    from openai_server import logprob_reply, openai_server  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover
    from tests.openai_server import logprob_reply, openai_server  # noqa: F401


def pair(q, pos, neg, pos_coh=90.0, neg_coh=90.0, *, pair_index=0, sample=0, persona="humorous"):
    base = dict(persona=persona, pair_index=pair_index, question_index=q, sample=sample, question=f"question {q}")
    return [
        {**base, "polarity": "pos", "system": "be funny", "response": f"pos answer {q}", "trait_score": pos,
         "coherence_score": pos_coh},
        {**base, "polarity": "neg", "system": "be dull", "response": f"neg answer {q}", "trait_score": neg,
         "coherence_score": neg_coh},
    ]


def kept_questions(report):
    return sorted({r["question_index"] for r in report.kept})


def reasons_by_question(report):
    return {d["question_index"]: d["reason"] for d in report.dropped}


def test_fixed_mode_exact():
    rows = (
        pair(0, 80.0, 10.0)
        + pair(1, 31.0, 10.0)
        + pair(2, 80.0, 72.0)
        + pair(3, 80.0, 10.0, pos_coh=20.0)
        + pair(4, 80.0, None)
        + pair(5, 50.0, 49.9)  # boundaries: pos >= 50 and neg < 50 pass
        + pair(6, 60.0, 50.0)  # neg == 50 fails
        + pair(7, 10.0, 90.0, pos_coh=10.0, neg_coh=None)
    )
    rows.append({**pair(8, 90.0, 0.0)[0]})  # a pos row without its neg
    report = filter_pairs(rows, mode="fixed")
    assert kept_questions(report) == [0, 5]
    assert len(report.kept) == 4 and all(r["question_index"] in (0, 5) for r in report.kept)
    assert [r["polarity"] for r in report.kept] == ["pos", "neg", "pos", "neg"]
    assert reasons_by_question(report) == {
        1: "pos trait 31.0 < 50",
        2: "neg trait 72.0 >= 50",
        3: "pos coherence 20.0 < 50",
        4: "missing score (neg trait)",
        6: "neg trait 50.0 >= 50",
        7: "pos trait 10.0 < 50; neg trait 90.0 >= 50; pos coherence 10.0 < 50; missing score (neg coherence)",
    }
    assert (report.n_pairs, report.n_kept, report.n_dropped) == (8, 2, 6)
    assert report.coherence_checked
    assert report.unpaired == [{"persona": "humorous", "pair_index": 0, "question_index": 8, "sample": 0,
                                "polarity": "pos", "reason": "unpaired: no neg row"}]
    d = json.loads(json.dumps(report.to_dict()))
    assert d["n_kept"] == 2 and d["n_dropped"] == 6 and d["n_unpaired_rows"] == 1 and d["mode"] == "fixed"
    assert d["cutoffs"]["humorous"]["pos"] == 50 and d["cutoffs"]["humorous"]["neg"] == 50
    assert {k["question_index"] for k in d["kept_pairs"]} == {0, 5}
    assert report.reasons[("humorous", 0, 1, 0)] == "pos trait 31.0 < 50"


def test_fixed_mode_other_thresholds():
    rows = pair(0, 70.0, 29.0, pos_coh=60.0) + pair(1, 69.0, 10.0) + pair(2, 90.0, 30.0)
    report = filter_pairs(rows, mode="fixed", threshold=70, coherence_threshold=61)
    # pos >= 70, neg < 100 - 70 = 30, coherence >= 61
    assert kept_questions(report) == []
    assert reasons_by_question(report) == {
        0: "pos coherence 60.0 < 61",
        1: "pos trait 69.0 < 70",
        2: "neg trait 30.0 >= 30",
    }


def test_coherence_check_skipped_when_absent():
    rows = pair(0, 80.0, 10.0, pos_coh=None, neg_coh=None) + pair(1, 40.0, 10.0, pos_coh=None, neg_coh=None)
    for r in rows[2:]:
        del r["coherence_score"]
    report = filter_pairs(rows)
    assert kept_questions(report) == [0]
    assert reasons_by_question(report) == {1: "pos trait 40.0 < 50"}
    assert not report.coherence_checked
    assert any("coherence check skipped" in n for n in report.notes)
    assert report.to_dict()["coherence_checked"] is False


def test_adaptive_mode_exact():
    # pos scores 60, 70, 80, 90 -> median 75 -> pos cut max(50, 75) = 75
    # neg scores 10, 40, 20, 25 -> median 22.5 -> neg cut min(50, 22.5) = 22.5
    rows = pair(0, 60.0, 10.0) + pair(1, 70.0, 40.0) + pair(2, 80.0, 20.0) + pair(3, 90.0, 25.0)
    report = filter_pairs(rows, mode="adaptive")
    assert kept_questions(report) == [2]
    assert reasons_by_question(report) == {
        0: "pos trait 60.0 < 75 (adaptive: max(50, pos median 75))",
        1: "pos trait 70.0 < 75 (adaptive: max(50, pos median 75)); "
           "neg trait 40.0 > 22.5 (adaptive: min(50, neg median 22.5))",
        3: "neg trait 25.0 > 22.5 (adaptive: min(50, neg median 22.5))",
    }
    cut = report.cutoffs["humorous"]
    assert (cut["pos"], cut["neg"], cut["pos_median"], cut["neg_median"]) == (75.0, 22.5, 75.0, 22.5)
    # the same rows under the fixed rule keep every pair
    assert kept_questions(filter_pairs(rows, mode="fixed")) == [0, 1, 2, 3]


def test_adaptive_mode_falls_back_to_50_and_keeps_equal():
    # pos median 30 < 50 -> cut 50; neg median 70 > 50 -> cut 50; neg == 50 is kept (<=)
    rows = pair(0, 20.0, 60.0) + pair(1, 30.0, 70.0) + pair(2, 55.0, 50.0) + pair(3, 60.0, 80.0, neg_coh=40.0)
    report = filter_pairs(rows, mode="adaptive")
    assert kept_questions(report) == [2]
    assert reasons_by_question(report) == {
        0: "pos trait 20.0 < 50 (adaptive: max(50, pos median 42.5)); neg trait 60.0 > 50 (adaptive: min(50, neg median 65))",
        1: "pos trait 30.0 < 50 (adaptive: max(50, pos median 42.5)); neg trait 70.0 > 50 (adaptive: min(50, neg median 65))",
        3: "neg trait 80.0 > 50 (adaptive: min(50, neg median 65)); neg coherence 40.0 < 50",
    }


def test_adaptive_medians_per_persona_and_pairing_by_sample():
    rows = (pair(0, 90.0, 10.0, persona="a") + pair(1, 60.0, 10.0, persona="a")
            + pair(0, 60.0, 5.0, persona="b") + pair(0, 55.0, 10.0, persona="b", sample=1))
    report = filter_pairs(rows, mode="adaptive")
    # a: pos median 75, neg median 10 -> question 0 kept (neg 10 <= 10), question 1 dropped;
    # b: pos median 57.5, neg median 7.5 -> sample 0 kept, sample 1 dropped
    kept = sorted((r["persona"], r["question_index"], r["sample"]) for r in report.kept if r["polarity"] == "pos")
    assert kept == [("a", 0, 0), ("b", 0, 0)]
    assert report.cutoffs["a"]["pos"] == 75.0 and report.cutoffs["b"]["pos"] == 57.5
    assert report.cutoffs["a"]["neg"] == 10.0 and report.cutoffs["b"]["neg"] == 7.5
    assert report.reasons[("b", 0, 0, 1)] == (
        "pos trait 55.0 < 57.5 (adaptive: max(50, pos median 57.5)); "
        "neg trait 10.0 > 7.5 (adaptive: min(50, neg median 7.5))")


def test_bad_input_is_named():
    rows = pair(0, 80.0, 10.0)
    with pytest.raises(FilterInputError, match="unknown filter mode"):
        filter_pairs(rows, mode="median")
    with pytest.raises(FilterInputError, match="polarity 'positive'"):
        filter_pairs([{**rows[0], "polarity": "positive"}])
    with pytest.raises(FilterInputError, match="two pos rows"):
        filter_pairs(rows + [rows[0]])
    with pytest.raises(FilterInputError, match="lacks the pair field 'sample'"):
        filter_pairs([{k: v for k, v in rows[0].items() if k != "sample"}])
    nan_rows = pair(0, float("nan"), 10.0)
    assert reasons_by_question(filter_pairs(nan_rows)) == {0: "missing score (pos trait)"}


# ------------------------------------------------------------------------ judge_rows

SPEC = PersonaSpec(
    name="humorous",
    instruction=[InstructionPair("Be very funny.", "Be very serious.")],
    questions=["q0", "q1"],
    eval_prompt="TRAIT-JUDGE Q: {question} A: {answer}",
)


def test_judge_rows_with_openai_judge(openai_server, tmp_path):
    from persona_lens.judges.openai import OpenAIJudge

    def answer(req):
        if req.prompt.startswith("TRAIT-JUDGE"):
            return logprob_reply({"90" if "haha" in req.prompt else "10": 0.0})
        return logprob_reply({"20" if "garbled" in req.prompt else "85": 0.0})  # coherence prompt

    openai_server.responder = answer
    rows = pair(0, None, None) + pair(1, None, None)
    rows[0]["response"], rows[1]["response"] = "haha, a joke", "A plain answer."
    rows[2]["response"], rows[3]["response"] = "haha garbled", "Also plain."
    original = copy.deepcopy(rows)
    judge = OpenAIJudge("m", base_url=openai_server.base_url, cache_dir=tmp_path)
    judged = judge_rows(rows, SPEC, judge, progress=False)
    assert rows == original  # inputs untouched
    assert [r["trait_score"] for r in judged] == [90.0, 10.0, 90.0, 10.0]
    assert [r["coherence_score"] for r in judged] == [85.0, 85.0, 20.0, 85.0]
    assert any(r.prompt == "TRAIT-JUDGE Q: question 0 A: haha, a joke" for r in openai_server.requests)
    report = filter_pairs(judged)
    assert kept_questions(report) == [0]
    assert reasons_by_question(report) == {1: "pos coherence 20.0 < 50"}
    n = openai_server.request_count
    no_coh = judge_rows(rows, SPEC, judge, coherence=False, progress=False)  # all cached
    assert openai_server.request_count == n and all(r["coherence_score"] is None for r in no_coh)


FUNNY = [
    "Ha! Taxes are like a surprise party where you pay for everyone else's cake.",
    "Sure, exercise is great, especially the part where you lie on the floor afterwards and question life.",
    "My plants and I have a deal: I forget to water them, they dramatically faint. Oscar-worthy!",
    "Coffee: because adulting is hard and naps are socially frowned upon at work. Ha!",
    "The secret to cooking is confidence and a fire extinguisher within arm's reach. Bon appetit!",
    "Learning French? Just add 'le' to everything and shrug a lot. Voila, le fluent!",
    "Budgeting is easy: I look at my bank account, scream, and then buy a snack to cope. LOL.",
    "Cats are tiny furry landlords who let you live in their house if you pay rent in tuna. Meow!",
    "Why did the computer go to therapy? Too many unresolved issues and a bad case of bytes.",
    "Jogging is my favourite hobby to think about doing while eating chips on the couch. Haha!",
]
PLAIN = [
    "Taxes are calculated from taxable income using the brackets set by law.",
    "Regular exercise improves cardiovascular fitness, strength and sleep quality.",
    "Water plants when the top centimetre of soil is dry and provide indirect light.",
    "Coffee contains caffeine, which increases alertness for several hours.",
    "Good cooking starts with fresh ingredients, accurate measurement and controlled heat.",
    "Learning French takes regular practice in listening, speaking, reading and writing.",
    "A budget lists income and expenses so that savings can be planned each month.",
    "Cats need a balanced diet, fresh water, and regular veterinary checkups.",
    "Computers slow down when storage is full or too many programs run at once.",
    "Jogging three times a week is a common recommendation for beginners.",
]


def test_judge_rows_embedding_cross_fit(monkeypatch):
    from persona_lens.judges.embedding import EmbeddingJudge

    rows = []
    for q, (funny, plain) in enumerate(zip(FUNNY, PLAIN)):
        r = pair(q, None, None)
        r[0]["response"], r[1]["response"] = funny, plain
        rows += r
    fits, scored = [], []
    real_fit, real_score = EmbeddingJudge.fit_embeddings, EmbeddingJudge.score_embeddings

    def spy_fit(self, x, y):
        fits.append(np.asarray(x).copy())
        return real_fit(self, x, y)

    def spy_score(self, x):
        scored.append((len(fits) - 1, np.asarray(x).copy()))
        return real_score(self, x)

    monkeypatch.setattr(EmbeddingJudge, "fit_embeddings", spy_fit)
    monkeypatch.setattr(EmbeddingJudge, "score_embeddings", spy_score)
    judge = EmbeddingJudge()
    judged = judge_rows(rows, SPEC, judge, progress=False)
    assert all(r["trait_score"] is not None and r["coherence_score"] is None for r in judged)
    # two cross-fitting folds, each scored by a model that never saw its rows; then one full fit
    assert len(fits) == 3 and len(scored) == 2
    for fit_index, x_test in scored:
        train = fits[fit_index]
        for row in x_test:
            assert not np.any(np.all(np.isclose(train, row, atol=1e-7), axis=1))
    assert fits[2].shape[0] == len(rows) and judge.is_fitted
    pos = [r["trait_score"] for r in judged if r["polarity"] == "pos"]
    neg = [r["trait_score"] for r in judged if r["polarity"] == "neg"]
    assert np.mean(pos) > np.mean(neg) + 20
    report = filter_pairs(judged)
    assert not report.coherence_checked and report.n_kept >= 5


def test_judge_rows_embedding_needs_two_questions():
    from persona_lens.judges.embedding import EmbeddingJudge

    with pytest.raises(JudgeError, match="at least two questions"):
        judge_rows(pair(0, None, None), SPEC, EmbeddingJudge(), progress=False)
    with pytest.raises(JudgeError, match="needs a judge"):
        judge_rows(pair(0, None, None), SPEC, None)
