"""Autotune: Pareto ranking and successive halving against hand-written references, the judge-call
budget, seeding, a synthetic search with a known best point, save/load and the CLI (tiny models)."""

import itertools
import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from persona_lens import dose, testing
from persona_lens.analysis import autotune
from persona_lens.analysis.autotune import (
    AutotuneConfig,
    AutotuneResult,
    answer_diversity,
    bootstrap_mean_ci,
    crowding_distance,
    non_dominated_sort,
    pareto_front,
    plan,
    promote,
    successive_halving,
    survivors,
)
from persona_lens.cli import options as cli_options
from persona_lens.cli.autotune import autotune as autotune_cmd
from persona_lens.errors import BudgetError, NoDoseCardError
from persona_lens.personas import load_persona
from persona_lens.viz import autotune as autotune_viz


class TraitOnlyJudge:
    """Deterministic fake trait judge: a checksum of the answer (0-100); counts every score."""

    name = "fake-trait"

    def __init__(self):
        self.calls = 0

    def score_trait(self, spec, question, answer):
        return self.score_trait_many(spec, [(question, answer)])[0]

    def score_trait_many(self, spec, qa, *, progress=False):
        self.calls += len(qa)
        return [float(sum(map(ord, a)) % 101) for _, a in qa]


class CountingJudge(TraitOnlyJudge):
    """The same, and a CoherenceScorer (coherence 80 for every answer; one call per answer)."""

    name = "fake"

    def score_coherence(self, question, answer):
        return self.score_coherence_many([(question, answer)])[0]

    def score_coherence_many(self, qa, *, progress=False):
        self.calls += len(qa)
        return [80.0] * len(qa)


class ChangeJudge(CountingJudge):
    """Trait 60 for an answer that differs from the first answer judged for its question (the
    unsteered one: a rung judges the baseline's new questions before the steered answers), else 0."""

    def __init__(self):
        super().__init__()
        self.first: dict[str, str] = {}

    def score_trait_many(self, spec, qa, *, progress=False):
        self.calls += len(qa)
        return [0.0 if self.first.setdefault(q, a) == a else 60.0 for q, a in qa]


# 4 candidates, 8 questions, eta 2, final 2: n0 = 3 -> rungs (4 x 3 questions, 2 x 6), 2 x (12 + 6 + 6) = 48 calls
SMALL = AutotuneConfig(layers=(1, 2), alphas=(0.05, 0.1), positions=("response",), n_questions=8, budget=50,
                       max_new_tokens=5, n_boot=50, eta=2, final_size=2)


# --------------------------------------------------------------------------- Pareto ranking


def _brute_front(points):
    """Indices of the points no other point dominates (maximising; NaN = worst)."""
    p = np.where(np.isnan(points), -np.inf, points)
    return [i for i in range(len(p))
            if not any(np.all(p[j] >= p[i]) and np.any(p[j] > p[i]) for j in range(len(p)) if j != i)]


def test_pareto_front_equals_brute_force_filter():
    rng = np.random.default_rng(3)
    for trial in range(30):
        points = rng.integers(0, 4, size=(int(rng.integers(1, 25)), 3)).astype(float)  # many ties
        if trial % 3 == 0:
            points[rng.random(points.shape) < 0.1] = np.nan
        assert pareto_front(points) == _brute_front(points)
        # every later front is the brute-force front once the earlier ones are removed
        ranks = non_dominated_sort(points)
        left = list(range(len(points)))
        rank = 0
        while left:
            front = [left[i] for i in _brute_front(points[left])]
            assert sorted(np.flatnonzero(ranks == rank).tolist()) == front
            left = [i for i in left if i not in front]
            rank += 1


def test_crowding_and_promotion_hand_checked():
    # one front of five points plus a dominated one (index 5)
    points = np.array([[0, 4], [1, 3], [2, 2.5], [3, 1], [4, 0], [0.5, 0.5]], dtype=float)
    # by hand: ends inf; (1,3): 2/4 + 1.5/4 = 0.875; (2,2.5): 2/4 + 2/4 = 1.0; (3,1): 2/4 + 2.5/4 = 1.125
    crowd = crowding_distance(points[:5])
    assert np.isinf(crowd[0]) and np.isinf(crowd[4])
    assert crowd[1:4] == pytest.approx([0.875, 1.0, 1.125])
    assert promote(points, 3) == [0, 3, 4]
    assert promote(points, 4) == [0, 2, 3, 4]
    assert promote(points, 6) == [0, 1, 2, 3, 4, 5]
    assert promote(points, 3, always=[5]) == [0, 4, 5]  # the best point is always promoted
    # a front of two: both crowding distances are infinite; the larger normalised sum (0+1+1 > 1+0+0) wins
    assert promote(np.array([[1.0, 0.0, 0.0], [0.6, 0.6, 0.6]]), 1) == [1]


def test_schedule_hand_checked():
    assert survivors(27, 3, 1) == [27, 9, 3, 1]
    assert survivors(10, 3, 3) == [10, 4, 3]
    assert survivors(10, 3, 3, n_rungs=2) == [10, 4]
    # 9 candidates, eta 3, final 1 -> [9, 3, 1]; n0=1: n=[1,3,9]: 9*1 + 3*2 + 1*6 + baseline 9 = 30
    small = plan(9, 9, 41, calls_per_answer=1, eta=3, final_size=1, min_questions=1)
    assert small["n0"] == 1 and small["total_calls"] == 30
    assert [(r["candidates"], r["questions"], r["calls"]) for r in small["rungs"]] == [(9, 1, 10), (3, 3, 8),
                                                                                      (1, 9, 12)]
    # n0=2: n=[2,6,9]: 18 + 12 + 3 + 9 = 42
    assert plan(9, 9, 42, calls_per_answer=1, eta=3, final_size=1, min_questions=1)["total_calls"] == 42
    # n0=3: n=[3,9,9]: the third rung adds no question and is dropped; 27 + 18 + 9 = 54
    full = plan(9, 9, 54, calls_per_answer=1, eta=3, final_size=1, min_questions=1)
    assert full["total_calls"] == 54 and [r["candidates"] for r in full["rungs"]] == [9, 3]
    assert plan(9, 9, 60, calls_per_answer=2, eta=3, final_size=1, min_questions=1)["total_calls"] == 60
    with pytest.raises(BudgetError, match="needs 30"):
        plan(9, 9, 29, calls_per_answer=1, eta=3, final_size=1, min_questions=1)


# --------------------------------------------------------------------------- successive halving


def _synthetic(true_means, noise=0.0, seed=0):
    """evaluate() for successive_halving: per-question values = true mean + seeded noise; records calls."""
    true_means = np.asarray(true_means, dtype=float)
    rng = np.random.default_rng(seed)
    table = true_means[:, None, :] + noise * rng.standard_normal((len(true_means), 50, 3))
    seen: list[tuple[list[int], int, range]] = []

    def evaluate(alive, n, new):
        seen.append((list(alive), n, new))
        per = {c: {k: table[c, :n, i] for i, k in enumerate(autotune.OBJECTIVES)} for c in alive}
        return per, {"coherence": [1.0] * n, "diversity": [1.0] * n}

    return evaluate, seen


def test_successive_halving_keeps_the_top_third_hand_checked():
    # a dominance chain: candidate i beats every j < i on all objectives; no best point (floors unreachable)
    means = [[i, i, i] for i in range(9)]
    evaluate, seen = _synthetic(means)
    schedule = plan(9, 9, 41, calls_per_answer=1, eta=3, final_size=1, min_questions=1)  # rungs 9 -> 3 -> 1
    out = successive_halving(9, schedule, evaluate, lambda base: {"coherence": 99, "diversity": 99},
                             rng=np.random.default_rng(0), n_boot=0)
    assert [s[0] for s in seen] == [list(range(9)), [6, 7, 8], [8]]
    assert [(s[1], list(s[2])) for s in seen] == [(1, [0]), (3, [1, 2]), (9, list(range(3, 9)))]
    promoted = {(e["rung"], e["candidate"]) for e in out["evaluations"] if e["promoted"]}
    assert promoted == {(0, 6), (0, 7), (0, 8), (1, 8)}
    assert out["best"] is None and out["front"] == [8]


def test_synthetic_search_finds_the_known_best_point():
    # 24 candidates; trait effect grows with the index but coherence falls below the floor (0.5)
    # from candidate 15 on and diversity below its floor for 14: the best feasible point is 13.
    n = 24
    means = [[float(i), 1.0 - i / 30 if i < 15 else 0.2, 0.3 if i == 14 else 0.9] for i in range(n)]
    evaluate, _ = _synthetic(means, noise=0.05, seed=1)
    schedule = plan(n, 30, 300, calls_per_answer=1, eta=3, final_size=2, min_questions=2)
    out = successive_halving(n, schedule, evaluate, lambda base: {"coherence": 0.5, "diversity": 0.8},
                             rng=np.random.default_rng(0), n_boot=100)
    assert out["best"] == 13
    last = [e for e in out["evaluations"] if e["candidate"] == 13][-1]
    assert last["trait_effect_lo"] <= 13.0 <= last["trait_effect_hi"] and last["feasible"]


def test_answer_diversity_and_bootstrap_by_hand():
    # Jaccard: J(0,1) = 1, J(0,2) = J(1,2) = 0 -> 1 - mean over the other two answers
    assert answer_diversity(["a b", "B a", "c d"]) == pytest.approx([0.5, 0.5, 1.0])
    assert answer_diversity(["same text"] * 4) == pytest.approx([0.0] * 4)
    assert np.isnan(answer_diversity(["one"])).all()
    values = [1.0, 2.0, 3.0, 4.0, np.nan]
    a = bootstrap_mean_ci(values, np.random.default_rng(5), n_boot=500)
    assert a == bootstrap_mean_ci(values, np.random.default_rng(5), n_boot=500)
    mean, lo, hi, n = a
    assert mean == 2.5 and n == 4 and 1.0 <= lo < 2.5 < hi <= 4.0
    assert bootstrap_mean_ci([7.0], np.random.default_rng(0)) == (7.0, 7.0, 7.0, 1)
    assert bootstrap_mean_ci([], np.random.default_rng(0))[3] == 0


# --------------------------------------------------------------------------- runs on a tiny model


@pytest.fixture(scope="module")
def spec():
    return load_persona("creative_professional")


def test_run_judge_calls_match_the_budget_accounting(tiny_model, spec):
    vector = testing.tiny_vector(tiny_model)
    for coherence, budget in ((True, 50), (False, 25), (True, 200)):
        judge = CountingJudge() if coherence else TraitOnlyJudge()
        res = autotune.run(tiny_model, SMALL.replace(budget=budget), vectors=vector, spec=spec, judge=judge,
                           progress=False)
        planned = plan(4, 8, budget, calls_per_answer=2 if coherence else 1, eta=2, final_size=2)
        assert judge.calls == res.judge_calls == planned["total_calls"] <= budget
        assert sum(r["calls"] for r in res.rungs) == judge.calls
        assert res.settings["coherence_source"].startswith("judge" if coherence else "text_coherence")
    judge = CountingJudge()
    with pytest.raises(BudgetError):
        autotune.run(tiny_model, SMALL.replace(budget=31), vectors=vector, spec=spec, judge=judge, progress=False)
    assert judge.calls == 0


def test_run_is_seeded_reproducible_and_leaves_global_rng_alone(tiny_model, spec, tmp_path):
    vector = testing.tiny_vector(tiny_model)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    runs = [autotune.run(tiny_model, SMALL.replace(seed=s), vectors=vector, spec=spec, judge=CountingJudge(),
                         progress=False) for s in (4, 4, 5)]
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all() and torch.equal(torch.get_rng_state(), before[2])
    a, b, c = (r.to_dict() for r in runs)
    for d in (a, b, c):
        d["settings"].pop("wall_s")
    assert a == b
    assert a["settings"]["question_order"] != c["settings"]["question_order"]
    # save/load round trip
    runs[0].save(tmp_path)
    back = AutotuneResult.load(tmp_path)
    assert back.config == runs[0].config and back.to_dict() == runs[0].to_dict()
    assert back.generations == runs[0].generations and back.recommendation() == runs[0].recommendation()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved.pop("analysis") == "autotune" and AutotuneConfig.from_dict(saved) == runs[0].config


@pytest.mark.filterwarnings("ignore::persona_lens.steering.SteeringStrengthWarning")  # raw 0.5 > ||h|| here
def test_run_blend_weights_and_raw_alphas_by_hand(tiny_model, spec):
    v1, v2 = testing.tiny_vector(tiny_model, seed=1), testing.tiny_vector(tiny_model, seed=2)
    cfg = SMALL.replace(layers=(1,), alphas=(0.5,), weights=((1.0, 0.0), (0.0, 1.0), (0.5, 0.5)), budget=80)
    res = autotune.run(tiny_model, cfg, vectors=[v1, v2], spec=spec, judge=CountingJudge(), progress=False)
    resid = res.settings["resid_norm"]["1"]
    rows = {tuple(c["weights"]): c for c in res.candidates}
    # normalized blend: (1,0) and (0,1) are unit vectors (tiny vectors are unit per layer), so raw alpha = f * ||h||
    assert rows[(1.0, 0.0)]["alpha"] == pytest.approx(0.5 * resid, rel=1e-5)
    assert rows[(0.0, 1.0)]["alpha"] == pytest.approx(0.5 * resid, rel=1e-5)
    mix_norm = float((0.5 * v1.layer(1) + 0.5 * v2.layer(1)).norm())
    assert rows[(0.5, 0.5)]["alpha"] == pytest.approx(0.5 * resid / mix_norm, rel=1e-5)
    raw = autotune.run(tiny_model, cfg.replace(alpha_mode="raw", weights=((1.0, 0.0),)), vectors=[v1, v2], spec=spec,
                       judge=CountingJudge(), progress=False)
    assert raw.candidates[0]["alpha"] == 0.5 and raw.candidates[0]["alpha_frac"] == pytest.approx(0.5 / resid)


def test_best_point_is_the_documented_scalarisation(tiny_model, spec):
    res = autotune.run(tiny_model, SMALL, vectors=testing.tiny_vector(tiny_model), spec=spec, judge=ChangeJudge(),
                       progress=False)
    last = len(res.rungs) - 1
    floors = res.settings["floors"]
    feasible = [c for c in res.candidates if c["rung_reached"] == last and c["trait_effect"] > 0
                and c["coherence"] >= floors["coherence"] and c["diversity"] >= floors["diversity"]]
    assert feasible, "the fixture should leave a feasible candidate"
    expected = min(feasible, key=lambda c: (-c["trait_effect"], abs(c["alpha_frac"]), c["layer"]))
    assert res.best is not None and res.best["candidate"] == expected["candidate"]
    assert [c["candidate"] for c in res.candidates if c["is_best"]] == [expected["candidate"]]
    assert floors["coherence"] == 50.0  # a coherence judge: the absolute floor
    assert floors["diversity"] == pytest.approx(0.9 * res.settings["baseline"]["diversity"])
    rec = res.recommendation()
    assert rec["layer"] == expected["layer"] and rec["alpha"] == expected["alpha"]
    assert rec["trait_effect_ci"][0] <= rec["trait_effect"] <= rec["trait_effect_ci"][1]
    # the front is the brute-force non-dominated set of the last rung
    final = [c for c in res.candidates if c["rung_reached"] == last]
    pts = np.array([[c[k] for k in autotune.OBJECTIVES] for c in final], dtype=float)
    assert sorted(res.front) == sorted(final[i]["candidate"] for i in _brute_front(pts))


def test_run_refuses_a_judge_without_trait_scores(tiny_model, spec):
    with pytest.raises(Exception, match="TraitScorer"):
        autotune.run(tiny_model, SMALL, vectors=testing.tiny_vector(tiny_model), spec=spec, judge=object(),
                     progress=False)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(tiny_model, monkeypatch, tmp_path):
    loads: list[str] = []

    def load(self, name=None):
        loads.append(name or self.model)
        return tiny_model

    monkeypatch.setattr(cli_options.Backend, "load", load)
    monkeypatch.setattr(cli_options.JudgeOptions, "build", lambda self, model=None, model_name=None: ChangeJudge())
    path = testing.tiny_vector(tiny_model).save(tmp_path / "v.safetensors")
    return path, loads


ARGS = ["--persona", "creative_professional", "--layers", "1,2", "--alphas", "0.05,0.1", "--n-questions", "8",
        "--budget", "50", "--eta", "2", "--final-size", "2", "--max-new-tokens", "5", "--n-boot", "50", "--no-progress"]


def test_cli_end_to_end_writes_tables_and_figures(cli_env, tmp_path):
    vector, _ = cli_env
    out = tmp_path / "out"
    res = CliRunner().invoke(autotune_cmd, ["--vector", str(vector), "--out", str(out), *ARGS],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    for name in ("autotune_candidates", "autotune_evaluations", "autotune_pareto", "autotune_budget"):
        assert (out / f"{name}.json").exists() and (out / f"{name}.csv").exists()
    for name in ("autotune_pareto", "autotune_budget"):
        html = (out / f"{name}.html").read_text()
        assert "plotly" in html and "cdn.plot.ly" not in html
    printed = json.loads(res.output[res.output.index("{"):])
    assert printed["judge_calls"] == 48
    loaded = AutotuneResult.load(out)
    assert loaded.judge_calls == printed["judge_calls"] and len(loaded.candidates) == 4
    figs = autotune_viz.figures(loaded)
    front_trace = next(t for t in figs["autotune_pareto"].data if t.name == "on the front")
    assert len(front_trace.x) == len(loaded.front)
    assert [b for b in figs["autotune_budget"].data if b.type == "bar"][0].y == tuple(r["calls"] for r in loaded.rungs)


def test_cli_write_card_needs_a_card_and_writes_the_recommendation(cli_env, tmp_path, tiny_model):
    vector, loads = cli_env
    with pytest.raises(NoDoseCardError):
        CliRunner().invoke(autotune_cmd, ["--vector", str(vector), "--out", str(tmp_path / "a"), "--write-card",
                                          str(vector), *ARGS], catch_exceptions=False)
    assert loads == []  # refused before any model loads
    card = dose.DoseCard(persona="creative_professional", model_id=None, judge="fake", positions="response",
                         baseline={}, positive={}, curves=[])
    dose.write_card(vector, card)
    out = tmp_path / "b"
    res = CliRunner().invoke(autotune_cmd, ["--vector", str(vector), "--out", str(out), "--write-card", str(vector),
                                            *ARGS], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rec = AutotuneResult.load(out).recommendation()
    written = dose.read_card(vector).recommendation
    assert rec is not None and written == rec and written["source"] == "autotune"
    assert {"layer", "alpha", "positions"} <= set(written)


def test_cli_rejects_mismatched_weights(cli_env, tmp_path):
    vector, loads = cli_env
    res = CliRunner().invoke(autotune_cmd, ["--vector", str(vector), "--vector", str(vector), "--weights", "1,2,3",
                                            "--out", str(tmp_path / "o"), *ARGS])
    assert res.exit_code == 2 and "3 weight(s) for 2 vector(s)" in res.output and loads == []


def test_candidate_grid_is_the_full_product(tiny_model, spec):
    res = autotune.run(tiny_model, SMALL.replace(positions=("response", "all"), budget=100),
                       vectors=testing.tiny_vector(tiny_model), spec=spec, judge=CountingJudge(), progress=False)
    got = {(c["layer"], c["alpha_value"], c["positions"]) for c in res.candidates}
    assert got == set(itertools.product((1, 2), (0.05, 0.1), ("response", "all")))
    assert set(res.front) <= {c["candidate"] for c in res.candidates if c["rung_reached"] == len(res.rungs) - 1}
