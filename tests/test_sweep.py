"""Layer sweep: statistics against sklearn / hand formulas, the recommendation rule, and a tiny real sweep."""

import math
import sys

import numpy as np
import pytest

from persona_lens.analysis.sweep import (
    DEFAULT_ALPHAS,
    SweepResult,
    auroc,
    cohens_d,
    default_sweep_layers,
    recommend,
    text_coherence,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    pos = rng.normal(0.7, 1.0, size=37)
    neg = rng.normal(0.0, 1.3, size=23)
    # ties across the classes
    pos[:5] = np.round(pos[:5])
    neg[:5] = np.round(neg[:5])
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    expected = roc_auc_score(y, np.r_[pos, neg])
    assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_auroc_edge_cases():
    assert auroc([1, 2, 3], [0, -1]) == 1.0
    assert auroc([0, -1], [1, 2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert math.isnan(auroc([], [1.0]))
    assert auroc([1.0, float("nan"), 2.0], [0.0]) == 1.0  # NaN ignored


def test_cohens_d_hand_formula():
    pos = np.array([2.0, 4.0, 6.0, 8.0])
    neg = np.array([1.0, 2.0, 3.0])
    n1, n2 = len(pos), len(neg)
    s1, s2 = pos.var(ddof=1), neg.var(ddof=1)
    pooled = math.sqrt(((n1 - 1) * s1 + (n2 - 1) * s2) / (n1 + n2 - 2))
    assert cohens_d(pos, neg) == pytest.approx((pos.mean() - neg.mean()) / pooled)
    assert cohens_d(neg, pos) == pytest.approx(-cohens_d(pos, neg))
    assert math.isnan(cohens_d([1.0], [0.0, 1.0]))


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


def test_sweep_result_figures_and_files(tmp_path):
    layers = [{"layer": l, "vector_norm": 1.0 + l, "resid_norm": 10.0 * (l + 1), "norm_ratio": (1.0 + l) / (10 * (l + 1)),
               "auroc": 0.5 + 0.1 * l, "cohens_d": 0.3 * l, "gap": 1.0} for l in range(4)]
    steering = []
    for l in (1, 2):
        for a in (0.0, 0.5):
            steering.append({"layer": l, "alpha_value": a, "alpha": a * 10, "alpha_frac": a, "effect": a * l,
                             "coherence": 0.8 - a * l * 0.2, "passes_guard": True, "delta_trait": None,
                             "trait_score": None})
    rec = recommend(layers, steering)
    res = SweepResult(layers, steering, rec, {"persona": "x", "alphas": [0.0, 0.5], "alpha_mode": "fraction",
                                              "readout_layer": 3, "n_heldout": 8})
    files = res.save(tmp_path)
    for name in ("sweep.json", "sweep_layers.csv", "sweep_steering.csv", "sweep_separation.html",
                 "sweep_separation.json", "sweep_norms.html", "sweep_effect.html", "sweep_effect.csv",
                 "sweep_coherence.html", "plotly.min.js"):
        assert (tmp_path / name).exists(), name
    assert "sweep_trait" not in res.figures()
    back = SweepResult.load(tmp_path)
    assert back.recommendation == res.to_dict()["recommendation"]
    assert back.recommended_layer == 2
    assert "Recommended layer: 2" in back.summary_text()
    assert files["json"].endswith("sweep.json")


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """One torch thread when the machine is oversubscribed (a no-op otherwise): see demo.set_threads."""
    from persona_lens.demo import set_threads

    set_threads("auto")


@pytest.mark.slow
def test_per_row_steering_capture_matches_scalar(default_model):
    """capture() must apply the position mask to the per-row copy of a steering (regression)."""
    import torch

    from persona_lens.capture import capture
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
def test_layer_sweep_end_to_end_tiny(default_model, tmp_path):
    """A real (tiny) sweep: every table column is there, the cache makes a rerun generate nothing."""
    import torch

    from persona_lens.models import d_model, n_layers
    from persona_lens.personas import load_persona
    from persona_lens.vectors import PersonaVector
    from persona_lens.analysis import sweep as sweep_mod
    from persona_lens.analysis.sweep import layer_sweep

    spec = load_persona("creative_professional")
    g = torch.Generator().manual_seed(0)
    v = PersonaVector(torch.randn(n_layers(default_model), d_model(default_model), generator=g),
                      {"persona": "random", "model_id": None})
    kw = dict(layers=[4, 8], alphas=[0.0, 0.3], n_eval=2, n_steer=1, max_new_tokens=8, out_dir=tmp_path,
              progress=False, figures=False)
    res = layer_sweep(default_model, v, spec, **kw)
    assert len(res.layers) == n_layers(default_model)
    assert {r["layer"] for r in res.steering} == {4, 8}
    for key in ("vector_norm", "resid_norm", "norm_ratio", "auroc", "cohens_d", "auroc_last_prompt", "auroc_text"):
        assert key in res.layers[0]
    # auroc_text, independently: plain HF hidden_states[l+1] of each held-out answer after only its
    # user question, response-mean, projected on v[l]/||v[l]||, then sklearn's AUROC
    from sklearn.metrics import roc_auc_score

    from persona_lens.chat import prompt_ids, response_ids
    from persona_lens.models import native

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
    assert (tmp_path / "sweep.json").exists() and (tmp_path / "generations.jsonl").exists()

    calls = []
    original = sweep_mod._resumable_generate

    def spy(*a, **k):
        gen_mod = sys.modules["persona_lens.generate"]  # the module (the package re-exports the function)
        real = gen_mod.generate
        gen_mod.generate = lambda *x, **y: calls.append(1) or real(*x, **y)
        try:
            return original(*a, **k)
        finally:
            gen_mod.generate = real

    sweep_mod._resumable_generate = spy
    try:
        again = layer_sweep(default_model, v, spec, **kw)
    finally:
        sweep_mod._resumable_generate = original
    assert calls == []  # every generation came from the cache
    assert again.steering == res.steering
