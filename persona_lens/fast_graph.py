"""The pieces of the compiled steered path that live inside the graph (see :mod:`persona_lens.fast`).

``SteeredLayer`` wraps a decoder layer and applies the steering operators' one formula to its
output, the gate taken from the position ids by the one position policy
(:func:`persona_lens.positions.in_window`) against per-row thresholds in the shared
``GateState``; ``own_code`` gives each generator its own ``torch.compile`` graph cache;
``static_cache`` is the compile-friendly KV cache.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn

from .hooks import hidden_of, replace_hidden
from .operators import OPEN, update
from .positions import UNBOUNDED, in_window

__all__ = ["GateState", "SteeredLayer", "own_code", "static_cache"]


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
    """A decoder layer followed by the steering operators' one formula (:func:`persona_lens.operators.update`)::

        output + gate * (delta + (clamp(h . unit, lo, hi) - h . unit) * unit)

    with per-row float32 buffers ``delta``/``unit`` (``[max_batch, d_model]``) and ``bounds``
    (``[max_batch, 2]``: lo, hi). A plain add has ``unit = 0`` and open bounds, so the projection
    term is exactly zero: add, ablate and cap rows share one graph."""

    delta: Tensor
    unit: Tensor
    bounds: Tensor

    def __init__(self, layer: nn.Module, state: GateState, max_batch: int, width: int, device: torch.device):
        super().__init__()
        self.layer = layer
        self.state = state
        for name in ("delta", "unit"):
            self.register_buffer(name, torch.zeros(max_batch, width, dtype=torch.float32, device=device),
                                 persistent=False)
        self.register_buffer("bounds", torch.tensor([OPEN] * max_batch, dtype=torch.float32, device=device),
                             persistent=False)

    def clear(self) -> None:
        """No steering on any row: zero delta and unit, open bounds."""
        self.delta.zero_()
        self.unit.zero_()
        self.bounds[:, 0].fill_(OPEN[0])
        self.bounds[:, 1].fill_(OPEN[1])

    def forward(self, *args, **kwargs):
        output = self.layer(*args, **kwargs)
        hidden = hidden_of(output)
        pos = kwargs.get("position_ids")
        if pos is None:
            raise RuntimeError("CompiledSteeredGenerator: the decoder layer was called without position_ids")
        batch = hidden.shape[0]
        pos = pos.expand(batch, hidden.shape[1])
        gate = in_window(pos, self.state.lo[:batch], self.state.hi[:batch])
        change = update(hidden, self.delta[:batch, None, :], self.unit[:batch, None, :],
                        self.bounds[:batch, None, 0], self.bounds[:batch, None, 1])
        hidden = hidden + gate.to(hidden.dtype)[:, :, None] * change
        return replace_hidden(output, hidden)


def static_cache(config, max_cache_len: int):
    """A ``StaticCache`` whose sliding-window layers are full-length static layers.

    transformers' ``StaticSlidingWindowLayer`` tracks its length in a Python int that the
    mask code reads, so a compiled step would be recompiled at every token (Gemma 2/3,
    Mistral-style sliding windows). A full-length layer holds every position instead and the
    sliding window is applied by the mask alone (``create_sliding_window_causal_mask`` works
    on absolute cache indices), which is the same attention as HF's dynamic cache computes.
    """
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    cache.layers = [StaticLayer(max_cache_len=max_cache_len) if isinstance(layer, StaticSlidingWindowLayer)
                    else layer for layer in cache.layers]
    return cache
