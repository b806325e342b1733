"""Multi-trait screening: every trait x layer from one capture pass, checked against plain
transformers by hand, against N one-trait runs, numpy's corrcoef/cov and a sorted top-K."""

import csv
import json
import math
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats as scipy_stats

from persona_lens import testing
from persona_lens.analysis import screen
from persona_lens.analysis.screen import (
    MultiScreenConfig,
    MultiScreenResult,
    RunningCovariance,
    ScreenConfig,
    trait_names,
)
from persona_lens.cli import cli
from persona_lens.cli import options as cli_options
from persona_lens.errors import ModelMismatchError, VectorShapeError
from persona_lens.io import read_jsonl
from persona_lens.models import model_id
from persona_lens.vectors import PersonaVector
from persona_lens.viz import screen as screen_viz

ROWS = [
    {"prompt": "What is rain?", "response": "Water falling from clouds, ha!"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                  {"role": "assistant", "content": "Blue. Obviously, you fool."}]},
    {"prompt": "Say hi", "response": "hi"},
    {"prompt": "What is rain?", "response": "Precipitation."},
    {"prompt": "Count to three", "response": "one two three"},
    {"prompt": "Empty one", "response": ""},
]
BASE = {"What is rain?": "Rain is water.", "Name a colour.": "Red.", "Say hi": "Hello there!",
        "Count to three": "1, 2, 3.", "Empty one": "Nothing to say."}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fixed_base(calls=None):
    """Base responses from a table (no generation): ``generate_fn``."""
    def gen(prompts):
        if calls is not None:
            calls.append(len(prompts))
        return [BASE[p[-1]["content"]] for p in prompts]
    return gen


@pytest.fixture(scope="module")
def tiny():
    return testing.tiny_model("llama")


@pytest.fixture(scope="module")
def tiny_hf():
    """The same weights as ``tiny``, never wrapped by the bridge: the independent reference."""
    return testing.tiny_hf_model("llama")


@pytest.fixture(scope="module")
def traits(tiny):
    return [testing.tiny_vector(tiny, seed=s, persona=name) for s, name in enumerate(("humorous", "impolite", "evil"))]


def hf_response_projection(hf, tok, vector, layer, messages, response):
    """Plain transformers: hidden_states[layer + 1] over the response tokens, mean, dot unit v[layer]."""
    p = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hs = hf(input_ids=torch.tensor([p + r]), output_hidden_states=True).hidden_states
    v = vector.vectors[layer].double()
    return float(hs[layer + 1][0, len(p):].double().mean(0) @ (v / v.norm()))


def read_scores(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def column(rows, name):
    return np.array([float(r[name]) if r[name] else np.nan for r in rows])


def test_every_trait_and_layer_matches_plain_transformers(tiny, tiny_hf, traits, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    # layers 0 and 1: the last layer's HF hidden state (hidden_states[3] here) is taken after the final norm
    config = MultiScreenConfig(data=str(data), out=str(tmp_path / "out"), layers=(0, 1), top_k=3, chunk_size=4)
    res = screen.run_multi(tiny, config, vectors=traits, generate_fn=fixed_base(), progress=False)
    got = read_scores(tmp_path / "out" / "scores.csv")
    assert [int(r["index"]) for r in got] == list(range(len(ROWS)))
    tok = tiny.tokenizer
    for i, row in enumerate(ROWS[:5]):
        prompt, response = screen.training_row(row)
        for v in traits:
            for layer in (0, 1):
                p = hf_response_projection(tiny_hf, tok, v, layer, prompt, response)
                b = hf_response_projection(tiny_hf, tok, v, layer, prompt, BASE[prompt[-1]["content"]])
                label = f"{v.name}@{layer}"
                assert float(got[i][f"{label}:projection"]) == pytest.approx(p, abs=1e-5)
                assert float(got[i][f"{label}:base_projection"]) == pytest.approx(b, abs=1e-5)
                assert float(got[i][f"{label}:projection_diff"]) == pytest.approx(p - b, abs=1e-5)
    assert got[5]["skipped"] == "empty response" and got[5]["humorous@0:projection_diff"] == ""
    assert res.n == 6 and res.n_scored == 5
    scored = read_jsonl(tmp_path / "out" / "scored.jsonl")
    assert scored[0]["prompt"] == "What is rain?" and scored[5]["skipped"] == "empty response"
    assert scored[2]["screen"]["evil@1:projection_diff"] == pytest.approx(float(got[2]["evil@1:projection_diff"]))
    # dataset-level ΔP per column, with a Student-t interval
    diffs = column(got, "impolite@1:projection_diff")[:5]
    col = res.column("impolite", 1)
    assert col["mean"] == pytest.approx(diffs.mean()) and col["std"] == pytest.approx(diffs.std())
    lo, hi = scipy_stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=scipy_stats.sem(diffs))
    assert (col["ci_low"], col["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert col["fraction_positive"] == pytest.approx((diffs > 0).mean())


def test_n_traits_equal_n_one_trait_runs(tiny, traits, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    config = MultiScreenConfig(data=str(data), out=str(tmp_path / "multi"), layers=(1,), top_k=2, chunk_size=3)
    res = screen.run_multi(tiny, config, vectors=traits, generate_fn=fixed_base(), progress=False)
    multi = read_scores(tmp_path / "multi" / "scores.csv")
    for v in traits:
        one = ScreenConfig(data=str(data), out=str(tmp_path / f"{v.name}.jsonl"), layer=1, top_k=2, chunk_size=3)
        single = screen.run(tiny, one, vector=v, generate_fn=fixed_base(), progress=False)
        rows = read_jsonl(tmp_path / f"{v.name}.jsonl")
        for field in ("projection", "base_projection", "projection_diff"):
            want = np.array([np.nan if r[field] is None else r[field] for r in rows])
            # float32 forwards of differently composed batches: equal up to float32 rounding
            np.testing.assert_allclose(column(multi, f"{v.name}@1:{field}"), want, rtol=1e-5, atol=1e-8)
        col = res.column(v.name)
        assert col["mean"] == pytest.approx(single.mean_projection_diff, rel=1e-5, abs=1e-8)
        assert col["n"] == single.n_scored and col["fraction_positive"] == single.fraction_positive
        assert [r["index"] for r in res.top[f"{v.name}@1"]] == [r["index"] for r in single.top]


def test_one_capture_pass_per_chunk(tiny, traits, tmp_path, monkeypatch):
    calls = []
    real = screen.multi.capture

    def spy(model, prompts, responses, **kw):
        calls.append((len(prompts), list(kw["layers"])))
        return real(model, prompts, responses, **kw)

    monkeypatch.setattr(screen.multi, "capture", spy)
    data = write_jsonl(tmp_path / "d.jsonl", ROWS[:5])
    config = MultiScreenConfig(data=str(data), out=str(tmp_path / "o"), layers=(0, 1, 2), chunk_size=256)
    screen.run_multi(tiny, config, vectors=traits, generate_fn=fixed_base(), progress=False)
    # one call: 5 responses + 5 base responses, every layer; not one per trait, layer or side
    assert calls == [(10, [0, 1, 2])]
    calls.clear()
    screen.run_multi(tiny, config.replace(out=str(tmp_path / "o2"), chunk_size=2), vectors=traits,
                     generate_fn=fixed_base(), progress=False)
    assert calls == [(4, [0, 1, 2]), (4, [0, 1, 2]), (2, [0, 1, 2])]


def stub_projections(seed=0, n_traits=3, n_layers=2, mix=None):
    """``project_fn``: seeded values [texts, layers, traits] (NaN for an empty text), one draw per
    call, correlated across traits by ``mix`` so the leakage matrix is not the identity."""
    mix = np.eye(n_traits) if mix is None else mix

    def project(prompts, texts):
        rng = np.random.default_rng([seed, zlib.crc32("\n".join(texts).encode())])
        out = rng.standard_normal((len(texts), n_layers, n_traits)) @ mix
        out[[not t for t in texts]] = np.nan
        return out

    return project


def synthetic_rows(n):
    return [{"prompt": f"q{i % 37}", "response": f"answer {i}" if i % 11 else ""} for i in range(n)]


def test_leakage_matrix_equals_numpy_corrcoef(tmp_path):
    vecs = [PersonaVector(torch.randn(2, 4, generator=torch.Generator().manual_seed(s)),
                          {"persona": f"t{s}", "model_id": "toy"}) for s in range(3)]
    mix = np.array([[1.0, 0.8, 0.0], [0.0, 0.6, 0.3], [0.0, 0.0, 1.0]])
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_rows(300))
    config = MultiScreenConfig(data=str(data), out=str(tmp_path / "o"), layers=(0, 1), chunk_size=17)
    res = screen.run_multi(None, config, vectors=vecs, project_fn=stub_projections(mix=mix),
                           generate_fn=lambda ps: [f"base {p[-1]['content']}" for p in ps], progress=False)
    rows = read_scores(tmp_path / "o" / "scores.csv")
    ok = [r["skipped"] == "" for r in rows]
    assert res.n == 300 and res.n_scored == sum(ok) == 300 - len(range(0, 300, 11))
    for layer in (0, 1):
        diffs = np.stack([column(rows, f"t{s}@{layer}:projection_diff")[ok] for s in range(3)], axis=1)
        leak = res.leakage[str(layer)]
        np.testing.assert_allclose(leak["correlation"], np.corrcoef(diffs, rowvar=False), atol=1e-10)
        np.testing.assert_allclose(leak["covariance"], np.cov(diffs, rowvar=False), atol=1e-10)
        assert leak["n"] == len(diffs) and leak["traits"] == ["t0", "t1", "t2"]
    assert res.leakage["0"]["correlation"][0][1] > 0.3  # the mix makes t0 and t1 co-vary


def test_running_covariance_merges_batches_like_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 4)) @ rng.standard_normal((4, 4)) + 5.0
    rc = RunningCovariance(4)
    for start, stop in ((0, 1), (1, 250), (250, 251), (251, 1000)):
        rc.update(x[start:stop])
    rc.update(np.zeros((0, 4)))
    np.testing.assert_allclose(rc.covariance(), np.cov(x, rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(rc.correlation(), np.corrcoef(x, rowvar=False), rtol=1e-10)
    assert np.isnan(RunningCovariance(2).correlation()).all()


def test_top_k_per_trait_is_the_sorted_largest(tmp_path):
    vecs = [PersonaVector(torch.ones(2, 4) * (s + 1), {"persona": "same", "model_id": "toy"}) for s in range(2)]
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_rows(200))
    config = MultiScreenConfig(data=str(data), out=str(tmp_path / "o"), layers=(1,), top_k=7, chunk_size=13)
    project = stub_projections(n_traits=2, n_layers=1)
    res = screen.run_multi(None, config, vectors=vecs, project_fn=project,
                           generate_fn=lambda ps: ["b"] * len(ps), progress=False)
    assert res.traits == ["same", "same#2"]  # repeated names are told apart
    rows = read_scores(tmp_path / "o" / "scores.csv")
    for trait in res.traits:
        d = column(rows, f"{trait}@1:projection_diff")
        idx = [i for i in np.lexsort((np.arange(len(d)), -np.nan_to_num(d, nan=-np.inf)))][:7]
        top = res.top[f"{trait}@1"]
        assert [r["index"] for r in top] == idx
        assert [r["projection_diff"] for r in top] == pytest.approx(d[idx].tolist())
        assert top[0]["row"] == synthetic_rows(200)[idx[0]] and top[0]["base_response"] == "b"
    res.save(tmp_path / "o")
    loaded = MultiScreenResult.load(tmp_path / "o")
    assert loaded.top == json.loads(json.dumps(res.top)) and loaded.columns == res.columns


def test_mismatched_vectors_are_refused_by_name(tiny, traits, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    config = MultiScreenConfig(data=str(data), out=str(tmp_path / "o"), layers=(1,))
    other = PersonaVector(traits[1].vectors.clone(), {"persona": "x", "model_id": "another/model"})
    with pytest.raises(ModelMismatchError, match="another/model"):
        screen.run_multi(tiny, config, vectors=[traits[0], other], generate_fn=fixed_base(), progress=False)
    narrow = PersonaVector(torch.randn(3, 32), {"persona": "narrow", "model_id": model_id(tiny)})
    with pytest.raises(VectorShapeError):
        screen.run_multi(tiny, config, vectors=[traits[0], narrow], generate_fn=fixed_base(), progress=False)
    with pytest.raises(VectorShapeError):  # consistent with each other, not with the model
        screen.run_multi(tiny, config, vectors=[narrow], generate_fn=fixed_base(), progress=False)
    assert not (tmp_path / "o" / "scores.csv").exists()
    assert trait_names(traits + [traits[0], traits[0]]) == ["humorous", "impolite", "evil", "humorous#2", "humorous#3"]


def test_memory_flat_in_rows_and_result_holds_no_rows(tmp_path):
    """Peak traced memory does not grow with the file (300 vs 3k rows, 8 traits x 2 layers), and
    nothing in the result is per row: every list is bounded by top_k, bins or the trait count."""
    vecs = [PersonaVector(torch.randn(2, 4, generator=torch.Generator().manual_seed(s)),
                          {"persona": f"t{s}", "model_id": "toy"}) for s in range(8)]
    project = stub_projections(n_traits=8)
    peaks = {}
    for n in (300, 3_000):
        data = write_jsonl(tmp_path / f"d{n}.jsonl", synthetic_rows(n))
        config = MultiScreenConfig(data=str(data), out=str(tmp_path / f"o{n}"), layers=(0, 1), top_k=5,
                                   chunk_size=256, bins=20)
        tracemalloc.start()
        res = screen.run_multi(None, config, vectors=vecs, project_fn=project,
                               generate_fn=lambda ps: ["b"] * len(ps), progress=False)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert res.n == n
    assert peaks[3_000] < 1.3 * peaks[300] + 256 * 1024, peaks

    def longest_list(x):
        if isinstance(x, dict):
            return max((longest_list(v) for v in x.values()), default=0)
        if isinstance(x, list):
            return max([len(x), *(longest_list(v) for v in x)])
        return 0

    assert longest_list(res.to_dict()) <= 21 and all(len(rows) == 5 for rows in res.top.values())
    assert sum(1 for _ in open(tmp_path / "o3000" / "scores.csv")) == 3_001  # every row went to disk


@pytest.fixture
def cli_tiny(tiny, monkeypatch):
    monkeypatch.setattr(cli_options.models, "load_model", lambda *a, **k: tiny)
    monkeypatch.setattr(cli_options.models, "resolve_model_name", lambda name: ("tiny", "tiny", model_id(tiny)))
    return tiny


def test_cli_multi_trait_end_to_end(cli_tiny, traits, tmp_path):
    files = [str(v.save(tmp_path / f"{v.name}.safetensors")) for v in traits]
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    common = ["--model", "tiny", "--max-new-tokens", "3", "--top", "2"]
    out = tmp_path / "report"
    args = ["screen", str(data), *sum((["--vector", f] for f in files), []), "--layers", "2,0", "--out", str(out)]
    result = CliRunner().invoke(cli, [*args, *common])
    assert result.exit_code == 0, result.output
    assert "traits by mean ΔP" in result.output and "leakage" in result.output
    summary = json.loads(result.output[result.output.rindex("\n{") + 1:])
    for name in ("scores.csv", "scored.jsonl", "result.json", "config.json", "top.jsonl", "base_cache.jsonl"):
        assert (out / name).exists(), name
    for fig in ("means_L0", "dist_L2", "leakage_L0", "top_L2"):
        assert (out / f"{fig}.html").exists() and (out / f"{fig}.json").exists() and fig in summary["figures"]
    assert (out / "leakage_L0.csv").exists() and (out / "means_L2.csv").exists()
    res = MultiScreenResult.load(out)
    assert res.layers == [0, 2] and res.traits == ["humorous", "impolite", "evil"] and res.n == 6
    assert len(read_scores(out / "scores.csv")) == 6
    # a rerun reads every base response from the cache
    again = CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "again"), "--base-cache",
                                     str(out / "base_cache.jsonl"), *common])
    assert again.exit_code == 0, again.output
    assert MultiScreenResult.load(tmp_path / "again").cache["generated"] == 0
    assert (tmp_path / "again" / "scores.csv").read_text() == (out / "scores.csv").read_text()
    # the one-vector form is unchanged: a scored JSONL and its .screen folder
    one = CliRunner().invoke(cli, ["screen", str(data), "--vector", files[0], "--layer", "1",
                                   "--out", str(tmp_path / "one.jsonl"), *common])
    assert one.exit_code == 0, one.output
    assert len(read_jsonl(tmp_path / "one.jsonl")) == 6 and (tmp_path / "one.screen" / "hist.html").exists()


def test_cli_refuses_bad_combinations_before_loading(cli_tiny, traits, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_options.models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    good = str(traits[0].save(tmp_path / "a.safetensors"))
    other = str(PersonaVector(traits[1].vectors, {"persona": "b", "model_id": "another/model"})
                .save(tmp_path / "b.safetensors"))
    data = write_jsonl(tmp_path / "d.jsonl", ROWS)
    base = ["screen", str(data), "--vector", good, "--model", "tiny"]
    r = CliRunner().invoke(cli, [*base, "--layer", "1", "--layers", "1,2", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "exactly one of --layer" in r.output
    r = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "o")])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, [*base, "--vector", other, "--layer", "1", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "ModelMismatchError" in r.output and not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(cli, [*base, "--layers", "1", "--out", str(tmp_path / "file")])
    assert r.exit_code == 2 and "not a directory" in r.output
    assert "--layers" in CliRunner().invoke(cli, ["screen", "--help"]).output


def test_figures_of_a_multi_trait_result(tmp_path):
    vecs = [PersonaVector(torch.randn(2, 4, generator=torch.Generator().manual_seed(s)),
                          {"persona": f"t{s}", "model_id": "toy"}) for s in range(3)]
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_rows(60))
    config = MultiScreenConfig(data=str(data), out=str(tmp_path / "o"), layers=(0,), top_k=4, bins=10)
    res = screen.run_multi(None, config, vectors=vecs, project_fn=stub_projections(n_layers=1),
                           generate_fn=lambda ps: ["b"] * len(ps), progress=False)
    figs = screen_viz.multi_figures(res)
    assert set(figs) == {"means_L0", "dist_L0", "leakage_L0", "top_L0"}
    means = figs["means_L0"][0].data[0]
    assert list(means.y) == sorted(means.y, reverse=True)  # ranked, largest mean ΔP first
    assert sum(sum(t.y) for t in figs["dist_L0"][0].data) == 3 * res.n_scored  # every scored row, per trait
    assert len(screen_viz.top_rows(res)) == 3 * 4
    z = np.array(figs["leakage_L0"][0].data[0].z)
    np.testing.assert_allclose(z, np.array(res.leakage["0"]["correlation"], dtype=float))
    assert math.isclose(z[0, 0], 1.0)
