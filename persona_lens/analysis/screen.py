"""Training-data screening by projection difference (Persona Vectors, Chen et al. 2025).

For a training row (prompt ``x``, candidate response ``y``) and the base model's own greedy
response ``y'`` to the same prompt::

    projection       = mean_{t in y}  h_t[layer] . v[layer] / ||v[layer]||
    base_projection  = mean_{t in y'} h_t[layer] . v[layer] / ||v[layer]||
    projection_diff  = projection - base_projection            (the paper's ΔP)

where ``h_t`` is the base model's ``blocks.{layer}.hook_resid_post`` on the tokens of the
response given the prompt (response-mean activation, then projected). Large positive ΔP flags
a sample that pushes the model towards the trait more than its own answer would.

``run(model, ScreenConfig(data=..., out=..., layer=...), vector=v) -> ScreenResult`` (the
pattern of :mod:`persona_lens.analysis.base`) streams: rows are read and processed in chunks
(default 256); only running statistics, a top-K heap and a bounded window of the base-response
cache are held in memory. Base responses are generated once and kept in a resumable JSONL
store (:class:`persona_lens.runs.store.ResumeStore` in its windowed, low-memory mode) keyed by
a hash of the prompt messages (:func:`base_cache_key`) and fingerprinted by the model's weights
and the decoding settings (:func:`base_response_fingerprint`), appended per chunk, so an
interrupted run resumes without regenerating; rows from another model or another
``max_new_tokens`` are stale: never reused, generated again. The scored rows are written to a
temporary file and renamed at the end (atomic).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..activations import capture
from ..chat import Messages, as_messages
from ..generation import backend_generation
from ..io import atomic_write, atomic_write_text, iter_jsonl, json_safe
from ..models import check_layer
from ..runs.fingerprint import model_fingerprint
from ..runs.store import ResumeStore, decoding_fields, fingerprint
from ..stats import RunningStats
from ..vectors import PersonaVector
from .base import AnalysisConfig, AnalysisResult
from .monitor import iter_chunks
from .projection import row_prompt, unit_directions

__all__ = ["ScreenConfig", "ScreenResult", "base_cache_key", "base_response_fingerprint", "histogram_from_file",
           "projection_diff", "response_projections", "run", "screen_demo_path", "training_row"]

TOP_FILE = "top.jsonl"

ProjectFn = Callable[[Sequence[Messages], Sequence[str]], np.ndarray]
GenerateFn = Callable[[Sequence[Messages]], Sequence[str]]


def screen_demo_path() -> Path:
    """The built-in demo training set (neutral, humorous and impolite responses mixed)."""
    return Path(str(resources.files("persona_lens") / "data" / "screen_demo.jsonl"))


def base_cache_key(messages: Messages) -> str:
    """sha256 of the prompt messages (canonical JSON): the base-response cache key."""
    canon = json.dumps([{"role": m["role"], "content": m["content"]} for m in messages],
                       ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def training_row(row: dict) -> tuple[Messages, str]:
    """(prompt messages, candidate response) of a row: ``messages`` ending with the assistant
    response, or ``prompt`` (or ``question``, optional ``system``) + ``response``."""
    if "messages" in row:
        msgs = list(row["messages"])
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"a 'messages' row must end with the assistant response: {row!r:.200}")
        return as_messages(row_prompt({"messages": msgs[:-1]})), msgs[-1]["content"]
    if "response" not in row:
        raise ValueError(f"row needs 'messages' or 'prompt' + 'response': {row!r:.200}")
    return as_messages(row_prompt(row)), row["response"]


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


def _default_generate(model, max_new_tokens: int, batch_size: int, backend=None) -> GenerateFn:
    """Greedy base responses by ``backend`` (a :class:`persona_lens.backends.GenerationBackend`
    serving ``model``'s checkpoint; the HF path on ``model`` if None)."""
    _, generate_ids = backend_generation(model, backend)

    def gen(prompts):
        return [g.text for g in generate_ids(list(prompts), max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0,
                                             seed=None, batch_size=batch_size, steering=None, progress=False)]

    return gen


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
        base_responses = list(_default_generate(model, max_new_tokens, batch_size)(messages))
    p = response_projections(model, vector, layer, messages, responses, batch_size=batch_size)
    b = response_projections(model, vector, layer, messages, base_responses, batch_size=batch_size)
    return {"projection": p, "base_projection": b, "projection_diff": p - b, "base_responses": list(base_responses)}


# --------------------------------------------------------------------------- base-response cache


def base_response_fields(model: str | None, max_new_tokens: int) -> dict:
    """The fingerprint fields of base responses: ``model`` (its :func:`model_fingerprint`, or
    the vector's model id for a custom ``generate_fn``) and greedy decoding with
    ``max_new_tokens``. The prompt is the row's key."""
    return {"model": model, **decoding_fields(max_new_tokens=max_new_tokens, temperature=0.0)}


def base_response_fingerprint(model: str | None, max_new_tokens: int) -> str:
    """The fingerprint of every base-response row (rows ``{key, fingerprint, response}``)."""
    return fingerprint(**base_response_fields(model, max_new_tokens))


def base_response_store(path: str | os.PathLike, model: str | None, max_new_tokens: int,
                        window: int = 2048) -> ResumeStore:
    """The base-response cache: a windowed :class:`ResumeStore` keyed by ``key`` (a run writes
    it in the order it needs the keys, so a rerun finds them in the same order)."""
    return ResumeStore(path, ("key",), shared=base_response_fields(model, max_new_tokens), window=window)


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


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def histogram_from_file(path: str | os.PathLike, key: str, lo: float, hi: float, bins: int = 40,
                        chunk_size: int = 4096) -> dict:
    """Fixed-bin counts of ``row[key]`` over ``[lo, hi]``, reading the file in chunks."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return {"edges": [], "counts": []}
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    for chunk in iter_chunks(path, chunk_size):
        vals = np.array([r[key] for r in chunk if r.get(key) is not None], dtype=float)
        if vals.size:
            counts += np.histogram(vals, bins=edges)[0]
    return {"edges": edges.tolist(), "counts": counts.tolist()}


class _Top:
    """The ``k`` largest ΔP rows of a stream (ties: the earlier row)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.heap: list[tuple[float, int, dict]] = []

    def add(self, diff: float, index: int, row: dict) -> None:
        item = (diff, -index, row)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, item)
        elif self.k > 0 and item[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, item)

    def rows(self) -> list[dict]:
        return [it[2] for it in sorted(self.heap, key=lambda t: (t[0], t[1]), reverse=True)]


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
    gen = generate_fn or _default_generate(model, config.max_new_tokens, bs, backend)
    store = base_response_store(config.base_cache_path, model_key, config.max_new_tokens,
                                window=max(8 * config.chunk_size, 2048))
    fp = store.fingerprint()
    s_diff, s_proj, s_base = RunningStats(), RunningStats(), RunningStats()
    top = _Top(config.top_k)
    counts = {"n": 0, "positive": 0, "hits": 0, "generated": 0}
    bar = tqdm(desc="screen", unit="row", disable=not progress)

    def base_responses(prompts: list[Messages]) -> list[str]:
        keys = [base_cache_key(p) for p in prompts]
        found: dict[str, str] = {}
        missing: dict[str, Messages] = {}
        for k, p in zip(keys, prompts):
            if k in found or k in missing:
                continue
            row = store.get((k,), fp)
            if row is None:
                missing[k] = p
            else:
                found[k] = row["response"]
        counts["hits"] += len(found)
        if missing:
            made = dict(zip(missing, gen(list(missing.values()))))
            store.append([{"key": k, "fingerprint": fp, "response": r} for k, r in made.items()])
            counts["generated"] += len(made)
            found.update(made)
        return [found[k] for k in keys]

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
                    out = {**row, "projection": _num(pr), "base_projection": _num(bp), "projection_diff": _num(d)}
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
        top=top.rows(), cache={"hits": counts["hits"], "generated": counts["generated"]},
    )
