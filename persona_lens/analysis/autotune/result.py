"""The autotuner's config and result (the analysis pattern of :mod:`persona_lens.analysis.base`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io import atomic_write_text, iter_jsonl, json_safe, write_table
from ...positions import check_positions
from ..base import AnalysisConfig, AnalysisResult
from ..sweep import ALPHA_MODES, DEFAULT_ALPHAS

EVALUATIONS_TABLE = "autotune_evaluations"
CANDIDATES_TABLE = "autotune_candidates"
GENERATIONS_FILE = "generations.scored.jsonl"
BLEND_METHODS = ("weighted", "normalized", "orthogonal")


@dataclass(frozen=True)
class AutotuneConfig(AnalysisConfig):
    """Settings of :func:`persona_lens.analysis.autotune.run` (definitions: the package docstring).

    Search space: ``layers`` (None: the sweep's default layers) x ``alphas`` (fractions of the
    residual norm with ``alpha_mode="fraction"``, as the sweep; 0 is dropped: it is the
    baseline) x ``positions`` x ``weights`` (one tuple per blend candidate, for several vectors;
    blended with ``blend_method``). Questions: ``questions`` or the persona's eval questions
    (the first ``n_questions``), shuffled with ``seed``. Budget: at most ``budget`` judge calls;
    ``eta`` (keep ~1/eta per rung), ``final_size`` (candidates of the last rung), ``n_rungs``
    (None: until ``final_size``), ``min_questions`` (questions of rung 0 at least). CIs: percentile
    bootstrap, ``n_boot`` resamples at ``confidence``. Best point: ``coherence_min`` x baseline
    proxy coherence (or ``judge_coherence_min`` with a coherence judge) and ``diversity_min`` x
    baseline diversity are the floors.
    """

    name = "autotune"
    layers: tuple[int, ...] | None = None
    alphas: tuple[float, ...] = tuple(a for a in DEFAULT_ALPHAS if a > 0)
    alpha_mode: str = "fraction"
    positions: tuple[str, ...] = ("response",)
    weights: tuple[tuple[float, ...], ...] = ()
    blend_method: str = "normalized"
    questions: tuple[str, ...] = ()
    n_questions: int = 16
    budget: int = 400
    eta: int = 3
    final_size: int = 3
    n_rungs: int | None = None
    min_questions: int = 2
    seed: int = 0
    n_boot: int = 1000
    confidence: float = 0.95
    judge_coherence: bool = True
    coherence_min: float = 0.75
    judge_coherence_min: float = 50.0
    diversity_min: float = 0.9
    max_new_tokens: int = 48
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {self.alpha_mode!r}")
        if self.blend_method not in BLEND_METHODS:
            raise ValueError(f"blend_method must be one of {BLEND_METHODS}, got {self.blend_method!r}")
        for p in self.positions:
            check_positions(p)
        if not self.positions:
            raise ValueError("positions must name at least one position policy")
        if not any(a != 0 for a in self.alphas):
            raise ValueError("alphas must hold at least one non-zero value (0 is the unsteered baseline)")
        if self.budget < 1 or self.eta < 2 or self.n_questions < 1 or not 0 < self.confidence < 1:
            raise ValueError("autotune needs budget >= 1, eta >= 2, n_questions >= 1 and 0 < confidence < 1")
        # JSON gives lists of lists: normalise so a loaded config equals the saved one
        object.__setattr__(self, "weights", tuple(tuple(float(x) for x in w) for w in self.weights))


@dataclass
class AutotuneResult(AnalysisResult):
    """``candidates``: one row per candidate (its settings and its numbers at the last rung it
    reached, ``on_front``); ``evaluations``: one row per candidate x rung; ``rungs``: the
    schedule with the judge calls each rung made; ``front``: the last rung's non-dominated
    candidate ids; ``best``: the recommended candidate's row (None when no candidate clears the
    floors); ``settings``: persona, vectors, judge, baseline numbers, budget accounting;
    ``generations``: every judged answer (JSONL beside result.json)."""

    config_type = AutotuneConfig
    config: AutotuneConfig
    candidates: list[dict]
    evaluations: list[dict]
    rungs: list[dict]
    front: list[int]
    best: dict | None
    settings: dict = field(default_factory=dict)
    generations: list[dict] = field(default_factory=list)

    @property
    def judge_calls(self) -> int:
        return int(self.settings.get("judge_calls", 0))

    def front_rows(self) -> list[dict]:
        return [c for c in self.candidates if c["candidate"] in self.front]

    def recommendation(self) -> dict | None:
        """The best point as a dose-card recommendation (``layer``, raw ``alpha``, ``alpha_frac``,
        ``positions``, ``source="autotune"``, the blend ``weights``, each objective with its CI,
        the judge and the budget used), or None when there is no best point."""
        b = self.best
        if b is None:
            return None
        rec: dict[str, Any] = {"layer": b["layer"], "alpha": b["alpha"], "alpha_frac": b["alpha_frac"],
                               "positions": b["positions"], "source": "autotune"}
        if b.get("weights") is not None:
            rec.update(weights=b["weights"], blend_method=self.config.blend_method,
                       vectors=self.settings.get("vectors"))
        for key in ("trait_effect", "coherence", "diversity"):
            rec[key] = b[key]
            rec[f"{key}_ci"] = [b[f"{key}_lo"], b[f"{key}_hi"]]
        rec["effect_ci_excludes_zero"] = b["trait_effect_lo"] is not None and b["trait_effect_lo"] > 0
        rec.update(n_questions=b["n_questions"], judge=self.settings.get("judge"),
                   coherence_source=self.settings.get("coherence_source"), floors=self.settings.get("floors"),
                   budget=self.config.budget, judge_calls=self.judge_calls, persona=self.settings.get("persona"),
                   rule=self.settings.get("best_rule"))
        return json_safe(rec)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"settings": self.settings, "best": self.best, "front": self.front, "rungs": self.rungs,
                          "candidates": self.candidates, "evaluations": self.evaluations,
                          "recommendation": self.recommendation()})

    @classmethod
    def from_dict(cls, config: AnalysisConfig, data: dict[str, Any]) -> AutotuneResult:
        assert isinstance(config, AutotuneConfig)
        return cls(config=config, candidates=data["candidates"], evaluations=data["evaluations"],
                   rungs=data["rungs"], front=data["front"], best=data["best"], settings=data.get("settings", {}))

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json``, ``result.json``, ``autotune_candidates.{csv,json}``,
        ``autotune_evaluations.{csv,json}`` and the judged answers ``generations.scored.jsonl``."""
        out = super().save(directory)
        write_table(json_safe(self.candidates), out / CANDIDATES_TABLE)
        write_table(json_safe(self.evaluations), out / EVALUATIONS_TABLE)
        atomic_write_text(out / GENERATIONS_FILE,
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in json_safe(self.generations)))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AutotuneResult:
        result = super().load(directory)
        path = Path(directory) / GENERATIONS_FILE
        if path.exists():
            result.generations = list(iter_jsonl(path))
        return result

    def summary_text(self) -> str:
        """A few sentences computed from the numbers."""
        s = self.settings
        parts = [f"Searched {len(self.candidates)} candidates in {len(self.rungs)} rung(s) with "
                 f"{self.judge_calls} of {self.config.budget} judge calls; {len(self.front)} on the final Pareto front."]
        b = self.best
        if b is None:
            fl = s.get("floors", {})
            parts.append(f"No candidate has a positive trait effect with coherence >= {fl.get('coherence', math.nan):.3g}"
                         f" and diversity >= {fl.get('diversity', math.nan):.3g}: no recommendation.")
        else:
            w = f", weights {b['weights']}" if b.get("weights") is not None else ""
            parts.append(f"Best: layer {b['layer']}, α = {b['alpha']:.3g} (α·‖v‖/‖h‖ = {b['alpha_frac']:.3g}), "
                         f"positions {b['positions']}{w}: trait effect {b['trait_effect']:+.3g} "
                         f"[{b['trait_effect_lo']:.3g}, {b['trait_effect_hi']:.3g}], coherence {b['coherence']:.3g} "
                         f"[{b['coherence_lo']:.3g}, {b['coherence_hi']:.3g}], diversity {b['diversity']:.3g} "
                         f"[{b['diversity_lo']:.3g}, {b['diversity_hi']:.3g}] on {b['n_questions']} questions "
                         f"({int(100 * self.config.confidence)}% bootstrap CIs)"
                         + ("." if b["trait_effect_lo"] > 0 else "; the trait effect's CI includes 0."))
        return " ".join(parts)
