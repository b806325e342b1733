"""The pieces of the compiled steered path that live inside the graph (see :mod:`persona_lens.fast`).

``SteeredLayer`` wraps a decoder layer and adds ``gate * delta`` to its output, the gate taken from
the position ids by the one position policy (:func:`persona_lens.positions.in_window`) against
per-row thresholds in the shared ``GateState``; ``own_code`` gives each generator its own
``torch.compile`` graph cache.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn

from .hooks import hidden_of, replace_hidden
from .positions import UNBOUNDED, in_window

__all__ = ["GateState", "SteeredLayer", "own_code"]


def own_code(method):
    """``method`` re-bound to a private copy of its code object.

    torch.compile keeps compiled graphs per code object, and a code object holds at most
    ``torch._dynamo.config.recompile_limit`` of them (8): every generator compiling the one shared
    ``_decode`` would count against that limit (and then silently fall back to eager). A copy per
    generator gives each its own graph cache, freed with the generator.
    """
    fn = method.__func__
    own_code.count += 1  # type: ignore[attr-defined]
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{own_code.count}")  # type: ignore[attr-defined]
    clone = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return types.MethodType(clone, method.__self__)


own_code.count = 0  # type: ignore[attr-defined]


class GateState(nn.Module):
    """Per-row position thresholds shared by every steered layer: steer where ``lo <= pos < hi``."""

    lo: Tensor
    hi: Tensor

    def __init__(self, max_batch: int, device: torch.device):
        super().__init__()
        self.register_buffer("lo", torch.full((max_batch,), UNBOUNDED, dtype=torch.long, device=device), persistent=False)
        self.register_buffer("hi", torch.full((max_batch,), UNBOUNDED, dtype=torch.long, device=device), persistent=False)


class SteeredLayer(nn.Module):
    """A decoder layer followed by ``output + gate * delta`` (``delta``: ``[max_batch, d_model]``)."""

    delta: Tensor

    def __init__(self, layer: nn.Module, state: GateState, max_batch: int, width: int,
                 dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.layer = layer
        self.state = state
        self.register_buffer("delta", torch.zeros(max_batch, width, dtype=dtype, device=device), persistent=False)

    def forward(self, *args, **kwargs):
        output = self.layer(*args, **kwargs)
        hidden = hidden_of(output)
        pos = kwargs.get("position_ids")
        if pos is None:
            raise RuntimeError("CompiledSteeredGenerator: the decoder layer was called without position_ids")
        batch = hidden.shape[0]
        pos = pos.expand(batch, hidden.shape[1])
        gate = in_window(pos, self.state.lo[:batch], self.state.hi[:batch])
        hidden = hidden + gate.to(hidden.dtype)[:, :, None] * self.delta[:batch, None, :]
        return replace_hidden(output, hidden)
