"""Projection analysis (BILLY, Pai et al. 2025, Eq. 5).

For a task set (a list of prompts) and persona vectors ``v_1..v_k``, the activations under

* ``none``          - the plain prompt, unsteered (the reference ``a_original``);
* ``multi_role``    - one system prompt naming every persona (single-agent multi-role prompting,
                      :func:`persona_lens.personas.billy.multi_role_system_prompt`, the creativity
                      eval's ``mrp`` prompt), unsteered;
* ``steer:<name>``  - steering with each single persona vector (``alpha * v_i`` at ``layer``);
* ``merged``        - steering with the merged vector (given, or BILLY's plain mean of the raw
                      vectors, :func:`persona_lens.blend.blend`)

are compared. Each condition generates its own response (greedy, the same ``max_new_tokens``);
then :func:`persona_lens.activations.capture` reads, *with the same steering active*, the
``last_prompt`` and ``response_mean`` activations at every layer. Per prompt and layer
``delta = a_condition - a_none``; its projection on each persona's unit vector
``v_i[l] / ||v_i[l]||`` is averaged over prompts (``mean``; ``std`` is the population standard
deviation, ddof=0, over the same prompts). For ``response_mean`` the conditions' responses
differ: that is the paper's setting (activations of what the model itself produced). A prompt
whose response (in the condition or in ``none``) has zero tokens is left out of that
condition's ``response_mean`` statistics (``n_valid`` records how many were used).

``run(model, ProjectionConfig(layer=..., alpha=...), vectors=[...], prompts=[...]) ->
ProjectionResult`` (the pattern of :mod:`persona_lens.analysis.base`); figures:
:func:`persona_lens.viz.projection.figures`.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..activations import capture
from ..blend import blend
from ..chat import Messages, as_messages
from ..generation import backend_generation
from ..io import atomic_write_json, atomic_write_text, iter_jsonl
from ..models import check_layer, model_id, n_layers
from ..personas.billy import multi_role_system_prompt
from ..positions import Positions
from ..steering import Steering
from ..vectors import PersonaVector, check_compatible
from .base import AnalysisConfig, AnalysisResult

POSITIONS = ("last_prompt", "response_mean")

# Alternative-uses prompts in the spirit of the AUT benchmark (our own wording and objects).
AUT_TEMPLATE = (
    "What are some creative uses for a {object}? Aim for ideas that strike people as clever, "
    "unusual, interesting, uncommon, humorous, innovative or different. List as many creative "
    "and diverse uses for a {object} as you can."
)
AUT_OBJECTS = ("brick", "paperclip", "fork", "shoe", "car tire", "newspaper", "bucket", "umbrella",
               "candle", "wooden spoon", "glass jar", "rubber band")


# --------------------------------------------------------------------------- prompts


def with_system(prompt: str | Messages, system: str) -> Messages:
    """The prompt with ``system`` as its system message (prepended to an existing one)."""
    msgs = as_messages(prompt)
    if msgs and msgs[0]["role"] == "system":
        return [{"role": "system", "content": f"{system}\n\n{msgs[0]['content']}"}] + msgs[1:]
    return [{"role": "system", "content": system}] + msgs


def task_prompts(task: str | os.PathLike, n: int | None = None) -> list[str | Messages]:
    """Prompts of a task set.

    ``"aut"``: built-in alternative-uses prompts (``AUT_TEMPLATE`` x ``AUT_OBJECTS``). A path:
    ``.txt`` (one prompt a line), ``.jsonl`` (rows with ``messages``, ``prompt`` or ``question``,
    optional ``system``), ``.json`` (a list of strings, or the LLM-Discussion AUT layout
    ``{"Task": [{"Problem": [...]}], "Examples": [{"object": ...}]}`` using the first problem).
    """
    if str(task).lower() == "aut":
        prompts: list = [AUT_TEMPLATE.format(object=o) for o in AUT_OBJECTS]
    else:
        path = Path(task)
        if not path.exists():
            raise FileNotFoundError(f"task {task!r} is neither 'aut' nor an existing file")
        if path.suffix == ".jsonl":
            prompts = [row_prompt(r) for r in iter_jsonl(path)]
        elif path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, list):
                prompts = [str(x) if not isinstance(x, dict) else row_prompt(x) for x in data]
            elif isinstance(data, dict) and "Task" in data and "Examples" in data:
                template = " ".join(data["Task"][0]["Problem"])
                prompts = [template.replace("{object}", str(ex["object"] if isinstance(ex, dict) else ex))
                           for ex in data["Examples"]]
            else:
                raise ValueError(f"{path}: expected a list of prompts or the AUT layout (Task, Examples)")
        else:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"task {task!r} holds no prompts")
    return prompts[:n] if n else prompts


def row_prompt(row: Mapping) -> str | Messages:
    """A prompt from a data row: ``messages`` (trailing assistant turns dropped) or ``system`` +
    ``prompt``/``question``."""
    if "messages" in row:
        msgs = list(row["messages"])
        while msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        if not msgs:
            raise ValueError(f"row has no prompt messages: {row!r:.200}")
        return msgs
    text = row.get("prompt", row.get("question"))
    if text is None:
        raise ValueError(f"row needs 'messages' or 'prompt' (or 'question'): {row!r:.200}")
    return [{"role": "system", "content": row["system"]}, {"role": "user", "content": text}] if row.get("system") \
        else [{"role": "user", "content": text}]


# --------------------------------------------------------------------------- math


def unit_directions(vector: PersonaVector | Tensor, layers: Sequence[int] | None = None) -> Tensor:
    """``v[l] / ||v[l]||`` for the given layers, ``[len(layers), d]`` float32 (zero rows stay zero)."""
    t = vector.vectors if isinstance(vector, PersonaVector) else torch.as_tensor(vector, dtype=torch.float32)
    if layers is not None:
        t = t[list(layers)]
    return (t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float()


def project_deltas(
    acts: Mapping[str, Tensor],
    baseline: Tensor,
    axes: Tensor,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over prompts of ``(acts[c] - baseline) . axes[a, l] / ||axes[a, l]||``.

    ``acts[c]`` and ``baseline``: ``[n, L, d]`` (rows of NaN are left out); ``axes``:
    ``[A, L, d]`` (normalised here). Returns ``mean, std, n_valid`` with shapes
    ``[C, A, L]``, ``[C, A, L]``, ``[C]`` (C in the mapping's order).
    """
    units = axes.double() / axes.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    means, stds, counts = [], [], []
    for _cond, a in acts.items():
        delta = a.double() - baseline.double()  # [n, L, d]
        proj = torch.einsum("nld,ald->nal", delta, units).numpy()  # [n, A, L]
        valid = ~np.isnan(proj).any(axis=(1, 2))
        counts.append(int(valid.sum()))
        if valid.any():
            means.append(proj[valid].mean(0))
            stds.append(proj[valid].std(0))
        else:
            means.append(np.full(proj.shape[1:], np.nan))
            stds.append(np.full(proj.shape[1:], np.nan))
    return np.stack(means), np.stack(stds), np.asarray(counts)


# --------------------------------------------------------------------------- config and result

TABLE_FILE = "projection.csv"
RESPONSES_FILE = "responses.json"


@dataclass(frozen=True)
class ProjectionConfig(AnalysisConfig):
    """Steering ``alpha * v`` at ``layer`` (``positions``: the steering position mode used for
    generation and capture); ``multi_role`` adds the multi-role prompting condition (its system
    prompt: ``multi_role_prompt``, default :func:`multi_role_system_prompt` of the vectors'
    names); greedy answers of ``max_new_tokens``; ``layers`` read (None: every layer; the result
    holds them resolved)."""

    name = "projection"
    layer: int
    alpha: float
    multi_role: bool = True
    multi_role_prompt: str | None = None
    positions: Positions = "response"
    max_new_tokens: int = 128
    batch_size: int = 8
    layers: tuple[int, ...] | None = None


@dataclass
class ProjectionResult(AnalysisResult):
    """``mean[position]`` and ``std[position]`` are ``[condition, axis, layer]`` arrays."""

    config_type = ProjectionConfig
    config: ProjectionConfig
    conditions: list[str]
    axes: list[str]
    layers: list[int]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    n_valid: dict[str, list[int]]
    n_prompts: int
    settings: dict = field(default_factory=dict)
    prompts: list = field(default_factory=list)
    responses: dict[str, list[str]] = field(default_factory=dict)

    @property
    def positions(self) -> list[str]:
        return list(self.mean)

    def value(self, position: str, condition: str, axis: str, layer: int) -> float:
        return float(self.mean[position][self.conditions.index(condition), self.axes.index(axis),
                                         self.layers.index(layer)])

    def rows(self) -> list[dict]:
        out = []
        for pos in self.mean:
            for ci, cond in enumerate(self.conditions):
                for ai, axis in enumerate(self.axes):
                    for li, layer in enumerate(self.layers):
                        out.append({"position": pos, "condition": cond, "axis": axis, "layer": layer,
                                    "mean": float(self.mean[pos][ci, ai, li]), "std": float(self.std[pos][ci, ai, li]),
                                    "n": int(self.n_valid[pos][ci])})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "conditions": self.conditions, "axes": self.axes, "layers": self.layers,
            "positions": self.positions, "n_prompts": self.n_prompts,
            "mean": {p: a.tolist() for p, a in self.mean.items()},
            "std": {p: a.tolist() for p, a in self.std.items()},
            "n_valid": self.n_valid, "settings": self.settings,
            "shape": "[condition, axis, layer]",
        }

    @classmethod
    def from_dict(cls, config: AnalysisConfig, data: dict[str, Any]) -> ProjectionResult:
        assert isinstance(config, ProjectionConfig)
        return cls(config=config, conditions=list(data["conditions"]), axes=list(data["axes"]),
                   layers=list(data["layers"]),
                   mean={p: np.asarray(a, dtype=float) for p, a in data["mean"].items()},
                   std={p: np.asarray(a, dtype=float) for p, a in data["std"].items()},
                   n_valid=data["n_valid"], n_prompts=int(data["n_prompts"]), settings=data.get("settings", {}))

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        buf = _io.StringIO()
        fields = ["position", "condition", "axis", "layer", "mean", "std", "n"]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows())
        text = buf.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json``, ``result.json``, ``projection.csv`` (one row per position x condition x
        axis x layer) and ``responses.json`` (the prompts and each condition's answers)."""
        out = super().save(directory)
        self.to_csv(out / TABLE_FILE)
        atomic_write_json(out / RESPONSES_FILE, {"prompts": self.prompts, "responses": self.responses})
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ProjectionResult:
        result = super().load(directory)
        path = Path(directory) / RESPONSES_FILE
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            result.prompts, result.responses = data["prompts"], data["responses"]
        return result


# --------------------------------------------------------------------------- the analysis


def _unique_axes(vectors: Sequence[PersonaVector]) -> tuple[list[str], list[PersonaVector]]:
    names: list[str] = []
    vecs: list[PersonaVector] = []
    for v in vectors:
        name = v.name
        if name in names:
            if torch.equal(vecs[names.index(name)].vectors, v.vectors):
                continue  # a repeated component (BILLY's futurist x 2): one axis
            k = 2
            while f"{name}#{k}" in names:
                k += 1
            name = f"{name}#{k}"
        names.append(name)
        vecs.append(v)
    return names, vecs


def _conditions(config: ProjectionConfig, prompts: list[Messages], vectors: list[PersonaVector],
                axis_names: list[str], axis_vecs: list[PersonaVector], merged: PersonaVector):
    """``(name, prompts, steering vector or None)`` of every condition, ``none`` first; and the
    multi-role system prompt (None without that condition)."""
    mrp = None
    conditions: list[tuple[str, list[Messages], PersonaVector | None]] = [("none", prompts, None)]
    if config.multi_role:
        mrp = multi_role_system_prompt([v.name for v in vectors]) if config.multi_role_prompt is None \
            else config.multi_role_prompt
        conditions.append(("multi_role", [with_system(p, mrp) for p in prompts], None))
    for name, v in zip(axis_names, axis_vecs):
        conditions.append((f"steer:{name}", prompts, v))
    conditions.append(("merged", prompts, merged))
    return conditions, mrp


def run(
    model,
    config: ProjectionConfig,
    *,
    vectors: Sequence[PersonaVector],
    prompts: Sequence[str | Messages],
    merged: PersonaVector | None = None,
    progress: bool = True,
    backend=None,
) -> ProjectionResult:
    """BILLY's projection analysis (module docstring): ``Δa`` projected on each persona axis.

    ``merged`` defaults to ``blend(vectors, "mean")`` (repeats in ``vectors`` count, as in
    BILLY). ``backend`` (a :class:`persona_lens.backends.GenerationBackend` serving ``model``'s
    checkpoint, e.g. vLLM; None: the HF path on ``model``) generates the conditions' responses,
    with the same per-row steering; the activations are captured by ``model``'s HF hooks.
    """
    vectors = list(vectors)
    if not vectors:
        raise ValueError("projection analysis needs at least one persona vector")
    messages = [as_messages(p) for p in prompts]
    if not messages:
        raise ValueError("projection analysis needs at least one prompt")
    check_compatible(vectors + ([merged] if merged is not None else []))
    for v in vectors:
        v.check_model(model)
    layer, alpha = check_layer(model, config.layer), float(config.alpha)
    if merged is None:
        merged = blend(vectors, "mean")
    merged.check_model(model)
    layers = list(range(n_layers(model))) if config.layers is None \
        else sorted({check_layer(model, l) for l in config.layers})
    config = config.replace(layers=tuple(layers))
    axis_names, axis_vecs = _unique_axes(vectors)
    conditions, mrp = _conditions(config, messages, vectors, axis_names, axis_vecs, merged)
    _, generate_ids = backend_generation(model, backend)

    # Every condition x prompt in one batched pass, one steering vector per row.
    all_prompts = [p for _, ps, _ in conditions for p in ps]
    row_vecs = [v for _, ps, v in conditions for _ in ps]
    steering = Steering.per_row(row_vecs, layer, alpha, config.positions)
    texts = [g.text for g in generate_ids(all_prompts, max_new_tokens=config.max_new_tokens, temperature=0.0,
                                          top_p=1.0, seed=None, batch_size=config.batch_size, steering=steering,
                                          progress=progress)]
    lp = capture(model, all_prompts, None, layers=layers, reductions=["last_prompt"], batch_size=config.batch_size,
                 steering=steering, progress=progress, desc="projection: last_prompt")["last_prompt"]
    nonempty = [i for i, t in enumerate(texts) if model.tokenizer(t, add_special_tokens=False)["input_ids"]]
    rm = torch.full_like(lp, float("nan"))
    if nonempty:
        sub = Steering.per_row([row_vecs[i] for i in nonempty], layer, alpha, config.positions)
        rm[nonempty] = capture(model, [all_prompts[i] for i in nonempty], [texts[i] for i in nonempty], layers=layers,
                               reductions=["response_mean"], batch_size=config.batch_size, steering=sub,
                               progress=progress, desc="projection: response_mean")["response_mean"]

    n = len(messages)
    names = [c for c, _, _ in conditions]
    axes = torch.stack([v.vectors[layers] for v in axis_vecs])  # [A, L, d]
    mean, std, n_valid = {}, {}, {}
    for pos, data in (("last_prompt", lp), ("response_mean", rm)):
        per_cond = {c: data[i * n:(i + 1) * n] for i, c in enumerate(names)}
        base = per_cond.pop("none")
        m, s, cnt = project_deltas(per_cond, base, axes)
        mean[pos], std[pos], n_valid[pos] = m, s, cnt.tolist()
    settings = {
        "model_id": model_id(model), "layer": layer, "alpha": alpha, "positions": config.positions,
        "max_new_tokens": config.max_new_tokens, "decoding": "greedy", "multi_role_prompt": mrp,
        "vectors": [v.name for v in vectors], "merged": merged.name,
        "merged_method": merged.metadata.get("blend_method"),
        "projection": "(a_condition - a_none) . v_i[l]/||v_i[l]||, mean/std (ddof=0) over prompts",
    }
    return ProjectionResult(config=config, conditions=names[1:], axes=axis_names, layers=layers, mean=mean, std=std,
                            n_valid=n_valid, n_prompts=n, settings=settings, prompts=messages,
                            responses={c: texts[i * n:(i + 1) * n] for i, c in enumerate(names)})
