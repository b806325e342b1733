"""The multi-trait screen: every trait and layer from one capture pass.

``run(model, MultiScreenConfig(data, out=DIR, layers=(L, ...)), vectors=[A, B, ...])`` reads
each chunk of rows once: one :func:`persona_lens.activations.capture` call over the chunk's
responses *and* its base responses gives the response-mean activation at every chosen layer
(``[rows, layers, d]``), and one product with the stacked unit directions ``[layers, d, traits]``
gives every trait's projection. Per row it streams to ``DIR/scores.csv`` (``index``,
``skipped``, then ``<trait>@<layer>:projection``, ``...:base_projection``,
``...:projection_diff`` per trait and layer) and ``DIR/scored.jsonl`` (the row plus a ``screen``
object of the same columns); in memory it keeps only running statistics per column, the
leakage co-moments (:class:`persona_lens.stats.RunningCovariance` over the ΔP columns) and a top-K heap
per column, so memory is flat in the number of rows.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...activations import capture
from ...chat import Messages
from ...io import atomic_write, atomic_write_text, iter_jsonl, json_safe
from ...models import check_layer
from ...runs.fingerprint import model_fingerprint
from ...stats import RunningCovariance, RunningStats, mean_t_interval
from ...vectors import PersonaVector, check_compatible
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
    histogram_edges,
    training_row,
)

SCORES_CSV, SCORED_JSONL, TOP_FILE, BASE_CACHE = "scores.csv", "scored.jsonl", "top.jsonl", "base_cache.jsonl"
FIELDS = ("projection", "base_projection", "projection_diff")

# project(prompts, texts) -> [len(texts), len(layers), len(traits)]; NaN rows for empty texts
TraitProjectFn = Callable[[Sequence[Messages], Sequence[str]], np.ndarray]


def trait_names(vectors: Sequence[PersonaVector]) -> list[str]:
    """One distinct name per vector: its persona name, ``name#2``, ``name#3``... on repeats."""
    names: list[str] = []
    for v in vectors:
        name, k = v.name, 2
        while name in names:
            name, k = f"{v.name}#{k}", k + 1
        names.append(name)
    return names


def column_label(trait: str, layer: int) -> str:
    """The name of a trait x layer column: ``<trait>@<layer>``."""
    return f"{trait}@{layer}"


def trait_directions(vectors: Sequence[PersonaVector], layers: Sequence[int]) -> Tensor:
    """``[len(layers), d_model, len(vectors)]`` float64: unit ``v[l] / ||v[l]||`` of each vector,
    stacked so one product projects on every trait. A layer a vector does not hold raises
    :class:`~persona_lens.errors.MissingLayerError`."""
    for v in vectors:
        for layer in layers:
            v.layer(layer)
    return torch.stack([unit_directions(v, layers).double() for v in vectors], dim=-1)


def trait_projections(model, directions: Tensor, layers: Sequence[int], prompts: Sequence[Messages],
                      responses: Sequence[str], *, batch_size: int = 8) -> np.ndarray:
    """``[len(responses), len(layers), traits]``: the response-mean activation at each layer
    projected on each trait's unit direction, from one capture call; NaN for an empty response."""
    tok = model.tokenizer
    out = np.full((len(responses), len(layers), directions.shape[-1]), np.nan)
    keep = [i for i, r in enumerate(responses) if r and tok(r, add_special_tokens=False)["input_ids"]]
    if keep:
        cap = capture(model, [prompts[i] for i in keep], [responses[i] for i in keep], layers=layers,
                      reductions=["response_mean"], batch_size=batch_size, progress=False)
        acts = cap["response_mean"].double()  # [rows, layers, d]: capture's layers are sorted, as ours
        out[keep] = torch.einsum("rld,ldt->rlt", acts, directions).numpy()
    return out


@dataclass(frozen=True)
class MultiScreenConfig(AnalysisConfig):
    """``data``: the training JSONL (as :class:`~.single.ScreenConfig`); ``out``: the output
    folder; ``layers``: the layers read (sorted, distinct); ``base_cache``: the base-response
    store (None: ``<out>/base_cache.jsonl``; the same store a one-trait screen writes);
    ``top_k`` rows kept per trait and layer; ``bins`` of each ΔP histogram; ``confidence`` of
    the interval of each mean ΔP."""

    name = "screen_multi"
    data: str
    out: str
    layers: tuple[int, ...]
    base_cache: str | None = None
    top_k: int = 20
    chunk_size: int = 256
    max_new_tokens: int = 128
    batch_size: int = 8
    bins: int = 40
    confidence: float = 0.95

    @property
    def base_cache_path(self) -> Path:
        return Path(self.base_cache) if self.base_cache is not None else Path(self.out) / BASE_CACHE


@dataclass
class MultiScreenResult(AnalysisResult):
    """``columns``: one ``{trait, layer, label, n, mean, std, min, max, ci_low, ci_high,
    fraction_positive, mean_projection, mean_base_projection}`` per trait and layer (ΔP
    statistics over the scored rows; std ddof=0; a Student-t interval of the mean);
    ``leakage[str(layer)]``: ``correlation`` and ``covariance`` (ddof=1) of the per-row ΔP of
    the traits at that layer (``traits`` x ``traits``) and ``n`` rows; ``histograms[label]``:
    fixed-bin counts of ΔP; ``top[label]``: the ``top_k`` largest-ΔP rows of that column,
    largest first, each ``{index, trait, layer, projection, base_projection, projection_diff,
    row, base_response}`` (``top.jsonl`` beside ``result.json``); ``cache``: base-response
    ``hits`` and ``generated``. No per-row values are held: they are in the scored files."""

    config_type = MultiScreenConfig
    config: MultiScreenConfig
    n: int
    n_scored: int
    traits: list[str]
    layers: list[int]
    vectors: list[dict]
    columns: list[dict]
    leakage: dict
    histograms: dict
    top: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    def column(self, trait: str, layer: int | None = None) -> dict:
        """The statistics of ``trait`` at ``layer`` (default: the first layer)."""
        label = column_label(trait, self.layers[0] if layer is None else layer)
        for c in self.columns:
            if c["label"] == label:
                return c
        raise KeyError(f"no column {label!r}; columns: {[c['label'] for c in self.columns]}")

    def ranking(self, layer: int | None = None) -> list[dict]:
        """The traits at ``layer`` (default: the first), largest mean ΔP first."""
        at = self.layers[0] if layer is None else layer
        cols = [c for c in self.columns if c["layer"] == at]
        return sorted(cols, key=lambda c: -np.inf if c["mean"] is None else c["mean"], reverse=True)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["top"] = {label: [{"index": r["index"], "projection_diff": r["projection_diff"]} for r in rows]
                       for label, rows in self.top.items()}
        return data

    @classmethod
    def from_dict(cls, config: AnalysisConfig, data: dict[str, Any]) -> MultiScreenResult:
        return cls(config=config, **{**data, "top": {}})  # type: ignore[arg-type]

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json``, ``result.json`` and ``top.jsonl`` (every column's flagged rows in full)."""
        out = super().save(directory)
        rows = [r for label in self.top for r in self.top[label]]
        atomic_write_text(out / TOP_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in json_safe(rows)))
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> MultiScreenResult:
        result = super().load(directory)
        if (Path(directory) / TOP_FILE).exists():
            for r in iter_jsonl(Path(directory) / TOP_FILE):
                result.top.setdefault(column_label(r["trait"], r["layer"]), []).append(r)
        return result


def _histograms(path: Path, labels: list[str], stats: list[RunningStats], bins: int, chunk_size: int) -> dict:
    """Fixed-bin counts of each ΔP column of ``scores.csv``, reading it back in chunks."""
    edges = [histogram_edges(s.min, s.max, bins) for s in stats]
    counts = [np.zeros(bins, dtype=np.int64) for _ in labels]
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        cols = [header.index(f"{label}:projection_diff") for label in labels]
        block: list[list[str]] = []
        for line in reader:
            block.append(line)
            if len(block) >= chunk_size:
                _count(block, cols, edges, counts)
                block = []
        _count(block, cols, edges, counts)
    return {label: {"edges": [] if e is None else e.tolist(), "counts": [] if e is None else c.tolist()}
            for label, e, c in zip(labels, edges, counts)}


def _count(block: list[list[str]], cols: list[int], edges: list, counts: list) -> None:
    if not block:
        return
    for j, col in enumerate(cols):
        if edges[j] is None:
            continue
        vals = np.array([float(line[col]) for line in block if line[col]], dtype=float)
        if vals.size:
            counts[j] += np.histogram(vals, bins=edges[j])[0]


def run(
    model,
    config: MultiScreenConfig,
    *,
    vectors: Sequence[PersonaVector],
    progress: bool = True,
    project_fn: TraitProjectFn | None = None,
    generate_fn: GenerateFn | None = None,
    backend=None,
) -> MultiScreenResult:
    """Screen ``config.data`` on every vector at every layer of ``config.layers`` into the
    folder ``config.out``; see the module docstring. The vectors must come from one model
    (:class:`~persona_lens.errors.VectorShapeError` for another width or layer count,
    :class:`~persona_lens.errors.ModelMismatchError` for another recorded model id); repeated
    names become ``name#2``... ``project_fn(prompts, texts) -> [texts, layers, traits]`` and
    ``generate_fn(prompts) -> texts`` replace the model (for tests; ``model`` may then be None);
    ``backend`` generates the base responses (the projections are read by ``model``'s hooks)."""
    vectors = list(vectors)
    check_compatible(vectors)
    if sorted(set(config.layers)) != list(config.layers) or not config.layers:
        raise ValueError(f"layers must be distinct, sorted and not empty, got {config.layers}")
    layers = list(config.layers)
    model_key: str | None
    if model is not None:
        layers = [check_layer(model, layer) for layer in layers]
        for v in vectors:
            v.check_model(model)
        model_key = model_fingerprint(model)
    elif project_fn is None or generate_fn is None:
        raise ValueError("screening without a model needs project_fn and generate_fn")
    else:
        model_key = vectors[0].model_id
    traits = trait_names(vectors)
    directions = trait_directions(vectors, layers)
    bs = config.batch_size
    project = project_fn or (lambda ps, rs: trait_projections(model, directions, layers, ps, rs, batch_size=bs))
    gen = generate_fn or default_generate(model, config.max_new_tokens, bs, backend)
    store = base_response_store(config.base_cache_path, model_key, config.max_new_tokens,
                                window=max(8 * config.chunk_size, 2048))
    base_responses = BaseResponses(store, gen)
    # columns are layer-major: column li * n_traits + ti is trait ti at layers[li]
    labels = [column_label(t, layer) for layer in layers for t in traits]
    where = [(t, layer) for layer in layers for t in traits]
    k = len(labels)
    s_diff, s_proj, s_base = ([RunningStats() for _ in labels] for _ in range(3))
    positive = np.zeros(k, dtype=np.int64)
    cov = RunningCovariance(k)
    tops = [TopK(config.top_k) for _ in labels]
    n_rows = 0
    out_dir = Path(config.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = ["index", "skipped"] + [f"{label}:{f}" for label in labels for f in FIELDS]
    json_keys = [json.dumps(h, ensure_ascii=False) for h in header[2:]]
    bar = tqdm(desc=f"screen ({len(traits)} traits x {len(layers)} layers)", unit="row", disable=not progress)

    def write(csv_tmp: str, jsonl_tmp: str) -> None:
        nonlocal n_rows
        with open(csv_tmp, "w", newline="", encoding="utf-8") as fc, open(jsonl_tmp, "w", encoding="utf-8") as fj:
            csv.writer(fc, lineterminator="\n").writerow(header)
            for chunk in iter_chunks(config.data, config.chunk_size):
                parsed = [training_row(r) for r in chunk]
                prompts = [p for p, _ in parsed]
                base = base_responses(prompts)
                c = len(chunk)
                # one capture pass: the chunk's responses and its base responses together
                both = np.asarray(project(prompts + prompts, [r for _, r in parsed] + base), dtype=float)
                if both.shape != (2 * c, len(layers), len(traits)):
                    raise ValueError(f"projections of shape {both.shape}, expected {(2 * c, len(layers), len(traits))} "
                                     "(texts, layers, traits)")
                proj, bproj = both[:c].reshape(c, k), both[c:].reshape(c, k)
                diff = proj - bproj
                ok = np.isfinite(diff).all(axis=1)
                scored = diff[ok]
                cov.update(scored)
                positive[:] += (scored > 0).sum(0)
                for j in range(k):
                    s_diff[j].update(scored[:, j])
                    s_proj[j].update(proj[ok, j])
                    s_base[j].update(bproj[ok, j])
                    for candidate in np.nonzero(ok & (diff[:, j] > tops[j].threshold()))[0].tolist():
                        t, layer = where[j]
                        tops[j].add(float(diff[candidate, j]), n_rows + candidate, {
                            "index": n_rows + candidate, "trait": t, "layer": layer,
                            "projection": float(proj[candidate, j]), "base_projection": float(bproj[candidate, j]),
                            "projection_diff": float(diff[candidate, j]), "row": chunk[candidate],
                            "base_response": base[candidate]})
                triples = np.stack([proj, bproj, diff], axis=-1).reshape(c, 3 * k)
                for i in range(c):
                    skipped = "" if ok[i] else ("empty response" if not np.isfinite(proj[i]).all()
                                                else "empty base response")
                    # each number is formatted once (repr: the shortest exact text), for both files
                    text = [repr(x) if math.isfinite(x) else "" for x in triples[i].tolist()]
                    fc.write(f"{n_rows + i},{skipped}," + ",".join(text) + "\n")
                    row = json.dumps({**chunk[i], **({"skipped": skipped} if skipped else {})}, ensure_ascii=False)
                    scores = ", ".join(f"{key}: {t or 'null'}" for key, t in zip(json_keys, text))
                    fj.write(f"{row[:-1]}{', ' if len(row) > 2 else ''}\"screen\": {{{scores}}}}}\n")
                n_rows += c
                bar.update(c)

    try:
        with store.writing():
            atomic_write(out_dir / SCORES_CSV,
                         lambda csv_tmp: atomic_write(out_dir / SCORED_JSONL, lambda j_tmp: write(csv_tmp, j_tmp)))
    finally:
        bar.close()

    columns = []
    for j, (t, layer) in enumerate(where):
        s = s_diff[j]
        lo, hi = mean_t_interval(s.mean, s.std, s.n, config.confidence) if s.n else (None, None)
        columns.append({"trait": t, "layer": layer, "label": labels[j], **s.to_dict(), "ci_low": lo, "ci_high": hi,
                        "confidence": config.confidence,
                        "fraction_positive": float(positive[j] / s.n) if s.n else None,
                        "mean_projection": s_proj[j].mean if s.n else None,
                        "mean_base_projection": s_base[j].mean if s.n else None})
    n_t = len(traits)
    corr, covariance = cov.correlation(), cov.covariance()
    leakage = {str(layer): {"traits": traits, "n": cov.n,
                            "correlation": _matrix(corr[li * n_t:(li + 1) * n_t, li * n_t:(li + 1) * n_t]),
                            "covariance": _matrix(covariance[li * n_t:(li + 1) * n_t, li * n_t:(li + 1) * n_t])}
               for li, layer in enumerate(layers)}
    return MultiScreenResult(
        config=config, n=n_rows, n_scored=cov.n, traits=traits, layers=layers,
        vectors=[{"trait": t, "persona": v.name, "model_id": v.model_id} for t, v in zip(traits, vectors)],
        columns=columns, leakage=leakage,
        histograms=_histograms(out_dir / SCORES_CSV, labels, s_diff, config.bins, config.chunk_size),
        top={label: top.rows() for label, top in zip(labels, tops)}, cache=base_responses.counts(),
    )


def _matrix(m: np.ndarray) -> list[list[float | None]]:
    return [[finite_or_none(float(x)) for x in row] for row in m]
