"""The layer sweep's config and result (the analysis pattern of :mod:`persona_lens.analysis.base`)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io import atomic_write_text, iter_jsonl, json_safe, write_table
from ...positions import Positions
from ..base import AnalysisConfig, AnalysisResult
from .scoring import ALPHA_MODES, DEFAULT_ALPHAS

LAYERS_TABLE = "sweep_layers"
STEERING_TABLE = "sweep_steering"
GENERATIONS_FILE = "generations.scored.jsonl"
HELDOUT_FILE = "heldout.scored.jsonl"


@dataclass(frozen=True)
class SweepConfig(AnalysisConfig):
    """Settings of :func:`persona_lens.analysis.sweep.run` (definitions: the package docstring).

    ``layers``: where to steer (None: :func:`default_sweep_layers`); ``alphas``: fractions of
    the residual norm (``alpha_mode="fraction"``) or raw coefficients (``"raw"``), 0 is always
    added; ``n_eval`` held-out questions (x pos/neg), the first ``n_steer`` of them are the
    steering prompts; ``readout_layer`` (None: the largest held-out Cohen's d) is where the
    generated texts are measured. The result holds the config with ``layers``, ``alphas``,
    ``n_steer`` and ``readout_layer`` resolved.
    """

    name = "sweep"
    layers: tuple[int, ...] | None = None
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    alpha_mode: str = "fraction"
    n_eval: int = 8
    n_steer: int | None = 4
    max_new_tokens: int = 48
    batch_size: int = 16
    positions: Positions = "response"
    coherence_min: float = 0.75
    max_empty: float = 0.25
    readout_layer: int | None = None

    def __post_init__(self) -> None:
        if self.alpha_mode not in ALPHA_MODES:
            raise ValueError(f"alpha_mode must be one of {ALPHA_MODES}, got {self.alpha_mode!r}")


@dataclass
class SweepResult(AnalysisResult):
    """``layers``: one row per model layer; ``steering``: one row per swept layer x alpha;
    ``settings``: what was swept (persona, vector and its digest, model, judge, held-out source,
    base coherence); ``generations``/``heldout``: the scored texts (JSONL beside result.json)."""

    config_type = SweepConfig
    config: SweepConfig
    layers: list[dict]
    steering: list[dict]
    recommendation: dict
    settings: dict = field(default_factory=dict)
    generations: list[dict] = field(default_factory=list)
    heldout: list[dict] = field(default_factory=list)

    @property
    def recommended_layer(self) -> int | None:
        return self.recommendation.get("layer")

    @property
    def recommended_alpha(self) -> float | None:
        return self.recommendation.get("alpha")

    @property
    def recommended_alpha_range(self) -> list[float] | None:
        return self.recommendation.get("alpha_range")

    @property
    def swept_layers(self) -> list[int]:
        return sorted({int(r["layer"]) for r in self.steering})

    @property
    def alpha_values(self) -> list[float]:
        return sorted({float(r["alpha_value"]) for r in self.steering})

    def layer_row(self, layer: int) -> dict:
        return next(r for r in self.layers if r["layer"] == layer)

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"settings": self.settings, "recommendation": self.recommendation, "layers": self.layers,
                          "steering": self.steering})

    @classmethod
    def from_dict(cls, config: AnalysisConfig, data: dict[str, Any]) -> SweepResult:
        assert isinstance(config, SweepConfig)
        return cls(config=config, layers=data["layers"], steering=data["steering"],
                   recommendation=data["recommendation"], settings=data.get("settings", {}))

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json``, ``result.json``, the tables ``sweep_layers.{csv,json}`` and
        ``sweep_steering.{csv,json}``, and the scored texts (``generations.scored.jsonl``,
        ``heldout.scored.jsonl``)."""
        out = super().save(directory)
        write_table(json_safe(self.layers), out / LAYERS_TABLE)
        write_table(json_safe(self.steering), out / STEERING_TABLE)
        for rows, name in ((self.generations, GENERATIONS_FILE), (self.heldout, HELDOUT_FILE)):
            atomic_write_text(out / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in json_safe(rows)))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SweepResult:
        result = super().load(directory)
        src = Path(directory)
        for attr, name in (("generations", GENERATIONS_FILE), ("heldout", HELDOUT_FILE)):
            if (src / name).exists():
                setattr(result, attr, list(iter_jsonl(src / name)))
        return result

    def summary_text(self) -> str:
        """A few sentences computed from the numbers."""
        rec = self.recommendation
        rows = [r for r in self.layers if r.get("auroc") is not None and math.isfinite(r["auroc"])]
        if not rows:
            return "No held-out separation could be computed."
        best = max(rows, key=lambda r: r["auroc"])
        parts = [f"Held-out AUROC (pos vs neg system prompt, projection on v/‖v‖) peaks at {best['auroc']:.2f} "
                 f"at layer {best['layer']} (Cohen's d {best['cohens_d']:.2f}); "
                 f"{sum(r['auroc'] >= 0.9 for r in rows)} of {len(rows)} layers reach 0.9."]
        text_rows = [r for r in rows if r.get("auroc_text") is not None and math.isfinite(r["auroc_text"])]
        if text_rows:
            bt = max(text_rows, key=lambda r: r["auroc_text"])
            parts.append(f"Read without their system prompt (as data screening reads text), the answers separate "
                         f"best at layer {bt['layer']} (AUROC {bt['auroc_text']:.2f}): the layer to screen at.")
        if rec.get("layer") is not None:
            lr = self.layer_row(rec["layer"])
            s = f"Recommended layer: {rec['layer']} (AUROC {lr['auroc']:.2f}, ‖v‖/‖h‖ = {lr['norm_ratio']:.3f})"
            if rec.get("alpha") is not None:
                s += (f", α = {rec['alpha']:.3g} (α·‖v‖/‖h‖ = {rec['alpha_frac']:.2f}); coherent range "
                      f"α ∈ [{rec['alpha_range'][0]:.3g}, {rec['alpha_range'][1]:.3g}]")
                cell = next(r for r in self.steering if r["layer"] == rec["layer"] and r["alpha"] == rec["alpha"])
                s += (f", which moves the generated text's projection (read at layer {self.config.readout_layer}) "
                      f"by {cell['effect']:.2f}× the held-out pos−neg gap")
                if cell.get("delta_trait") is not None:
                    s += f" and the trait score by {cell['delta_trait']:+.1f} points"
            if rec.get("fallback"):
                s += " — chosen by AUROC alone: no α > 0 gave a coherent positive effect"
            parts.append(s + ".")
        broken = [r for r in self.steering if not r.get("passes_guard")]
        if broken:
            parts.append(f"{len(broken)} of {len(self.steering)} layer×α cells fail the coherence guard "
                         f"(e.g. layer {broken[0]['layer']}, α·‖v‖/‖h‖ = {broken[0]['alpha_frac']:.2f}).")
        return " ".join(parts)
