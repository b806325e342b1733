"""Data screening by projection difference: hand-computed, streaming, vs plain transformers, AUROC."""

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HUMOROUS_LAYER
from sklearn.metrics import roc_auc_score

from persona_lens.activations import Captured
from persona_lens.analysis import screen
from persona_lens.analysis.screen import (
    ScreenConfig,
    ScreenResult,
    base_cache_key,
    base_response_fingerprint,
    base_response_store,
    histogram_from_file,
    projection_diff,
    response_projections,
    screen_demo_path,
    training_row,
)
from persona_lens.cli import main
from persona_lens.generation import generate
from persona_lens.io import read_jsonl
from persona_lens.native import native
from persona_lens.runs.fingerprint import model_fingerprint
from persona_lens.vectors import PersonaVector
from persona_lens.viz import save_figure
from persona_lens.viz import screen as screen_viz

SCREEN_TOKENS = 48

VEC = PersonaVector(torch.tensor([[0.0, 1.0], [3.0, 4.0]]), {"persona": "toy", "model_id": "toy-model"})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_training_row_formats():
    p, r = training_row({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                      {"role": "assistant", "content": "a"}]})
    assert p == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}] and r == "a"
    p, r = training_row({"prompt": "q", "response": "a"})
    assert p == [{"role": "user", "content": "q"}] and r == "a"
    with pytest.raises(ValueError, match="assistant"):
        training_row({"messages": [{"role": "user", "content": "q"}]})
    with pytest.raises(ValueError):
        training_row({"prompt": "q"})
    k = base_cache_key([{"role": "user", "content": "q"}])
    assert k == base_cache_key([{"content": "q", "role": "user"}]) and len(k) == 64
    assert k != base_cache_key([{"role": "user", "content": "q "}])


def test_response_projection_by_hand(monkeypatch):
    # response-mean activations at layer 1 (already reduced by capture); unit v[1] = (0.6, 0.8)
    acts = torch.tensor([[1.0, 2.0], [0.0, -5.0]])

    def fake_capture(model, prompts, responses, *, layers, reductions, **kw):
        assert reductions == ["response_mean"] and layers == [1] and len(responses) == 2
        return Captured([1], {"response_mean": acts[:, None, :]})

    monkeypatch.setattr("persona_lens.analysis.screen.single.capture", fake_capture)
    tok = lambda text, add_special_tokens=False: {"input_ids": list(text)}  # noqa: E731
    model = type("M", (), {"tokenizer": staticmethod(tok)})()
    out = response_projections(model, VEC, 1, [[{"role": "user", "content": "x"}]] * 3, ["ab", "", "c"])
    # row 0: (1,2).(0.6,0.8) = 2.2; row 1: empty -> NaN; row 2: (0,-5) -> -4.0
    assert out[0] == pytest.approx(2.2) and np.isnan(out[1]) and out[2] == pytest.approx(-4.0)


def run_screen(model, vector, layer, data, out, *, base_cache=None, progress=False, project_fn=None,
                generate_fn=None, **settings):
    """One screening run; the result is saved to ``<out>.screen/`` as the CLI does."""
    config = ScreenConfig(data=str(data), out=str(out), layer=layer,
                          base_cache=None if base_cache is None else str(base_cache), **settings)
    result = screen.run(model, config, vector=vector, progress=progress, project_fn=project_fn, generate_fn=generate_fn)
    result.save(Path(out).with_suffix(".screen"))
    return result


def _stub_fns(calls):
    """projection = number of 'ha' in the response minus 0.1 * its length in words."""
    def project(prompts, responses):
        calls["project"] += len(responses)
        return np.array([np.nan if not r else r.count("ha") - 0.1 * len(r.split()) for r in responses])

    def generate_base(prompts):
        calls["generate"] += len(prompts)
        return [f"plain answer to {p[-1]['content']}" for p in prompts]

    return project, generate_base


def test_screen_file_by_hand(tmp_path):
    rows = [
        {"prompt": "q1", "response": "ha ha ha"},          # 3 - 0.3 = 2.7; base "plain answer to q1" = -0.4
        {"prompt": "q2", "response": "a plain reply"},     # -0.3 ; base -0.4
        {"prompt": "q1", "response": "ha"},                # 0.9  ; base (cached, same prompt) -0.4
        {"messages": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "haha"}]},  # 2-0.1
        {"prompt": "q4", "response": ""},                  # empty: skipped
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    calls = {"project": 0, "generate": 0}
    project, generate = _stub_fns(calls)
    out = tmp_path / "o.jsonl"
    s = run_screen(None, VEC, 1, data, out, top_k=2, chunk_size=2, project_fn=project, generate_fn=generate)
    got = read_jsonl(out)
    assert [r.get("prompt") for r in got] == ["q1", "q2", "q1", None, "q4"]
    np.testing.assert_allclose([r["projection"] for r in got[:4]], [2.7, -0.3, 0.9, 1.9], atol=1e-12)
    np.testing.assert_allclose([r["base_projection"] for r in got[:4]], [-0.4] * 4, atol=1e-12)
    np.testing.assert_allclose([r["projection_diff"] for r in got[:4]], [3.1, 0.1, 1.3, 2.3], atol=1e-12)
    assert got[4]["projection_diff"] is None and got[4]["skipped"] == "empty response"
    assert calls["generate"] == 4  # q1, q2, q3, q4 once each (q1 repeats across chunks: cached)
    assert s.n == 5 and s.n_scored == 4
    assert s.mean_projection_diff == pytest.approx((3.1 + 0.1 + 1.3 + 2.3) / 4)
    assert s.fraction_positive == 1.0
    assert [t["index"] for t in s.top] == [0, 3]
    top = read_jsonl(tmp_path / "o.screen" / "top.jsonl")
    assert [t["index"] for t in top] == [0, 3] and top[0]["base_response"] == "plain answer to q1"
    assert sum(s.histogram["counts"]) == 4
    summary = json.loads((tmp_path / "o.screen" / "result.json").read_text())
    assert summary["n_scored"] == 4 and summary["top"] == [{"index": 0, "projection_diff": pytest.approx(3.1)},
                                                           {"index": 3, "projection_diff": pytest.approx(2.3)}]
    loaded = ScreenResult.load(tmp_path / "o.screen")
    assert loaded.config == s.config and loaded.top == top and loaded.histogram == s.histogram
    assert save_figure(screen_viz.figures(loaded)["hist"], tmp_path / "hist").exists()
    cache = read_jsonl(tmp_path / "o.base_cache.jsonl")
    assert [c["key"] for c in cache] == [base_cache_key([{"role": "user", "content": q}])
                                         for q in ("q1", "q2", "q3", "q4")]
    assert cache[0]["fingerprint"] == base_response_fingerprint("toy-model", 128)

    # rerun: everything comes from the cache, nothing is generated, identical output
    calls2 = {"project": 0, "generate": 0}
    project2, generate2 = _stub_fns(calls2)
    s2 = run_screen(None, VEC, 1, data, tmp_path / "o2.jsonl", base_cache=tmp_path / "o.base_cache.jsonl",
                     top_k=2, chunk_size=3, project_fn=project2, generate_fn=generate2)
    assert calls2["generate"] == 0 and s2.cache["generated"] == 0
    assert read_jsonl(tmp_path / "o2.jsonl") == got


def test_base_cache_resumes_and_ignores_other_models(tmp_path):
    path = tmp_path / "c.jsonl"
    fp8 = base_response_fingerprint("m", 8)

    def row(key, response, fp=fp8):
        return {"key": key, "fingerprint": fp, "response": response}

    c = base_response_store(path, "m", 8)
    assert c.fingerprint() == fp8
    with c.writing():
        assert c.get(("k1",), fp8) is None
        c.append([row("k1", "r1"), row("k2", "r2")])
    with path.open("a") as fh:  # an interrupted append leaves a truncated last line
        fh.write(json.dumps(row("k3", "x", base_response_fingerprint("other", 8))) + "\n")
        fh.write('{"key": "k4", "model_')
    c = base_response_store(path, "m", 8)
    with c.writing():  # drops the torn line
        assert c.get(("k2",), fp8)["response"] == "r2"
        assert c.get(("k1",), fp8)["response"] == "r1"  # k1 was passed over into the window
        assert c.get(("k3",), fp8) is None  # another model's row is stale
        c.append([row("k3", "r3")])
        assert c.get(("k3",), fp8)["response"] == "r3"
    rows = read_jsonl(path)
    assert [r["key"] for r in rows] == ["k1", "k2", "k3", "k3"] and rows[-1]["response"] == "r3"
    other = base_response_store(path, "m", 16)  # other max_new_tokens
    assert other.get(("k1",), other.fingerprint()) is None


def test_windowed_store_reads_lazily_and_stays_bounded(tmp_path):
    """The windowed store reads only as far as a lookup needs and holds at most ``window`` rows;
    a row evicted from the window is looked up again by reading on (never a stale answer)."""
    path = tmp_path / "c.jsonl"
    fp = base_response_fingerprint("m", 8)
    path.write_text("".join(json.dumps({"key": f"k{i}", "fingerprint": fp, "response": f"r{i}"}) + "\n"
                            for i in range(100)))
    c = base_response_store(path, "m", 8, window=10)
    assert len(c) == 0  # nothing read at construction
    assert c.get(("k5",), fp)["response"] == "r5" and len(c) == 6
    assert c.get(("k50",), fp)["response"] == "r50" and len(c) == 10
    assert c.get(("k0",), fp) is None  # read past and evicted: the caller regenerates it
    assert c.get(("k99",), fp)["response"] == "r99" and len(c) == 10
    with pytest.raises(RuntimeError, match="window"):
        c.rows()


def test_histogram_from_file(tmp_path):
    p = write_jsonl(tmp_path / "h.jsonl", [{"v": x} for x in (0.0, 0.1, 0.5, 1.0)] + [{"v": None}])
    h = histogram_from_file(p, "v", 0.0, 1.0, bins=2, chunk_size=2)
    assert h["edges"] == [0.0, 0.5, 1.0] and h["counts"] == [2, 2]


def _synthetic(path, n, n_prompts=512):
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"question {i % n_prompts}", "response": "ha " * (i % 7) + "answer",
                                 "id": i}) + "\n")


def _cache(path, n_prompts=512):
    with path.open("w") as fh:
        for i in range(n_prompts):
            key = base_cache_key([{"role": "user", "content": f"question {i}"}])
            fh.write(json.dumps({"key": key, "fingerprint": base_response_fingerprint("toy-model", 128),
                                 "response": "plain answer"}) + "\n")


def test_screen_streams_in_chunks_memory_flat(tmp_path):
    """Peak traced memory does not grow with the file: 2k vs 20k rows, stub projection."""
    calls = {"project": 0, "generate": 0}
    project, generate = _stub_fns(calls)
    cache = tmp_path / "cache.jsonl"
    _cache(cache)
    peaks = {}
    t0 = time.time()
    for n in (2_000, 20_000):
        data = tmp_path / f"d{n}.jsonl"
        _synthetic(data, n)
        tracemalloc.start()
        config = ScreenConfig(data=str(data), out=str(tmp_path / f"o{n}.jsonl"), layer=1, base_cache=str(cache),
                              top_k=10, chunk_size=256)
        s = screen.run(None, config, vector=VEC, project_fn=project, generate_fn=generate, progress=False)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert s.n == n and s.n_scored == n
    assert calls["generate"] == 0  # every base response came from the precomputed cache
    print(f"screen peak traced memory: {peaks}, {time.time() - t0:.1f}s")
    assert peaks[20_000] < 1.3 * peaks[2_000] + 256 * 1024, peaks
    # the top rows are the 'ha'-heaviest (6 x 'ha'); among ties the earliest rows come first
    assert [r["index"] for r in s.top] == [6 + 7 * k for k in range(10)]


# --------------------------------------------------------------------------- on SmolLM2


def _hf_response_projection(model, vector, layer, messages, response):
    """Independent: plain transformers, our own token layout, hidden_states[l+1] over the response."""
    tok = model.tokenizer
    p = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    u = (vector.layer(layer) / vector.layer(layer).norm()).double()
    with native(model) as hf, torch.no_grad():
        hs = hf(input_ids=torch.tensor([p + r]), output_hidden_states=True).hidden_states
    return float(hs[layer + 1][0, len(p):].double().mean(0) @ u)


@pytest.fixture(scope="module")
def styled_responses(default_model, humorous_extraction):
    """The 20 held-out questions answered under the pos / neg system prompts of pair 0 (the
    explicit 'comedian' instruction), plus the base model's own answers (no system prompt)."""
    _, _, spec = humorous_extraction
    qs = spec.eval_questions[:20]
    pair = spec.instruction[0]
    msgs = [[{"role": "system", "content": s}, {"role": "user", "content": q}] for s in (pair.pos, pair.neg) for q in qs]
    styled = generate(default_model, msgs + qs, max_new_tokens=SCREEN_TOKENS, batch_size=20, progress=False)
    return qs, styled[:20], styled[20:40], styled[40:]


@pytest.mark.slow
def test_screen_matches_plain_transformers(default_model, humorous_extraction, styled_responses):
    vec, _, _ = humorous_extraction
    qs, pos, neg, base = styled_responses
    prompts = [[{"role": "user", "content": q}] for q in qs[:3]]
    out = projection_diff(default_model, vec, HUMOROUS_LAYER, prompts, pos[:3], base[:3])
    for i in range(3):
        p = _hf_response_projection(default_model, vec, HUMOROUS_LAYER, prompts[i], pos[i])
        b = _hf_response_projection(default_model, vec, HUMOROUS_LAYER, prompts[i], base[i])
        assert out["projection"][i] == pytest.approx(p, rel=1e-4, abs=1e-3)
        assert out["base_projection"][i] == pytest.approx(b, rel=1e-4, abs=1e-3)
        assert out["projection_diff"][i] == pytest.approx(p - b, rel=1e-3, abs=2e-3)


HELDOUT_STYLED = Path(__file__).parent / "data" / "screen_heldout.jsonl"


@pytest.mark.slow
def test_screen_auroc_trait_styled_vs_neutral(default_model, humorous_extraction, tmp_path):
    """Screening ranks humorous responses above neutral answers to the same prompts (AUROC >= 0.8).

    The rows are genuinely trait-styled: the built-in screening set (10 prompts) plus 20 held-out
    prompts in ``tests/data/screen_heldout.jsonl``, each with a neutral, a humorous and an impolite
    answer written by hand (not generated, not used for extraction). Layer 16 was fixed before
    this data existed. Measured on SmolLM2-135M: 0.878 on all 30 prompts (0.908 on the 20 held-out
    ones); the base responses are the model's own greedy answers, generated by ``screen.run``.
    """
    vec, _, _ = humorous_extraction
    rows = read_jsonl(screen_demo_path()) + read_jsonl(HELDOUT_STYLED)
    rows = [{**r, "label": int(r["style"] == "humorous")} for r in rows if r["style"] in ("humorous", "neutral")]
    assert sum(r["label"] for r in rows) == 30 and len(rows) == 60
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    s = run_screen(default_model, vec, HUMOROUS_LAYER, data, tmp_path / "out.jsonl", base_cache=tmp_path / "base.jsonl",
                    max_new_tokens=SCREEN_TOKENS, top_k=10, chunk_size=16, batch_size=16, progress=False)
    assert s.cache["generated"] == 30  # one base response per distinct prompt, reused by both styles
    got = read_jsonl(tmp_path / "out.jsonl")
    assert [r["prompt"] for r in got] == [r["prompt"] for r in rows]
    diffs = np.array([r["projection_diff"] for r in got])
    labels = np.array([r["label"] for r in got])
    auroc = roc_auc_score(labels, diffs)
    print(f"screen AUROC (hand-written humorous vs neutral, layer {HUMOROUS_LAYER}): {auroc:.3f}; "
          f"mean dP humorous {diffs[labels == 1].mean():.3f} neutral {diffs[labels == 0].mean():.3f}")
    assert auroc >= 0.8
    # the flagged top of the file is mostly humorous rows
    top = read_jsonl(tmp_path / "out.screen" / "top.jsonl")
    assert sum(rows[r["index"]]["label"] for r in top) >= 7


@pytest.mark.slow
def test_screen_generated_styled_responses(default_model, humorous_extraction, styled_responses, tmp_path):
    """A harder, noisier setting: responses the model itself wrote under the humorous vs serious
    system prompt (rows hold only user prompt + response). The 135M model follows the humorous
    instruction weakly (many 'pos' answers are not funny), so the labels are noisy; measured
    AUROC ~0.76 at layer 16 (0.78 at layers 10-13). Asserted: clearly better than chance."""
    vec, _, _ = humorous_extraction
    qs, pos, neg, base = styled_responses
    n = len(qs)
    rows = [{"prompt": q, "response": r, "label": 1} for q, r in zip(qs, pos)]
    rows += [{"prompt": q, "response": r, "label": 0} for q, r in zip(qs, neg)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    # the base cache holds the greedy answers generated above (same settings as screening.s own)
    with (tmp_path / "base.jsonl").open("w") as fh:
        for q, b in zip(qs, base):
            fh.write(json.dumps({"key": base_cache_key([{"role": "user", "content": q}]), "response": b,
                                 "fingerprint": base_response_fingerprint(model_fingerprint(default_model),
                                                                          SCREEN_TOKENS)}) + "\n")
    s = run_screen(default_model, vec, HUMOROUS_LAYER, data, tmp_path / "out.jsonl", base_cache=tmp_path / "base.jsonl",
                    max_new_tokens=SCREEN_TOKENS, top_k=5, chunk_size=16, batch_size=20, progress=False)
    assert s.cache["generated"] == 0
    got = read_jsonl(tmp_path / "out.jsonl")
    diffs = [r["projection_diff"] for r in got]
    assert s.mean_projection_diff == pytest.approx(np.mean(diffs))
    auroc = roc_auc_score([r["label"] for r in got], diffs)
    print(f"screen AUROC (humorous- vs serious-prompted generated responses, layer {HUMOROUS_LAYER}): {auroc:.3f}; "
          f"mean dP pos {np.mean(diffs[:n]):.3f} neg {np.mean(diffs[n:]):.3f}")
    assert np.mean(diffs[:n]) > np.mean(diffs[n:])
    assert auroc >= 0.65  # clearly better than chance (0.5)


@pytest.mark.slow
def test_cli_screen_demo(default_model, humorous_extraction, tmp_path, monkeypatch, capsys):
    vec, _, _ = humorous_extraction
    vpath = vec.save(tmp_path / "h.safetensors")
    monkeypatch.setattr("persona_lens.models.load_model", lambda *a, **k: default_model)
    out = tmp_path / "demo.jsonl"
    assert main(["screen", str(screen_demo_path()), "--vector", str(vpath), "--layer", str(HUMOROUS_LAYER),
                 "--out", str(out), "--top", "5", "--max-new-tokens", "16", "--batch-size", "10"]) == 0
    text = capsys.readouterr().out
    assert "top 5" in text and "ΔP=" in text
    got = read_jsonl(out)
    assert len(got) == 30 and len(read_jsonl(tmp_path / "demo.screen" / "top.jsonl")) == 5
    assert (tmp_path / "demo.screen" / "hist.html").exists()
    by_style = {s: np.mean([r["projection_diff"] for r in got if r["style"] == s]) for s in ("humorous", "neutral")}
    print(f"demo mean dP by style: {by_style}")
    assert by_style["humorous"] > by_style["neutral"]
    assert len(read_jsonl(tmp_path / "demo.base_cache.jsonl")) == 10  # one base answer per distinct prompt
