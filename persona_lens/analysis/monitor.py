"""Monitoring (Persona Vectors, Chen et al. 2025): predict trait expression before generating.

The monitor score of a prompt is the last prompt token's ``blocks.{layer}.hook_resid_post``
(the position right before the first generated token) projected on the unit persona vector::

    score = h_last_prompt[layer] . v[layer] / ||v[layer]||

``run(model, MonitorConfig(prompts=..., out=..., layer=...), vector=v) -> MonitorResult`` (the
pattern of :mod:`persona_lens.analysis.base`) streams a JSONL file in chunks and writes each row
with its ``score`` to ``config.out``; with a judge it also generates the response (or uses the
row's assistant turn), judges trait expression, and reports the Pearson correlation between
monitor score and trait score. ``run(..., backend=...)``: a
:class:`persona_lens.backends.GenerationBackend` serving the model's checkpoint (e.g. vLLM)
generates those answers and the embedding judge's training answers; the scores are always read
by the model's HF hooks. The result holds the numbers (and a bounded sample of the
(score, trait score) pairs for :func:`persona_lens.viz.monitor.figures`).

``run(model, GradedMonitorConfig(persona=..., layers=...), vector=v, judge=j, spec=s)`` runs the
paper's monitoring experiment instead (graded system prompts, Pearson r per layer with CI):
:mod:`persona_lens.analysis.monitor_graded`.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np
from tqdm.auto import tqdm

from ..activations import capture
from ..chat import Messages, as_messages
from ..errors import JudgeError
from ..generation import GenerateIds, backend_generation
from ..io import atomic_write, iter_jsonl
from ..judges import Fittable, TraitScorer, needs_fit
from ..models import check_layer
from ..stats import RunningStats, pearson
from ..vectors import PersonaVector
from .base import AnalysisConfig, AnalysisResult
from .monitor_graded import (
    DEFAULT_LEVELS,
    ROWS_FILE,
    GradedMonitorConfig,
    GradedMonitorResult,
    check_levels,
    graded_prompts,
    load_levels,
    rescore,
    run_graded,
)
from .projection import row_prompt, unit_directions

__all__ = ["DEFAULT_LEVELS", "ROWS_FILE", "GradedMonitorConfig", "GradedMonitorResult", "MonitorConfig", "MonitorResult",
           "RunningStats", "check_levels", "fit_judge", "graded_prompts", "iter_chunks", "load_levels",
           "monitor_scores", "pearson", "rescore", "run", "run_graded"]


def monitor_scores(
    model,
    vector: PersonaVector,
    layer: int,
    prompts: Sequence[str | Messages],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> np.ndarray:
    """Last-prompt-token projections on ``v[layer]/||v[layer]||``, float64 ``[n]``."""
    check_layer(model, layer)
    vector.check_model(model)
    if len(prompts) == 0:
        return np.zeros(0)
    cap = capture(model, list(prompts), None, layers=[layer], reductions=["last_prompt"], batch_size=batch_size,
                  progress=progress, desc="monitor")
    u = unit_directions(vector, [layer])[0].double()
    return (cap.at("last_prompt", layer).double() @ u).numpy()


# --------------------------------------------------------------------------- files


def iter_chunks(path: str | os.PathLike, size: int) -> Iterator[list[dict]]:
    """A JSONL file as lists of at most ``size`` rows, streamed."""
    chunk: list[dict] = []
    for row in iter_jsonl(path):
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _question(messages: Messages) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else messages[-1]["content"]


def _given_response(row: dict) -> str | None:
    if "messages" in row and row["messages"] and row["messages"][-1].get("role") == "assistant":
        return row["messages"][-1]["content"]
    return row.get("response")


def _greedy(generate_ids: GenerateIds, prompts: list, *, max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy unsteered answers by a backend's ``generate_ids``."""
    return [g.text for g in generate_ids(prompts, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0,
                                         seed=None, batch_size=batch_size, steering=None, progress=False)]


def fit_judge(judge: Fittable, model, spec, *, n_questions: int = 8, max_new_tokens: int = 128,
              batch_size: int = 8, backend=None) -> dict:
    """Fit a judge that learns from examples (the embedding proxy) the way extract and sweep do:
    on the model's own greedy answers to the spec's questions under the positive (label 1) and
    the negative (label 0) system prompt. Question ``i`` (of the first ``n_questions`` extraction
    questions) uses instruction pair ``i mod n_pairs``; empty answers are left out. ``backend``
    (serving ``model``'s checkpoint; None: the HF path on ``model``) generates them."""
    prompts, labels = [], []
    for i, question in enumerate(list(spec.questions)[:n_questions]):
        pair = spec.instruction[i % len(spec.instruction)]
        for label, system in ((1, pair.pos), (0, pair.neg)):
            prompts.append([{"role": "system", "content": system}, {"role": "user", "content": question}])
            labels.append(label)
    texts = _greedy(backend_generation(model, backend)[1], prompts, max_new_tokens=max_new_tokens,
                    batch_size=batch_size)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    judge.fit([texts[i] for i in keep], [labels[i] for i in keep])
    return {"source": "greedy answers to the spec's questions under its pos/neg system prompts",
            "n_pos": sum(labels[i] for i in keep), "n_neg": sum(1 - labels[i] for i in keep)}


@dataclass(frozen=True)
class MonitorConfig(AnalysisConfig):
    """``prompts``: the input JSONL (rows with ``messages``, or ``system`` + ``prompt``);
    ``out``: the output JSONL (the input rows + ``score``, and with a judge ``response`` and
    ``trait_score``); ``layer``: where the last prompt token is read. ``generate_responses``
    (None: when judging) generates greedy answers of ``max_new_tokens`` for rows without their
    own; ``max_scatter_points``: the size of the (score, trait score) sample kept for figures."""

    name = "monitor"
    prompts: str
    out: str
    layer: int
    generate_responses: bool | None = None
    max_new_tokens: int = 128
    chunk_size: int = 256
    batch_size: int = 8
    max_scatter_points: int = 20_000


@dataclass
class MonitorResult(AnalysisResult):
    """``score``/``trait_score``: count, mean, std (ddof=0), min, max; ``correlation``: Pearson r
    of score vs trait score (:func:`persona_lens.stats.pearson`) plus ``n_unscored``;
    ``scatter``: ``{"score": [...], "trait_score": [...]}``, a seeded reservoir sample of at most
    ``max_scatter_points`` judged rows."""

    config_type = MonitorConfig
    config: MonitorConfig
    n: int
    vector: str
    score: dict
    correlation: dict | None = None
    trait_score: dict | None = None
    judge: str | None = None
    judge_fit: dict | None = None
    persona: str | None = None
    scatter: dict | None = None


class _Reservoir:
    """A uniform sample of at most ``size`` (x, y) pairs of a stream (Algorithm R, seeded)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seen, self.rng = size, 0, random.Random(seed)
        self.xs: list[float] = []
        self.ys: list[float] = []

    def add(self, x: float, y: float) -> None:
        self.seen += 1
        if len(self.xs) < self.size:
            self.xs.append(x)
            self.ys.append(y)
            return
        j = self.rng.randrange(self.seen)
        if j < self.size:
            self.xs[j], self.ys[j] = x, y


def _responses(generate_ids: GenerateIds, chunk: list[dict], prompts: list,
               config: MonitorConfig) -> list[str | None]:
    """Each row's own answer, else a greedy one by ``generate_ids``."""
    responses = [_given_response(r) for r in chunk]
    todo = [i for i, r in enumerate(responses) if r is None]
    if todo:
        texts = _greedy(generate_ids, [prompts[i] for i in todo], max_new_tokens=config.max_new_tokens,
                        batch_size=config.batch_size)
        for i, text in zip(todo, texts):
            responses[i] = text
    return responses


@overload
def run(model, config: MonitorConfig, *, vector: PersonaVector, judge: TraitScorer | None = None, spec=None,
        progress: bool = True, backend=None) -> MonitorResult: ...


@overload
def run(model, config: GradedMonitorConfig, *, vector: PersonaVector, judge: TraitScorer | None = None, spec=None,
        progress: bool = True, backend=None) -> GradedMonitorResult: ...


def run(
    model,
    config: MonitorConfig | GradedMonitorConfig,
    *,
    vector: PersonaVector,
    judge: TraitScorer | None = None,
    spec=None,
    progress: bool = True,
    backend=None,
) -> MonitorResult | GradedMonitorResult:
    """Score every row of ``config.prompts``, streamed in chunks of ``config.chunk_size``, into
    ``config.out`` (written atomically). With ``judge`` and ``spec`` (the persona spec whose
    ``eval_prompt`` the judge reads) each row also gets a ``response`` and a ``trait_score``, and
    the result the Pearson r between ``score`` and ``trait_score``. A judge that must learn from
    examples first (the embedding proxy) is fitted with :func:`fit_judge`. ``backend`` (a
    :class:`persona_lens.backends.GenerationBackend` serving ``model``'s checkpoint; None: the HF
    path on ``model``) generates every answer; the scores are read by ``model``'s HF hooks.
    A :class:`GradedMonitorConfig` runs :func:`run_graded` (judge and spec required)."""
    if isinstance(config, GradedMonitorConfig):
        if judge is None or spec is None:
            raise ValueError("the graded monitoring experiment needs a judge and the persona spec")
        fitted = fit_judge(judge, model, spec, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                           backend=backend) if needs_fit(judge) else None
        return run_graded(model, config, vector=vector, judge=judge, spec=spec, progress=progress, backend=backend,
                          judge_fit=fitted)
    layer = check_layer(model, config.layer)
    vector.check_model(model)
    if judge is not None and spec is None:
        raise ValueError("scoring trait expression with a judge needs the persona spec (its eval prompt)")
    if judge is not None and not isinstance(judge, TraitScorer):
        raise JudgeError(f"{judge!r} cannot score trait expression (no score_trait_many)")
    _, generate_ids = backend_generation(model, backend)
    judge_fit = fit_judge(judge, model, spec, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                          backend=backend) if needs_fit(judge) else None
    gen = judge is not None if config.generate_responses is None else config.generate_responses
    stats, tstats = RunningStats(), RunningStats()
    scored: tuple[list[float], list[float]] = ([], [])  # (score, trait_score) pairs for Pearson r
    sample = _Reservoir(config.max_scatter_points)
    bar = tqdm(desc="monitor", unit="row", disable=not progress)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            for chunk in iter_chunks(config.prompts, config.chunk_size):
                prompts = [row_prompt(r) for r in chunk]
                scores = monitor_scores(model, vector, layer, prompts, batch_size=config.batch_size)
                stats.update(scores)
                responses = _responses(generate_ids, chunk, prompts, config) if gen else [None] * len(chunk)
                trait: list[float | None] = [None] * len(chunk)
                if judge is not None:
                    qa = [(_question(as_messages(p)), r or "") for p, r in zip(prompts, responses)]
                    trait = list(judge.score_trait_many(spec, qa))
                for row, s, resp, t in zip(chunk, scores, responses, trait):
                    out = {**row, "score": float(s)}
                    if gen:
                        out["response"] = resp
                    if judge is not None:
                        out["trait_score"] = None if t is None else float(t)
                        if t is not None and math.isfinite(float(t)):
                            scored[0].append(float(s))
                            scored[1].append(float(t))
                            tstats.add(float(t))
                            sample.add(float(s), float(t))
                    fh.write(json.dumps(out, ensure_ascii=False) + "\n")
                bar.update(len(chunk))

    atomic_write(config.out, write)
    bar.close()
    result = MonitorResult(config=config, n=stats.n, vector=vector.name, score=stats.to_dict())
    if judge is not None:
        corr = pearson(*scored)
        result.judge, result.judge_fit, result.persona = judge.name, judge_fit, spec.name
        result.trait_score = tstats.to_dict()
        result.correlation = {**corr, "n_unscored": stats.n - corr["n"]}
        result.scatter = {"score": sample.xs, "trait_score": sample.ys}
    return result
