"""The calibrated judge: a ridge regressor on activations fitted to a teacher judge's scores.

Agreement numbers are checked against scipy / sklearn run on cross-validated predictions the
test computes itself (sklearn ``cross_val_predict``); scores after a save/load round trip
against a pipeline fitted here with sklearn.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib.resources import files

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats as scipy_stats
from sklearn.linear_model import RidgeCV
from sklearn.metrics import cohen_kappa_score
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from persona_lens import testing
from persona_lens.activations import capture
from persona_lens.cli.boundary import PersonaLensGroup
from persona_lens.cli.judge import judge_group
from persona_lens.cli.options import JudgeOptions
from persona_lens.errors import CalibratedJudgeFileError, JudgeError, ModelMismatchError, WeakCalibrationError
from persona_lens.io import read_jsonl
from persona_lens.judges import JUDGE_REGISTRY, JudgeScheme, TraitScorer, make_judge
from persona_lens.judges.agreement import DEFAULT_ALPHAS, agreement_report
from persona_lens.judges.calibrated import CalibratedJudge, fit_calibrated_judge, read_calibrated_file
from persona_lens.personas import load_persona
from persona_lens.stats import bootstrap_ci, cohens_kappa, score_bins

LAYER = 1
WORDS = ["joy", "sad", "the", "cat", "runs", "blue", "sky", "cold"]
EVAL_PROMPT = "How joyful is this answer? {question} {answer}"


class JoyTeacher:
    """A deterministic teacher: 100 x the share of the answer's words that are 'joy'."""

    name = "fake:joy"

    def score_trait(self, spec, question, answer):
        return self.score_trait_many(spec, [(question, answer)])[0]

    def score_trait_many(self, spec, qa, *, progress=False):
        return [100.0 * a.split().count("joy") / len(a.split()) if a.split() else None for _, a in qa]


class NoiseTeacher(JoyTeacher):
    """Scores unrelated to the answer's content (a hash of the text): nothing to learn."""

    name = "fake:noise"

    def score_trait_many(self, spec, qa, *, progress=False):
        return [int(hashlib.sha256(a.encode()).hexdigest()[:6], 16) % 101 * 1.0 for _, a in qa]


def make_qa(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p_joy = rng.uniform(0.0, 0.9)  # spread the teacher's scores over the whole 0-100 range
        k = int(rng.integers(4, 10))
        ws = [("joy" if rng.random() < p_joy else str(rng.choice(WORDS[1:]))) for _ in range(k)]
        out.append((f"question {i % 7}?", " ".join(ws)))
    return out


@pytest.fixture(scope="module")
def qa():
    return make_qa(90)


@pytest.fixture(scope="module")
def fitted(tiny_model, qa):
    return fit_calibrated_judge(JoyTeacher(), EVAL_PROMPT, qa, model=tiny_model, layer=LAYER, n_boot=200, seed=3)


def features_of(model, qa):
    got = capture(model, [[{"role": "user", "content": q}] for q, _ in qa], [a for _, a in qa], layers=[LAYER],
                  reductions=["response_mean"], progress=False)
    return got.at("response_mean", LAYER).double().numpy()


def test_agreement_equals_scipy_and_sklearn_on_independent_cv(tiny_model, qa, fitted):
    judge, rows = fitted
    y = np.asarray(JoyTeacher().score_trait_many(None, qa))
    x = features_of(tiny_model, qa)
    pipeline = make_pipeline(StandardScaler(), RidgeCV(alphas=list(DEFAULT_ALPHAS)))
    cv = np.clip(cross_val_predict(pipeline, x, y, cv=KFold(5, shuffle=True, random_state=3)), 0, 100)
    np.testing.assert_allclose([r["cross_validated"] for r in rows], cv, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose([r["teacher"] for r in rows], y)
    a = judge.agreement
    ref = scipy_stats.pearsonr(y, cv)
    assert a["pearson_r"] == pytest.approx(ref.statistic, abs=1e-12)
    ci = ref.confidence_interval(0.95)
    assert a["pearson_ci_fisher"] == pytest.approx([ci.low, ci.high], abs=1e-12)
    edges = [20, 40, 60, 80]  # 5 bins of width 20; 100 falls in the last
    kq = cohen_kappa_score(np.digitize(y, edges), np.digitize(cv, edges), labels=[0, 1, 2, 3, 4], weights="quadratic")
    assert a["kappa_quadratic_5bins"] == pytest.approx(kq, abs=1e-12)
    assert a["kappa_binary_50"] == pytest.approx(cohen_kappa_score(y >= 50, cv >= 50), abs=1e-12)
    assert a["mae"] == pytest.approx(np.abs(y - cv).mean())
    assert a["n"] == len(qa) and a["folds"] == 5 and judge.labels["n"] == len(qa)
    assert a["pearson_r"] > 0.9 and judge.accepted  # the share of 'joy' tokens is linear in the mean embedding
    lo, hi = a["pearson_ci_bootstrap"]
    assert lo < a["pearson_r"] < hi and hi - lo < 0.1


def test_score_bins_and_kappa_helpers():
    assert score_bins([0, 19.99, 20, 55, 80, 100, 130, -5]).tolist() == [0, 0, 1, 2, 4, 4, 4, 0]
    # all labels named: a rater that never uses bin 2 keeps the scale's distances
    a, b = [0, 1, 3, 4, 4], [0, 1, 4, 4, 3]
    assert cohens_kappa(a, b, n_labels=5, weights="quadratic") == pytest.approx(
        cohen_kappa_score(a, b, labels=list(range(5)), weights="quadratic"))
    assert math.isnan(cohens_kappa([1, 1], [1, 1], n_labels=2))


def test_bootstrap_ci_is_seeded_and_leaves_global_rngs_alone():
    x = np.random.default_rng(7).normal(size=60)
    y = x + np.random.default_rng(8).normal(size=60)
    np.random.seed(123)
    torch.manual_seed(123)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()

    def r_of(a, b):
        return float(np.corrcoef(a, b)[0, 1])

    first = bootstrap_ci(r_of, x, y, n_boot=500, seed=5)
    assert bootstrap_ci(r_of, x, y, n_boot=500, seed=5) == first
    assert bootstrap_ci(r_of, x, y, n_boot=500, seed=6) != first
    report = agreement_report(50 + 10 * x, 50 + 10 * y, n_boot=300, seed=1)
    assert agreement_report(50 + 10 * x, 50 + 10 * y, n_boot=300, seed=1) == report
    assert (np.random.get_state()[1] == np_state).all() and torch.equal(torch.get_rng_state(), torch_state)
    # the percentile bootstrap of r is close to the Fisher interval for normal data
    ci = scipy_stats.pearsonr(x, y).confidence_interval(0.95)
    assert first[0] == pytest.approx(ci.low, abs=0.08) and first[1] == pytest.approx(ci.high, abs=0.08)


def test_save_load_round_trip_scores_like_sklearn(tiny_model, qa, fitted, tmp_path):
    judge, _ = fitted
    path = judge.save(tmp_path / "judge.json")
    assert isinstance(judge, TraitScorer)
    new = make_qa(12, seed=99)
    loaded = CalibratedJudge.load(path, model=tiny_model)
    scores = loaded.score_trait_many(EVAL_PROMPT, new)
    assert scores == judge.score_trait_many(EVAL_PROMPT, new)
    y = np.asarray(JoyTeacher().score_trait_many(None, qa))
    reference = make_pipeline(StandardScaler(), RidgeCV(alphas=list(DEFAULT_ALPHAS))).fit(features_of(tiny_model, qa), y)
    expected = np.clip(reference.predict(features_of(tiny_model, new)), 0, 100)
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-9)
    assert loaded.score_trait(EVAL_PROMPT, *new[0]) == pytest.approx(scores[0])
    data = json.loads(path.read_text())
    assert data["teacher"] == "fake:joy" and data["features"]["layer"] == LAYER
    assert data["features"]["model_id"] == "persona-lens/tiny-llama" and len(data["labels"]["fingerprint"]) == 16
    assert read_calibrated_file(path)["agreement"] == judge.agreement


def test_registry_builds_a_calibrated_judge(tiny_model, fitted, tmp_path):
    judge, _ = fitted
    path = judge.save(tmp_path / "j.json")
    built = make_judge(f"calibrated:{path}", model=tiny_model)
    assert isinstance(built, CalibratedJudge) and built.name == f"calibrated:{path}"
    qa = make_qa(5, seed=4)
    assert built.score_trait_many(EVAL_PROMPT, qa) == judge.score_trait_many(EVAL_PROMPT, qa)
    with pytest.raises(JudgeError, match="calibrated:PATH"):
        make_judge("calibrated")


def test_weak_agreement_is_refused_unless_forced(tiny_model, qa, fitted, tmp_path):
    weak, _ = fit_calibrated_judge(NoiseTeacher(), EVAL_PROMPT, qa, model=tiny_model, layer=LAYER, n_boot=50)
    assert weak.agreement["pearson_r"] < 0.5 and not weak.accepted
    with pytest.raises(WeakCalibrationError, match="min_r 0.5"):
        weak.save(tmp_path / "weak.json")
    assert not (tmp_path / "weak.json").exists()
    with pytest.raises(WeakCalibrationError):
        weak.score_trait_many(EVAL_PROMPT, qa[:2])
    path = weak.save(tmp_path / "weak.json", force=True)
    assert CalibratedJudge.load(path, model=tiny_model).score_trait_many(EVAL_PROMPT, qa[:2])[0] is not None
    good = fitted[0].save(tmp_path / "good.json")
    with pytest.raises(WeakCalibrationError):
        CalibratedJudge.load(good, model=tiny_model, min_r=0.9999)


def test_another_model_is_refused(tiny_model, tiny_gemma, fitted, tmp_path, monkeypatch):
    path = fitted[0].save(tmp_path / "j.json")
    other = testing.tiny_model("llama", seed=1)  # same id, other weights
    with pytest.raises(ModelMismatchError, match="fingerprinted"):
        CalibratedJudge.load(path, model=other)
    with pytest.raises(ModelMismatchError, match="fingerprinted"):
        CalibratedJudge.load(path, shared_model=other)  # same id: it is used, and its weights are checked
    loads = []
    monkeypatch.setattr("persona_lens.judges.calibrated.load_model",
                        lambda name, **kw: loads.append((name, kw)) or other)
    with pytest.raises(ModelMismatchError, match="fingerprinted"):  # another id: not used; the file's model is
        CalibratedJudge.load(path, shared_model=tiny_gemma)
    assert loads == [("persona-lens/tiny-llama", {"device": None, "dtype": "float32"})]
    monkeypatch.setattr("persona_lens.judges.calibrated.load_model", lambda name, **kw: tiny_model)
    assert CalibratedJudge.load(path, shared_model=tiny_gemma).model is tiny_model


@pytest.mark.parametrize("content, match", [
    ("not json", "not a calibrated judge file"),
    ('{"format": "something else"}', "not a persona_lens calibrated judge"),
    (None, "no such calibrated judge file"),
])
def test_bad_file_is_a_named_error_before_any_model_loads(content, match, tmp_path, monkeypatch):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("persona_lens.judges.calibrated.load_model", no_load)
    with pytest.raises(CalibratedJudgeFileError, match=match):
        JudgeOptions(f"calibrated:{path}", None, "OPENAI_API_KEY").check()
    with pytest.raises(CalibratedJudgeFileError, match=match):
        make_judge(f"calibrated:{path}")


def test_malformed_weights_are_refused(fitted, tmp_path):
    path = fitted[0].save(tmp_path / "j.json")
    data = json.loads(path.read_text())
    data["regressor"]["coef"] = data["regressor"]["coef"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(CalibratedJudgeFileError, match="equal-length"):
        read_calibrated_file(path)
    data = json.loads(fitted[0].save(tmp_path / "j.json").read_text())
    data["min_r"] = "high"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibratedJudgeFileError, match="min_r must be a number"):
        read_calibrated_file(path)


# ------------------------------------------------------------------------ command line


@pytest.fixture
def cli(monkeypatch):
    """``persona-lens judge ...`` behind the real error boundary, with fake teachers registered."""
    monkeypatch.setitem(JUDGE_REGISTRY, "fakejoy", JudgeScheme(lambda name, **o: JoyTeacher(), "fakejoy"))
    monkeypatch.setitem(JUDGE_REGISTRY, "fakenoise", JudgeScheme(lambda name, **o: NoiseTeacher(), "fakenoise"))
    group = PersonaLensGroup("persona-lens")
    group.add_command(judge_group)
    return lambda args: CliRunner().invoke(group, args)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model saved as a checkpoint folder, so ``--model`` and the judge file can name it."""
    folder = tmp_path_factory.mktemp("tiny-ckpt")
    testing.tiny_hf_model("llama").save_pretrained(folder)
    testing.tiny_tokenizer().save_pretrained(folder)
    return folder


def test_cli_calibrate_end_to_end(cli, model_dir, qa, tmp_path):
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in qa))
    out = tmp_path / "judge.json"
    result = cli(["judge", "calibrate", "--teacher", "fakejoy", "--persona", "evil", "--data", str(data),
                  "--model", str(model_dir), "--device", "cpu", "--layer", str(LAYER), "--n-boot", "100",
                  "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Pearson r" in result.output and "kappa quadratic, 5 bins" in result.output
    for suffix in (".agreement.html", ".agreement.csv", ".agreement.json"):
        assert (tmp_path / f"judge{suffix}").exists()
    rows = (tmp_path / "judge.agreement.csv").read_text().splitlines()
    assert rows[0].startswith("question,answer,teacher,cross_validated,fold") and len(rows) == len(qa) + 1
    stored = read_calibrated_file(out)
    assert stored["features"]["model_name"] == str(model_dir) and stored["trait"] == "evil"
    assert f"{stored['agreement']['pearson_r']:6.3f}" in result.output
    report = cli(["judge", "report", str(out)])
    assert report.exit_code == 0 and f"{stored['agreement']['pearson_r']:6.3f}" in report.output
    # --judge calibrated:PATH with no model at hand loads the checkpoint named in the file
    judge = JudgeOptions(f"calibrated:{out}", None, "OPENAI_API_KEY").build()
    expected = JoyTeacher().score_trait_many(None, qa[:20])
    got = judge.score_trait_many(EVAL_PROMPT, qa[:20])
    assert scipy_stats.pearsonr(expected, got).statistic > 0.9
    with pytest.raises(JudgeError, match="scores 'evil', not"):
        judge.score_trait_many(load_persona("humorous"), qa[:2])


def test_cli_refuses_weak_judge_but_writes_diagnostics(cli, model_dir, qa, tmp_path):
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps({"question": q, "response": a}) + "\n" for q, a in qa))
    out = tmp_path / "weak.json"
    args = ["judge", "calibrate", "--teacher", "fakenoise", "--persona", "evil", "--data", str(data),
            "--model", str(model_dir), "--device", "cpu", "--layer", str(LAYER), "--n-boot", "50", "--out", str(out),
            "--quiet"]
    result = cli(args)
    assert result.exit_code == 1 and "WeakCalibrationError" in result.output and "FAILED" in result.output
    assert not out.exists() and (tmp_path / "weak.agreement.csv").exists()
    assert cli([*args, "--force"]).exit_code == 0 and read_calibrated_file(out)["forced"] is True


def test_cli_bad_inputs(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    result = cli(["judge", "calibrate", "--teacher", "fakejoy", "--persona", "evil", "--data", str(bad),
                  "--out", str(tmp_path / "j.json")])
    assert result.exit_code == 1 and "InputFileError" in result.output and "'answer'" in result.output
    result = cli(["judge", "calibrate", "--teacher", "none", "--persona", "evil", "--out", str(tmp_path / "j.json")])
    assert result.exit_code == 2 and "cannot teach" in result.output
    (tmp_path / "x.json").write_text("[]")
    result = cli(["judge", "report", str(tmp_path / "x.json")])
    assert result.exit_code == 1 and "CalibratedJudgeFileError" in result.output


def test_cli_generates_answers_without_data(cli, model_dir, tmp_path):
    out = tmp_path / "gen.json"
    result = cli(["judge", "calibrate", "--teacher", "fakenoise", "--persona", "evil", "--questions", "2",
                  "--max-new-tokens", "6", "--model", str(model_dir), "--device", "cpu", "--n-boot", "20",
                  "--folds", "2", "--out", str(out), "--force", "--quiet"])
    assert result.exit_code == 0, result.output
    responses = [json.loads(line) for line in (tmp_path / "gen.responses.jsonl").read_text().splitlines()]
    spec = load_persona("evil")
    assert len(responses) == 2 * len(spec.instruction) * 2  # pairs x questions x polarity
    assert {r["question"] for r in responses} == set(spec.questions[:2])
    stored = read_calibrated_file(out)
    with_tokens = sum(1 for r in responses if r["response"])
    assert stored["labels"]["n"] + stored["labels"]["n_dropped"] == len(responses)
    assert stored["labels"]["n"] <= with_tokens


@pytest.mark.slow
def test_embedded_model_learns_a_style_teacher(default_model, tmp_path):
    """SmolLM2 layer-20 activations of the 30 demo answers predict a humorous-or-not teacher
    (measured: cross-validated r 0.78 with 5 folds; MiniLM embeddings of the same answers: -0.25),
    and ``calibrated:PATH`` reloads SmolLM2 by name with identical scores."""
    rows = read_jsonl(files("persona_lens.data") / "screen_demo.jsonl")
    style = {(r["prompt"], r["response"]): r["style"] for r in rows}

    class StyleTeacher(JoyTeacher):
        name = "fake:style"

        def score_trait_many(self, spec, qa, *, progress=False):
            return [100.0 if style[(q, a)] == "humorous" else 0.0 for q, a in qa]

    qa = list(style)
    judge, _ = fit_calibrated_judge(StyleTeacher(), EVAL_PROMPT, qa, model=default_model, layer=20, n_boot=200)
    assert judge.agreement["pearson_r"] > 0.6 and judge.agreement["pearson_ci_bootstrap"][0] > 0.3
    assert judge.features.model_name == "default" and judge.features.dtype == "float32"
    path = judge.save(tmp_path / "style.json")
    reloaded = make_judge(f"calibrated:{path}")  # loads the embedded model named in the file
    assert reloaded.model is not default_model
    assert reloaded.score_trait_many(EVAL_PROMPT, qa[:6]) == pytest.approx(judge.score_trait_many(EVAL_PROMPT, qa[:6]))


def test_too_few_teacher_scores_is_a_clear_error(tiny_model, qa):
    class Silent(JoyTeacher):
        name = "fake:silent"

        def score_trait_many(self, spec, qa, *, progress=False):
            return [None] * len(qa)  # e.g. a small local judge that never puts 0.25 mass on numbers

    with pytest.raises(JudgeError, match=r"only 0 of 90 answers are usable \(the teacher fake:silent scored 0; 90 "):
        fit_calibrated_judge(Silent(), EVAL_PROMPT, qa, model=tiny_model, layer=LAYER)
    with pytest.raises(JudgeError, match="nothing to calibrate on"):
        fit_calibrated_judge(JoyTeacher(), EVAL_PROMPT, qa, model=tiny_model, layer=LAYER, teacher_scores=[7.0] * 90)
