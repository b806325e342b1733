"""A calibrated judge: a small regressor fitted to another judge's scores, checked before use.

``fit_calibrated_judge(teacher, spec, qa)`` scores every (question, answer) with the teacher
(any :class:`TraitScorer`: ``openai:MODEL``, ``local:MODEL``, ``lexicon:NAME``...), computes
features of each answer and fits a ridge regression features -> 0-100. Its agreement with the
teacher is measured **before** it is used, on K-fold cross-validated predictions (each answer
scored by a regressor that never saw it):

* Pearson r with its Fisher-z 95% CI and a percentile-bootstrap 95% CI;
* Cohen's kappa, quadratic-weighted, on both scores cut into 5 bins of width 20 ([0, 20), ...,
  [80, 100]), and unweighted on both scores cut at 50 (trait shown or not), each with a
  bootstrap CI; and the mean absolute error.

Bootstraps resample rows with ``numpy.random.default_rng(seed)``; folds come from
``KFold(shuffle=True, random_state=seed)``: no global RNG is touched. A judge whose
cross-validated r is below ``min_r`` is neither saved nor used unless forced
(:class:`~persona_lens.errors.WeakCalibrationError`).

Features (:class:`FeatureSpec`):

* ``activations`` (default): the residual stream ``blocks.{layer}.hook_resid_post`` of a
  persona_lens model averaged over the answer's tokens, the question as the user turn
  (:func:`persona_lens.activations.capture`, reduction ``response_mean``): the representation
  persona vectors are read from. Needs that very model at use time: the file keeps its name, id,
  dtype and weights fingerprint, and a model with other weights is refused
  (:class:`~persona_lens.errors.ModelMismatchError`).
* ``minilm``: the offline all-MiniLM-L6-v2 sentence embedding of the answer alone
  (:func:`persona_lens.judges.embedding.embed_texts`); no language model needed.

Regressor: features standardised, then ``RidgeCV`` (alpha picked by efficient leave-one-out
among :data:`DEFAULT_ALPHAS`); predictions are clipped to [0, 100]. Everything (feature spec,
scaler and ridge weights as plain float lists, agreement report, teacher, label count and
fingerprint) is one JSON file written atomically; ``calibrated:PATH`` loads it as a judge.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..activations import capture
from ..chat import response_ids
from ..errors import (
    CalibratedJudgeFileError,
    JudgeError,
    ModelMismatchError,
    UnknownModelError,
    WeakCalibrationError,
)
from ..io import atomic_write_json
from ..models import d_model, load_model, model_dtype, model_id, n_layers, resolve_model_name
from ..runs.fingerprint import content_hash, model_fingerprint
from .agreement import DEFAULT_ALPHAS, RidgeWeights, agreement_report, cross_validated_scores
from .base import QA, TraitScorer, needs_fit
from .embedding import embed_texts
from .prompts import SpecOrPrompt

FORMAT = "persona_lens.calibrated_judge"
VERSION = 1
FEATURE_KINDS = ("activations", "minilm")
DEFAULT_MIN_R = 0.5


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureSpec:
    """What the regressor reads. ``activations``: ``model_name`` (what ``load_model`` takes, None
    for a model built in memory), ``model_id``, ``model_fingerprint``, ``dtype``, ``layer``;
    ``pooling`` is the capture reduction (``response_mean``). ``minilm``: nothing else."""

    kind: str = "activations"
    layer: int | None = None
    model_name: str | None = None
    model_id: str | None = None
    model_fingerprint: str | None = None
    dtype: str | None = None
    pooling: str = "response_mean"

    @classmethod
    def for_model(cls, model, layer: int | None = None) -> FeatureSpec:
        """Activation features of ``model`` at ``layer`` (default: two thirds of the depth, where
        trait directions separate best in Persona Vectors)."""
        depth = n_layers(model)
        layer = (2 * depth) // 3 if layer is None else int(layer)
        if not 0 <= layer < depth:
            raise JudgeError(f"feature layer {layer} is outside [0, {depth}) for {model_id(model)}")
        return cls("activations", layer, getattr(model, "persona_lens_key", None), model_id(model),
                   model_fingerprint(model), str(model_dtype(model)).removeprefix("torch."))

    @classmethod
    def from_dict(cls, data: Any) -> FeatureSpec:
        if not isinstance(data, dict) or data.get("kind") not in FEATURE_KINDS:
            raise CalibratedJudgeFileError(f"features must be an object with kind in {FEATURE_KINDS}, got {data!r:.200}")
        layer = data.get("layer")
        if data["kind"] == "activations" and (isinstance(layer, bool) or not isinstance(layer, int)
                                              or not data.get("model_fingerprint")):
            raise CalibratedJudgeFileError("activation features need an integer layer and a model fingerprint")
        return cls(str(data["kind"]), layer, data.get("model_name"), data.get("model_id"),
                   data.get("model_fingerprint"), data.get("dtype"), str(data.get("pooling", "response_mean")))

    def describe(self) -> str:
        if self.kind == "minilm":
            return "all-MiniLM-L6-v2 embedding of the answer"
        return f"{self.model_id} layer {self.layer} resid_post, {self.pooling}"

    def check_model(self, model) -> None:
        """Refuse a model that is not the one the regressor was fitted on (id, config, weights, dtype)."""
        found = model_fingerprint(model)
        if found != self.model_fingerprint:
            raise ModelMismatchError(
                f"the calibrated judge reads {self.describe()} of the model fingerprinted {self.model_fingerprint} "
                f"({self.dtype}) but was given {found} ({str(model_dtype(model)).removeprefix('torch.')}): use the "
                "same checkpoint in the same dtype, or fit the judge again on this model")


def answer_features(features: FeatureSpec, qa: QA, model=None, *, batch_size: int = 8,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(x, usable)``: one feature row per (question, answer) and whether it could be computed (an
    answer of zero tokens has no response mean; its row is zeros and ``usable`` False)."""
    qa = list(qa)
    if features.kind == "minilm":
        return embed_texts([a for _, a in qa]).astype(np.float64), np.ones(len(qa), dtype=bool)
    if model is None or features.layer is None:
        raise JudgeError("activation features need the model they were fitted on and a layer")
    layer = int(features.layer)
    usable = np.asarray([bool(response_ids(model.tokenizer, a)) for _, a in qa], dtype=bool)
    rows = [i for i in range(len(qa)) if usable[i]]
    x = np.zeros((len(qa), d_model(model)))
    if rows:
        got = capture(model, [[{"role": "user", "content": qa[i][0]}] for i in rows], [qa[i][1] for i in rows],
                      layers=[layer], reductions=[features.pooling], batch_size=batch_size,
                      progress=progress, desc="features")
        values = got.at(features.pooling, layer).double().numpy()
        x[rows] = values
    return x, usable


# --------------------------------------------------------------------------- the judge


class CalibratedJudge:
    """A :class:`TraitScorer` that predicts its teacher judge's 0-100 score from answer features.

    Built by :func:`fit_calibrated_judge` or :meth:`load`. ``agreement`` is the cross-validated
    report; below ``min_r`` the judge refuses to score or be saved unless ``forced``.
    """

    def __init__(self, features: FeatureSpec, weights: RidgeWeights, *, agreement: dict, teacher: str,
                 trait: str | None, labels: dict, min_r: float = DEFAULT_MIN_R, forced: bool = False,
                 model=None, batch_size: int = 8, name: str | None = None, created: str | None = None):
        self.features, self.weights, self.agreement = features, weights, agreement
        self.teacher, self.trait, self.labels = teacher, trait, labels
        self.min_r, self.forced, self.batch_size = float(min_r), bool(forced), int(batch_size)
        self.created = created or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.name = name or f"calibrated[{teacher}]"
        self.model = None
        if model is not None:
            self.attach_model(model)

    def __repr__(self) -> str:
        return f"CalibratedJudge({self.name!r}, r={self.agreement.get('pearson_r')}, features={self.features.describe()!r})"

    # ------------------------------------------------------------------ model and agreement
    def attach_model(self, model) -> CalibratedJudge:
        """Use ``model`` for activation features; refused unless it is the model fitted on."""
        if self.features.kind == "activations":
            self.features.check_model(model)
            self.model = model
        return self

    @property
    def accepted(self) -> bool:
        """Whether the cross-validated r reaches ``min_r`` (or the judge was forced)."""
        r = self.agreement.get("pearson_r")
        return self.forced or (r is not None and r >= self.min_r)

    def require_agreement(self, action: str = "use") -> None:
        if not self.accepted:
            raise WeakCalibrationError(
                f"refusing to {action} a calibrated judge whose cross-validated Pearson r with {self.teacher} is "
                f"{_fmt(self.agreement.get('pearson_r'))} < min_r {self.min_r:g} (n={self.agreement.get('n')}): "
                "use more or better labels, another layer or feature kind, or force it")

    # ------------------------------------------------------------------ scoring
    def score_features(self, x: np.ndarray) -> list[float]:
        """Scores (0-100) of precomputed feature rows."""
        self.require_agreement()
        return [float(v) for v in self.weights.predict(x)]

    def score_trait(self, spec: SpecOrPrompt, question: str, answer: str) -> float | None:
        return self.score_trait_many(spec, [(question, answer)])[0]

    def score_trait_many(self, spec: SpecOrPrompt, qa: QA, *, progress: bool = False) -> list[float | None]:
        """Scores of answers (None for an answer of zero tokens). ``spec`` must be the trait the
        judge was fitted for when it names one."""
        self.require_agreement()
        asked = getattr(spec, "name", None)
        if asked and self.trait and asked != self.trait:
            raise JudgeError(f"this calibrated judge scores {self.trait!r}, not {asked!r}")
        if self.features.kind == "activations" and self.model is None:
            self.attach_model(_load_feature_model(self.features))
        x, usable = answer_features(self.features, qa, self.model, batch_size=self.batch_size, progress=progress)
        scores = self.weights.predict(x) if len(x) else np.zeros(0)
        return [float(s) if ok else None for s, ok in zip(scores, usable)]

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "persona_lens_version": __version__, "created": self.created,
                "teacher": self.teacher, "trait": self.trait, "features": asdict(self.features),
                "labels": self.labels, "agreement": self.agreement, "min_r": self.min_r, "forced": self.forced,
                "regressor": self.weights.to_dict()}

    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write the judge as one JSON file (atomically); refused below ``min_r`` unless forced."""
        if force:
            self.forced = True
        self.require_agreement("save")
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, *, model=None, shared_model=None, device: str | None = None,
             min_r: float | None = None, force: bool = False, batch_size: int = 8) -> CalibratedJudge:
        """The judge in ``path``. Activation features need their model: ``model`` (must be the one
        fitted on), else ``shared_model`` when it has the fitted model's id (then it must have its
        weights too), else the model named in the file, loaded with ``load_model`` in the fitted
        dtype. ``min_r`` overrides the file's threshold; ``force`` uses a judge below it."""
        data = read_calibrated_file(path)
        judge = cls(FeatureSpec.from_dict(data["features"]), RidgeWeights.from_dict(data["regressor"]),
                    agreement=data["agreement"], teacher=str(data["teacher"]), trait=data.get("trait"),
                    labels=data.get("labels") or {}, min_r=data["min_r"] if min_r is None else min_r,
                    forced=force or bool(data.get("forced")), batch_size=batch_size, name=f"calibrated:{path}",
                    created=data.get("created"))
        judge.require_agreement()
        if judge.features.kind == "activations":
            if model is None and shared_model is not None and model_id(shared_model) == judge.features.model_id:
                model = shared_model
            judge.attach_model(model if model is not None else _load_feature_model(judge.features, device))
        return judge


def read_calibrated_file(path: str | os.PathLike) -> dict:
    """The checked contents of a calibrated judge file, without loading any model
    (:class:`CalibratedJudgeFileError` for a missing, unreadable or foreign file)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CalibratedJudgeFileError(f"{path}: no such calibrated judge file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibratedJudgeFileError(f"{path}: not a calibrated judge file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibratedJudgeFileError(f"{path}: not a persona_lens calibrated judge (format is not {FORMAT!r})")
    if data.get("version") != VERSION:
        raise CalibratedJudgeFileError(f"{path}: calibrated judge version {data.get('version')!r}; this persona_lens "
                                       f"reads version {VERSION}")
    for key in ("features", "regressor", "agreement", "teacher", "min_r"):
        if key not in data:
            raise CalibratedJudgeFileError(f"{path}: the calibrated judge has no {key!r}")
    if not isinstance(data["agreement"], dict):
        raise CalibratedJudgeFileError(f"{path}: 'agreement' must be an object")
    for key, value in (("min_r", data["min_r"]), ("agreement.pearson_r", data["agreement"].get("pearson_r", 0.0))):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise CalibratedJudgeFileError(f"{path}: {key} must be a number, got {value!r:.50}")
    features = FeatureSpec.from_dict(data["features"])
    weights = RidgeWeights.from_dict(data["regressor"])
    del features, weights  # parsed only to check them
    return data


def _load_feature_model(features: FeatureSpec, device: str | None = None):
    if not features.model_name:
        raise ModelMismatchError(f"the calibrated judge reads {features.describe()}, a model that cannot be loaded by "
                                 "name: pass that model (model=)")
    return load_model(features.model_name, device=device, dtype=features.dtype)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


# --------------------------------------------------------------------------- fitting


def fit_calibrated_judge(
    teacher: TraitScorer,
    spec: SpecOrPrompt,
    qa: QA,
    *,
    features: FeatureSpec | str = "activations",
    model=None,
    layer: int | None = None,
    folds: int = 5,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    min_r: float = DEFAULT_MIN_R,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 8,
    teacher_scores: Sequence[float | None] | None = None,
    progress: bool = False,
) -> tuple[CalibratedJudge, list[dict]]:
    """Fit a calibrated judge to ``teacher``'s scores of ``qa`` and measure its agreement.

    ``features``: ``"activations"`` (of ``model`` at ``layer``), ``"minilm"`` or a
    :class:`FeatureSpec`. ``teacher_scores``: the teacher's scores if already known (then the
    teacher is not asked). Rows the teacher cannot score (None) or whose answer has no tokens are
    left out. Returns ``(judge, rows)``: ``rows`` has per answer ``question, answer, teacher,
    cross_validated, fold``. The judge is returned even below ``min_r`` (its report tells how
    far) but then refuses to score or be saved unless forced.
    """
    qa = [(str(q), str(a)) for q, a in qa]
    teacher_name = str(getattr(teacher, "name", type(teacher).__name__))
    if needs_fit(teacher):
        raise JudgeError(f"teacher {teacher_name!r} must be fitted before it can teach")
    if teacher_scores is None:
        teacher_scores = teacher.score_trait_many(spec, qa, progress=progress)
    if len(teacher_scores) != len(qa):
        raise JudgeError(f"{len(teacher_scores)} teacher scores for {len(qa)} answers")
    if isinstance(features, str):
        if features not in FEATURE_KINDS:
            raise JudgeError(f"unknown feature kind {features!r}; choose from {FEATURE_KINDS}")
        if features == "activations":
            if model is None:
                raise JudgeError("activation features need model=")
            features = FeatureSpec.for_model(model, layer)
        else:
            features = FeatureSpec("minilm")
    elif features.kind == "activations":
        if model is None:
            raise JudgeError("activation features need model=")
        features.check_model(model)
    x, usable = answer_features(features, qa, model, batch_size=batch_size, progress=progress)
    keep = [i for i, s in enumerate(teacher_scores) if s is not None and math.isfinite(float(s)) and usable[i]]
    if len(keep) < max(2 * folds, 10):
        scored = sum(1 for s in teacher_scores if s is not None and math.isfinite(float(s)))
        raise JudgeError(f"only {len(keep)} of {len(qa)} answers are usable (the teacher {teacher_name} scored "
                         f"{scored}; {int(usable.sum())} have tokens); a calibrated judge needs at least "
                         f"{max(2 * folds, 10)}")
    y = np.asarray([float(teacher_scores[i]) for i in keep])  # type: ignore[arg-type]  # None left out above
    if np.ptp(y) == 0:
        raise JudgeError(f"the teacher gave every answer {y[0]:g}: nothing to calibrate on")
    xk = x[keep]
    cv, fold_of = cross_validated_scores(xk, y, folds=folds, seed=seed, alphas=alphas)
    report = agreement_report(y, cv, n_boot=n_boot, seed=seed)
    report.update(folds=folds, n_dropped=len(qa) - len(keep))
    labelled = [[qa[i][0], qa[i][1], float(yv)] for i, yv in zip(keep, y)]
    labels = {"n": len(keep), "n_dropped": len(qa) - len(keep), "fingerprint": content_hash(labelled)}
    trait = getattr(spec, "name", None)
    judge = CalibratedJudge(features, RidgeWeights.fit(xk, y, alphas), agreement=report,
                            teacher=teacher_name, trait=trait,
                            labels=labels, min_r=min_r, model=model if features.kind == "activations" else None,
                            batch_size=batch_size)
    rows = [{"question": qa[i][0], "answer": qa[i][1], "teacher": float(yv), "cross_validated": float(c),
             "fold": int(f)} for i, yv, c, f in zip(keep, y, cv, fold_of)]
    return judge, rows


def check_calibrated_file(path: str | os.PathLike, *, min_r: float | None = None, force: bool = False) -> dict:
    """What the command line checks before any model loads: the file is a calibrated judge, it
    reaches its ``min_r`` (or ``force``), and the model its features need can be named."""
    data = read_calibrated_file(path)
    threshold = float(data["min_r"] if min_r is None else min_r)
    r = data["agreement"].get("pearson_r")
    if not (force or data.get("forced") or (r is not None and r >= threshold)):
        raise WeakCalibrationError(f"{path}: cross-validated Pearson r {_fmt(r)} < min_r {threshold:g}")
    features = FeatureSpec.from_dict(data["features"])
    if features.kind == "activations" and features.model_name:
        try:
            resolve_model_name(features.model_name)
        except UnknownModelError as exc:
            raise CalibratedJudgeFileError(f"{path}: its feature model cannot be found: {exc}") from None
    return data
