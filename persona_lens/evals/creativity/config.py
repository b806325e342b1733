"""The creativity evaluation's settings (:class:`CreativityConfig`, the pattern of
:mod:`persona_lens.analysis.base`) and the readers of its compact CLI forms."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...analysis.base import AnalysisConfig
from ...personas.billy import PAPER_MERGE
from .methods import DEFAULT_ROLES
from .tasks import TASKS

DEFAULT_METHODS = ("sa", "sa_t1", "mrp", "discussion", "billy")
JUDGES_WITHOUT_MODEL = ("none", "embedding")


@dataclass(frozen=True)
class CreativityConfig(AnalysisConfig):
    """Settings of :func:`persona_lens.evals.creativity.run` (definitions: the package docstring).

    Items: the first ``n`` of each of ``tasks`` (the built-in set, or ``tasks_dir`` with file
    suffix ``split``), one response per item and ``seeds`` entry, ``max_new_tokens`` per call,
    ``batch_size`` items per generation. BILLY: ``layer``/``alpha`` (None: from ``sweep``, a
    layer sweep's result, else BILLY's relative depth and alpha), the merged vector from
    ``merged`` (a file), else the mean of ``vectors`` (files or persona names), else of
    ``personas`` (looked up in ``vector_dir``, else extracted with ``extract_questions`` x
    ``extract_max_tokens``). Discussion: ``roles``, ``rounds``, ``discussion_final``. Judging:
    ``judge`` (none | embedding | openai:MODEL | local:MODEL) and its settings.
    ``ablation_vectors``: also run ``billy_k{k}`` for each k (the mean of the first k vectors).
    """

    name = "creativity"
    tasks: tuple[str, ...] = TASKS
    methods: tuple[str, ...] = DEFAULT_METHODS
    n: int | None = 10
    seeds: tuple[int, ...] = (0,)
    max_new_tokens: int = 256
    temperature: float = 0.7
    batch_size: int = 8
    tasks_dir: str | None = None
    split: str = "auto"
    # BILLY / steering
    layer: int | None = None
    alpha: float | None = None
    positions: str = "response"
    sweep: str | None = None
    vectors: tuple[str, ...] | None = None
    merged: str | None = None
    personas: tuple[str, ...] = PAPER_MERGE
    vector_dir: str | None = None  # NAME.safetensors files used for persona names before extracting
    extract_questions: int = 5
    extract_max_tokens: int = 96
    # discussion
    roles: tuple[str, ...] = DEFAULT_ROLES
    rounds: int = 3
    discussion_final: str = "agents"
    # judging
    judge: str = "embedding"
    judge_samples: int = 3
    judge_temperature: float | None = None
    judge_mode: str = "batch"
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    # ablation: numbers of blended BILLY personas (first k of BILLY_PERSONAS or of vectors)
    ablation_vectors: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # sequences given as lists (the CLI, Python callers) are stored as tuples: hashable, JSON round trip
        for name in ("tasks", "methods", "seeds", "vectors", "personas", "roles", "ablation_vectors"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))

    @property
    def method_names(self) -> list[str]:
        """``methods`` plus the ablation's ``billy_k{k}``, each once."""
        return list(dict.fromkeys(list(self.methods) + [f"billy_k{k}" for k in (self.ablation_vectors or ())]))

    @property
    def judged(self) -> bool:
        """Whether a judge model scores the ideas (not only the offline proxies)."""
        return self.judge not in (*JUDGES_WITHOUT_MODEL, "", None)


def parse_ablation(spec: str | Sequence[int] | None) -> list[int] | None:
    """``"1..7"`` -> 1..7; ``"1,3,5"`` -> [1, 3, 5]; ``"4"`` -> 1..4."""
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str):
        return [int(k) for k in spec]
    m = re.fullmatch(r"\s*(\d+)\s*(?:\.\.|-|:)\s*(\d+)\s*", spec)
    if m:
        return list(range(int(m.group(1)), int(m.group(2)) + 1))
    if "," in spec:
        return [int(x) for x in spec.split(",") if x.strip()]
    return list(range(1, int(spec) + 1))


def read_sweep(path: str | os.PathLike) -> tuple[int, float]:
    """The recommended (layer, alpha) from a layer sweep's ``result.json`` (or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "result.json"
    data = json.loads(p.read_text(encoding="utf-8"))
    for holder in (data.get("recommendation"), data.get("recommended"), data.get("best"), data):
        if isinstance(holder, dict):
            layer = holder.get("layer", holder.get("recommended_layer"))
            alpha = holder.get("alpha", holder.get("recommended_alpha"))
            if layer is not None and alpha is not None:
                return int(layer), float(alpha)
    raise ValueError(f"{p}: no recommended layer and alpha found (expected recommendation.layer/alpha)")
