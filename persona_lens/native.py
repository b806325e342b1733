"""Plain-transformers speed inside a TransformerLens bridge: the one TL workaround, isolated here.

``TransformerBridge`` (TransformerLens 4.3) replaces every HF submodule of the model it wraps
with a hooked wrapper, in place, and forces eager attention; TL offers no public way to run the
wrapped HF model without those wrappers. :func:`native` puts the original modules back for the
duration of a block (found through each wrapper's public ``original_component``) and restores
SDPA attention, so generation and capture cost what plain HF costs. persona_lens' own hooks sit
on the original decoder layers, so they fire the same in both modes.
``tests/test_native.py`` fails when TL changes this structure (then this module must change).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .models import hf_causal_lm

__all__ = ["native"]


def _bridge_swaps(root: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module, torch.nn.Module]]:
    """(parent, child name, bridge component, original module), outermost first."""
    swaps = []
    stack = [root]
    while stack:
        parent = stack.pop()
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            original = getattr(child, "original_component", None)
            if original is not None and original is not child:
                swaps.append((parent, name, child, original))
                stack.append(original)
            else:
                stack.append(child)
    return swaps


@contextlib.contextmanager
def native(model, attn_implementation: str | None = "sdpa") -> Iterator[Any]:
    """Run the HF model without the bridge's wrappers, at plain-transformers speed.

    ``TransformerBridge`` replaces every HF submodule in place with a hooked wrapper and forces
    eager attention. Inside this context the original modules are put back (and SDPA attention
    restored) so generation and capture cost what plain HF costs; persona_lens' hooks sit on the
    original decoder layers, whose outputs are ``blocks.{l}.hook_resid_post`` (tested). Yields the
    HF causal LM. Re-entrant: a nested call is a no-op.
    """
    hf = hf_causal_lm(model)
    if getattr(hf, "_persona_lens_native", False) or hf is model:
        yield hf
        return
    swaps = _bridge_swaps(hf)
    config = hf.config
    old_impl = getattr(config, "_attn_implementation", None)
    try:
        for parent, name, _bridge, original in swaps:
            parent._modules[name] = original
        if attn_implementation and old_impl != attn_implementation:
            _set_attn(hf, attn_implementation)
        hf._persona_lens_native = True
        yield hf
    finally:
        hf._persona_lens_native = False
        for parent, name, bridge, _original in reversed(swaps):
            parent._modules[name] = bridge
        if attn_implementation and old_impl and old_impl != attn_implementation:
            _set_attn(hf, old_impl)


def _set_attn(hf: torch.nn.Module, impl: str) -> None:
    setter = getattr(hf, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter(impl)
            return
        except Exception:  # some architectures reject sdpa: keep what works
            pass
    for module in hf.modules():
        cfg = getattr(module, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = impl

