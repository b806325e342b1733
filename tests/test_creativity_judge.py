"""Creativity judging end to end against the local OpenAI-compatible test server, and the
aggregation of per-idea judgments (mean over samples, then ideas, then items; std)."""

from __future__ import annotations

import json
import math
import threading

import pytest
from openai_server import OpenAITestServer, completion  # noqa: F401

from persona_lens.evals.creativity.judging import (
    RUBRICS,
    CreativityJudge,
    ListJudgment,
    judge_lists,
    parse_categories,
    parse_scores,
    parse_single_score,
)
from persona_lens.judges.openai import OpenAIJudge

LIST_A = ["Cat castle with cut-out windows", "Storage for toys", "Pinhole camera to watch an eclipse"]
LIST_B = ["Sled for a grassy hill", "Moving box"]
QUESTION_A = "What are some creative uses for a cardboard box?"
QUESTION_B = "What are some creative uses for a big box?"

# per list, per criterion: the three judge samples' replies (any order: the mean is order-free)
SCRIPT = {
    ("A", "originality"): ["1: 4\n2: 2\n3: 5", "1: 3\n2: 2\n3: 5", "Idea 1 - Score: 5\n2. 2\n3) 4"],
    ("A", "elaboration"): ["1: 3\n2: 1\n3: 4", "1: 3\n2: 1\n3: 4", "1: 3\n2: 1\n3: 4"],
    ("A", "categories"): ["1: pets\n2: storage\n3: science", "1: Pets\n2: storage\n3: storage",
                          "1: pets\n2: IRRELEVANT\n3: science"],
    ("B", "originality"): ["1: 4\n2: 1", "1: 4\n2: 1", "1: 4\n2: 2"],
    ("B", "elaboration"): ["1: 2\n2: 1", "1: 2\n2: 1", "1: 2\n2: 1"],
    ("B", "categories"): ["1: play\n2: storage", "1: play\n2: storage", "1: play\n2: storage"],
}
# hand-computed
ORIG_A = ((4 + 3 + 5) / 3 + (2 + 2 + 2) / 3 + (5 + 5 + 4) / 3) / 3  # = 32/9
ORIG_B = ((4 + 4 + 4) / 3 + (1 + 1 + 2) / 3) / 2  # = 8/3
ELAB_A = (3 + 1 + 4) / 3
ELAB_B = (2 + 1) / 2
FLEX_A = (3 + 2 + 2) / 3  # categories per sample: {pets, storage, science}, {pets, storage}, {pets, science}
FLU_A = (3 + 3 + 2) / 3  # one idea marked irrelevant in sample 3


def _scripted_responder():
    counters: dict = {}
    lock = threading.Lock()

    def respond(request):
        text = request.text
        which = "A" if "Cat castle" in text else "B"
        if "ORIGINALITY" in text:
            crit = "originality"
        elif "ELABORATION" in text:
            crit = "elaboration"
        else:
            crit = "categories"
        with lock:
            i = counters.get((which, crit), 0)
            counters[(which, crit)] = i + 1
        return completion(SCRIPT[(which, crit)][i % 3])

    return respond


def test_judge_end_to_end_against_test_server():
    with OpenAITestServer(_scripted_responder()) as server:
        judge = OpenAIJudge("gpt-4o-mini", base_url=server.base_url, cache_dir=None, max_concurrency=4)
        cj = CreativityJudge(judge, samples=3)
        results = judge_lists(cj, [(QUESTION_A, LIST_A), (QUESTION_B, LIST_B)])
        requests = list(server.requests)

    assert len(requests) == 2 * 3 * 3  # lists x samples x (originality, elaboration, categories)
    for req in requests:
        body = req.json
        assert body["model"] == "gpt-4o-mini"
        assert body["temperature"] == 1.0  # several samples: sampled judge
        text = req.text
        ideas = LIST_A if "Cat castle" in text else LIST_B
        for i, idea in enumerate(ideas, 1):
            assert f"{i}. {idea}" in text
        assert (QUESTION_A if ideas is LIST_A else QUESTION_B) in text
        if "ORIGINALITY" in text:
            assert RUBRICS["originality"] in text
        elif "ELABORATION" in text:
            assert RUBRICS["elaboration"] in text
        else:
            assert "IRRELEVANT" in text and "category" in text
    a, b = results
    assert a["originality"] == pytest.approx(ORIG_A) and ORIG_A == pytest.approx(32 / 9)
    assert b["originality"] == pytest.approx(ORIG_B)
    assert a["elaboration"] == pytest.approx(ELAB_A)
    assert b["elaboration"] == pytest.approx(ELAB_B)
    assert a["flexibility"] == pytest.approx(FLEX_A)
    assert a["fluency"] == pytest.approx(FLU_A)
    assert b["flexibility"] == pytest.approx(2.0) and b["fluency"] == pytest.approx(2.0)


def test_per_idea_mode_sends_one_request_per_idea():
    replies = {LIST_B[0]: "4", LIST_B[1]: "Score: 2"}

    def respond(request):
        text = request.text
        if "Group the ideas" in text:
            return completion("1: play\n2: storage")
        idea = next(i for i in LIST_B if f"Idea: {i}" in text)
        return completion(replies[idea] if "ORIGINALITY" in text else "3")

    with OpenAITestServer(respond) as server:
        judge = OpenAIJudge("gpt-4o-mini", base_url=server.base_url, cache_dir=None)
        cj = CreativityJudge(judge, samples=1, mode="per_idea")
        (res,) = judge_lists(cj, [(QUESTION_B, LIST_B)])
        assert server.request_count == 2 + 2 + 1
        assert all(r.json["temperature"] == 0.0 for r in server.requests)  # one sample: greedy judge
    assert res["originality"] == pytest.approx(3.0)
    assert res["elaboration"] == pytest.approx(3.0)


def test_harness_judging_resumes_and_aggregates(tmp_path):
    """Harness scoring with the test-server judge: table = mean/std over items; a rerun asks nothing."""
    from persona_lens.evals.creativity import CreativityConfig, CreativityHarness
    from persona_lens.evals.creativity.result import markdown_report, score_table

    rows = []
    for item, (question, ideas) in enumerate([(QUESTION_A, LIST_A), (QUESTION_B, LIST_B)]):
        rows.append({"task": "aut", "item_id": f"00{item}", "method": "sa", "seed": 0, "question": question,
                     "idea_lists": [ideas], "wall_s": 1.0 + item, "calls": 1, "prompt_tokens": 50,
                     "gen_tokens": 40, "method_info": {}})
    with OpenAITestServer(_scripted_responder()) as server:
        judge = OpenAIJudge("gpt-4o-mini", base_url=server.base_url, cache_dir=None)
        cfg = CreativityConfig(tasks=["aut"], methods=["sa"], n=2, judge="openai:gpt-4o-mini", judge_samples=3)
        h = CreativityHarness(object(), cfg, out=tmp_path, judge=judge, progress=False)
        scores = h.score(rows)
        first = server.request_count
        assert first == 18
        table, metrics, ratios = score_table(scores)
        scores2 = CreativityHarness(object(), cfg, out=tmp_path, judge=judge, progress=False).score(rows)
        assert server.request_count == first  # every reply came from judgments.jsonl
    assert [s["originality"] for s in scores2] == pytest.approx([ORIG_A, ORIG_B])
    cell = {(r["task"], r["metric"]): r for r in table if r["method"] == "sa"}
    mean = (ORIG_A + ORIG_B) / 2
    std = math.sqrt(((ORIG_A - mean) ** 2 + (ORIG_B - mean) ** 2) / 1)  # sample std, n = 2
    assert cell[("aut", "originality")]["mean"] == pytest.approx(mean)
    assert cell[("aut", "originality")]["std"] == pytest.approx(std)
    assert cell[("aut", "elaboration")]["mean"] == pytest.approx((ELAB_A + ELAB_B) / 2)
    assert cell[("aut", "wall_s")]["mean"] == pytest.approx(1.5)
    md = markdown_report(table, ["sa"], ["aut"], metrics, ratios, h.judge_info, None)
    assert f"{mean:.2f} ± {std:.2f}" in md
    lines = [json.loads(l) for l in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    assert len(lines) == 18 and {l["criterion"] for l in lines} == {"originality", "elaboration", "categories"}


# ----------------------------------------------------------------------------- reply parsing


def test_parse_scores_formats():
    assert parse_scores("1: 4\n2: 3\n3: 5", 3) == [4.0, 3.0, 5.0]
    assert parse_scores("Idea 1: 4\nIdea 2 - score: 2", 2) == [4.0, 2.0]
    assert parse_scores("**1.** 5\n**2.** 1", 2) == [5.0, 1.0]
    assert parse_scores("1. Cat castle: 4/5\n2. Storage - 2", 2) == [4.0, 2.0]
    assert parse_scores("4, 3, 5", 3) == [4.0, 3.0, 5.0]  # bare numbers in order
    assert parse_scores("1: 4\n3: 7", 3) == [4.0, None, None]  # missing and out of range
    assert parse_scores("", 2) == [None, None]
    assert parse_single_score("Score: 4") == 4.0 and parse_single_score("none") is None


def test_parse_categories():
    assert parse_categories("1: Household\n2: **Art**\n3: irrelevant (off topic)", 3) == [
        "household", "art", "irrelevant"]


def test_list_judgment_aggregation_by_hand():
    j = ListJudgment(3, originality=[[4, 2, None], [2, None, None]], elaboration=[[1, 1, 1]],
                     categories=[["a", "b", "irrelevant"], ["a", "a", "a"]])
    m = j.metrics(kept=[0, 2])
    # idea means: (4+2)/2 = 3, 2, NaN -> mean over scored ideas = 2.5
    assert m["originality"] == pytest.approx(2.5)
    assert m["elaboration"] == pytest.approx(1.0)
    assert m["flexibility"] == pytest.approx((2 + 1) / 2)
    assert m["fluency"] == pytest.approx((1 + 2) / 2)  # kept ideas 0 and 2; idea 2 irrelevant in sample 1
