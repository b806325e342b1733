"""Dose cards (persona_lens.dose), `calibrate`, and `--strength` on steer / generate.

References are hand computations: the isotonic fit and the linear interpolation of small
hand-made curves worked out on paper, and, for calibrate, the fake judge's scores recomputed
from the saved texts with numpy and scipy's t quantile.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import t as student_t

from persona_lens.analysis.calibrate import layer_summary_of
from persona_lens.cli import main
from persona_lens.cli.boundary import PersonaLensGroup
from persona_lens.cli.calibrate import calibrate as calibrate_command
from persona_lens.cli.options import Backend, JudgeOptions
from persona_lens.dose import (
    CARD_KEY,
    DoseCard,
    LayerCurve,
    alpha_for_strength,
    reachable_strengths,
    read_card,
    set_recommendation,
    write_card,
)
from persona_lens.errors import NoDoseCardError, StrengthOutOfRangeError
from persona_lens.vectors import PersonaVector

pytestmark = pytest.mark.filterwarnings("ignore:steering at layer:UserWarning")  # random test vectors are strong


def _curve(layer, alphas, trait, **kw) -> LayerCurve:
    n = len(alphas)
    return LayerCurve(layer=layer, alphas=alphas, trait_mean=trait, trait_ci_low=[None] * n, trait_ci_high=[None] * n,
                      coherence_mean=[0.8] * n, **kw)


def hand_card() -> DoseCard:
    """baseline 20, positive 60 (gap 40). Layer 3: coherence breaks at alpha 4 (its 90 is excluded);
    the positive side [30, 25, 50] is not monotone: isotonic fit [27.5, 27.5, 50]."""
    return DoseCard(
        persona="humorous", model_id="m", judge="fake", positions="response",
        baseline={"mean": 20.0, "ci_low": 18.0, "ci_high": 22.0, "n": 4},
        positive={"mean": 60.0, "ci_low": 55.0, "ci_high": 65.0, "n": 4},
        curves=[_curve(3, [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0], [5.0, 12.0, 20.0, 30.0, 25.0, 50.0, 90.0],
                       breakdown_alpha=4.0),
                _curve(5, [0.0, 2.0, 4.0], [20.0, 40.0, 80.0])],
        best_layer=3)


def test_alpha_for_strength_matches_the_hand_interpolation():
    card = hand_card()
    # strength 0.5 -> target 40: between alpha 2 (fit 27.5) and 3 (fit 50)
    assert alpha_for_strength(card, 0.5) == (3, pytest.approx(2 + (40 - 27.5) / (50 - 27.5)))
    # strength 0.1 -> target 24: between alpha 0 (20) and 1 (fit 27.5)
    assert alpha_for_strength(card, 0.1)[1] == pytest.approx(4 / 7.5)
    # strength 0.1875 = fit 27.5 exactly: the smallest alpha that reaches it (the fit is flat to alpha 2)
    assert alpha_for_strength(card, 0.1875)[1] == pytest.approx(1.0)
    # suppression: strength -0.3 -> target 8, between alpha -1 (12) and -2 (5)
    assert alpha_for_strength(card, -0.3)[1] == pytest.approx(-1 - (12 - 8) / (12 - 5))
    assert alpha_for_strength(card, 0.0) == (3, 0.0)
    # another layer: target 40 is measured at alpha 2; target 60 half-way between 2 (40) and 4 (80)
    assert alpha_for_strength(card, 0.5, layer=5) == (5, pytest.approx(2.0))
    assert alpha_for_strength(card, 1.0, layer=5) == (5, pytest.approx(3.0))
    # a recommendation's layer wins over best_layer
    card.recommendation = {"layer": 5, "alpha": 2.0, "positions": "response", "source": "test"}
    assert alpha_for_strength(card, 1.0) == (5, pytest.approx(3.0))
    assert reachable_strengths(card, 3) == (pytest.approx(-0.375), pytest.approx(0.75))


def test_strength_out_of_range_names_the_reachable_range():
    card = hand_card()
    with pytest.raises(StrengthOutOfRangeError, match=r"\[-0.375, 0.75\]"):
        alpha_for_strength(card, 1.0)  # 90 at alpha 4 is past the breakdown
    with pytest.raises(StrengthOutOfRangeError, match="strength -0.5"):
        alpha_for_strength(card, -0.5)
    with pytest.raises(StrengthOutOfRangeError, match="no curve at layer 7"):
        alpha_for_strength(card, 0.5, layer=7)
    card.positive["mean"] = card.baseline["mean"]
    with pytest.raises(StrengthOutOfRangeError, match="trait gap"):
        alpha_for_strength(card, 0.5)


def test_a_trait_the_vector_lowers_maps_through_a_decreasing_curve():
    card = DoseCard(persona="p", model_id=None, judge="fake", positions="response", baseline={"mean": 50.0},
                    positive={"mean": 10.0}, curves=[_curve(1, [0.0, 1.0, 2.0], [50.0, 30.0, 10.0])], best_layer=1)
    assert alpha_for_strength(card, 0.5) == (1, pytest.approx(1.0))
    assert alpha_for_strength(card, 0.75)[1] == pytest.approx(1.5)


def _tiny_vector_file(path, model=None) -> PersonaVector:
    g = torch.Generator().manual_seed(3)
    v = PersonaVector(torch.randn(3, 64, generator=g) / 8, {"persona": "humorous", "model_id": "persona-lens/tiny-llama"})
    v.save(path)
    return v


def test_card_round_trip_through_the_vector_file(tmp_path):
    src, dst = tmp_path / "v.safetensors", tmp_path / "v.dosed.safetensors"
    v = _tiny_vector_file(src)
    with pytest.raises(NoDoseCardError, match="persona-lens calibrate"):
        read_card(src)
    with pytest.raises(NoDoseCardError):
        set_recommendation(src, {"layer": 3})
    card = hand_card()
    write_card(src, card, dst)
    back = PersonaVector.load(dst)
    assert torch.equal(back.vectors, v.vectors) and back.metadata["persona"] == "humorous"
    assert json.loads(json.dumps(back.metadata[CARD_KEY])) == card.to_dict()
    assert read_card(dst) == card
    set_recommendation(dst, {"layer": 5, "alpha": 2.0, "positions": "response", "source": "autotune"})
    again = read_card(dst)
    assert again.recommendation == {"layer": 5, "alpha": 2.0, "positions": "response", "source": "autotune"}
    assert again.curves == card.curves and sorted(p.name for p in tmp_path.iterdir()) == ["v.dosed.safetensors",
                                                                                         "v.safetensors"]


# --------------------------------------------------------------------------- the command line


@pytest.fixture
def tiny_backend(tiny_model, monkeypatch):
    """Every command's --model loads the tiny random model."""
    monkeypatch.setattr(Backend, "load", lambda self, name=None: tiny_model)
    return tiny_model


def tiny_card() -> DoseCard:
    """Layer 1 of the tiny model: baseline 10, positive 50; strength 0.5 -> target 30, half-way
    between alpha 1 (20) and 2 (40): alpha 1.5."""
    return DoseCard(persona="humorous", model_id="persona-lens/tiny-llama", judge="fake", positions="response",
                    baseline={"mean": 10.0}, positive={"mean": 50.0},
                    curves=[_curve(1, [0.0, 1.0, 2.0, 4.0], [10.0, 20.0, 40.0, 45.0])], best_layer=1)


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_strength_without_a_card_is_one_line_exit_1(tmp_path, capsys):
    _tiny_vector_file(tmp_path / "v.safetensors")
    code = main(["steer", "--vector", str(tmp_path / "v.safetensors"), "--strength", "0.5", "hi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "NoDoseCardError" in err[0] and "persona-lens calibrate" in err[0] and "v.safetensors" in err[0]
    assert main(["generate", "--vector", str(tmp_path / "v.safetensors"), "--strength", "0.5", "hi"]) == 1


def test_alpha_and_strength_are_exclusive(tmp_path, capsys):
    _tiny_vector_file(tmp_path / "v.safetensors")
    args = ["steer", "--vector", str(tmp_path / "v.safetensors"), "hi"]
    assert main([*args, "--layer", "1", "--alpha", "1", "--strength", "0.5"]) == 2
    assert main(args) == 2
    assert main([*args, "--alpha", "1"]) == 2  # --alpha needs --layer
    assert main(["generate", "--strength", "0.5", "hi"]) == 2  # --strength needs --vector
    capsys.readouterr()


def test_steer_with_strength_uses_the_hand_alpha(tmp_path, capsys, tiny_backend):
    src, dosed = tmp_path / "v.safetensors", tmp_path / "dosed.safetensors"
    _tiny_vector_file(src)
    write_card(src, tiny_card(), dosed)
    common = ["--vector", str(dosed), "--max-new-tokens", "6", "hello", "tell me a joke"]
    assert main(["steer", "--strength", "0.5", *common]) == 0
    out = capsys.readouterr()
    calibrated = _lines(out.out)
    assert "alpha 1.5 at layer 1" in out.err
    assert all(r["alpha"] == pytest.approx(1.5) and r["layer"] == 1 and r["strength"] == 0.5
               and r["positions"] == "response" for r in calibrated)
    assert main(["steer", "--layer", "1", "--alpha", "1.5", *common]) == 0
    plain = _lines(capsys.readouterr().out)
    assert [r["completion"] for r in calibrated] == [r["completion"] for r in plain]
    assert main(["steer", "--layer", "1", "--alpha", "0", *common]) == 0  # the check can fail: steering changes text
    assert [r["completion"] for r in _lines(capsys.readouterr().out)] != [r["completion"] for r in plain]
    # generate --vector --strength is the same calibrated steering
    assert main(["generate", "--strength", "0.5", *common]) == 0
    assert [r["completion"] for r in _lines(capsys.readouterr().out)] == [r["completion"] for r in plain]


def test_steer_strength_out_of_range_is_one_line(tmp_path, capsys, tiny_backend):
    src, dosed = tmp_path / "v.safetensors", tmp_path / "dosed.safetensors"
    _tiny_vector_file(src)
    write_card(src, tiny_card(), dosed)
    code = main(["steer", "--vector", str(dosed), "--strength", "1.5", "hi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "StrengthOutOfRangeError" in err[0] and "[0, 0.875]" in err[0]
    assert main(["steer", "--vector", str(dosed), "--strength", "0.5", "--layer", "1", "--layer", "2", "hi"]) == 2


class FakeJudge:
    """A deterministic trait judge: the sum of the answer's code points mod 101."""

    name = "fake:codepoints"

    def score_trait(self, spec, question, answer):
        return float(sum(map(ord, answer)) % 101)

    def score_trait_many(self, spec, qa, *, progress=False):
        return [self.score_trait(spec, q, a) for q, a in qa]


def test_calibrate_end_to_end_on_the_tiny_model(tmp_path, capsys, tiny_backend, monkeypatch):
    monkeypatch.setattr(JudgeOptions, "build", lambda self, model=None, model_name=None: FakeJudge())
    group = PersonaLensGroup("persona-lens")
    group.add_command(calibrate_command)
    src, out, res = tmp_path / "v.safetensors", tmp_path / "v.dosed.safetensors", tmp_path / "res"
    _tiny_vector_file(src)
    assert group.main(["calibrate", "--help"], standalone_mode=False) == 0
    code = group.main(["calibrate", str(src), "--persona", "humorous", "--judge", "embedding", "--out", str(out),
                       "--results", str(res), "--layers", "1", "--alphas", "-0.5,0,0.5,2", "--n-eval", "3",
                       "--max-new-tokens", "5", "--batch-size", "8"], standalone_mode=False)
    assert code == 0, capsys.readouterr().err
    for name in ("config.json", "result.json", "dose_curve.csv", "dose_curve.json", "dose_layers.csv",
                 "dose_response.html", "dose_response.json", "dose_response.csv", "sweep/sweep_steering.csv"):
        assert (res / name).exists(), name
    card = read_card(out)
    judge = FakeJudge()
    gens = [json.loads(line) for line in (res / "sweep" / "generations.scored.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (res / "sweep" / "heldout.scored.jsonl").read_text().splitlines()]

    def hand_stats(texts):
        x = np.array([judge.score_trait(None, "", t) for t in texts])
        half = student_t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
        return x.mean(), x.mean() - half, x.mean() + half

    base = hand_stats([g["response"] for g in gens if g["layer"] is None])
    assert (card.baseline["mean"], card.baseline["ci_low"], card.baseline["ci_high"]) == pytest.approx(base)
    pos = hand_stats([h["response"] for h in held if h["polarity"] == "pos"])
    assert card.positive["mean"] == pytest.approx(pos[0]) and card.positive["n"] == 3
    curve = card.curve(1)
    steering = json.loads((res / "sweep" / "sweep_steering.json").read_text())
    assert sorted(curve.alpha_fracs) == [-0.5, 0.0, 0.5, 2.0]
    for a, frac, mean in zip(curve.alphas, curve.alpha_fracs, curve.trait_mean):
        texts = [g["response"] for g in gens
                 if (g["layer"] is None if frac == 0 else g["layer"] == 1 and g["alpha_value"] == frac)]
        assert mean == pytest.approx(hand_stats(texts)[0])
        row = next(r for r in steering if r["alpha_value"] == frac)
        assert a == pytest.approx(row["alpha"])
    fails = sorted(r["alpha"] for r in steering if r["alpha"] > 0 and not r["passes_guard"])
    assert curve.breakdown_alpha == (pytest.approx(fails[0]) if fails else None)
    resid = json.loads((res / "sweep" / "sweep_layers.json").read_text())[1]["resid_norm"]
    assert curve.resid_norm == pytest.approx(resid)
    assert card.judge == "embedding" and card.best_layer == 1 and card.persona == "humorous"


def test_calibrate_needs_a_judge_and_a_safetensors_file(tmp_path, capsys):
    group = PersonaLensGroup("persona-lens")
    group.add_command(calibrate_command)
    src = tmp_path / "v.safetensors"
    _tiny_vector_file(src)
    args = ["calibrate", str(src), "--persona", "humorous", "--out", str(tmp_path / "o.safetensors")]
    assert group.main(args, standalone_mode=False) == 2  # --judge none
    assert "needs a trait judge" in capsys.readouterr().err
    out_pt = ["calibrate", str(src), "--persona", "humorous", "--judge", "lexicon:humorous", "--out",
              str(tmp_path / "o.pt")]
    assert group.main(out_pt, standalone_mode=False) == 2
    assert not (tmp_path / "o.pt").exists()


def test_layer_summary_reads_monotonicity_from_the_coherent_points():
    card = hand_card()
    s = layer_summary_of(card, card.curve(3))
    # coherent points (alpha < 4): 5, 12, 20, 30, 25, 50 -> one decrease (30 -> 25); 14 of 15 pairs concordant
    assert s["monotone"] is False and s["decreases"] == 1 and s["largest_decrease"] == 5.0
    assert s["kendall_tau"] == pytest.approx(13 / 15) and s["rise"] == 45.0
    assert (s["coherent_alpha_low"], s["coherent_alpha_high"]) == (-2.0, 3.0)
    assert (s["strength_low"], s["strength_high"]) == (pytest.approx(-0.375), pytest.approx(0.75))
    flat = DoseCard(persona="p", model_id=None, judge="fake", positions="response", baseline={"mean": 0.0},
                    positive={"mean": 0.0}, curves=[_curve(1, [0.0, 1.0, 2.0], [0.0, 0.0, 0.0])])
    s = layer_summary_of(flat, flat.curves[0])
    assert s["monotone"] is True and s["rise"] == 0.0 and s["strength_high"] is None  # no gap: no strengths
