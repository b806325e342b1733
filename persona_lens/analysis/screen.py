"""Training-data screening by projection difference (Persona Vectors, Chen et al. 2025).

For a training row (prompt ``x``, candidate response ``y``) and the base model's own greedy
response ``y'`` to the same prompt::

    projection       = mean_{t in y}  h_t[layer] . v[layer] / ||v[layer]||
    base_projection  = mean_{t in y'} h_t[layer] . v[layer] / ||v[layer]||
    projection_diff  = projection - base_projection            (the paper's ΔP)

where ``h_t`` is the base model's ``blocks.{layer}.hook_resid_post`` on the tokens of the
response given the prompt (response-mean activation, then projected). Large positive ΔP flags
a sample that pushes the model towards the trait more than its own answer would.

:func:`screen_file` streams: rows are read and processed in chunks (default 256); only running
statistics, a top-K heap and a bounded window of the base-response cache are held in memory.
Base responses are generated once and cached in a JSONL file keyed by a hash of the prompt
messages (:func:`base_cache_key`), appended per chunk, so an interrupted run resumes without
regenerating. The output is written to a temporary file and renamed at the end (atomic).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..capture import capture
from ..chat import Messages
from ..io import JsonlAppender, atomic_write, atomic_write_json, atomic_write_text, iter_jsonl
from ..models import check_layer
from ..vectors import PersonaVector
from .monitor import RunningStats, iter_chunks
from .projection import row_prompt, unit_directions

log = logging.getLogger(__name__)

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
        return row_prompt({"messages": msgs[:-1]}), msgs[-1]["content"]
    if "response" not in row:
        raise ValueError(f"row needs 'messages' or 'prompt' + 'response': {row!r:.200}")
    return row_prompt(row), row["response"]


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


def _default_generate(model, max_new_tokens: int, batch_size: int) -> GenerateFn:
    from ..generate import generate

    def gen(prompts):
        return generate(model, list(prompts), max_new_tokens=max_new_tokens, temperature=0.0,
                        batch_size=batch_size, progress=False)

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
    from ..chat import as_messages

    check_layer(model, layer)
    vector.check_model(model)
    prompts = [as_messages(p) for p in prompts]
    if len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if base_responses is None:
        base_responses = list(_default_generate(model, max_new_tokens, batch_size)(prompts))
    p = response_projections(model, vector, layer, prompts, responses, batch_size=batch_size)
    b = response_projections(model, vector, layer, prompts, base_responses, batch_size=batch_size)
    return {"projection": p, "base_projection": b, "projection_diff": p - b, "base_responses": list(base_responses)}


# --------------------------------------------------------------------------- base-response cache


class BaseResponseCache:
    """The base model's responses, one JSONL row ``{key, model_id, max_new_tokens, response}``.

    Reads the file in lockstep with the data (a run writes it in the order it needs the keys,
    so a rerun finds them in the same order): memory is a bounded window of rows, never the
    whole file. A key read past and evicted from the window is simply generated again
    (identical greedy output), so correctness never depends on the order. Rows written for
    another model or another ``max_new_tokens`` are ignored.
    """

    def __init__(self, path: str | os.PathLike, model_id: str | None, max_new_tokens: int, window: int = 2048):
        self.path = Path(path)
        self.model_id = model_id
        self.max_new_tokens = max_new_tokens
        self.window: OrderedDict[str, str] = OrderedDict()
        self.window_size = max(int(window), 1)
        self.ignored = 0
        self.hits = 0
        self.generated = 0
        self._reader: Iterator[dict] | None = iter_jsonl(self.path) if self.path.exists() else None
        self._appender: JsonlAppender | None = None

    def _remember(self, key: str, response: str) -> None:
        self.window[key] = response
        self.window.move_to_end(key)
        while len(self.window) > self.window_size:
            self.window.popitem(last=False)

    def get(self, key: str) -> str | None:
        if key in self.window:
            self.hits += 1
            self.window.move_to_end(key)
            return self.window[key]
        while self._reader is not None:
            try:
                row = next(self._reader)
            except StopIteration:
                self._reader = None  # rows appended from now on are in the window already
                break
            if row.get("model_id") != self.model_id or row.get("max_new_tokens") != self.max_new_tokens:
                self.ignored += 1
                continue
            self._remember(row["key"], row["response"])
            if row["key"] == key:
                self.hits += 1
                return row["response"]
        return None

    def add(self, items: Sequence[tuple[str, str]]) -> None:
        if not items:
            return
        if self._appender is None:
            self._appender = JsonlAppender(self.path)
        self._appender.write({"key": k, "model_id": self.model_id, "max_new_tokens": self.max_new_tokens,
                              "response": r} for k, r in items)
        self.generated += len(items)
        for k, r in items:
            self._remember(k, r)

    def close(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None
        self._reader = None


# --------------------------------------------------------------------------- streaming screen


@dataclass
class ScreenSummary:
    n: int
    n_scored: int
    layer: int
    vector: str
    projection_diff: dict
    projection: dict
    base_projection: dict
    mean_projection_diff: float | None
    fraction_positive: float | None
    top: list[dict]
    histogram: dict
    out: str
    top_path: str
    base_cache: str
    summary_path: str = ""
    cache: dict = field(default_factory=dict)
    figure: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


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


def screen_file(
    model,
    vector: PersonaVector,
    layer: int,
    data_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    base_cache: str | os.PathLike | None = None,
    top_k: int = 20,
    chunk_size: int = 256,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    bins: int = 40,
    figure: bool = True,
    progress: bool = True,
    project_fn: ProjectFn | None = None,
    generate_fn: GenerateFn | None = None,
) -> ScreenSummary:
    """Screen a JSONL training set; see the module docstring.

    Writes ``out_path`` (every row plus ``projection``, ``base_projection``,
    ``projection_diff``; ``null`` and a ``skipped`` reason where a response is empty),
    ``<out>.top.jsonl`` (the ``top_k`` largest ΔP, largest first), ``<out>.summary.json`` and
    ``<out>.hist.html``. ``base_cache`` defaults to ``<out>.base_cache.jsonl``.
    ``project_fn(prompts, responses) -> array`` and ``generate_fn(prompts) -> texts`` replace
    the model-based projection and greedy base generation (for tests and custom backends).
    """
    from tqdm.auto import tqdm

    if model is not None:
        check_layer(model, layer)
        vector.check_model(model)
        from ..models import model_id as _mid

        mid = _mid(model)
    else:
        if project_fn is None or generate_fn is None:
            raise ValueError("screen_file without a model needs project_fn and generate_fn")
        mid = vector.model_id
    out_path = Path(out_path)
    stem = out_path.with_suffix("") if out_path.suffix == ".jsonl" else out_path
    top_path = Path(f"{stem}.top.jsonl")
    summary_path = Path(f"{stem}.summary.json")
    cache_path = Path(base_cache) if base_cache is not None else Path(f"{stem}.base_cache.jsonl")
    project = project_fn or (lambda ps, rs: response_projections(model, vector, layer, ps, rs, batch_size=batch_size))
    gen = generate_fn or _default_generate(model, max_new_tokens, batch_size)
    cache = BaseResponseCache(cache_path, mid, max_new_tokens, window=max(8 * chunk_size, 2048))
    s_diff, s_proj, s_base = RunningStats(), RunningStats(), RunningStats()
    heap: list[tuple[float, int, dict]] = []
    n_pos = 0
    counter = {"n": 0}
    bar = tqdm(desc="screen", unit="row", disable=not progress)

    def write(tmp: str) -> None:
        nonlocal n_pos
        with open(tmp, "w", encoding="utf-8") as fh:
            for chunk in iter_chunks(data_path, chunk_size):
                parsed = [training_row(r) for r in chunk]
                prompts = [p for p, _ in parsed]
                keys = [base_cache_key(p) for p in prompts]
                base: list[str | None] = [cache.get(k) for k in keys]
                missing: dict[str, Messages] = {}
                for k, p, b in zip(keys, prompts, base):
                    if b is None and k not in missing:
                        missing[k] = p
                if missing:
                    texts = list(gen(list(missing.values())))
                    made = dict(zip(missing, texts))
                    cache.add(list(made.items()))
                    base = [made[k] if b is None else b for k, b in zip(keys, base)]
                proj = np.asarray(project(prompts, [r for _, r in parsed]), dtype=float)
                bproj = np.asarray(project(prompts, base), dtype=float)
                for row, (p, resp), b, pr, bp in zip(chunk, parsed, base, proj, bproj):
                    idx = counter["n"]
                    counter["n"] += 1
                    d = pr - bp
                    out = dict(row)
                    out.update(projection=_num(pr), base_projection=_num(bp), projection_diff=_num(d))
                    if not math.isfinite(d):
                        out["skipped"] = ("empty response" if not math.isfinite(pr) else "empty base response")
                    else:
                        s_diff.add(d)
                        s_proj.add(pr)
                        s_base.add(bp)
                        n_pos += d > 0
                        item = (d, -idx, {"index": idx, **out, "base_response": b})
                        if len(heap) < top_k:
                            heapq.heappush(heap, item)
                        elif top_k > 0 and item[:2] > heap[0][:2]:
                            heapq.heapreplace(heap, item)
                    fh.write(json.dumps(out, ensure_ascii=False) + "\n")
                bar.update(len(chunk))

    try:
        atomic_write(out_path, write)
    finally:
        cache.close()
        bar.close()
    top = [it[2] for it in sorted(heap, key=lambda t: (t[0], t[1]), reverse=True)]
    atomic_write_text(top_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in top))
    hist = histogram_from_file(out_path, "projection_diff", s_diff.min, s_diff.max, bins=bins, chunk_size=chunk_size)
    summary = ScreenSummary(
        n=counter["n"], n_scored=s_diff.n, layer=layer, vector=vector.name,
        projection_diff=s_diff.to_dict(), projection=s_proj.to_dict(), base_projection=s_base.to_dict(),
        mean_projection_diff=s_diff.mean if s_diff.n else None,
        fraction_positive=(n_pos / s_diff.n) if s_diff.n else None,
        top=[{"index": r["index"], "projection_diff": r["projection_diff"]} for r in top],
        histogram=hist, out=str(out_path), top_path=str(top_path), base_cache=str(cache_path),
        summary_path=str(summary_path),
        cache={"hits": cache.hits, "generated": cache.generated, "ignored_rows": cache.ignored},
    )
    if figure and hist["counts"]:
        from ..plots_analysis import save_figure, screen_histogram_figure

        fig = screen_histogram_figure(hist, persona=vector.name, layer=layer, mean=summary.mean_projection_diff)
        summary.figure = str(save_figure(fig, Path(f"{stem}.hist")))
    atomic_write_json(summary_path, summary.to_dict())
    return summary
