"""Steering: add ``alpha * v[l]`` to ``blocks.{l}.hook_resid_post`` while the model runs (or
ablate / cap the component along ``v[l]``: the operators of :mod:`persona_lens.operators`).

The hook sits on the HF decoder layer ``l`` that TransformerLens wraps as ``blocks.{l}`` (its
public ``original_component``), whose output *is* ``hook_resid_post``: it works for persona_lens'
native generation, for plain HF ``generate`` on the model, and for everything run through the
bridge — ``with pl.steer(model, v, 20, 4.0): model.run_with_cache(tokens)`` caches the steered
``blocks.20.hook_resid_post``. :meth:`Steering.tl_hooks` gives the same update as TransformerLens
hook functions for ``run_with_hooks`` / ``hooks()``.

Which tokens are steered is decided by :mod:`persona_lens.positions` (the one position policy),
from the attention mask of each forward, read by a pre-hook on the decoder: correct with left or
right padding, with or without a KV cache, and when continuing from a non-empty cache.
Vectors may be one per layer (``[d_model]``) or one per batch row (``[batch, d_model]``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .errors import LayerOutOfRangeError, NonFiniteError, OperatorError, VectorShapeError
from .hooks import hidden_of, replace_hidden
from .models import check_layer, d_model, decoder, decoder_layers, resid_post_hook_name
from .operators import OPEN, OPERATORS, Operator, check_bounds, check_operator, check_units, per_row_caps, unit, update
from .positions import POSITIONS, Positions, PromptTracker, check_positions
from .vectors import PersonaVector, check_finite

__all__ = ["Steering", "steer", "Positions", "POSITIONS", "Operator", "OPERATORS"]


@dataclass
class Steering:
    """What steering does at each layer, by one formula (:func:`persona_lens.operators.update`)::

        h' = h + m * (deltas[l] + (clamp(h . units[l], lo, hi) - h . units[l]) * units[l])

    ``deltas[l]`` is ``alpha * v[l]`` (``add``); ``units[l]`` a unit direction and ``bounds[l]``
    its ``(lo, hi)`` (``ablate``: ``(0, 0)``; ``cap``: the bounds). A layer may have either or
    both (see :meth:`combine`). Each is ``[d]`` / ``[2]`` (every row) or ``[batch, d]`` /
    ``[batch, 2]`` (one per batch row; a zero unit row has no projection).
    """

    deltas: dict[int, Tensor]
    positions: Positions = "response"
    description: dict = field(default_factory=dict)
    units: dict[int, Tensor] = field(default_factory=dict)
    bounds: dict[int, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.positions = check_positions(self.positions)
        for layer, delta in self.deltas.items():
            check_finite(delta, f"steering delta at layer {layer}")
            if delta.ndim not in (1, 2):
                raise VectorShapeError(f"steering delta at layer {layer} must be [d] or [batch, d], got {tuple(delta.shape)}")
        self.bounds = dict(self.bounds)  # normalised below: never the caller's dict
        if set(self.units) != set(self.bounds):
            raise OperatorError(f"units and bounds must name the same layers, got {sorted(self.units)} and "
                                f"{sorted(self.bounds)}")
        for layer, u in self.units.items():
            check_finite(u, f"steering unit direction at layer {layer}")
            if u.ndim not in (1, 2):
                raise VectorShapeError(f"steering unit at layer {layer} must be [d] or [batch, d], got {tuple(u.shape)}")
            check_units(u, f"the steering direction at layer {layer}")
            b = torch.as_tensor(self.bounds[layer], dtype=torch.float32)
            if b.ndim not in (1, 2) or b.shape[-1] != 2:
                raise VectorShapeError(f"steering bounds at layer {layer} must be [2] or [batch, 2], got {tuple(b.shape)}")
            if bool(b.isnan().any()) or bool((b[..., 0] > b[..., 1]).any()):
                raise OperatorError(f"steering bounds at layer {layer} must be (lo, hi) with lo <= hi, got {b.tolist()}")
            self.bounds[layer] = b
        sizes = {t.shape[0] for part in (self.deltas, self.units, self.bounds) for t in part.values() if t.ndim == 2}
        if len(sizes) > 1:
            raise VectorShapeError(f"per-row steering tensors disagree on the number of rows: {sorted(sizes)}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vector(
        cls,
        vector: PersonaVector | Tensor,
        layers: int | Sequence[int],
        alpha: float | Sequence[float] | Tensor | None = None,
        positions: Positions = "response",
        *,
        operator: Operator = "add",
        cap: Sequence[float | None] | None = None,
    ) -> Steering:
        """One vector at ``layers``. ``add``: ``alpha * v`` (``alpha`` a scalar, default 1, or one
        value per batch row); ``ablate``: remove the component along ``v``; ``cap``: clamp the
        projection on ``v / ||v||`` into ``cap = (lo, hi)`` (raw activation units, ``None`` = open
        side). ``ablate``/``cap`` take no ``alpha`` (:class:`~persona_lens.errors.OperatorError`)."""
        operator = check_operator(operator)
        lo, hi = check_bounds(operator, cap)
        if operator != "add" and alpha is not None:
            raise OperatorError(f"operator {operator!r} sets the projection on v and takes no alpha (got {alpha})")
        layers = [layers] if isinstance(layers, int) else list(layers)
        alpha_t = torch.as_tensor(1.0 if alpha is None else alpha, dtype=torch.float32)
        if not torch.isfinite(alpha_t).all():
            raise NonFiniteError(f"alpha must be finite, got {alpha}")
        deltas, units, bounds = {}, {}, {}
        for layer in layers:
            v = _layer_vector(vector, layer)
            if operator == "add":
                deltas[layer] = alpha_t[:, None] * v if alpha_t.ndim == 1 else alpha_t * v
            else:
                units[layer], bounds[layer] = unit(v), torch.tensor([lo, hi])
        md: dict[str, Any] = {"layers": layers, "positions": positions, "operator": operator}
        if operator == "add":
            md["alpha"] = alpha_t.tolist()
        if operator == "cap":
            md["cap"] = [lo, hi]
        if isinstance(vector, PersonaVector):
            md["persona"] = vector.name
        return cls(deltas, positions, md, units, bounds)

    @classmethod
    def per_row(
        cls,
        vectors: Sequence[PersonaVector | None],
        layer: int,
        alphas: float | Sequence[float | None] = 1.0,
        positions: Positions = "response",
        *,
        operators: Operator | Sequence[Operator] = "add",
        caps: Sequence[float | None] | Sequence[Sequence[float | None] | None] | None = None,
    ) -> Steering:
        """One vector per batch row (``None`` = unsteered row), in one batched update.

        ``operators``: one for every row or one per row (rows may mix operators); ``alphas``: a
        scalar for every ``add`` row or one per row (``None`` for ``ablate``/``cap`` rows);
        ``caps``: one ``(lo, hi)`` for every ``cap`` row or one per row (``None`` elsewhere)."""
        n = len(vectors)
        ops = [check_operator(operators)] * n if isinstance(operators, str) else [check_operator(o) for o in operators]
        if isinstance(alphas, (int, float)):
            alpha_rows: list[float | None] = [float(alphas) if o == "add" else None for o in ops]
        else:
            alpha_rows = [None if a is None else float(a) for a in alphas]
        cap_rows = per_row_caps(caps, ops)
        if len(ops) != n or len(alpha_rows) != n or len(cap_rows) != n:
            raise VectorShapeError(f"per_row got {n} vectors, {len(ops)} operators, {len(alpha_rows)} alphas and "
                                   f"{len(cap_rows)} caps: give one per row")
        if not all(math.isfinite(a) for a in alpha_rows if a is not None):
            raise NonFiniteError(f"alphas must be finite, got {alpha_rows}")
        widths = {v.d_model for v in vectors if v is not None}
        if len(widths) > 1:
            raise VectorShapeError(f"per-row vectors have different widths {sorted(widths)}")
        if not widths:
            raise ValueError("per_row needs at least one vector")
        width = widths.pop()
        zero = torch.zeros(width)
        deltas, units, bounds = [], [], []
        for v, op, a, c in zip(vectors, ops, alpha_rows, cap_rows):
            lo, hi = check_bounds(op, c)
            if op == "add":
                deltas.append(zero if v is None else (1.0 if a is None else a) * v.layer(layer))
                units.append(zero)
            else:
                if a is not None:
                    raise OperatorError(f"operator {op!r} takes no alpha (got {a}): give None for its row")
                deltas.append(zero)
                units.append(zero if v is None else unit(v.layer(layer)))
            bounds.append(torch.tensor([lo, hi]))
        has_projection = any(op != "add" for op in ops)
        md = {"layers": [layer], "alpha": alpha_rows, "positions": positions, "operator": ops,
              "persona": [None if v is None else v.name for v in vectors]}
        return cls({layer: torch.stack(deltas)}, positions, md,
                   {layer: torch.stack(units)} if has_projection else {},
                   {layer: torch.stack(bounds)} if has_projection else {})

    @classmethod
    def stack(cls, rows: Sequence[Steering | None], width: int, positions: Positions) -> Steering:
        """One per-row Steering from one ``[d]`` Steering (or ``None``: unsteered) per row, all
        with ``positions``; rows without a layer's part get a zero delta / no projection."""
        zero, open_bounds = torch.zeros(width), torch.tensor(OPEN)
        members = [r for r in rows if r is not None]
        if any(r.positions != positions or r.batch_size is not None for r in members):
            raise ValueError(f"stack takes [d] steerings with positions {positions!r}")
        delta_layers = sorted({l for r in members for l in r.deltas})
        unit_layers = sorted({l for r in members for l in r.units})
        deltas = {l: torch.stack([r.deltas.get(l, zero) if r is not None else zero for r in rows]) for l in delta_layers}
        units = {l: torch.stack([r.units.get(l, zero) if r is not None else zero for r in rows]) for l in unit_layers}
        bounds = {l: torch.stack([r.bounds.get(l, open_bounds) if r is not None else open_bounds for r in rows])
                  for l in unit_layers}
        return cls(deltas, positions, {"layers": sorted({*delta_layers, *unit_layers}), "positions": positions},
                   units, bounds)

    def as_operator(self, operator: Operator, cap: Sequence[float | None] | None = None) -> Steering:
        """This add steering's directions used by ``operator`` instead (``u = delta / ||delta||``:
        the sign of alpha sets the direction a ``cap`` is read along)."""
        operator = check_operator(operator)
        lo, hi = check_bounds(operator, cap)
        if operator == "add":
            return self
        if self.units:
            raise OperatorError("as_operator takes a plain add steering")
        md = {**self.description, "operator": operator, **({"cap": [lo, hi]} if operator == "cap" else {})}
        md.pop("alpha", None)
        return Steering({}, self.positions, md, {l: unit(d) for l, d in self.deltas.items()},
                        {l: torch.tensor([lo, hi]).expand(*d.shape[:-1], 2).clone() for l, d in self.deltas.items()})

    def combine(self, other: Steering) -> Steering:
        """Several steerings at once: deltas at the same layer add. A layer may hold one
        projection (``ablate``/``cap``): it is read from the layer's unsteered output, and a
        delta at that layer is added after it (not ablated or capped). Two projections at one
        layer are refused (:class:`~persona_lens.errors.OperatorError`): their order would matter."""
        if other.positions != self.positions:
            raise ValueError("cannot combine steerings with different positions")
        deltas = dict(self.deltas)
        for layer, d in other.deltas.items():
            deltas[layer] = deltas[layer] + d if layer in deltas else d
        both = sorted(set(self.units) & set(other.units))
        if both:
            raise OperatorError(f"cannot combine two ablate/cap operators at layer {both[0]}: apply them at different "
                                "layers, or build one cap with the bounds you want")
        return Steering(deltas, self.positions, {"combined": [self.description, other.description]},
                        {**self.units, **other.units}, {**self.bounds, **other.bounds})

    @property
    def layers(self) -> list[int]:
        """Every layer this steering touches (adds or projects)."""
        return sorted({*self.deltas, *self.units})

    @property
    def is_noop(self) -> bool:
        return (all(bool((d == 0).all()) for d in self.deltas.values())
                and all(bool((u == 0).all()) for u in self.units.values()))

    @property
    def batch_size(self) -> int | None:
        sizes = {t.shape[0] for part in (self.deltas, self.units, self.bounds) for t in part.values() if t.ndim == 2}
        return sizes.pop() if sizes else None

    def select(self, rows: Sequence[int] | slice) -> Steering:
        """The rows of a per-row steering that fall into one generation batch."""
        if self.batch_size is None:
            return self
        idx = torch.arange(self.batch_size)[rows] if isinstance(rows, slice) else torch.as_tensor(list(rows))
        return self._map_rows(lambda t: t[idx])

    def row(self, i: int) -> Steering:
        """Row ``i`` as a ``[d]`` steering (every row, for a steering that is not per row)."""
        return self._map_rows(lambda t: t[i])

    def _map_rows(self, pick: Callable[[Tensor], Tensor]) -> Steering:
        parts = [{l: (pick(t) if t.ndim == 2 else t) for l, t in part.items()}
                 for part in (self.deltas, self.units, self.bounds)]
        return Steering(parts[0], self.positions, self.description, parts[1], parts[2])

    # ------------------------------------------------------------------ application
    def validate(self, model) -> None:
        width = d_model(model)
        for layer in self.layers:
            check_layer(model, layer)
        for part in (self.deltas, self.units):
            for t in part.values():
                if t.shape[-1] != width:
                    raise VectorShapeError(
                        f"steering vector width {t.shape[-1]} does not match the model's d_model {width}")

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
        handles += [layers[layer].register_forward_hook(self._layer_hook(layer, state), prepend=True)
                    for layer in self.layers]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _layer_hook(self, layer: int, state: dict):
        checked = {"done": False}

        def hook(_module, _args, output):
            hidden = hidden_of(output)
            if not checked["done"] and layer in self.deltas:  # once per block: one norm, on the first forward
                checked["done"] = True
                _warn_if_too_strong(layer, self.deltas[layer], hidden, state["mask"])
            masks = state["by_device"]
            if hidden.device not in masks:  # layers may live on several devices (device_map="auto")
                masks[hidden.device] = state["mask"].to(hidden.device)
            mask = masks[hidden.device]
            if mask.shape != hidden.shape[:2]:
                raise RuntimeError(f"steering mask {tuple(mask.shape)} does not match the hidden states "
                                   f"{tuple(hidden.shape[:2])}: the decoder was called in an unexpected way")
            return replace_hidden(output, self._steered(layer, hidden, mask))

        return hook

    def _steered(self, layer: int, hidden: Tensor, mask: Tensor) -> Tensor:
        """``hidden`` (``[batch, pos, d]``) after this layer's operator at the ``mask`` positions."""
        batch = hidden.shape[0]
        delta = _per_row(self.deltas.get(layer, torch.zeros(())), batch)
        unit_dir, lo, hi = None, None, None
        if layer in self.units:
            unit_dir = _per_row(self.units[layer], batch)
            b = self.bounds[layer]
            lo, hi = (b[:, None, 0], b[:, None, 1]) if b.ndim == 2 else (b[0], b[1])
        change = update(hidden, delta, unit_dir, lo, hi)
        return hidden + mask[:, :, None].to(hidden.dtype) * change

    def tl_hooks(self, attention_mask: Tensor | None = None,
                 prompt_lengths: Sequence[int] | Tensor | None = None) -> list[tuple[str, Callable]]:
        """``(hook name, hook fn)`` pairs for TransformerLens' ``run_with_hooks(fwd_hooks=...)`` /
        ``hooks(fwd_hooks=...)``: the same operators at ``blocks.{l}.hook_resid_post``, for one forward.

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

        def make(layer: int):
            def fn(resid: Tensor, hook=None) -> Tensor:
                return self._steered(layer, resid, mask_for(resid))

            return fn

        return [(resid_post_hook_name(layer), make(layer)) for layer in self.layers]


def _layer_vector(vector: PersonaVector | Tensor, layer: int) -> Tensor:
    """The float32 direction ``vector`` gives for ``layer``."""
    if isinstance(vector, PersonaVector):
        return vector.layer(layer).to(torch.float32)
    t = torch.as_tensor(vector, dtype=torch.float32)
    if t.ndim == 1:  # one direction used at every given layer
        return t
    if t.ndim == 2 and 0 <= layer < t.shape[0]:  # [n_layers, d_model]
        return t[layer]
    raise LayerOutOfRangeError(f"layer {layer} is out of range for a vector tensor of shape {tuple(t.shape)}")


def _per_row(t: Tensor, batch: int) -> Tensor:
    """A ``[batch, d]`` tensor as ``[batch, 1, d]`` (checked against the batch); others as they are."""
    if t.ndim != 2:
        return t
    if t.shape[0] != batch:
        raise VectorShapeError(f"per-row steering has {t.shape[0]} rows but the batch has {batch}")
    return t[:, None, :]


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
    alpha: float | Sequence[float] | None = None,
    positions: Positions = "response",
    *,
    operator: Operator = "add",
    cap: Sequence[float | None] | None = None,
):
    """``with steer(model, v, layer, alpha): ...`` — a context manager applying one vector
    (``operator="ablate"``, or ``"cap"`` with ``cap=(lo, hi)``: see :meth:`Steering.from_vector`)."""
    return Steering.from_vector(vector, layers, alpha, positions, operator=operator, cap=cap).apply(model)


def steering_from_mapping(vectors: Mapping[int, Tensor], positions: Positions = "response") -> Steering:
    return Steering({int(k): torch.as_tensor(v, dtype=torch.float32) for k, v in vectors.items()}, positions)
