"""Steering operators: what a steered layer does to the residual stream at a steered token.

Every engine path (HF hooks, TransformerLens hooks, the compiled static-cache path, vLLM's
worker hooks) applies one formula, :func:`update`, so the operators differ only in data:

    h' = h + m * ( delta + (clamp(h . u, lo, hi) - h . u) * u )

``m`` is the position mask (:mod:`persona_lens.positions`), ``u`` a unit direction and ``[lo, hi]``
bounds on the projection ``h . u`` (raw activation units: the coordinate of ``h`` along ``u``):

* ``add``: ``delta = alpha * v``, ``u = 0`` (no projection term);
* ``ablate``: ``delta = 0``, ``u = v / ||v||``, ``lo = hi = 0``: ``h - (h . u) u``, the component
  along ``v`` removed (directional ablation);
* ``cap``: ``delta = 0``, ``u = v / ||v||``, ``[lo, hi]`` given: the projection clamped into the
  bounds and nothing else changed (activation capping). ``-inf``/``inf`` leave a side open.

The projection is computed in float32 from the hidden state (whatever the model's dtype), the
correction added to ``delta`` in float32 and the sum cast to the hidden state's dtype once, so
an ``add`` is bit for bit the add it always was. With ``u = 0`` and open bounds the projection
term is exactly zero, which is how an engine with preallocated buffers (no branch, no
recompilation) runs any mix of operators, per row.

``ablate`` and ``cap`` ignore ``alpha`` (they set a projection, they do not scale a vector):
passing an ``alpha`` with them is refused rather than silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, cast

import torch
from torch import Tensor

from .errors import OperatorError

Operator = Literal["add", "ablate", "cap"]
OPERATORS: tuple[Operator, ...] = ("add", "ablate", "cap")
OPEN = (-math.inf, math.inf)  # bounds that clamp nothing
UNIT_TOLERANCE = 1e-4  # how far from 1 a stored unit direction's norm may be (float32 rounding)


def check_operator(operator: str) -> Operator:
    if operator not in OPERATORS:
        raise OperatorError(f"operator must be one of {OPERATORS}, got {operator!r}")
    return cast(Operator, operator)


def check_bounds(operator: Operator, cap: Sequence[float | None] | None) -> tuple[float, float]:
    """``(lo, hi)`` of an operator's projection clamp: ablate ``(0, 0)``, cap its bounds (``None``
    for an open side), add open (and a ``cap`` given with it is refused)."""
    if operator == "ablate" or operator == "add":
        if cap is not None:
            raise OperatorError(f"cap bounds were given with operator {operator!r}: they belong to operator 'cap'")
        return (0.0, 0.0) if operator == "ablate" else OPEN
    if cap is None:
        raise OperatorError("operator 'cap' needs bounds: cap=(lo, hi) (None for an open side)")
    try:
        lo_raw, hi_raw = cap
    except (TypeError, ValueError):
        raise OperatorError(f"cap must be a pair (lo, hi), got {cap!r}") from None
    lo = -math.inf if lo_raw is None else float(lo_raw)
    hi = math.inf if hi_raw is None else float(hi_raw)
    if math.isnan(lo) or math.isnan(hi):
        raise OperatorError(f"cap bounds must not be NaN, got {cap!r}")
    if lo > hi:
        raise OperatorError(f"cap lower bound {lo} is above the upper bound {hi}")
    if lo == -math.inf and hi == math.inf:
        raise OperatorError("cap with both sides open clamps nothing: give at least one bound")
    return lo, hi


def unit(v: Tensor) -> Tensor:
    """``v / ||v||`` along the last axis, in float32; a zero vector is refused (no direction)."""
    v = v.to(torch.float32)
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise OperatorError("ablate/cap need a direction: the vector is zero")
    return v / norm


def check_units(u: Tensor, what: str) -> None:
    """Each row of ``u`` is a unit vector or zero (no projection on that row)."""
    norm = u.to(torch.float32).norm(dim=-1)
    ok = (norm == 0) | ((norm - 1).abs() <= UNIT_TOLERANCE)
    if not bool(ok.all()):
        raise OperatorError(f"{what} must be a unit vector (or zero), got norms {norm.flatten().tolist()[:4]}")


def update(hidden: Tensor, delta: Tensor, unit_dir: Tensor | None = None, lo: Tensor | None = None,
           hi: Tensor | None = None) -> Tensor:
    """``delta + (clamp(h . u, lo, hi) - h . u) * u`` in ``hidden``'s dtype (before the position mask).

    ``hidden``: ``[..., d]``; ``delta`` and ``unit_dir`` broadcast to it, ``lo``/``hi`` to
    ``hidden.shape[:-1]``. ``unit_dir=None``: a plain add (``delta`` alone).
    """
    change = delta.to(device=hidden.device, dtype=torch.float32)
    if unit_dir is not None:
        assert lo is not None and hi is not None
        u = unit_dir.to(device=hidden.device, dtype=torch.float32)
        proj = (hidden.to(torch.float32) * u).sum(-1)
        clamped = torch.clamp(proj, lo.to(device=hidden.device, dtype=torch.float32),
                              hi.to(device=hidden.device, dtype=torch.float32))
        change = change + (clamped - proj).unsqueeze(-1) * u
    return change.to(hidden.dtype)


def per_row_caps(caps, ops: Sequence[str]) -> list:
    """``caps`` of :meth:`persona_lens.steering.Steering.per_row` as one ``(lo, hi)`` or ``None`` per row."""
    if caps is None:
        return [None] * len(ops)
    pair = len(caps) == 2 and all(c is None or isinstance(c, (int, float)) for c in caps)
    if pair:  # one (lo, hi) for every cap row
        return [caps if op == "cap" else None for op in ops]
    return list(caps)


__all__ = ["Operator", "OPERATORS", "OPEN", "check_operator", "check_bounds", "unit", "check_units", "update", "per_row_caps"]
