"""Layer sweep: the recommendation rule, text coherence, and a tiny real sweep (its statistics: test_stats.py)."""

import importlib
import json

import pytest

from persona_lens import testing
from persona_lens.analysis import sweep
from persona_lens.analysis.sweep import (
    DEFAULT_ALPHAS,
    SweepConfig,
    SweepResult,
    default_sweep_layers,
    recommend,
    text_coherence,
)
from persona_lens.evals.creativity import read_sweep
from persona_lens.models import model_id
from persona_lens.personas import load_persona
from persona_lens.viz import sweep as sweep_viz

gen_module = importlib.import_module("persona_lens.generation")  # the package re-exports a function of that name


def test_text_coherence_flags_degenerate_text():
    good = text_coherence("A brick can hold a door open, become a bookend, or be painted as a garden marker.")
    loop = text_coherence("The beach. The beach. The beach. The beach. The beach. The beach. The beach.")
    letters = text_coherence("TheHHHHHHHHHHHHHHHHHHHHHHHHHHHHHHHHHHHHH")
    empty = text_coherence("")
    assert good["coherence"] > 0.7
    assert loop["coherence"] < 0.2 and letters["coherence"] < 0.2
    assert empty == {"words": 0, "distinct": 0.0, "repetition": 1.0, "coherence": 0.0}


def _table():
    layers = [{"layer": l, "auroc": a} for l, a in [(2, 0.55), (4, 0.95), (6, 0.99), (8, 0.40)]]
    cells = []

    def cell(layer, alpha, frac, effect, ok):
        cells.append({"layer": layer, "alpha": alpha, "alpha_frac": frac, "effect": effect, "passes_guard": ok})

    for l in (2, 4, 6, 8):
        cell(l, 0.0, 0.0, 0.0, True)
    cell(2, 1.0, 0.1, 2.0, True)       # big effect, but near-chance separation: score 0.1 * 2.0 = 0.2
    cell(4, 1.0, 0.1, 0.3, True)
    cell(4, 2.0, 0.2, 0.6, True)       # layer 4: 0.9 * 0.6 = 0.54  <- best
    cell(4, 4.0, 0.4, 3.0, False)      # incoherent: ignored
    cell(6, 1.5, 0.1, 0.5, True)       # layer 6: 0.98 * 0.5 = 0.49
    cell(8, 1.0, 0.1, 5.0, True)       # AUROC < 0.5: score 0
    cell(4, -1.0, -0.1, -0.4, True)    # negative alpha never counts
    return layers, cells


def test_recommend_picks_separation_times_coherent_effect():
    layers, cells = _table()
    rec = recommend(layers, cells)
    assert rec["layer"] == 4
    assert rec["alpha"] == 2.0 and rec["alpha_frac"] == 0.2
    # the range holds the coherent alpha > 0 cells with at least half the best effect (0.3 >= 0.3)
    assert rec["alpha_range"] == [1.0, 2.0]
    assert rec["alpha_frac_range"] == [0.1, 0.2]
    assert rec["score"]["4"] == pytest.approx((2 * 0.95 - 1) * 0.6)
    assert rec["score"]["8"] == 0.0
    assert not rec["fallback"]


def test_recommend_falls_back_to_auroc_without_coherent_effect():
    layers, cells = _table()
    for c in cells:
        c["passes_guard"] = c["alpha"] == 0.0
    rec = recommend(layers, cells)
    assert rec["fallback"] and rec["layer"] == 6 and rec["alpha"] is None


def test_recommend_uses_the_given_effect_key():
    layers, cells = _table()
    for c in cells:
        c["effect_trait"] = 0.5 if c["layer"] == 6 and c["alpha"] > 0 else 0.0
    assert recommend(layers, cells, effect_key="effect_trait")["layer"] == 6


def test_default_layers_and_alphas():
    assert default_sweep_layers(30) == [5, 9, 13, 17, 21, 25]
    assert all(0 < l < 29 for l in default_sweep_layers(30))
    assert 0.0 in DEFAULT_ALPHAS


def _result():
    layers = [{"layer": l, "vector_norm": 1.0 + l, "resid_norm": 10.0 * (l + 1), "norm_ratio": (1.0 + l) / (10 * (l + 1)),
               "auroc": 0.5 + 0.1 * l, "cohens_d": 0.3 * l, "gap": 1.0} for l in range(4)]
    steering = []
    for l in (1, 2):
        for a in (0.0, 0.5):
            steering.append({"layer": l, "alpha_value": a, "alpha": a * 10, "alpha_frac": a, "effect": a * l,
                             "coherence": 0.8 - a * l * 0.2, "passes_guard": True, "delta_trait": None,
                             "trait_score": None})
    return SweepResult(SweepConfig(layers=(1, 2), alphas=(0.0, 0.5), readout_layer=3), layers, steering,
                       recommend(layers, steering), settings={"persona": "x", "n_heldout": 8},
                       generations=[{"key": "base:0", "response": "hi"}], heldout=[{"key": "pos:0", "response": "ha"}])


def test_sweep_config_round_trip():
    cfg = SweepConfig(layers=(4, 8), alphas=(0.0, 0.3), alpha_mode="raw", n_steer=None, readout_layer=6)
    assert SweepConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="alpha_mode"):
        SweepConfig(alpha_mode="percent")


def test_sweep_result_save_load_and_figures(tmp_path):
    res = _result()
    res.save(tmp_path)
    files = sweep_viz.save_figures(res, tmp_path)
    for name in ("config.json", "result.json", "sweep_layers.csv", "sweep_steering.csv", "generations.scored.jsonl",
                 "heldout.scored.jsonl", "sweep_separation.html", "sweep_separation.json", "sweep_norms.html",
                 "sweep_effect.html", "sweep_effect.csv", "sweep_coherence.html", "plotly.min.js"):
        assert (tmp_path / name).exists(), name
    assert "sweep_trait" not in files
    back = SweepResult.load(tmp_path)
    assert back.config == res.config and back.settings == res.settings
    assert back.recommendation == res.to_dict()["recommendation"] and back.steering == res.steering
    assert back.generations == res.generations and back.heldout == res.heldout
    assert back.recommended_layer == 2
    assert "Recommended layer: 2" in back.summary_text()
    assert read_sweep(tmp_path) == (2, 5.0)  # the creativity eval reads the recommendation from the folder


def _tiny_sweep(model, tmp_path, **changes):
    spec = load_persona("creative_professional")
    config = SweepConfig(layers=(1,), alphas=(0.0, 0.5), n_eval=2, n_steer=1, max_new_tokens=4, batch_size=8)
    return sweep.run(model, config.replace(**changes), vector=testing.tiny_vector(model), spec=spec,
                     resume_dir=tmp_path, progress=False)


def _count_generated(monkeypatch) -> list[int]:
    """Patches the sweep's generate to record how many rows each call generates."""
    calls: list[int] = []
    real = gen_module.generate_ids

    def spy(model, prompts, **kw):
        calls.append(len(prompts))
        return real(model, prompts, **kw)

    monkeypatch.setattr(gen_module, "generate_ids", spy)
    return calls


def test_sweep_run_on_tiny_model_resumes(tiny_model, tmp_path, monkeypatch):
    res = _tiny_sweep(tiny_model, tmp_path)
    assert res.config.layers == (1,) and res.config.alphas == (0.0, 0.5) and res.config.readout_layer is not None
    assert len(res.layers) == 3 and {r["layer"] for r in res.steering} == {1}
    assert len(res.heldout) == 4 and len(res.generations) == 2  # 2 questions x pos/neg; base + 1 steered
    res.save(tmp_path / "out")
    back = SweepResult.load(tmp_path / "out")
    assert back.config == res.config and back.steering == json.loads(json.dumps(res.steering))
    calls = _count_generated(monkeypatch)
    again = _tiny_sweep(tiny_model, tmp_path)
    assert calls == []  # every generation came from the resume stores
    assert again.steering == res.steering


def test_sweep_regenerates_for_another_model_or_max_new_tokens(tiny_model, tmp_path, monkeypatch):
    """Stored rows are fingerprinted: another model (same id, other weights) or another
    max_new_tokens must regenerate every text, never reuse the stale rows (regression: the old
    resume cache keyed rows by model id and settings only)."""
    _tiny_sweep(tiny_model, tmp_path)
    calls = _count_generated(monkeypatch)
    other = testing.tiny_model(seed=1)
    assert model_id(other) == model_id(tiny_model)
    _tiny_sweep(other, tmp_path)
    assert sum(calls) == 6  # 4 held-out + 2 steering-grid texts
    calls.clear()
    _tiny_sweep(tiny_model, tmp_path, max_new_tokens=5)
    assert sum(calls) == 6


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """One torch thread when the machine is oversubscribed (a no-op otherwise): see demo.set_threads."""
    from persona_lens.demo import set_threads

    set_threads("auto")


@pytest.mark.slow
def test_per_row_steering_capture_matches_scalar(default_model):
    """capture() must apply the position mask to the per-row copy of a steering (regression)."""
    import torch

    from persona_lens.activations import capture
    from persona_lens.models import d_model, n_layers
    from persona_lens.steering import Steering
    from persona_lens.vectors import PersonaVector

    g = torch.Generator().manual_seed(0)
    v = PersonaVector(torch.randn(n_layers(default_model), d_model(default_model), generator=g))
    prompts = ["Hi there, how are you?", "Name a color.", "Describe a long and winding road in detail."]
    responses = ["I am fine, thanks.", "Blue is a fine color.", "ok"]
    a = capture(default_model, prompts, responses, layers=[3, 6], steering=Steering.from_vector(v, 3, 2.0), progress=False)
    b = capture(default_model, prompts, responses, layers=[3, 6], steering=Steering.per_row([v, v, v], 3, 2.0),
                progress=False)
    for r in ("response_mean", "last_prompt", "prompt_mean"):
        torch.testing.assert_close(a[r], b[r])


@pytest.mark.slow
def test_layer_sweep_end_to_end_tiny(default_model, tmp_path, monkeypatch):
    """A real (tiny) sweep: every table column is there, the cache makes a rerun generate nothing."""
    import torch

    from persona_lens.models import d_model, n_layers
    from persona_lens.personas import load_persona
    from persona_lens.vectors import PersonaVector

    spec = load_persona("creative_professional")
    g = torch.Generator().manual_seed(0)
    v = PersonaVector(torch.randn(n_layers(default_model), d_model(default_model), generator=g),
                      {"persona": "random", "model_id": None})
    config = SweepConfig(layers=(4, 8), alphas=(0.0, 0.3), n_eval=2, n_steer=1, max_new_tokens=8)
    res = sweep.run(default_model, config, vector=v, spec=spec, resume_dir=tmp_path, progress=False)
    assert len(res.layers) == n_layers(default_model)
    assert {r["layer"] for r in res.steering} == {4, 8}
    for key in ("vector_norm", "resid_norm", "norm_ratio", "auroc", "cohens_d", "auroc_last_prompt", "auroc_text"):
        assert key in res.layers[0]
    # auroc_text, independently: plain HF hidden_states[l+1] of each held-out answer after only its
    # user question, response-mean, projected on v[l]/||v[l]||, then sklearn's AUROC
    from sklearn.metrics import roc_auc_score

    from persona_lens.chat import prompt_ids, response_ids
    from persona_lens.native import native

    tok = default_model.tokenizer
    rows = [r for r in res.heldout if response_ids(tok, r["response"])]
    assert {r["polarity"] for r in rows} == {"pos", "neg"}
    with native(default_model) as hf, torch.no_grad():
        for layer in (5, 20):
            u = (v.layer(layer) / v.layer(layer).norm()).double()
            proj = []
            for r in rows:
                pi = prompt_ids(tok, [{"role": "user", "content": r["question"]}])
                ri = response_ids(tok, r["response"])
                hs = hf(input_ids=torch.tensor([pi + ri]), output_hidden_states=True).hidden_states
                proj.append(float(hs[layer + 1][0, len(pi):].double().mean(0) @ u))
            expected = roc_auc_score([r["polarity"] == "pos" for r in rows], proj)
            assert res.layer_row(layer)["auroc_text"] == pytest.approx(expected)
    row = next(r for r in res.steering if r["layer"] == 8 and r["alpha_frac"] == 0.3)
    assert row["alpha"] == pytest.approx(0.3 * res.layer_row(8)["resid_norm"] / float(v.norms()[8]), rel=1e-5)
    assert res.recommendation["layer"] in (4, 8)
    assert (tmp_path / "generations.jsonl").exists() and (tmp_path / "heldout.jsonl").exists()

    calls = _count_generated(monkeypatch)
    again = sweep.run(default_model, config, vector=v, spec=spec, resume_dir=tmp_path, progress=False)
    assert calls == []  # every generation came from the resume stores
    assert again.steering == res.steering
