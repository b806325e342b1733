"""The one-trait screen: ``run(model, ScreenConfig(data, out, layer), vector=v) -> ScreenResult``
(see :mod:`persona_lens.analysis.screen`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ...activations import capture
from ...chat import Messages, as_messages
from ...io import atomic_write, atomic_write_text, iter_jsonl, json_safe
from ...models import check_layer
from ...runs.fingerprint import model_fingerprint
from ...stats import RunningStats
from ...vectors import PersonaVector
from ..base import AnalysisConfig, AnalysisResult
from ..monitor import iter_chunks
from ..projection import unit_directions
from .common import (
    BaseResponses,
    GenerateFn,
    TopK,
    base_response_store,
    default_generate,
    finite_or_none,
    histogram_from_file,
    training_row,
)

TOP_FILE = "top.jsonl"

ProjectFn = Callable[[Sequence[Messages], Sequence[str]], np.ndarray]


# --------------------------------------------------------------------------- projections


def response_projections(
    model, vector: PersonaVector, layer: int, prompts: Sequence[Messages], responses: Sequence[str],
    *, batch_size: int = 8,
) -> np.ndarray:
    """Response-mean activation at ``layer`` projected on the unit vector; NaN for an empty response."""
    tok = model.tokenizer
    out = np.full(len(prompts), np.nan)
    keep = [i for i, r in enumerate(responses) if r and tok(r, add_special_tokens=False)["input_ids"]]
    if keep:
        cap = capture(model, [prompts[i] for i in keep], [responses[i] for i in keep], layers=[layer],
                      reductions=["response_mean"], batch_size=batch_size, progress=False)
        u = unit_directions(vector, [layer])[0].double()
        out[keep] = (cap.at("response_mean", layer).double() @ u).numpy()
    return out


def projection_diff(
    model,
    vector: PersonaVector,
    layer: int,
    prompts: Sequence[str | Messages],
    responses: Sequence[str],
    base_responses: Sequence[str] | None = None,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> dict:
    """In-memory screening of a few rows: arrays ``projection``, ``base_projection``,
    ``projection_diff`` (NaN where a response is empty) and the ``base_responses`` used."""
    check_layer(model, layer)
    vector.check_model(model)
    messages = [as_messages(p) for p in prompts]
    if len(responses) != len(messages):
        raise ValueError(f"{len(messages)} prompts but {len(responses)} responses")
    if base_responses is None:
        base_responses = list(default_generate(model, max_new_tokens, batch_size)(messages))
    p = response_projections(model, vector, layer, messages, responses, batch_size=batch_size)
    b = response_projections(model, vector, layer, messages, base_responses, batch_size=batch_size)
    return {"projection": p, "base_projection": b, "projection_diff": p - b, "base_responses": list(base_responses)}


# --------------------------------------------------------------------------- streaming screen


@dataclass(frozen=True)
class ScreenConfig(AnalysisConfig):
    """``data``: the training JSONL (rows with ``messages`` ending with the assistant response,
    or ``prompt`` + ``response``); ``out``: the scored JSONL (every row plus ``projection``,
    ``base_projection``, ``projection_diff``; ``null`` and a ``skipped`` reason where a response
    is empty); ``base_cache``: the base-response store (None: ``<out>.base_cache.jsonl``);
    ``top_k`` largest ΔP rows are kept; ``bins``: the histogram of ΔP."""

    name = "screen"
    data: str
    out: str
    layer: int
    base_cache: str | None = None
    top_k: int = 20
    chunk_size: int = 256
    max_new_tokens: int = 128
    batch_size: int = 8
    bins: int = 40

    @property
    def base_cache_path(self) -> Path:
        if self.base_cache is not None:
            return Path(self.base_cache)
        out = Path(self.out)
        return Path(f"{out.with_suffix('') if out.suffix == '.jsonl' else out}.base_cache.jsonl")


@dataclass
class ScreenResult(AnalysisResult):
    """``projection_diff``/``projection``/``base_projection``: count, mean, std (ddof=0), min,
    max over the scored rows; ``top``: the ``top_k`` largest-ΔP rows, largest first (ties: the
    earlier row), each the scored row plus ``index`` and ``base_response`` (``top.jsonl`` beside
    ``result.json``); ``histogram``: fixed-bin counts of ΔP (``edges``, ``counts``); ``cache``:
    base responses found in the store (``hits``) and ``generated``."""

    config_type = ScreenConfig
    config: ScreenConfig
    n: int
    n_scored: int
    vector: str
    projection_diff: dict
    projection: dict
    base_projection: dict
    mean_projection_diff: float | None
    fraction_positive: float | None
    histogram: dict
    top: list[dict] = field(default_factory=list)
    cache: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["top"] = [{"index": r["index"], "projection_diff": r["projection_diff"]} for r in self.top]
        return data

    @classmethod
    def from_dict(cls, config: AnalysisConfig, data: dict[str, Any]) -> ScreenResult:
        return cls(config=config, **{**data, "top": []})  # type: ignore[arg-type]

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json``, ``result.json`` and ``top.jsonl`` (the flagged rows in full)."""
        out = super().save(directory)
        atomic_write_text(out / TOP_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in json_safe(self.top)))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ScreenResult:
        result = super().load(directory)
        if (Path(directory) / TOP_FILE).exists():
            result.top = list(iter_jsonl(Path(directory) / TOP_FILE))
        return result


def run(
    model,
    config: ScreenConfig,
    *,
    vector: PersonaVector,
    progress: bool = True,
    project_fn: ProjectFn | None = None,
    generate_fn: GenerateFn | None = None,
    backend=None,
) -> ScreenResult:
    """Screen ``config.data`` into ``config.out``; see the module docstring.
    ``project_fn(prompts, responses) -> array`` and ``generate_fn(prompts) -> texts`` replace
    the model-based projection and greedy base generation (for tests and custom backends;
    ``model`` may then be None). ``backend`` (e.g. vLLM, serving ``model``'s checkpoint) generates
    the base responses; the projections are read by ``model``'s HF hooks."""
    model_key: str | None
    if model is not None:
        layer = check_layer(model, config.layer)
        vector.check_model(model)
        model_key = model_fingerprint(model)
    else:
        if project_fn is None or generate_fn is None:
            raise ValueError("screening without a model needs project_fn and generate_fn")
        layer, model_key = config.layer, vector.model_id
    bs = config.batch_size
    project = project_fn or (lambda ps, rs: response_projections(model, vector, layer, ps, rs, batch_size=bs))
    gen = generate_fn or default_generate(model, config.max_new_tokens, bs, backend)
    store = base_response_store(config.base_cache_path, model_key, config.max_new_tokens,
                                window=max(8 * config.chunk_size, 2048))
    s_diff, s_proj, s_base = RunningStats(), RunningStats(), RunningStats()
    top = TopK(config.top_k)
    counts = {"n": 0, "positive": 0}
    base_responses = BaseResponses(store, gen)
    bar = tqdm(desc="screen", unit="row", disable=not progress)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            for chunk in iter_chunks(config.data, config.chunk_size):
                parsed = [training_row(r) for r in chunk]
                prompts = [p for p, _ in parsed]
                base = base_responses(prompts)
                proj = np.asarray(project(prompts, [r for _, r in parsed]), dtype=float)
                bproj = np.asarray(project(prompts, base), dtype=float)
                for row, b, pr, bp in zip(chunk, base, proj, bproj):
                    idx = counts["n"]
                    counts["n"] += 1
                    d = pr - bp
                    out = {**row, "projection": finite_or_none(pr), "base_projection": finite_or_none(bp),
                           "projection_diff": finite_or_none(d)}
                    if not math.isfinite(d):
                        out["skipped"] = "empty response" if not math.isfinite(pr) else "empty base response"
                    else:
                        s_diff.add(d)
                        s_proj.add(pr)
                        s_base.add(bp)
                        counts["positive"] += d > 0
                        top.add(d, idx, {"index": idx, **out, "base_response": b})
                    fh.write(json.dumps(out, ensure_ascii=False) + "\n")
                bar.update(len(chunk))

    try:
        with store.writing():
            atomic_write(config.out, write)
    finally:
        bar.close()
    return ScreenResult(
        config=config, n=counts["n"], n_scored=s_diff.n, vector=vector.name,
        projection_diff=s_diff.to_dict(), projection=s_proj.to_dict(), base_projection=s_base.to_dict(),
        mean_projection_diff=s_diff.mean if s_diff.n else None,
        fraction_positive=(counts["positive"] / s_diff.n) if s_diff.n else None,
        histogram=histogram_from_file(config.out, "projection_diff", s_diff.min, s_diff.max, bins=config.bins,
                                      chunk_size=config.chunk_size),
        top=top.rows(), cache=base_responses.counts(),
    )
