"""The opt-in static-cache + torch.compile steered generation path (persona_lens.fast).

References are independent of the fast path: ``persona_lens.generation.generate_ids`` (plain HF
``generate``, dynamic cache) unsteered, and with the hook-based ``Steering`` for steered runs.
Each check runs with the decode step eager (``compile=False``: the same static-cache loop and
in-graph steering, no compiler) and compiled (``torch.compile``, inductor on CPU). One compiled
generator is shared by the module (compiling SmolLM2's decode step takes ~1-2 minutes on 2 CPU
cores); generations are short (12 tokens, 3 prompts in a 4-row static batch, so the padding row
is exercised too).
"""

from __future__ import annotations

import pytest
import torch
from test_steering import PROMPTS, V1, V2  # the same prompts and unit directions as the hook-path tests

from persona_lens.errors import LayerOutOfRangeError, VectorShapeError
from persona_lens.fast import CompiledSteeredGenerator, FastPathLimitError
from persona_lens.generation import generate_ids
from persona_lens.models import decoder, decoder_layers
from persona_lens.native import native
from persona_lens.steering import Steering

pytestmark = pytest.mark.slow

N_NEW = 12
LAYER = 10
ALPHA = 40.0
D = 576
MAX_BATCH = 4
CACHE = 64


def _per_row() -> Steering:
    """One vector per row at LAYER (row 1 unsteered), plus one shared vector at layer 20."""
    rows = torch.stack([ALPHA * V1, torch.zeros(D), 30.0 * V2])
    return Steering({LAYER: rows, 20: 10.0 * V2}, "response")


STEERINGS = {
    "response": lambda: Steering.from_vector(V1, LAYER, ALPHA, "response"),
    "prompt": lambda: Steering.from_vector(V1, LAYER, ALPHA, "prompt"),
    "all": lambda: Steering.from_vector(V1, LAYER, ALPHA, "all"),
    "per_row": _per_row,
}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread for this module: on a small shared CPU two OpenMP threads competing with
    other jobs slow these short generations (and the compiled kernels) down by an order of magnitude."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ids(gens):
    return [g.response_ids for g in gens]


@pytest.fixture(scope="module")
def reference(default_model):
    """generate_ids (HF generate + hooks) greedy outputs: unsteered and each steering."""
    out = {"unsteered": generate_ids(default_model, PROMPTS, max_new_tokens=N_NEW, progress=False)}
    for name, make in STEERINGS.items():
        out[name] = generate_ids(default_model, PROMPTS, max_new_tokens=N_NEW, steering=make(), progress=False)
    return out


@pytest.fixture(scope="module")
def eager_gen(default_model):
    with CompiledSteeredGenerator(default_model, max_batch_size=MAX_BATCH, max_cache_len=CACHE, compile=False) as gen:
        yield gen


@pytest.fixture(scope="module")
def compiled_gen(default_model):
    with CompiledSteeredGenerator(default_model, max_batch_size=MAX_BATCH, max_cache_len=CACHE, compile=True) as gen:
        yield gen


@pytest.fixture(params=["eager", "compiled"])
def gen(request):
    return request.getfixturevalue(f"{request.param}_gen")


# --------------------------------------------------------------------------- parity


def test_unsteered_equals_generate_ids(gen, reference):
    ours = gen.generate_ids(PROMPTS, max_new_tokens=N_NEW)
    assert _ids(ours) == _ids(reference["unsteered"])
    assert [g.text for g in ours] == [g.text for g in reference["unsteered"]]
    assert [g.prompt_ids for g in ours] == [g.prompt_ids for g in reference["unsteered"]]
    assert all(len(g.response_ids) >= 8 for g in ours)


@pytest.mark.parametrize("name", list(STEERINGS))
def test_steered_equals_hook_path(gen, reference, name):
    assert _ids(reference[name]) != _ids(reference["unsteered"])  # the steering does something
    ours = gen.generate_ids(PROMPTS, max_new_tokens=N_NEW, steering=STEERINGS[name]())
    assert _ids(ours) == _ids(reference[name])


def test_alpha_zero_is_exactly_unsteered(gen):
    plain = gen.generate_ids(PROMPTS, max_new_tokens=N_NEW)
    zero = gen.generate_ids(PROMPTS, max_new_tokens=N_NEW, steering=Steering.from_vector(V1, LAYER, 0.0))
    assert _ids(zero) == _ids(plain)


def test_sampling_matches_generate_ids(default_model, eager_gen):
    kw = dict(max_new_tokens=N_NEW, temperature=1.0, top_p=0.9, seed=7)
    ref = generate_ids(default_model, PROMPTS, progress=False, **kw)
    assert _ids(eager_gen.generate_ids(PROMPTS, **kw)) == _ids(ref)
    steering = STEERINGS["response"]()
    ref = generate_ids(default_model, PROMPTS, progress=False, steering=steering, **kw)
    assert _ids(eager_gen.generate_ids(PROMPTS, steering=steering, **kw)) == _ids(ref)


def test_generation_config_repetition_penalty(default_model, eager_gen, monkeypatch):
    """HF generate (hence generate_ids) applies the model's generation_config; so does the fast path."""
    from persona_lens.models import hf_causal_lm

    plain = eager_gen.generate_ids(PROMPTS, max_new_tokens=N_NEW)
    monkeypatch.setattr(hf_causal_lm(default_model).generation_config, "repetition_penalty", 1.5)
    ref = generate_ids(default_model, PROMPTS, max_new_tokens=N_NEW, progress=False)
    assert _ids(ref) != _ids(plain)
    assert _ids(eager_gen.generate_ids(PROMPTS, max_new_tokens=N_NEW)) == _ids(ref)


def test_more_prompts_than_max_batch_are_batched(default_model, eager_gen):
    """Prompts beyond max_batch_size run in batches, per-row steering split with them, seeds per
    batch: the same samples as generate_ids with batch_size=max_batch_size."""
    prompts = PROMPTS * 2
    alphas = [4.0 * (i % 3) for i in range(len(prompts))]
    steering = Steering.from_vector(V1, LAYER, alphas)
    kw = dict(max_new_tokens=N_NEW, temperature=1.0, top_p=0.9, seed=3, steering=steering)
    ref = generate_ids(default_model, prompts, batch_size=MAX_BATCH, progress=False, **kw)
    assert len(prompts) > MAX_BATCH
    assert _ids(eager_gen.generate_ids(prompts, **kw)) == _ids(ref)


def test_compiled_sampling_is_seeded(compiled_gen):
    kw = dict(max_new_tokens=N_NEW, temperature=1.0, seed=3)
    a, b = compiled_gen.generate_ids(PROMPTS, **kw), compiled_gen.generate_ids(PROMPTS, **kw)
    assert _ids(a) == _ids(b)
    assert _ids(compiled_gen.generate_ids(PROMPTS, **{**kw, "seed": 4})) != _ids(a)


def test_single_prompt_and_min_new_tokens(eager_gen, reference):
    one = eager_gen.generate_ids(PROMPTS[1:2], max_new_tokens=N_NEW)
    assert _ids(one) == _ids(reference["unsteered"][1:2])
    forced = eager_gen.generate_ids(PROMPTS, max_new_tokens=N_NEW, min_new_tokens=N_NEW)
    assert all(len(g.response_ids) == N_NEW for g in forced)


# --------------------------------------------------------------------------- no recompilation


def test_changing_steering_does_not_recompile(compiled_gen):
    import torch._dynamo

    compiled_gen.generate_ids(PROMPTS, max_new_tokens=4)  # compiled (once) by now
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    variants = [
        None,
        Steering.from_vector(V2, 3, 12.5, "all"),
        Steering.from_vector(V1, [5, 25], [1.0, -3.0, 2.0], "prompt"),  # per-row alphas, two layers
        _per_row(),
        Steering.from_vector(V1, LAYER, 0.0),
        Steering.from_vector(V1, LAYER, operator="ablate"),  # operators are buffers too: same graph
        Steering.from_vector(V2, [3, 20], positions="all", operator="cap", cap=(-1.0, None)),
        Steering.from_vector(V1, LAYER, operator="ablate").combine(Steering.from_vector(V2, LAYER, 5.0)),
    ]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for steering in variants:
            compiled_gen.generate_ids(PROMPTS[:2] if steering is None else PROMPTS, max_new_tokens=5,
                                      steering=steering)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


# --------------------------------------------------------------------------- model left untouched


def test_model_left_untouched(default_model, eager_gen):
    before = [id(m) for m in decoder_layers(default_model)]
    eager_gen.generate_ids(PROMPTS[:1], max_new_tokens=2, steering=STEERINGS["all"]())
    assert [id(m) for m in decoder_layers(default_model)] == before
    with native(default_model):
        assert [id(m) for m in decoder(default_model).layers] == before
    with CompiledSteeredGenerator(default_model, max_batch_size=1, max_cache_len=64, compile=False) as g:
        g.generate_ids(PROMPTS[:1], max_new_tokens=2)
    with pytest.raises(RuntimeError, match="closed"):
        g.generate_ids(PROMPTS[:1], max_new_tokens=2)
    assert [id(m) for m in decoder_layers(default_model)] == before


# --------------------------------------------------------------------------- errors


def test_errors(default_model, eager_gen):
    with pytest.raises(FastPathLimitError, match="max_batch_size"):
        eager_gen.generate_from_ids([[1, 2]] * (MAX_BATCH + 1), max_new_tokens=2)
    with pytest.raises(FastPathLimitError, match="max_cache_len"):
        eager_gen.generate_ids(PROMPTS, max_new_tokens=CACHE)
    with pytest.raises(VectorShapeError, match="d_model"):
        eager_gen.generate_ids(PROMPTS, max_new_tokens=2, steering=Steering.from_vector(torch.ones(D + 1), LAYER))
    with pytest.raises(LayerOutOfRangeError):
        eager_gen.generate_ids(PROMPTS, max_new_tokens=2, steering=Steering.from_vector(V1, 30))
    with pytest.raises(VectorShapeError, match="rows"):
        eager_gen.generate_ids(PROMPTS[:2], max_new_tokens=2, steering=_per_row())
    with pytest.raises(LayerOutOfRangeError):
        CompiledSteeredGenerator(default_model, layers=[30], compile=False)
    with CompiledSteeredGenerator(default_model, max_batch_size=1, max_cache_len=64, layers=[2], compile=False) as g:
        with pytest.raises(LayerOutOfRangeError, match="not steerable"):
            g.generate_ids(PROMPTS[:1], max_new_tokens=2, steering=Steering.from_vector(V1, 3))
        assert _ids(g.generate_ids(PROMPTS[:1], max_new_tokens=4, steering=Steering.from_vector(V1, 2, 0.0))) \
            == _ids(g.generate_ids(PROMPTS[:1], max_new_tokens=4))
