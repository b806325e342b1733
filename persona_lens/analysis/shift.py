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

Preventative steering: during fine-tuning, add ``alpha * v[layer]`` to the residual stream at
every position (:func:`preventative_steering`), so the optimiser need not move the model along
``v`` to fit trait-laden data; the steering is removed at inference.
"""

from __future__ import annotations

import csv
import io as _io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..capture import capture
from ..chat import Messages, as_messages
from ..io import atomic_write_json, atomic_write_text
from ..models import check_layer, model_id as _model_id, n_layers
from ..steering import Steering
from ..vectors import PersonaVector
from .projection import unit_directions

SHIFT_POSITIONS = ("response_mean", "last_prompt")


@dataclass
class ShiftResult:
    """Per-layer arrays (index ``i`` <-> ``layers[i]``)."""

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

    def to_dict(self) -> dict:
        return {"layers": self.layers, "shift": self.shift.tolist(), "std": self.std.tolist(),
                "base_projection": self.base_projection.tolist(),
                "finetuned_projection": self.finetuned_projection.tolist(), "n": self.n, "settings": self.settings}

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        buf = _io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["layer", "shift", "std", "base_projection", "finetuned_projection", "n"],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows())
        if path is not None:
            atomic_write_text(path, buf.getvalue())
        return buf.getvalue()

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        out_dir = Path(out_dir)
        paths = {"json": out_dir / "shift.json", "csv": out_dir / "shift.csv", "responses": out_dir / "responses.json"}
        atomic_write_json(paths["json"], self.to_dict())
        self.to_csv(paths["csv"])
        atomic_write_json(paths["responses"], self.responses)
        return paths


def shift_from_activations(a_base: torch.Tensor, a_ft: torch.Tensor, units: torch.Tensor) -> dict[str, np.ndarray]:
    """``a_*``: ``[n, L, d]``; ``units``: ``[L, d]`` (normalised here). Per-layer mean/std of the
    per-prompt projection differences and the mean projections."""
    u = units.double() / units.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    pb = torch.einsum("nld,ld->nl", a_base.double(), u).numpy()
    pf = torch.einsum("nld,ld->nl", a_ft.double(), u).numpy()
    d = pf - pb
    return {"shift": d.mean(0), "std": d.std(0), "base_projection": pb.mean(0), "finetuned_projection": pf.mean(0)}


def _as_model(m):
    if isinstance(m, (str, os.PathLike)):
        from ..models import load_model

        return load_model(str(m))
    return m


def finetuning_shift(
    base,
    finetuned,
    vector: PersonaVector,
    prompts: Sequence[str | Messages],
    *,
    layers: Sequence[int] | None = None,
    position: str = "response_mean",
    responses_from: str = "finetuned",
    responses: Sequence[str] | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    progress: bool = True,
) -> ShiftResult:
    """Per-layer shift along ``vector`` from ``base`` to ``finetuned`` (module docstring).

    ``base``/``finetuned``: loaded models, or names/paths for :func:`load_model`. ``responses``
    overrides generation (the same texts for both models). Empty responses are dropped.
    """
    if position not in SHIFT_POSITIONS:
        raise ValueError(f"position must be one of {SHIFT_POSITIONS}, got {position!r}")
    if responses_from not in ("finetuned", "base"):
        raise ValueError(f"responses_from must be 'finetuned' or 'base', got {responses_from!r}")
    base, finetuned = _as_model(base), _as_model(finetuned)
    vector.check_model(base)
    vector.check_model(finetuned)
    prompts = [as_messages(p) for p in prompts]
    if not prompts:
        raise ValueError("finetuning_shift needs at least one prompt")
    layers = list(range(n_layers(base))) if layers is None else sorted({check_layer(base, l) for l in layers})
    texts: list[str] | None = None
    if position == "response_mean":
        if responses is not None:
            texts = list(responses)
            source = "given"
        else:
            from ..generate import generate

            gen_model = finetuned if responses_from == "finetuned" else base
            texts = generate(gen_model, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                             batch_size=batch_size, progress=progress, desc="shift: generate")
            source = responses_from
        tok = finetuned.tokenizer
        keep = [i for i, t in enumerate(texts) if t and tok(t, add_special_tokens=False)["input_ids"]
                and base.tokenizer(t, add_special_tokens=False)["input_ids"]]
        if not keep:
            raise ValueError("every response is empty: no response-mean activation to compare")
        prompts_k, texts_k = [prompts[i] for i in keep], [texts[i] for i in keep]
    else:
        source = None
        prompts_k, texts_k = prompts, None
    red = [position]
    a_base = capture(base, prompts_k, texts_k, layers=layers, reductions=red, batch_size=batch_size,
                     progress=progress, desc="shift: base")[position]
    a_ft = capture(finetuned, prompts_k, texts_k, layers=layers, reductions=red, batch_size=batch_size,
                   progress=progress, desc="shift: finetuned")[position]
    stats = shift_from_activations(a_base, a_ft, unit_directions(vector, layers))
    settings = {"base": _model_id(base), "finetuned": _model_id(finetuned), "vector": vector.name,
                "position": position, "responses_from": source, "max_new_tokens": max_new_tokens,
                "n_dropped_empty": len(prompts) - len(prompts_k),
                "definition": "shift[l] = mean_prompts(a_ft[l].u[l] - a_base[l].u[l]), u = v/||v||"}
    return ShiftResult(layers=layers, shift=stats["shift"], std=stats["std"], base_projection=stats["base_projection"],
                       finetuned_projection=stats["finetuned_projection"], n=len(prompts_k), settings=settings,
                       responses=list(texts) if texts is not None else [])


def preventative_steering(model, vector: PersonaVector | torch.Tensor, layer: int | Sequence[int],
                          alpha: float) -> Steering:
    """The :class:`Steering` to apply during fine-tuning forward passes (preventative steering).

    ``alpha * v[layer]`` is added to ``blocks.{layer}.hook_resid_post`` at every position
    (``positions="all"``), training forwards included (``use_cache=False``: every forward counts
    as a prefill, all positions are steered); the added term is a constant, so gradients flow
    through the model unchanged. Use it as::

        steering = preventative_steering(model, v, layer=12, alpha=4.0)
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
    st = Steering.from_vector(vector, layers, alpha, positions="all")
    st.validate(model)
    st.description["purpose"] = "preventative"
    return st
