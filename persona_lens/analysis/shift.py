"""Fine-tuning shift and preventative steering (Persona Vectors, Chen et al. 2025).

Fine-tuning shift: how far fine-tuning moved a model's activations along a persona direction,
per layer, on a prompt set::

    shift[l] = mean_prompts( a_ft[l] . u[l]  -  a_base[l] . u[l] ),    u[l] = v[l] / ||v[l]||

``a[l]`` is the response-mean activation (``position="response_mean"``, default) or the last
prompt token's (``"last_prompt"``) at ``blocks.{l}.hook_resid_post``. Both models read the
*same* text: by default the fine-tuned model's greedy responses (``responses_from="finetuned"``,
what the fine-tuned model actually says; the paper's setting), or the base model's
(``responses_from="base"``: the same tokens under both models, isolating the change of the
representation from the change of what is said). ``"last_prompt"`` needs no response.

``run(base, ShiftConfig(...), finetuned=ft, vector=v, prompts=...) -> ShiftResult`` (the pattern
of :mod:`persona_lens.analysis.base`); figures: :func:`persona_lens.viz.shift.figures`.

Preventative steering: during fine-tuning, add ``alpha * v[layer]`` to the residual stream at
every position (:func:`preventative_steering`), so the optimiser need not move the model along
``v`` to fit trait-laden data; the steering is removed at inference.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..activations import capture
from ..chat import Messages, as_messages
from ..errors import OperatorError
from ..generation import backend_generation
from ..io import atomic_write_json, atomic_write_text
from ..models import check_layer, model_id, n_layers
from ..operators import Operator
from ..steering import Steering
from ..vectors import PersonaVector
from .base import AnalysisConfig, AnalysisResult
from .projection import unit_directions

SHIFT_POSITIONS = ("response_mean", "last_prompt")
RESPONSES_FROM = ("finetuned", "base")
TABLE_FILE = "shift.csv"
RESPONSES_FILE = "responses.json"
ARRAYS = ("shift", "std", "base_projection", "finetuned_projection")


@dataclass(frozen=True)
class ShiftConfig(AnalysisConfig):
    """``layers`` (None: every layer); ``position``: ``response_mean`` or ``last_prompt``;
    ``responses_from``: which model writes the (greedy, ``max_new_tokens``) responses both
    models read. The result holds the config with ``layers`` resolved."""

    name = "shift"
    layers: tuple[int, ...] | None = None
    position: str = "response_mean"
    responses_from: str = "finetuned"
    max_new_tokens: int = 128
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.position not in SHIFT_POSITIONS:
            raise ValueError(f"position must be one of {SHIFT_POSITIONS}, got {self.position!r}")
        if self.responses_from not in RESPONSES_FROM:
            raise ValueError(f"responses_from must be one of {RESPONSES_FROM}, got {self.responses_from!r}")


@dataclass
class ShiftResult(AnalysisResult):
    """Per-layer arrays (index ``i`` <-> ``layers[i]``)."""

    config_type = ShiftConfig
    config: ShiftConfig
    layers: list[int]
    shift: np.ndarray  # mean over prompts of proj_ft - proj_base
    std: np.ndarray  # population std (ddof=0) of the per-prompt differences
    base_projection: np.ndarray  # mean over prompts of proj_base
    finetuned_projection: np.ndarray  # mean over prompts of proj_ft
    n: int
    settings: dict = field(default_factory=dict)
    responses: list[str] = field(default_factory=list)

    def at(self, layer: int) -> float:
        return float(self.shift[self.layers.index(layer)])

    def rows(self) -> list[dict]:
        return [{"layer": l, "shift": float(self.shift[i]), "std": float(self.std[i]),
                 "base_projection": float(self.base_projection[i]),
                 "finetuned_projection": float(self.finetuned_projection[i]), "n": self.n}
                for i, l in enumerate(self.layers)]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, **{k: getattr(self, k).tolist() for k in ARRAYS}, "n": self.n,
                "settings": self.settings}

    @classmethod
    def from_dict(cls, config: AnalysisConfig, data: dict[str, Any]) -> ShiftResult:
        assert isinstance(config, ShiftConfig)
        arrays = {k: np.asarray(data[k], dtype=float) for k in ARRAYS}
        return cls(config=config, layers=list(data["layers"]), shift=arrays["shift"], std=arrays["std"],
                   base_projection=arrays["base_projection"], finetuned_projection=arrays["finetuned_projection"],
                   n=int(data["n"]), settings=data.get("settings", {}))

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        buf = _io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["layer", "shift", "std", "base_projection", "finetuned_projection", "n"],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows())
        if path is not None:
            atomic_write_text(path, buf.getvalue())
        return buf.getvalue()

    def save(self, directory: str | os.PathLike) -> Path:
        """``config.json``, ``result.json``, ``shift.csv`` (one row per layer) and ``responses.json``."""
        out = super().save(directory)
        self.to_csv(out / TABLE_FILE)
        atomic_write_json(out / RESPONSES_FILE, self.responses)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ShiftResult:
        result = super().load(directory)
        path = Path(directory) / RESPONSES_FILE
        if path.exists():
            result.responses = json.loads(path.read_text(encoding="utf-8"))
        return result


def shift_from_activations(a_base: torch.Tensor, a_ft: torch.Tensor, units: torch.Tensor) -> dict[str, np.ndarray]:
    """``a_*``: ``[n, L, d]``; ``units``: ``[L, d]`` (normalised here). Per-layer mean/std of the
    per-prompt projection differences and the mean projections."""
    u = units.double() / units.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    pb = torch.einsum("nld,ld->nl", a_base.double(), u).numpy()
    pf = torch.einsum("nld,ld->nl", a_ft.double(), u).numpy()
    d = pf - pb
    return {"shift": d.mean(0), "std": d.std(0), "base_projection": pb.mean(0), "finetuned_projection": pf.mean(0)}


def _shared_responses(base, finetuned, prompts: list[Messages], responses: Sequence[str] | None, config: ShiftConfig,
                      progress: bool, backend=None) -> tuple[list[str], str]:
    """The texts both models read: ``responses`` when given, else greedy ones of the model named
    by ``config.responses_from`` (through ``backend`` when given, which must serve that model);
    and where they came from."""
    if responses is not None:
        return list(responses), "given"
    gen_model = finetuned if config.responses_from == "finetuned" else base
    _, generate_fn = backend_generation(gen_model, backend)
    gens = generate_fn(prompts, max_new_tokens=config.max_new_tokens, temperature=0.0, top_p=1.0, seed=None,
                       batch_size=config.batch_size, steering=None, progress=progress)
    return [g.text for g in gens], config.responses_from


def run(
    base,
    config: ShiftConfig,
    *,
    finetuned,
    vector: PersonaVector,
    prompts: Sequence[str | Messages],
    responses: Sequence[str] | None = None,
    progress: bool = True,
    backend=None,
) -> ShiftResult:
    """Per-layer shift along ``vector`` from the loaded model ``base`` to ``finetuned`` (module
    docstring). ``responses`` overrides generation (the same texts for both models); ``backend``
    (a :class:`persona_lens.backends.GenerationBackend` serving the ``responses_from`` model)
    generates them instead of the HF path. Empty responses are dropped."""
    vector.check_model(base)
    vector.check_model(finetuned)
    messages = [as_messages(p) for p in prompts]
    if not messages:
        raise ValueError("the fine-tuning shift needs at least one prompt")
    layers = list(range(n_layers(base))) if config.layers is None \
        else sorted({check_layer(base, l) for l in config.layers})
    config = config.replace(layers=tuple(layers))
    texts: list[str] | None = None
    source = None
    prompts_k: list[Messages] = messages
    texts_k: list[str] | None = None
    if config.position == "response_mean":
        texts, source = _shared_responses(base, finetuned, messages, responses, config, progress, backend)
        keep = [i for i, t in enumerate(texts) if t and finetuned.tokenizer(t, add_special_tokens=False)["input_ids"]
                and base.tokenizer(t, add_special_tokens=False)["input_ids"]]
        if not keep:
            raise ValueError("every response is empty: no response-mean activation to compare")
        prompts_k, texts_k = [messages[i] for i in keep], [texts[i] for i in keep]
    red = [config.position]
    a_base = capture(base, prompts_k, texts_k, layers=layers, reductions=red, batch_size=config.batch_size,
                     progress=progress, desc="shift: base")[config.position]
    a_ft = capture(finetuned, prompts_k, texts_k, layers=layers, reductions=red, batch_size=config.batch_size,
                   progress=progress, desc="shift: finetuned")[config.position]
    stats = shift_from_activations(a_base, a_ft, unit_directions(vector, layers))
    settings = {"base": model_id(base), "finetuned": model_id(finetuned), "vector": vector.name,
                "position": config.position, "responses_from": source, "max_new_tokens": config.max_new_tokens,
                "n_dropped_empty": len(messages) - len(prompts_k),
                "definition": "shift[l] = mean_prompts(a_ft[l].u[l] - a_base[l].u[l]), u = v/||v||"}
    return ShiftResult(config=config, layers=layers, shift=stats["shift"], std=stats["std"],
                       base_projection=stats["base_projection"], finetuned_projection=stats["finetuned_projection"],
                       n=len(prompts_k), settings=settings,
                       responses=list(texts) if texts is not None else [])


def preventative_steering(model, vector: PersonaVector | torch.Tensor, layer: int | Sequence[int],
                          alpha: float | None = None, *, operator: Operator = "add",
                          cap: Sequence[float | None] | None = None) -> Steering:
    """The :class:`Steering` to apply during fine-tuning forward passes (preventative steering).

    ``operator="add"`` (the paper's): ``alpha * v[layer]`` is added to
    ``blocks.{layer}.hook_resid_post`` at every position (``positions="all"``), training forwards
    included (``use_cache=False``: every forward counts as a prefill, all positions are steered);
    the added term is a constant, so gradients flow through the model unchanged.
    ``operator="ablate"`` (no ``alpha``): the component along ``v[layer]`` is removed at every
    position instead, ``h - (h . u) u``; the layers after it never see the direction, and the
    gradient reaching the layer has its component along ``u`` removed too (the ablation is a
    projection), so training cannot use that direction at that layer (``"cap"`` with
    ``cap=(lo, hi)`` clamps it instead). Use it as::

        steering = preventative_steering(model, v, layer=12, alpha=4.0)   # or operator="ablate"
        with steering.apply(model):
            for batch in loader:
                loss = hf_causal_lm(model)(**batch, use_cache=False).loss
                loss.backward(); opt.step(); opt.zero_grad()

    and evaluate the fine-tuned model without it.
    """
    layers = [layer] if isinstance(layer, int) else list(layer)
    for l in layers:
        check_layer(model, l)
    if isinstance(vector, PersonaVector):
        vector.check_model(model)
    if operator == "add" and alpha is None:
        raise OperatorError("preventative add steering needs alpha (the coefficient of h += alpha * v)")
    st = Steering.from_vector(vector, layers, alpha, positions="all", operator=operator, cap=cap)
    st.validate(model)
    st.description["purpose"] = "preventative"
    return st
