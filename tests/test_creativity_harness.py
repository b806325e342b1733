"""A small creativity run on the default model: all five methods, two tasks, offline metrics.

Budget (2 CPU cores, idle): a few minutes — 48 new tokens per call, 3 items per task, the
discussion with its default 4 agents x 3 rounds, the merged vector extracted on the fly from the
built-in personas with one question each.
"""

from __future__ import annotations

import csv
import json

import pytest

from persona_lens.evals import creativity
from persona_lens.evals.creativity import DEFAULT_METHODS, CreativityConfig, CreativityResult
from persona_lens.evals.creativity import methods as methods_mod
from persona_lens.personas.billy import PAPER_MERGE
from persona_lens.viz.creativity import save_figures

TASKS = ["aut", "instances"]
MAX_NEW = 48


def _config(**kw):
    base = dict(tasks=TASKS, methods=list(DEFAULT_METHODS), n=3, max_new_tokens=MAX_NEW, layer=20, alpha=4.0,
                extract_questions=1, extract_max_tokens=24, judge="embedding", batch_size=8)
    base.update(kw)
    return CreativityConfig(**base)


def run_creativity(model, out, figures=True, **kw) -> CreativityResult:
    """One run with its files in ``out``, saved and drawn there as ``persona-lens eval creativity`` does."""
    result = creativity.run(model, _config(**kw), out=out, progress=False)
    result.save(out)
    if figures:
        save_figures(result, out / "figures")
    return result


@pytest.fixture(scope="module")
def small_run(default_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("creativity")
    return out, run_creativity(default_model, out)


@pytest.mark.slow
def test_small_run_outputs(small_run):
    out, result = small_run
    rows = [json.loads(l) for l in (out / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == len(TASKS) * 3 * len(DEFAULT_METHODS)
    assert {(r["task"], r["method"]) for r in rows} == {(t, m) for t in TASKS for m in DEFAULT_METHODS}
    for r in rows:
        assert r["seed"] == 0 and isinstance(r["sampling_seed"], int) and r["max_new_tokens"] == MAX_NEW
        assert r["gen_tokens"] <= MAX_NEW * r["calls"]
        assert r["calls"] == (12 if r["method"] == "discussion" else 1)
    disc = next(r for r in rows if r["method"] == "discussion")
    assert len(disc["transcript"]) == 12 and len(disc["idea_lists"]) == 4  # 4 agents x 3 rounds; per-agent lists
    billy = next(r for r in rows if r["method"] == "billy")
    assert billy["method_info"]["layer"] == 20 and billy["method_info"]["alpha"] == 4.0
    assert billy["method_info"]["components"] == list(PAPER_MERGE)
    assert next(r for r in rows if r["method"] == "sa_t1")["method_info"]["temperature"] == 1.0
    assert "futurist" in next(r for r in rows if r["method"] == "mrp")["method_info"]["system"]
    # the discussion makes R x N calls: >= 10x the generated tokens of BILLY
    gen = {m: sum(r["gen_tokens"] for r in rows if r["method"] == m) for m in DEFAULT_METHODS}
    assert gen["discussion"] >= 10 * gen["billy"], gen
    assert result.ratios["calls"] == pytest.approx(1 / 12)
    assert result.ratios["gen_tokens"] <= 0.1
    loaded = CreativityResult.load(out)
    assert loaded.config == result.config and loaded.ratios == pytest.approx(result.ratios)
    assert len(loaded.scores) == len(result.scores) and (out / "results.md").read_text() == result.markdown()
    # the table has every task x method cell
    with open(out / "results.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    for metric in ("fluency", "n_ideas", "flexibility_proxy", "wall_s", "gen_tokens", "calls", "prompt_tokens"):
        cells = {(r["task"], r["method"]) for r in table if r["metric"] == metric}
        assert cells >= {(t, m) for t in TASKS + ["all"] for m in DEFAULT_METHODS}, metric
    proxy = {r["metric"]: r["proxy"] for r in table}
    assert proxy["diversity_proxy"] == "True" and proxy["fluency"] == "False"
    md = (out / "results.md").read_text()
    for t in TASKS:
        assert f"## {t}" in md
    assert md.count("| billy |") == len(TASKS) + 2  # each task, all, efficiency
    assert "*(proxy)*" in md and "BILLY / discussion" in md
    for name in ("scores", "efficiency"):
        assert (out / "figures" / f"{name}.html").exists()
    cached = sorted(p.name for p in (out / "vectors").rglob("*.safetensors"))
    assert cached == [f"{p}-q1-t24.safetensors" for p in ("creative_professional", "environmentalist", "futurist")]


@pytest.mark.slow
def test_small_run_resumes(small_run, default_model, monkeypatch):
    out, _ = small_run
    path = out / "responses.jsonl"
    lines = path.read_text().splitlines()
    # drop one chunk (sa on instances) as if the run had been interrupted, and rerun sa only
    kept = [l for l in lines if not (json.loads(l)["method"] == "sa" and json.loads(l)["task"] == "instances")]
    dropped = [json.loads(l) for l in lines if l not in kept]
    path.write_text("\n".join(kept) + "\n")
    run_creativity(default_model, out, figures=False, methods=["sa"])
    again = [json.loads(l) for l in path.read_text().splitlines()]
    redone = [r for r in again if r["method"] == "sa" and r["task"] == "instances"]
    assert [r["response"] for r in redone] == [r["response"] for r in dropped]  # same chunk, same seed

    def boom(*a, **k):
        raise AssertionError("a finished row was generated again")

    monkeypatch.setattr(methods_mod.SingleCall, "run", boom)
    monkeypatch.setattr(methods_mod.Discussion, "run", boom)
    result = run_creativity(default_model, out, figures=False)
    assert result.n_responses == len(TASKS) * 3 * len(DEFAULT_METHODS)
    assert result.steering["layer"] == 20


@pytest.mark.slow
def test_ablation_blends_first_k(small_run, default_model):
    out, _ = small_run
    result = run_creativity(default_model, out, tasks=["aut"], n=2, methods=[], ablation_vectors=(1, 2))
    assert result.methods == ["billy_k1", "billy_k2"]
    rows = [json.loads(l) for l in (out / "responses.jsonl").read_text().splitlines()]
    k2 = next(r for r in rows if r["method"] == "billy_k2")
    assert k2["method_info"]["components"] == ["creative_professional", "environmentalist"]
    assert k2["method_info"]["n_vectors"] == 2
    assert (out / "figures" / "ablation.html").exists()
