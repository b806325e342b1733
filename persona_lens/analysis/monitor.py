"""Monitoring (Persona Vectors, Chen et al. 2025): predict trait expression before generating.

The monitor score of a prompt is the last prompt token's ``blocks.{layer}.hook_resid_post``
(the position right before the first generated token) projected on the unit persona vector::

    score = h_last_prompt[layer] . v[layer] / ||v[layer]||

:func:`monitor_file` streams a JSONL file in chunks and adds ``score`` to each row; with a
judge it also generates the response (or uses the row's assistant turn), judges trait
expression, and reports the Pearson correlation between monitor score and trait score.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..capture import capture
from ..chat import Messages, as_messages
from ..io import atomic_write, atomic_write_json, iter_jsonl
from ..models import check_layer
from ..vectors import PersonaVector
from .projection import row_prompt, unit_directions


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


# --------------------------------------------------------------------------- streaming statistics


class RunningStats:
    """Mean / variance / min / max (Welford), plus the co-moment of a second variable."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    def update(self, xs: Iterable[float]) -> None:
        for x in xs:
            self.add(float(x))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else float("nan")

    def to_dict(self) -> dict:
        if not self.n:
            return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
        return {"n": self.n, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


class RunningPearson:
    """Streaming Pearson r over (x, y) pairs (numerically stable co-moment update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mx = self.my = 0.0
        self.sxx = self.syy = self.sxy = 0.0

    def add(self, x: float, y: float) -> None:
        self.n += 1
        dx = x - self.mx
        self.mx += dx / self.n
        dy = y - self.my
        self.my += dy / self.n
        self.sxx += dx * (x - self.mx)
        self.syy += dy * (y - self.my)
        self.sxy += dx * (y - self.my)

    @property
    def r(self) -> float | None:
        if self.n < 2 or self.sxx <= 0 or self.syy <= 0:
            return None
        return self.sxy / math.sqrt(self.sxx * self.syy)


def pearson(x: Sequence[float], y: Sequence[float]) -> dict:
    """Pearson r of paired values, skipping pairs with a None/NaN; p-value when scipy is present."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y)
             if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    acc = RunningPearson()
    for a, b in pairs:
        acc.add(a, b)
    return {"r": acc.r, "n": acc.n, "p_value": _p_value(acc.r, acc.n)}


def _p_value(r: float | None, n: int) -> float | None:
    if r is None or n < 3:
        return None
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover
        return None
    if abs(r) >= 1.0:
        return 0.0
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return float(2 * stats.t.sf(abs(t), n - 2))


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


@dataclass
class MonitorSummary:
    n: int
    layer: int
    vector: str
    score: dict
    out: str
    correlation: dict | None = None
    trait_score: dict | None = None
    judge: str | None = None
    figure: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def monitor_file(
    model,
    vector: PersonaVector,
    layer: int,
    prompts_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    judge=None,
    spec=None,
    generate_responses: bool | None = None,
    max_new_tokens: int = 128,
    chunk_size: int = 256,
    batch_size: int = 8,
    figure: bool = True,
    progress: bool = True,
) -> MonitorSummary:
    """Add ``score`` to every row of ``prompts_path`` (``messages`` or ``system`` + ``prompt``).

    Streams in chunks of ``chunk_size`` rows and writes ``out_path`` atomically. With ``judge``
    and ``spec`` (the persona spec whose ``eval_prompt`` the judge reads): each row also gets a
    ``response`` (its own assistant turn / ``response`` field, else generated greedily with
    ``max_new_tokens``) and ``trait_score``; the summary then holds the Pearson r between
    ``score`` and ``trait_score`` and a scatter figure is written next to ``out_path``.
    """
    from tqdm.auto import tqdm

    check_layer(model, layer)
    vector.check_model(model)
    if judge is not None and spec is None:
        raise ValueError("scoring trait expression with a judge needs the persona spec (its eval prompt)")
    do_judge = judge is not None
    gen = do_judge if generate_responses is None else generate_responses
    out_path = Path(out_path)
    stats, corr, tstats = RunningStats(), RunningPearson(), RunningStats()
    bar = tqdm(desc="monitor", unit="row", disable=not progress)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            for chunk in iter_chunks(prompts_path, chunk_size):
                prompts = [row_prompt(r) for r in chunk]
                scores = monitor_scores(model, vector, layer, prompts, batch_size=batch_size)
                responses: list[str | None] = [None] * len(chunk)
                if gen:
                    responses = [_given_response(r) for r in chunk]
                    todo = [i for i, r in enumerate(responses) if r is None]
                    if todo:
                        from ..generate import generate

                        texts = generate(model, [prompts[i] for i in todo], max_new_tokens=max_new_tokens,
                                         batch_size=batch_size, progress=False)
                        for i, t in zip(todo, texts):
                            responses[i] = t
                trait: list[float | None] = [None] * len(chunk)
                if do_judge:
                    jp = [spec.format_eval_prompt(_question(as_messages(p)), r or "") for p, r in zip(prompts, responses)]
                    trait = list(judge.score_many(jp))
                for row, s, resp, t in zip(chunk, scores, responses, trait):
                    out = dict(row)
                    out["score"] = float(s)
                    stats.add(float(s))
                    if gen:
                        out["response"] = resp
                    if do_judge:
                        out["trait_score"] = None if t is None else float(t)
                        if t is not None and math.isfinite(float(t)):
                            corr.add(float(s), float(t))
                            tstats.add(float(t))
                    fh.write(json.dumps(out, ensure_ascii=False) + "\n")
                bar.update(len(chunk))

    atomic_write(out_path, write)
    bar.close()
    summary = MonitorSummary(n=stats.n, layer=layer, vector=vector.name, score=stats.to_dict(), out=str(out_path))
    if do_judge:
        summary.judge = getattr(judge, "name", type(judge).__name__)
        summary.trait_score = tstats.to_dict()
        summary.correlation = {"r": corr.r, "n": corr.n, "p_value": _p_value(corr.r, corr.n),
                               "n_unscored": stats.n - corr.n}
        if figure and corr.n:
            from ..plots_analysis import monitor_scatter_figure, save_figure

            xs, ys = _scatter_points(out_path, chunk_size)
            fig = monitor_scatter_figure(xs, ys, r=corr.r, persona=spec.name, layer=layer)
            summary.figure = str(save_figure(fig, out_path.with_suffix("").with_name(out_path.stem + ".scatter")))
    atomic_write_json(out_path.with_name(out_path.stem + ".summary.json"), summary.to_dict())
    return summary


def _scatter_points(path: Path, chunk_size: int, max_points: int = 20_000, seed: int = 0):
    """(score, trait_score) pairs read back in chunks; a reservoir sample beyond ``max_points``."""
    rng = random.Random(seed)
    xs: list[float] = []
    ys: list[float] = []
    seen = 0
    for chunk in iter_chunks(path, chunk_size):
        for r in chunk:
            if r.get("trait_score") is None:
                continue
            seen += 1
            if len(xs) < max_points:
                xs.append(r["score"])
                ys.append(r["trait_score"])
            else:
                j = rng.randrange(seen)
                if j < max_points:
                    xs[j], ys[j] = r["score"], r["trait_score"]
    return xs, ys
