"""The real-engine tier: a real vLLM engine (``.venv-vllm``, ``scripts/setup_vllm.sh``) on the
embedded model, fp32 and greedy, checked token for token against the HF path
(:func:`persona_lens.generation.generate_ids`) and, for captures, against
:func:`persona_lens.activations.capture`.

Run: ``OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -q -m vllm
tests/test_vllm_engine.py``. Skipped where vLLM is not importable (the main ``.venv``).

The engine runs with ``max_num_batched_tokens=64`` (every batch here is prefilled in chunks, and
the long prompt is split mid-prompt) and ``block_size=32`` (the CPU minimum) with prefix caching on (the prompts
fill several blocks, so a cached prefix could be reused across requests).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (scripts/setup_vllm.sh)"),
]

from persona_lens.activations import capture as hf_capture  # noqa: E402
from persona_lens.generation import generate_ids  # noqa: E402
from persona_lens.interop.vllm import VLLMBackend  # noqa: E402
from persona_lens.interop.vllm_worker import KEY, request_payload  # noqa: E402
from persona_lens.models import load_model  # noqa: E402
from persona_lens.steering import Steering  # noqa: E402

NEW_TOKENS = 16
PROMPTS = [
    "What is the capital of France?",
    "Tell me a joke about computers.",
    "Describe the ocean in one sentence.",
    "Hi!",
    "Give me three tips for sleeping better, and explain briefly why each one works for most people "
    "who have trouble falling asleep at night after a long and stressful day at work, "
    "especially when they must wake up early the next morning.",
    "What should I cook tonight?",
    "Why is the sky blue?",
    "Write a haiku about autumn.",
]
LAYER = 10
NORM = 12.0  # steering strength: large enough to change every greedy continuation here


@pytest.fixture(scope="module")
def engine():
    backend = VLLMBackend("default", dtype="float32", max_model_len=512, max_num_batched_tokens=64, block_size=32,
                          enable_prefix_caching=True)
    _ = backend.llm  # boot once for the module
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def hf():
    return load_model("default", dtype=torch.float32)


def direction(seed: int, d: int) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * NORM


def hf_ids(hf, prompts, steering=None):
    return [g.response_ids for g in generate_ids(hf, prompts, max_new_tokens=NEW_TOKENS, steering=steering,
                                                 progress=False)]


def vllm_ids(engine, prompts, steering=None):
    return [g.response_ids for g in engine.generate_ids(prompts, steering, max_new_tokens=NEW_TOKENS)]


def test_unsteered_matches_hf(engine, hf):
    assert vllm_ids(engine, PROMPTS) == hf_ids(hf, PROMPTS)


@pytest.mark.parametrize("positions", ["response", "prompt", "all"])
def test_steered_matches_hf(engine, hf, positions):
    v = direction(0, engine.d_model)
    steering = Steering({LAYER: v, 3: -0.5 * v}, positions)
    got = vllm_ids(engine, PROMPTS, steering)
    assert got == hf_ids(hf, PROMPTS, steering)
    assert got != hf_ids(hf, PROMPTS)  # the steering is visible: this test can fail


def test_eight_personas_in_one_engine_call(engine, hf, monkeypatch):
    vectors = [direction(100 + r, engine.d_model) for r in range(len(PROMPTS))]
    steering = Steering({LAYER: torch.stack(vectors)}, "response")  # Steering.per_row's [batch, d] form
    calls = []
    generate = engine.llm.generate
    monkeypatch.setattr(engine.llm, "generate", lambda *a, **k: calls.append(len(a[0])) or generate(*a, **k))
    got = vllm_ids(engine, PROMPTS, steering)
    assert calls == [len(PROMPTS)]  # one engine call, one continuous batch
    solo = [hf_ids(hf, [p], Steering({LAYER: v}, "response"))[0] for p, v in zip(PROMPTS, vectors)]
    assert got == solo
    assert len({tuple(ids) for ids in got}) > 1


def test_rows_with_their_own_layers_alpha_and_positions(engine, hf):
    """Each row its own Steering (layers, strength, positions) or none, in one call."""
    d = engine.d_model
    rows = [Steering({LAYER: direction(1, d)}, "response"), None,
            Steering({2: direction(2, d), 20: 0.5 * direction(3, d)}, "prompt"),
            Steering({LAYER: 0.0 * direction(4, d)}, "all"),  # alpha 0: exactly unsteered
            Steering({7: direction(5, d)}, "all"), Steering({LAYER: -direction(1, d)}, "response"),
            None, Steering({29: direction(6, d)}, "prompt")]
    got = vllm_ids(engine, PROMPTS, rows)
    solo = [hf_ids(hf, [p], s)[0] for p, s in zip(PROMPTS, rows)]
    assert got == solo


def test_prefix_cache_is_not_shared_across_steering(engine, hf):
    """A prompt steered at its prompt tokens writes different KV; the same prompt unsteered
    afterwards must not reuse it (the steering fingerprint salts the cache key)."""
    prompts = PROMPTS[4:5] * 2
    steering = Steering({LAYER: direction(7, engine.d_model)}, "prompt")
    vllm_ids(engine, prompts, steering)
    assert vllm_ids(engine, prompts) == hf_ids(hf, prompts)


def test_unsalted_steering_would_poison_the_prefix_cache(engine, hf):
    """The salt is load-bearing: the same steered request *without* it leaves blocks that a
    later unsteered request reuses, and its output changes (so the test above can fail)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from persona_lens.chat import as_messages, prompt_ids

    prompt = "In a friendly tone: " + PROMPTS[4]  # shares no cached block with the other tests
    ids = prompt_ids(engine.tokenizer, as_messages(prompt))
    payload = request_payload({LAYER: 4 * direction(8, engine.d_model)}, "prompt")
    engine.llm.generate([TokensPrompt(prompt_token_ids=ids)],
                        SamplingParams(max_tokens=1, temperature=0.0, extra_args={KEY: payload}), use_tqdm=False)
    out = engine.llm.generate([TokensPrompt(prompt_token_ids=ids)],
                              SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0), use_tqdm=False)[0]
    assert out.num_cached_tokens >= 32  # the unsteered request reused the steered prompt's blocks
    assert list(out.outputs[0].token_ids) != hf_ids(hf, [prompt])[0]


CAPTURE_RTOL = 1e-4  # max |vLLM - HF| / max |HF| per reduction (fp32; measured <= 2e-6 over all 30 layers)


@pytest.mark.parametrize("steered", [False, True])
def test_capture_matches_hf(engine, hf, steered):
    prompts = PROMPTS[:4]
    responses = ["Paris is the capital.", "Why did the computer sneeze? It had a virus.",
                 "Vast, blue and deep.", "Hello! How can I help?"]
    layers = [0, LAYER, engine.n_layers - 1]
    steering = Steering({LAYER: direction(9, engine.d_model)}, "response") if steered else None
    got = engine.capture(prompts, responses, layers=layers, steering=steering)
    want = hf_capture(hf, prompts, responses, layers=layers, steering=steering, progress=False)
    for reduction in ("response_mean", "last_prompt", "prompt_mean"):
        err = (got[reduction] - want[reduction]).abs().max() / want[reduction].abs().max()
        assert err < CAPTURE_RTOL, (reduction, float(err))


def test_seeded_sampling_is_reproducible_and_rows_differ(engine):
    prompts = [PROMPTS[1]] * 2  # two samples of one question

    def sample():
        return [g.response_ids for g in engine.generate_ids(prompts, max_new_tokens=NEW_TOKENS, temperature=1.0,
                                                            seed=3)]

    first = sample()
    assert first == sample()
    assert first[0] != first[1]


# --------------------------------------------------------------------------- operators: ablate and cap


@pytest.fixture(scope="module")
def used_direction(hf):
    """A direction SmolLM2's stream really uses at LAYER (the mean of a few prompts' tokens there):
    ablating or capping a random direction would change too little to show."""
    from persona_lens.native import native

    enc = hf.tokenizer(PROMPTS[:3], return_tensors="pt", padding=True)
    with torch.no_grad(), native(hf) as model:
        h = model(**enc, output_hidden_states=True).hidden_states[LAYER + 1]
    return h[enc["attention_mask"].bool()].mean(0)


@pytest.mark.parametrize("operator", ["ablate", "cap"])
def test_operator_matches_hf(engine, hf, used_direction, operator):
    """ablate (response) and cap (all; projection capped at 0 from above) on the engine equal the
    HF hook path token for token (fp32, greedy)."""
    steering = (Steering.from_vector(used_direction, LAYER, operator="ablate") if operator == "ablate" else
                Steering.from_vector(used_direction, LAYER, positions="all", operator="cap", cap=(None, 0.0)))
    want = hf_ids(hf, PROMPTS, steering)
    assert want != hf_ids(hf, PROMPTS)  # the operator is visible: this test can fail
    assert vllm_ids(engine, PROMPTS, steering) == want


def test_mixed_operators_across_requests_in_one_call(engine, hf, used_direction, monkeypatch):
    """add / ablate / cap / none rows, each with its own positions and layers, in one engine call:
    each row equals the HF hook path on that prompt alone."""
    d, v = engine.d_model, used_direction
    rows = [Steering.from_vector(v, LAYER, operator="ablate"), None,
            Steering.from_vector(v, LAYER, positions="all", operator="cap", cap=(None, 0.0)),
            Steering({LAYER: direction(1, d)}, "response"),
            Steering.from_vector(v, 7, positions="prompt", operator="ablate"),
            Steering.from_vector(v, LAYER, operator="cap", cap=(-1.0, 1.0)).combine(
                Steering.from_vector(v, 20, 0.05, "response")),
            None, Steering.from_vector(v, LAYER, positions="all", operator="cap", cap=(5.0, None))]
    calls = []
    generate = engine.llm.generate
    monkeypatch.setattr(engine.llm, "generate", lambda *a, **k: calls.append(len(a[0])) or generate(*a, **k))
    got = vllm_ids(engine, PROMPTS, rows)
    assert calls == [len(PROMPTS)]
    solo = [hf_ids(hf, [p], s)[0] for p, s in zip(PROMPTS, rows)]
    assert got == solo
    plain = hf_ids(hf, PROMPTS)
    assert sum(g != p for g, p in zip(got, plain)) >= 3  # the operators are visible


def test_per_row_operator_steering_matches_hf(engine, hf, used_direction):
    """A Steering.per_row mixing operators (the [batch, d] form) equals the batched HF hook path."""
    from persona_lens.vectors import PersonaVector

    pv = PersonaVector(used_direction.expand(engine.n_layers, -1).clone(), {"persona": "mean", "model_id": "smol"})
    ops = ["ablate", "add", "cap", "add", "ablate", "cap", "add", "ablate"]
    steering = Steering.per_row([pv] * len(PROMPTS), LAYER, [None, 0.05, None, 0.0, None, None, -0.05, None],
                                operators=ops, caps=(None, 0.0))
    assert vllm_ids(engine, PROMPTS, steering) == hf_ids(hf, PROMPTS, steering)
