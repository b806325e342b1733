"""The one TransformerLens workaround (persona_lens.native) and the public hook surface.

If TransformerLens changes how ``TransformerBridge`` wraps the HF modules, the structural test
here fails first: ``persona_lens/native.py`` must then change with it.
"""

from __future__ import annotations

import pytest
import torch

import persona_lens as pl
from persona_lens.models import decoder_layers, hf_causal_lm
from persona_lens.native import native

LAYER = 1


def test_bridge_wraps_each_hf_layer_with_a_public_original_component(tiny_model):
    hf_layers = hf_causal_lm(tiny_model).model.layers
    for block, layer in zip(tiny_model.blocks, decoder_layers(tiny_model)):
        assert block.original_component is layer
        assert type(layer).__module__.startswith("transformers.models.")
    # TL swaps its wrappers into the HF model in place: this is what native() undoes.
    assert all(getattr(m, "original_component", None) is not None for m in hf_layers)


def test_native_restores_the_hf_modules_and_puts_the_wrappers_back(tiny_model):
    hf = hf_causal_lm(tiny_model)
    wrappers = list(hf.model.layers)
    with native(tiny_model) as inner:
        assert inner is hf
        assert list(hf.model.layers) == decoder_layers(tiny_model)
        assert not any(hasattr(m, "original_component") for m in hf.modules())
    assert list(hf.model.layers) == wrappers


def test_native_forward_equals_the_bridge_forward(tiny_model):
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        bridge_logits = tiny_model(ids)
        with native(tiny_model) as hf:
            native_logits = hf(input_ids=ids).logits
    torch.testing.assert_close(native_logits, bridge_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("positions", ["all", "response", "prompt"])
def test_tl_hooks_equal_steer_inside_run_with_cache(tiny_model, positions):
    """``Steering.tl_hooks`` in ``run_with_hooks`` == ``with steer(...)`` around ``run_with_cache``;
    and the steered ``blocks.{l}.hook_resid_post`` is the unsteered one plus alpha * v at the
    policy's positions (checked by hand here)."""
    v = torch.randn(tiny_model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    name = f"blocks.{LAYER}.hook_resid_post"
    steering = pl.Steering.from_vector(v, LAYER, 3.0, positions)
    with torch.no_grad():
        _, base = tiny_model.run_with_cache(ids, names_filter=lambda n: n == name)
        with steering.apply(tiny_model):
            logits_ctx, steered = tiny_model.run_with_cache(ids, names_filter=lambda n: n == name)
        logits_tl = tiny_model.run_with_hooks(ids, fwd_hooks=steering.tl_hooks())
    expected = base[name].clone()
    rows = {"all": slice(None), "prompt": slice(None), "response": slice(-1, None)}[positions]
    expected[:, rows] += 3.0 * v
    torch.testing.assert_close(steered[name], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_tl, logits_ctx, rtol=1e-5, atol=1e-5)
