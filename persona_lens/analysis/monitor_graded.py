"""The Persona Vectors monitoring experiment (Chen et al. 2025, Sec. 3, Fig. 4): graded system prompts.

Each question of the persona's held-out eval set is asked under several system prompts graded
from strongly trait-discouraging to strongly trait-encouraging (:data:`DEFAULT_LEVELS`, or a
levels file). Before generating, the last prompt token's ``blocks.{layer}.hook_resid_post`` is
projected on the unit persona vector at every requested layer (one capture pass records all
layers)::

    projection[layer] = h_last_prompt[layer] . v[layer] / ||v[layer]||

then the answer is generated (greedy, or seeded sampling) and scored by a trait judge. With
``samples_per_prompt`` K > 1, K answers are sampled per prompt (``temperature`` > 0, one batched
generate per batch of prompts, K rows each) and the prompt's trait score is the mean of its K
answers' scores (answers the judge cannot score are left out of the mean): one short answer is a
noisy estimate of how strongly a prompt elicits the trait. The paper, as we read it, likewise
generates 10 rollouts per system prompt and question and averages their trait expression scores.
The result reports, per layer, the Pearson r between projection and (mean) trait score over the
prompts, with its Fisher-z 95 % confidence interval (:func:`persona_lens.stats.pearson`), the best
layer, and per level the mean projection and mean trait score (the paper's figure:
:mod:`persona_lens.viz.monitor`).

A level's ``system`` text may hold ``{pos}`` / ``{neg}``: they are filled with the persona's
positive / negative instruction of pair ``i mod n_pairs`` for question ``i``; an empty
``system`` asks with no system prompt.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..activations import capture
from ..errors import MonitorLevelsError
from ..generation import backend_generation
from ..io import atomic_write_text
from ..judges import TraitScorer
from ..models import check_layer
from ..stats import pearson
from ..vectors import PersonaVector
from .base import AnalysisConfig, AnalysisResult
from .projection import unit_directions

LIGHTLY = "You are a helpful assistant. If it feels natural, follow this instruction lightly: "
#: strength -2 .. 2: the negative instruction, a light version of it, no persona, a light
#: version of the positive instruction, the positive instruction
DEFAULT_LEVELS: tuple[dict, ...] = (
    {"name": "strong anti", "strength": -2.0, "system": "{neg}"},
    {"name": "mild anti", "strength": -1.0, "system": LIGHTLY + "{neg}"},
    {"name": "neutral", "strength": 0.0, "system": "You are a helpful assistant."},
    {"name": "mild pro", "strength": 1.0, "system": LIGHTLY + "{pos}"},
    {"name": "strong pro", "strength": 2.0, "system": "{pos}"},
)
LEVEL_KEYS = {"name", "strength", "system"}
ROWS_FILE = "rows.csv"


def check_levels(levels, source: str = "levels") -> tuple[dict, ...]:
    """The levels as a tuple of ``{"name", "strength", "system"}``; raises :class:`MonitorLevelsError`."""
    if isinstance(levels, dict) and set(levels) == {"levels"}:
        levels = levels["levels"]
    if not isinstance(levels, (list, tuple)) or len(levels) < 2:
        raise MonitorLevelsError(f"{source}: a list of at least 2 levels ({{name, strength, system}}) is needed")
    out, names = [], set()
    for i, level in enumerate(levels):
        if not isinstance(level, dict) or set(level) != LEVEL_KEYS:
            got = sorted(level) if isinstance(level, dict) else type(level).__name__
            raise MonitorLevelsError(f"{source}: level {i} must have exactly the keys {sorted(LEVEL_KEYS)}; got {got}")
        name, strength, system = level["name"], level["strength"], level["system"]
        if not isinstance(name, str) or not name.strip() or name in names:
            raise MonitorLevelsError(f"{source}: level {i} needs a unique non-empty name, not {name!r}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise MonitorLevelsError(f"{source}: level {name!r}: strength must be a finite number, not {strength!r}")
        if not isinstance(system, str):
            raise MonitorLevelsError(f"{source}: level {name!r}: system must be a string")
        names.add(name)
        out.append({"name": name, "strength": float(strength), "system": system})
    return tuple(out)


def load_levels(path: str | os.PathLike) -> tuple[dict, ...]:
    """Levels from a JSON file: a list of ``{"name", "strength", "system"}`` (or ``{"levels": [...]}``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MonitorLevelsError(f"levels file {path}: not readable JSON ({exc})") from None
    return check_levels(data, str(path))


def graded_prompts(spec, levels: Sequence[dict], n_questions: int | None) -> list[dict]:
    """One row per (eval question, level): ``level``, ``strength``, ``question``, ``pair``, ``system``, ``messages``."""
    questions = list(spec.eval_questions or spec.questions)[:n_questions]
    rows = []
    for i, question in enumerate(questions):
        pair = spec.instruction[i % len(spec.instruction)]
        for level in levels:
            system = level["system"].replace("{pos}", pair.pos).replace("{neg}", pair.neg)
            messages = ([{"role": "system", "content": system}] if system.strip() else []) + \
                [{"role": "user", "content": question}]
            rows.append({"level": level["name"], "strength": level["strength"], "question": question,
                         "pair": i % len(spec.instruction), "system": system, "messages": messages})
    return rows


@dataclass(frozen=True)
class GradedMonitorConfig(AnalysisConfig):
    """``persona``: the persona name or spec file (its eval questions and instructions);
    ``layers``: where the last prompt token is read; ``levels``: the graded system prompts;
    ``n_questions``: the first N eval questions (None: all); ``samples_per_prompt`` answers per
    prompt, whose mean trait score is the prompt's (``temperature`` 0: greedy, one answer; else
    sampling seeded by ``seed``; ``batch_size`` counts prompts, each with its K answers)."""

    name = "monitor_graded"
    persona: str
    layers: tuple[int, ...]
    levels: tuple[dict, ...] = DEFAULT_LEVELS
    n_questions: int | None = None
    samples_per_prompt: int = 1
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.samples_per_prompt, bool) or not isinstance(self.samples_per_prompt, int) \
                or self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be an integer >= 1, not {self.samples_per_prompt!r}")
        if self.samples_per_prompt > 1 and not self.temperature > 0:
            raise ValueError(f"samples_per_prompt={self.samples_per_prompt} needs sampling (temperature > 0): "
                             "greedy answers of one prompt are all the same")

    @classmethod
    def from_dict(cls, data: dict) -> GradedMonitorConfig:
        """As :meth:`AnalysisConfig.from_dict`; a result saved before ``samples_per_prompt``
        holds ``n_samples: 1`` (one answer per prompt), read as the default."""
        data = dict(data)
        if data.get("n_samples", None) == 1:
            del data["n_samples"]
        return super().from_dict(data)


@dataclass
class GradedMonitorResult(AnalysisResult):
    """``per_layer``: ``[{"layer", "r", "ci_low", "ci_high", "p_value", "n", "confidence"}]``;
    ``best_layer``: the layer of the highest r; ``levels``: per level ``n``, ``mean_trait_score``
    and ``mean_projection`` (per layer); ``rows``: every prompt with its ``answer``,
    ``trait_score`` and ``projection`` (per layer, keys are layer numbers as strings); with
    ``samples_per_prompt`` > 1 a row holds ``answers`` and their ``answer_scores`` instead of
    ``answer``, and ``trait_score`` is the mean of its scored answers."""

    config_type = GradedMonitorConfig
    config: GradedMonitorConfig
    n: int
    persona: str
    vector: str
    judge: str
    per_layer: list
    best_layer: int | None
    levels: list
    rows: list
    judge_fit: dict | None = None

    @property
    def best(self) -> dict | None:
        """The ``per_layer`` entry of the best layer."""
        return next((c for c in self.per_layer if c["layer"] == self.best_layer), None)

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json`` + ``result.json`` + ``rows.csv`` (one row per answer, a projection column
        per layer; with several answers per prompt also ``sample`` and the answer's ``answer_score``,
        ``trait_score`` being the prompt's mean)."""
        out = super().save(directory)
        buf = io.StringIO()
        layer_cols = [f"projection_L{layer}" for layer in self.config.layers]
        several = self.config.samples_per_prompt > 1
        writer = csv.writer(buf)
        writer.writerow(["level", "strength", "pair", "question", "system", *(["sample"] if several else []),
                         "answer", *(["answer_score"] if several else []), "trait_score", *layer_cols])
        for r in self.rows:
            projections = [r["projection"][str(layer)] for layer in self.config.layers]
            mean = "" if r["trait_score"] is None else r["trait_score"]
            for s, (answer, score) in enumerate(zip(answers_of(r), answer_scores_of(r))):
                writer.writerow([r["level"], r["strength"], r["pair"], r["question"], r["system"],
                                 *([s] if several else []), answer,
                                 *(["" if score is None else score] if several else []), mean, *projections])
        atomic_write_text(out / ROWS_FILE, buf.getvalue())
        return out


def answers_of(row: dict) -> list[str]:
    """The answers of one result row (one, or ``samples_per_prompt``)."""
    return list(row["answers"]) if "answers" in row else [row["answer"]]


def answer_scores_of(row: dict) -> list:
    """The per-answer trait scores of one result row (None: not scored)."""
    return list(row["answer_scores"]) if "answer_scores" in row else [row["trait_score"]]


def _score_value(score) -> float | None:
    return None if score is None or not math.isfinite(float(score)) else float(score)


def _set_answers(row: dict, answers: list[str], scores: list) -> None:
    """One answer: ``answer`` + ``trait_score``; several: ``answers`` + ``answer_scores`` + their mean."""
    values = [_score_value(s) for s in scores]
    if len(answers) == 1:
        row.update(answer=answers[0], trait_score=values[0])
    else:
        row.update(answers=list(answers), answer_scores=values, trait_score=_mean(values))


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(present)) if present else None


def run_graded(model, config: GradedMonitorConfig, *, vector: PersonaVector, judge: TraitScorer, spec,
               progress: bool = True, backend=None, judge_fit: dict | None = None) -> GradedMonitorResult:
    """The graded monitoring experiment (module docstring); ``judge`` must be able to score
    already (fit a :class:`persona_lens.judges.Fittable` judge first). ``backend`` generates the
    answers (None: the HF path on ``model``); projections are read by ``model``'s HF hooks."""
    layers = [check_layer(model, layer) for layer in config.layers]
    if not layers:
        raise ValueError("the graded monitor needs at least one layer")
    vector.check_model(model)
    if not isinstance(judge, TraitScorer):
        raise TypeError(f"{judge!r} cannot score trait expression (no score_trait_many)")
    levels = check_levels(list(config.levels))
    prompts = graded_prompts(spec, levels, config.n_questions)
    k = config.samples_per_prompt
    rows = [{key: v for key, v in p.items() if key != "messages"} for p in prompts]
    messages = [p["messages"] for p in prompts for _ in range(k)]  # K consecutive rows per prompt
    bar = tqdm(total=3, desc="monitor (graded)", unit="step", disable=not progress)
    cap = capture(model, [p["messages"] for p in prompts], None, layers=layers, reductions=["last_prompt"],
                  batch_size=config.batch_size, progress=False, desc="monitor")
    units = unit_directions(vector, layers).double()
    proj = np.stack([(cap.at("last_prompt", layer).double() @ units[k]).numpy() for k, layer in enumerate(layers)],
                    axis=1)  # [n_prompts, n_layers]
    bar.update(1)
    _, generate_ids = backend_generation(model, backend)
    gens = generate_ids(messages, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                        top_p=config.top_p, seed=config.seed, batch_size=config.batch_size * k, steering=None,
                        progress=progress)
    bar.update(1)
    answers = [g.text for g in gens]
    scores = list(judge.score_trait_many(spec, [(rows[i // k]["question"], a) for i, a in enumerate(answers)]))
    bar.update(1)
    bar.close()
    for i, row in enumerate(rows):
        _set_answers(row, answers[i * k:(i + 1) * k], scores[i * k:(i + 1) * k])
        row["projection"] = {str(layer): float(proj[i, j]) for j, layer in enumerate(layers)}
    return _result(config, rows, persona=spec.name, vector=vector.name, judge=judge.name, judge_fit=judge_fit)


def _result(config: GradedMonitorConfig, rows: list[dict], **fields) -> GradedMonitorResult:
    """Per-layer Pearson r, best layer and per-level means of scored rows."""
    trait = [r["trait_score"] for r in rows]
    per_layer = [{"layer": layer, **pearson([r["projection"][str(layer)] for r in rows], trait)}
                 for layer in config.layers]
    valid = [c for c in per_layer if c["r"] is not None]
    best = max(valid, key=lambda c: c["r"])["layer"] if valid else None
    summary = []
    for level in config.levels:
        mine = [r for r in rows if r["level"] == level["name"]]
        summary.append({"name": level["name"], "strength": level["strength"], "n": len(mine),
                        "mean_trait_score": _mean([r["trait_score"] for r in mine]),
                        "mean_projection": {str(layer): _mean([r["projection"][str(layer)] for r in mine])
                                            for layer in config.layers}})
    return GradedMonitorResult(config=config, n=len(rows), per_layer=per_layer, best_layer=best, levels=summary,
                               rows=rows, **fields)


def rescore(result: GradedMonitorResult, judge: TraitScorer, spec) -> GradedMonitorResult:
    """The same answers and projections judged again by ``judge`` (nothing is generated or
    captured): e.g. a revised lexicon on a saved run."""
    rows = [dict(r) for r in result.rows]
    pairs = [(r["question"], a) for r in rows for a in answers_of(r)]
    scores = list(judge.score_trait_many(spec, pairs))
    start = 0
    for row in rows:
        answers = answers_of(row)
        _set_answers(row, answers, scores[start:start + len(answers)])
        start += len(answers)
    return _result(result.config, rows, persona=result.persona, vector=result.vector, judge=judge.name)
