"""Steering: add ``alpha * v[l]`` to ``blocks.{l}.hook_resid_post`` while the model runs.

The hook sits on the HF decoder layer ``l`` that TransformerLens wraps as ``blocks.{l}`` (its
public ``original_component``), whose output *is* ``hook_resid_post``: it works for persona_lens'
native generation, for plain HF ``generate`` on the model, and for everything run through the
bridge — ``with pl.steer(model, v, 20, 4.0): model.run_with_cache(tokens)`` caches the steered
``blocks.20.hook_resid_post``. :meth:`Steering.tl_hooks` gives the same add as TransformerLens
hook functions for ``run_with_hooks`` / ``hooks()``.

Which tokens are steered is decided by :mod:`persona_lens.positions` (the one position policy),
from the attention mask of each forward, read by a pre-hook on the decoder: correct with left or
right padding, with or without a KV cache, and when continuing from a non-empty cache.
Vectors may be one per layer (``[d_model]``) or one per batch row (``[batch, d_model]``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import LayerOutOfRangeError, NonFiniteError, VectorShapeError
from .hooks import hidden_of, replace_hidden
from .models import check_layer, d_model, decoder, decoder_layers, resid_post_hook_name
from .positions import POSITIONS, Positions, PromptTracker, check_positions
from .vectors import PersonaVector, check_finite

__all__ = ["Steering", "steer", "Positions", "POSITIONS"]


@dataclass
class Steering:
    """Per-layer additive directions. ``deltas[l]`` is ``alpha * v[l]`` (``[d]`` or ``[batch, d]``)."""

    deltas: dict[int, Tensor]
    positions: Positions = "response"
    description: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = check_positions(self.positions)
        for layer, delta in self.deltas.items():
            check_finite(delta, f"steering delta at layer {layer}")
            if delta.ndim not in (1, 2):
                raise VectorShapeError(f"steering delta at layer {layer} must be [d] or [batch, d], got {tuple(delta.shape)}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vector(
        cls,
        vector: PersonaVector | Tensor,
        layers: int | Sequence[int],
        alpha: float | Sequence[float] | Tensor = 1.0,
        positions: Positions = "response",
    ) -> Steering:
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
        md: dict[str, Any] = {"layers": layers, "alpha": alpha_t.tolist(), "positions": positions}
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
    ) -> Steering:
        """One vector per batch row (``None`` = unsteered row), in one batched add."""
        if isinstance(alphas, (int, float)):
            alphas = [float(alphas)] * len(vectors)
        alphas = [float(a) for a in alphas]
        if len(alphas) != len(vectors):
            raise VectorShapeError(f"per_row got {len(vectors)} vectors but {len(alphas)} alphas: give one alpha per row")
        if not all(torch.isfinite(torch.tensor(alphas))):
            raise NonFiniteError(f"alphas must be finite, got {alphas}")
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

    def combine(self, other: Steering) -> Steering:
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

    def select(self, rows: Sequence[int] | slice) -> Steering:
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
    def apply(self, model, *, prompt_lengths: Sequence[int] | Tensor | None = None) -> Iterator[Steering]:
        """Steer every forward of ``model`` inside the block; the hooks are removed on exit.

        ``prompt_lengths`` (real prompt tokens per row): for forwards over prompt + response
        whose split is known (capture); without them each forward's prompt is inferred
        (:class:`persona_lens.positions.PromptTracker`).
        """
        self.validate(model)
        if self.is_noop:  # alpha = 0: no hook at all, so the output is exactly unsteered
            yield self
            return
        tracker = PromptTracker(self.positions, prompt_lengths)
        state: dict = {}

        def pre_hook(_module, args, kwargs):
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            ref = input_ids if input_ids is not None else kwargs["inputs_embeds"]
            state["mask"] = tracker.mask(
                ref.shape[1], attention_mask=kwargs.get("attention_mask"), input_ids=input_ids,
                position_ids=kwargs.get("position_ids"), cache_position=kwargs.get("cache_position"),
                batch=ref.shape[0])
            state["by_device"] = {}

        layers = decoder_layers(model)
        handles = [decoder(model).register_forward_pre_hook(pre_hook, with_kwargs=True)]
        # prepend: other hooks on the layer (capture, TransformerLens' hook_out) see the steered stream.
        handles += [layers[layer].register_forward_hook(self._layer_hook(layer, delta, state), prepend=True)
                    for layer, delta in self.deltas.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _layer_hook(self, layer: int, delta: Tensor, state: dict):
        checked = {"done": False}

        def hook(_module, _args, output):
            hidden = hidden_of(output)
            if not checked["done"]:  # once per block: one norm, on the first forward
                checked["done"] = True
                _warn_if_too_strong(layer, delta, hidden, state["mask"])
            masks = state["by_device"]
            if hidden.device not in masks:  # layers may live on several devices (device_map="auto")
                masks[hidden.device] = state["mask"].to(hidden.device)
            mask = masks[hidden.device]
            if mask.shape != hidden.shape[:2]:
                raise RuntimeError(f"steering mask {tuple(mask.shape)} does not match the hidden states "
                                   f"{tuple(hidden.shape[:2])}: the decoder was called in an unexpected way")
            return replace_hidden(output, hidden + self._masked_delta(delta, mask, hidden))

        return hook

    @staticmethod
    def _masked_delta(delta: Tensor, mask: Tensor, hidden: Tensor) -> Tensor:
        d = delta.to(device=hidden.device, dtype=hidden.dtype)
        if d.ndim == 2:
            if d.shape[0] != hidden.shape[0]:
                raise VectorShapeError(f"per-row steering has {d.shape[0]} rows but the batch has {hidden.shape[0]}")
            d = d[:, None, :]
        return mask[:, :, None].to(hidden.dtype) * d

    def tl_hooks(self, attention_mask: Tensor | None = None,
                 prompt_lengths: Sequence[int] | Tensor | None = None) -> list[tuple[str, Callable]]:
        """``(hook name, hook fn)`` pairs for TransformerLens' ``run_with_hooks(fwd_hooks=...)`` /
        ``hooks(fwd_hooks=...)``: the same add at ``blocks.{l}.hook_resid_post``, for one forward.

        Positions follow the one policy; the forward is read as a prompt (``response``: its last
        real token) unless ``prompt_lengths`` says where each row's prompt ends.
        """
        tracker = PromptTracker(self.positions, prompt_lengths)
        memo: dict = {}

        def mask_for(hidden: Tensor) -> Tensor:
            if "mask" not in memo:
                am = attention_mask if attention_mask is not None else torch.ones(hidden.shape[:2], dtype=torch.long)
                memo["mask"] = tracker.mask(hidden.shape[1], attention_mask=am, batch=hidden.shape[0])
            return memo["mask"].to(hidden.device)

        def make(delta: Tensor):
            def fn(resid: Tensor, hook=None) -> Tensor:
                return resid + self._masked_delta(delta, mask_for(resid), resid)

            return fn

        return [(resid_post_hook_name(layer), make(delta)) for layer, delta in sorted(self.deltas.items())]


# Beyond this, the added vector outweighs the residual stream it is added to: far past the
# coherent range a layer sweep explores (its default grid, DEFAULT_ALPHAS, tops out at alpha*||v||/||h|| = 0.5).
STRENGTH_WARN_RATIO = 1.0


def _warn_if_too_strong(layer: int, delta: Tensor, hidden: Tensor, mask: Tensor) -> None:
    real = mask.to(hidden.device)
    if not bool(real.any()):
        return
    resid = hidden.detach().float().norm(dim=-1)[real].mean()
    ratio = float(delta.float().norm(dim=-1).max()) / max(float(resid), 1e-12)
    if ratio > STRENGTH_WARN_RATIO:
        warnings.warn(
            f"steering at layer {layer}: alpha*||v||/||h|| = {ratio:.3g} (the added vector is {ratio:.3g}x the "
            f"residual stream's norm); expect incoherent text. A layer sweep (persona-lens sweep) finds the "
            f"coherent range, typically well below {STRENGTH_WARN_RATIO}.", SteeringStrengthWarning, stacklevel=2)


class SteeringStrengthWarning(UserWarning):
    """The steering delta is larger than the residual stream it is added to."""


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
