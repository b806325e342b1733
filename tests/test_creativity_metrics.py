"""Creativity tasks (formats, built-in set), offline metrics and score aggregation, CLI parsing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from persona_lens.evals.creativity import metrics as M
from persona_lens.evals.creativity.config import parse_ablation, read_sweep
from persona_lens.evals.creativity.methods import Discussion
from persona_lens.evals.creativity.result import efficiency_ratios
from persona_lens.evals.creativity.tasks import (
    LIST_INSTRUCTION,
    TASKS,
    TaskFormatError,
    load_tasks,
    parse_task_data,
)
from persona_lens.personas.billy import BILLY_PERSONAS, PAPER_MERGE, multi_role_system_prompt

# ----------------------------------------------------------------------------- tasks


def test_builtin_task_set():
    tasks = load_tasks()
    assert list(tasks) == list(TASKS)
    for task, items in tasks.items():
        assert len(items) >= 5, task
        assert len({i.item_id for i in items}) == len(items)
        for it in items:
            assert it.prompt.endswith(LIST_INSTRUCTION) and it.source == "builtin"
            assert "{object}" not in it.prompt
    assert load_tasks(["aut"], n=2)["aut"] == tasks["aut"][:2]


def test_builtin_items_are_not_the_reference_items(reference_dir):
    base = reference_dir / "llm_discussion"
    ours = load_tasks()
    for task in TASKS:
        theirs = set()
        for f in (base / {"aut": "AUT", "instances": "Instances", "similarities": "Similarities",
                          "scientific": "Scientific"}[task]).glob("*.json"):
            items = parse_task_data(task, json.loads(f.read_text()), str(f))
            theirs |= {i.subject.lower() for i in items}
        overlap = {i.subject.lower() for i in ours[task]} & theirs
        assert not overlap, (task, overlap)


def test_reference_formats(reference_dir):
    base = reference_dir / "llm_discussion"
    tasks = load_tasks(TASKS, n=10, tasks_dir=base)
    assert {k: len(v) for k, v in tasks.items()} == {t: 10 for t in TASKS}
    aut = tasks["aut"][0]
    assert aut.subject == "Fork" and "creative use for Fork" in aut.prompt and aut.source.endswith("aut_10.json")
    assert tasks["similarities"][0].question == "Tell me all the ways in which a book and a magazine are alike."
    # scientific: the Example questions, flattened in file order
    sci = json.loads((base / "Scientific" / "scientific_10.json").read_text())
    assert tasks["scientific"][0].question == sci["Task"][0]["Example"][0]
    assert tasks["scientific"][2].question == sci["Task"][1]["Example"][0]
    # duplicates dropped (instances_100 repeats some questions)
    inst = load_tasks(["instances"], tasks_dir=base, split="100")["instances"]
    assert len(inst) == 181
    # auto split picks a file with enough items
    assert len(load_tasks(["aut"], n=25, tasks_dir=base)["aut"]) == 25


def test_task_format_errors():
    with pytest.raises(TaskFormatError):
        parse_task_data("aut", {"Examples": [{"object": "x"}]})
    with pytest.raises(TaskFormatError):
        parse_task_data("scientific", {"Task": [{"Original": "x"}]})
    with pytest.raises(ValueError):
        load_tasks(["poetry"])


def test_item_ids_are_stable():
    a = parse_task_data("instances", {"Examples": ["Name red things.", "Name red things.", "Name blue things."]})
    assert [i.question for i in a] == ["Name red things.", "Name blue things."]
    b = parse_task_data("instances", {"Examples": ["Name red things.", "Name blue things."]})
    assert [i.item_id for i in a] == [i.item_id for i in b]


# ----------------------------------------------------------------------------- aggregation


def test_mean_std_by_hand():
    mean, std, n = M.mean_std([2.0, 4.0, None, float("nan"), 6.0])
    assert (mean, n) == (4.0, 3)
    assert std == pytest.approx(2.0)  # sample std: sqrt((4 + 0 + 4) / 2)
    assert M.mean_std([3.0]) == (3.0, 0.0, 1)
    m, s, n = M.mean_std([])
    assert math.isnan(m) and n == 0


def test_judge_sample_aggregation_by_hand():
    samples = [[5, 3, 1], [4, None, 1], [3, 3, 2]]  # [sample][idea]
    assert M.per_idea_means(samples) == pytest.approx([4.0, 3.0, 4 / 3])
    assert M.response_score(samples) == pytest.approx((4.0 + 3.0 + 4 / 3) / 3)
    assert math.isnan(M.response_score([[None, None]]))


def test_summarize_mean_over_items_then_std():
    rows = [
        {"task": "aut", "method": "sa", "originality": 2.0, "wall_s": 1.0},
        {"task": "aut", "method": "sa", "originality": 4.0, "wall_s": 3.0},
        {"task": "aut", "method": "billy", "originality": 5.0, "wall_s": 2.0},
    ]
    out = {(r["method"], r["metric"]): r for r in M.summarize(rows, ["originality", "wall_s"])}
    assert out[("sa", "originality")]["mean"] == 3.0
    assert out[("sa", "originality")]["std"] == pytest.approx(math.sqrt(2.0))
    assert out[("sa", "originality")]["n"] == 2
    assert out[("billy", "originality")]["std"] == 0.0
    assert M.fmt(3.0, math.sqrt(2.0)) == "3.00 ± 1.41"


def test_efficiency_ratios():
    rows = [{"task": "all", "method": m, "metric": k, "mean": v}
            for m, vals in {"billy": (2.0, 1, 50, 40), "discussion": (100.0, 12, 5000, 480)}.items()
            for k, v in zip(M.EFFICIENCY, vals)]
    r = efficiency_ratios(rows)
    assert r == pytest.approx({"wall_s": 0.02, "calls": 1 / 12, "prompt_tokens": 0.01, "gen_tokens": 1 / 12})


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_dedupe_text_and_embeddings():
    ideas = ["Bird feeder", "bird-feeder!", "A feeder for birds", "Doorstop"]
    emb = _unit([[1, 0, 0], [1, 0, 0], [0.99, 0.05, 0], [0, 1, 0]])
    assert M.dedupe(ideas) == [0, 2, 3]
    assert M.dedupe(ideas, emb) == [0, 3]  # cosine(0, 2) > 0.9


def test_offline_proxies_by_hand():
    emb = _unit([[1, 0], [0, 1], [1, 1]])
    d = M.mean_pairwise_distance(emb)
    c = 1 / math.sqrt(2)
    assert d == pytest.approx(((1 - 0) + (1 - c) + (1 - c)) / 3)
    assert math.isnan(M.mean_pairwise_distance(emb[:1]))
    assert M.mean_distance_to(emb[:2], _unit([1, 0])) == pytest.approx(0.5)
    # two tight groups far apart -> 2 clusters at threshold 0.5
    groups = _unit([[1, 0.01], [1, -0.01], [0.01, 1], [-0.01, 1]])
    assert M.cluster_count(groups, 0.5) == 2
    assert M.cluster_count(groups[:1]) == 1 and M.cluster_count(groups[:0]) == 0
    out = M.offline_metrics(["a b", "c d", "e f", "g h"], groups, _unit([1, 0]))
    assert out["fluency"] == 2  # within-group cosine > 0.9: near duplicates
    spread = _unit([[1, 0.3], [1, -0.3], [0.3, 1], [-0.3, 1]])  # cos within groups 0.83: distinct ideas
    out = M.offline_metrics(["a b", "c d", "e f", "g h"], spread, _unit([1, 0]))
    assert out["fluency"] == 4 and out["flexibility_proxy"] == 2
    assert set(out) == {"n_ideas", "fluency", "flexibility_proxy", "diversity_proxy", "prompt_distance_proxy"}
    assert M.offline_metrics(["x", "x"], None, None) == {"n_ideas": 2.0, "fluency": 1.0}


def test_proxy_metrics_are_labelled():
    for name, (label, proxy) in M.METRICS.items():
        assert proxy == name.endswith("_proxy")
        if proxy:
            assert "proxy" in label.lower()


# ----------------------------------------------------------------------------- config helpers


def test_parse_ablation_and_sweep(tmp_path):
    assert parse_ablation("1..7") == list(range(1, 8))
    assert parse_ablation("1,3,5") == [1, 3, 5]
    assert parse_ablation("3") == [1, 2, 3]
    assert parse_ablation(None) is None
    (tmp_path / "result.json").write_text(json.dumps({"recommendation": {"layer": 12, "alpha": 3.5}}))
    assert read_sweep(tmp_path) == (12, 3.5)  # a sweep's result folder
    assert read_sweep(tmp_path / "result.json") == (12, 3.5)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError):
        read_sweep(tmp_path / "bad.json")


def test_method_prompts():
    assert len(BILLY_PERSONAS) == 7 and PAPER_MERGE == ("creative_professional", "environmentalist", "futurist",
                                                        "futurist")
    mrp = multi_role_system_prompt(["environmentalist", "creative_professional", "futurist", "futurist"])
    assert "environmentalist" in mrp and "creative professional" in mrp and mrp.count("futurist") == 1
    d = Discussion(rounds=3)
    from persona_lens.evals.creativity.tasks import load_tasks as lt

    item = lt(["aut"], n=1)["aut"][0]
    first = d._user_message(item, 0, 0, ["", "", "", ""])
    assert "Environmentalist" in first and item.prompt in first
    mid = d._user_message(item, 1, 1, ["E says", "C says", "F1 says", "F2 says"])
    assert "E says" in mid and "F2 says" in mid and "C says" not in mid and "last round" not in mid
    last = d._user_message(item, 1, 2, ["E", "C", "F1", "F2"])
    assert "last round" in last and last.endswith(LIST_INSTRUCTION)
