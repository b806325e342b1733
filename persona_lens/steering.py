"""Steering: add ``alpha * v[l]`` to ``blocks.{l}.hook_resid_post`` while the model runs.

The hook sits on the original HF decoder layer ``l`` (whose output *is* ``hook_resid_post``,
tested against TransformerLens), so it works both for persona_lens' fast native generation and
for anything run through the bridge. ``positions``:

* ``"response"`` (Persona Vectors' default): the last prompt token and every generated token;
* ``"prompt"``: the prompt only (prefill), nothing during decoding;
* ``"all"``: every position.

Prefill vs decode is told by the KV cache (empty cache = prefill), so it is exact with caching.
For full-sequence forwards over prompt+response (capture), the caller passes the position mask.
Vectors may be one per layer (``[d_model]``) or one per batch row (``[batch, d_model]``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Literal, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import LayerOutOfRangeError, NonFiniteError, VectorShapeError
from .models import check_layer, d_model, decoder, decoder_layers
from .vectors import PersonaVector, check_finite

Positions = Literal["all", "prompt", "response"]
POSITIONS = ("all", "prompt", "response")


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden):
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


@dataclass
class Steering:
    """Per-layer additive directions. ``deltas[l]`` is ``alpha * v[l]`` (``[d]`` or ``[batch, d]``)."""

    deltas: dict[int, Tensor]
    positions: Positions = "response"
    description: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        for layer, delta in self.deltas.items():
            check_finite(delta, f"steering delta at layer {layer}")
            if delta.ndim not in (1, 2):
                raise VectorShapeError(f"steering delta at layer {layer} must be [d] or [batch, d], got {tuple(delta.shape)}")
        self._position_mask: Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vector(
        cls,
        vector: PersonaVector | Tensor,
        layers: int | Sequence[int],
        alpha: float | Sequence[float] | Tensor = 1.0,
        positions: Positions = "response",
    ) -> "Steering":
        """``alpha`` is a scalar, or one value per batch row (per-row steering strength)."""
        layers = [layers] if isinstance(layers, int) else list(layers)
        alpha_t = torch.as_tensor(alpha, dtype=torch.float32)
        if not torch.isfinite(alpha_t).all():
            raise NonFiniteError(f"alpha must be finite, got {alpha}")
        deltas = {}
        for layer in layers:
            if isinstance(vector, PersonaVector):
                v = vector.layer(layer)
            else:
                t = torch.as_tensor(vector, dtype=torch.float32)
                if t.ndim == 1:  # one direction used at every given layer
                    v = t
                elif t.ndim == 2 and 0 <= layer < t.shape[0]:  # [n_layers, d_model]
                    v = t[layer]
                else:
                    raise LayerOutOfRangeError(
                        f"layer {layer} is out of range for a vector tensor of shape {tuple(t.shape)}")
            v = v.to(torch.float32)
            deltas[layer] = alpha_t[:, None] * v if alpha_t.ndim == 1 else alpha_t * v
        md = {"layers": layers, "alpha": alpha_t.tolist(), "positions": positions}
        if isinstance(vector, PersonaVector):
            md["persona"] = vector.name
        return cls(deltas, positions, md)

    @classmethod
    def per_row(
        cls,
        vectors: Sequence[PersonaVector | None],
        layer: int,
        alphas: float | Sequence[float] = 1.0,
        positions: Positions = "response",
    ) -> "Steering":
        """One vector per batch row (``None`` = unsteered row), in one batched add."""
        if isinstance(alphas, (int, float)):
            alphas = [float(alphas)] * len(vectors)
        widths = {v.d_model for v in vectors if v is not None}
        if len(widths) > 1:
            raise VectorShapeError(f"per-row vectors have different widths {sorted(widths)}")
        if not widths:
            raise ValueError("per_row needs at least one vector")
        width = widths.pop()
        rows = [torch.zeros(width) if v is None else a * v.layer(layer) for v, a in zip(vectors, alphas)]
        return cls({layer: torch.stack(rows)}, positions,
                   {"layers": [layer], "alpha": list(alphas), "positions": positions,
                    "persona": [None if v is None else v.name for v in vectors]})

    def combine(self, other: "Steering") -> "Steering":
        """Several vectors at once: deltas at the same layer add."""
        if other.positions != self.positions:
            raise ValueError("cannot combine steerings with different positions")
        deltas = dict(self.deltas)
        for layer, d in other.deltas.items():
            deltas[layer] = deltas[layer] + d if layer in deltas else d
        return Steering(deltas, self.positions, {"combined": [self.description, other.description]})

    @property
    def is_noop(self) -> bool:
        return all(bool((d == 0).all()) for d in self.deltas.values())

    @property
    def batch_size(self) -> int | None:
        sizes = {d.shape[0] for d in self.deltas.values() if d.ndim == 2}
        return sizes.pop() if sizes else None

    def select(self, rows: Sequence[int] | slice) -> "Steering":
        """The rows of a per-row steering that fall into one generation batch."""
        if self.batch_size is None:
            return self
        idx = torch.arange(self.batch_size)[rows] if isinstance(rows, slice) else torch.as_tensor(list(rows))
        return Steering({l: (d[idx] if d.ndim == 2 else d) for l, d in self.deltas.items()},
                        self.positions, self.description)

    # ------------------------------------------------------------------ application
    def validate(self, model) -> None:
        width = d_model(model)
        for layer, delta in self.deltas.items():
            check_layer(model, layer)
            if delta.shape[-1] != width:
                raise VectorShapeError(
                    f"steering vector width {delta.shape[-1]} does not match the model's d_model {width}")

    @contextlib.contextmanager
    def position_mask(self, mask: Tensor | None) -> Iterator[None]:
        """For full-sequence forwards (no KV cache): the ``[batch, pos]`` positions to steer."""
        old, self._position_mask = self._position_mask, mask
        try:
            yield
        finally:
            self._position_mask = old

    @contextlib.contextmanager
    def apply(self, model) -> Iterator["Steering"]:
        self.validate(model)
        layers = decoder_layers(model)
        state = {"prefill": True}
        handles = []

        def pre_hook(_module, args, kwargs):
            cache = kwargs.get("past_key_values")
            seen = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
            state["prefill"] = int(seen) == 0

        handles.append(decoder(model).register_forward_pre_hook(pre_hook, with_kwargs=True))
        if not self.is_noop:  # alpha = 0: no hook at all, so output is exactly unsteered
            for layer, delta in self.deltas.items():
                # prepend: other hooks on this layer (capture) see the steered residual stream.
                handles.append(layers[layer].register_forward_hook(self._make_hook(delta, state), prepend=True))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _make_hook(self, delta: Tensor, state: dict):
        cached: dict = {}

        def hook(_module, _args, output):
            hidden = _hidden(output)
            key = (hidden.device, hidden.dtype)
            if key not in cached:
                cached[key] = delta.to(device=hidden.device, dtype=hidden.dtype)
            d = cached[key]
            if d.ndim == 2:
                if d.shape[0] != hidden.shape[0]:
                    raise VectorShapeError(
                        f"per-row steering has {d.shape[0]} rows but the batch has {hidden.shape[0]}")
                d = d[:, None, :]
            mask = self._position_mask
            if mask is not None:
                m = mask.to(hidden.device)[:, :, None].to(hidden.dtype)
                return _replace_hidden(output, hidden + m * d)
            if state["prefill"]:
                if self.positions == "response":
                    hidden = hidden.clone()
                    hidden[:, -1:, :] += d if d.ndim == 3 else d[None, None, :]
                    return _replace_hidden(output, hidden)
                return _replace_hidden(output, hidden + d)
            if self.positions == "prompt":
                return output
            return _replace_hidden(output, hidden + d)

        return hook


def steer(
    model,
    vector: PersonaVector | Tensor,
    layers: int | Sequence[int],
    alpha: float | Sequence[float] = 1.0,
    positions: Positions = "response",
):
    """``with steer(model, v, layer, alpha): ...`` — a context manager applying one vector."""
    return Steering.from_vector(vector, layers, alpha, positions).apply(model)


def steering_from_mapping(vectors: Mapping[int, Tensor], positions: Positions = "response") -> Steering:
    return Steering({int(k): torch.as_tensor(v, dtype=torch.float32) for k, v in vectors.items()}, positions)
