"""Blending persona vectors into one direction (BILLY, Pai et al. 2025).

``blend(vectors, method, weights)`` returns ``sum_i w_i * c_i[l]`` at every layer ``l``, where
the component ``c_i`` and the default weights depend on ``method``:

============== ============================================ ===============================
method         component ``c_i[l]``                         weights ``w_i``
============== ============================================ ===============================
``mean``       the raw vector ``v_i[l]``                    ``1/n`` (no weights accepted)
``weighted``   the raw vector ``v_i[l]``                    required, used as given (a sum,
                                                            not renormalised)
``normalized`` the unit vector ``v_i[l] / ||v_i[l]||``      ``1/n`` unless given
``orthogonal`` Gram-Schmidt residual ``o_i[l]`` (below)     ``1/n`` unless given
============== ============================================ ===============================

``mean`` is BILLY's merge: the plain average of the raw persona vectors (the authors' main
config averages creative_professional, environmentalist, futurist, futurist: a component may
repeat, which doubles its weight).

``orthogonal``: per layer and in the order given, ``o_1 = v_1`` and
``o_k = v_k - sum_{j<k} (v_k . e_j) e_j`` with ``e_j = o_j / ||o_j||`` (modified Gram-Schmidt in
float64). The residuals keep their own (reduced) norms: ``o_k`` is the part of ``v_k`` no
earlier component explains. A component that lies in the span of the earlier ones (a repeated
persona, for example) has ``||o_k|| <= 1e-6 ||v_k||``; it is set to exactly zero and contributes
nothing. The result is then ``sum_k w_k o_k`` (the average with the default weights).

Vectors from different models or of different shapes are refused
(:func:`persona_lens.vectors.check_compatible`: ``ModelMismatchError`` / ``VectorShapeError``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import NonFiniteError
from .vectors import PersonaVector, check_compatible

BLEND_METHODS = ("mean", "weighted", "normalized", "orthogonal")
_GS_TOL = 1e-6


def _check_weights(weights: Sequence[float], n: int) -> list[float]:
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"{len(w)} weights for {n} vectors")
    if not all(math.isfinite(x) for x in w):
        raise NonFiniteError(f"weights must be finite, got {w}")
    return w


def gram_schmidt(stack: Tensor, tol: float = _GS_TOL) -> Tensor:
    """Per-layer Gram-Schmidt residuals of ``stack`` ``[n, n_layers, d]``, in order (see module doc)."""
    x = stack.double()
    out = torch.zeros_like(x)
    for l in range(x.shape[1]):
        basis: list[Tensor] = []
        for k in range(x.shape[0]):
            v = x[k, l]
            r = v.clone()
            for e in basis:  # modified Gram-Schmidt: subtract from the running residual
                r = r - (r @ e) * e
            norm = r.norm()
            if norm <= tol * max(float(v.norm()), 1e-30):
                continue  # in the span of the earlier components: contributes zero
            out[k, l] = r
            basis.append(r / norm)
    return out.float()


def blend_components(vectors: Sequence[PersonaVector | Tensor], method: str = "mean") -> Tensor:
    """The per-component tensors ``c_i`` (``[n, n_layers, d]``) that ``blend`` weights and sums."""
    if method not in BLEND_METHODS:
        raise ValueError(f"unknown blend method {method!r}; choose from {BLEND_METHODS}")
    stack = torch.stack([v.vectors if isinstance(v, PersonaVector) else v for v in vectors])
    if method in ("mean", "weighted"):
        return stack
    if method == "normalized":
        return stack / stack.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return gram_schmidt(stack)


def blend(
    vectors: Sequence[PersonaVector],
    method: str = "mean",
    weights: Sequence[float] | None = None,
    *,
    name: str | None = None,
) -> PersonaVector:
    """Blend persona vectors into one (see the module docstring for each method's exact math)."""
    vectors = list(vectors)
    if not vectors:
        raise ValueError("blend needs at least one vector")
    if method not in BLEND_METHODS:
        raise ValueError(f"unknown blend method {method!r}; choose from {BLEND_METHODS}")
    for v in vectors:
        if not isinstance(v, PersonaVector):
            raise TypeError(f"blend takes PersonaVector objects, got {type(v).__name__}")
    check_compatible(vectors)
    n = len(vectors)
    if method == "mean":
        if weights is not None:
            raise ValueError("method 'mean' takes no weights; use method='weighted' for a weighted sum")
        w = [1.0 / n] * n
    elif method == "weighted":
        if weights is None:
            raise ValueError("method 'weighted' needs weights (one per vector)")
        w = _check_weights(weights, n)
    else:
        w = [1.0 / n] * n if weights is None else _check_weights(weights, n)
    # The edge rows (embedding output, after the final norm) blend like one more layer each, so a
    # blend exports to the Persona Vectors .pt layout too; kept only when every input has them.
    edges = all(v.embed_diff is not None and v.final_norm_diff is not None for v in vectors)
    rows = [torch.cat([v.embed_diff[None], v.vectors, v.final_norm_diff[None]])  # type: ignore[index]
            if edges else v.vectors for v in vectors]
    comps = blend_components(rows, method)
    w_t = torch.tensor(w, dtype=torch.float64)
    result = (comps.double() * w_t[:, None, None]).sum(0).float()
    embed_diff = final_norm_diff = None
    if edges:
        embed_diff, result, final_norm_diff = result[0], result[1:-1], result[-1]

    names = [v.name for v in vectors]
    first = vectors[0]
    md: dict = {
        "persona": name or f"blend_{method}({'+'.join(names)})",
        "method": "blend",
        "blend_method": method,
        "weights": w,
        "components": [
            {"persona": v.name, "model_id": v.model_id, "method": v.metadata.get("method"),
             "norms": [round(float(x), 6) for x in v.norms()]}
            for v in vectors
        ],
    }
    model_ids = {v.model_id for v in vectors if v.model_id}
    if model_ids:
        md["model_id"] = model_ids.pop()
    for key in ("hook", "positions"):
        values = {str(v.metadata.get(key)) for v in vectors}
        if len(values) == 1 and first.metadata.get(key) is not None:
            md[key] = first.metadata[key]
    if method == "orthogonal":
        md["orthogonal_order"] = names
    return PersonaVector(result, md, embed_diff, final_norm_diff)
