"""The engine (capture, steering, generation) on tiny random-weight models: the fast tier.

Every result is checked against an independent reference: the same weights as a plain
transformers model that TransformerLens never wrapped (``persona_lens.testing.tiny_hf_model``),
with steering written out as a forward hook on HF decoder layer ``l`` and the position policy
written out token by token (Persona Vectors' definition: ``response`` = the last prompt token and
every generated token, ``prompt`` = the prompt tokens only, ``all`` = every token), decoded
greedily one row at a time without a KV cache or padding. Only the public API is exercised:
``pl.steer``, ``pl.generate_ids``, ``pl.capture``. Steering strength is half the residual
stream's norm at the layer: strong enough that each policy changes the text, mild enough not to
trip the too-strong warning.
"""

import contextlib
from dataclasses import dataclass

import pytest
import torch

import persona_lens as pl
from persona_lens.chat import as_messages, prompt_ids, response_ids
from persona_lens.errors import UnknownModelError
from persona_lens.models import d_model, model_id, n_layers
from persona_lens.testing import tiny_hf_model, tiny_model, tiny_vector
from persona_lens.vectors import PersonaVector

ARCHS = ("llama", "gemma3")
POSITIONS = ("all", "prompt", "response")
# Different lengths, so persona_lens pads; the chat-formatted ones are longer than Gemma's
# 16-token sliding window.
PROMPTS = ["Hello there, how are you today?", "Hi", "Name three colours of the rainbow."]
RESPONSES = ["Fine, thanks.", "Hello!", "Red, green and blue."]
LAYER, N_NEW = 1, 8


@dataclass
class Engine:
    model: object  # the persona_lens model
    plain: torch.nn.Module  # plain HF model with the same weights
    vector: PersonaVector  # unit directions

    def alpha(self, layer: int = LAYER) -> float:
        """Half the mean norm of HF decoder layer ``layer``'s output on the first prompt."""
        return 0.5 * float(_layer_outputs(self.plain)(_ids(self.model, PROMPTS[0]))[layer].norm(dim=-1).mean())


@pytest.fixture(scope="module", params=ARCHS)
def engine(request, tiny_model, tiny_gemma) -> Engine:
    model = tiny_model if request.param == "llama" else tiny_gemma
    return Engine(model, tiny_hf_model(request.param, chat_template=request.param == "llama"), tiny_vector(model, 1))


def _ids(model, prompt) -> list[int]:
    return prompt_ids(model.tokenizer, as_messages(prompt))


def _in_policy(positions: str, n_prompt: int, length: int) -> torch.Tensor:
    """``[length]`` bool: the tokens ``positions`` steers in a sequence whose prompt has ``n_prompt`` tokens."""
    index = torch.arange(length)
    if positions == "all":
        return torch.ones(length, dtype=torch.bool)
    if positions == "prompt":
        return index < n_prompt
    return index >= n_prompt - 1


class _AddAt:
    """The reference steering: a forward hook on HF decoder layer ``layer`` adding ``delta`` where ``mask``."""

    def __init__(self, plain, layer: int, delta: torch.Tensor):
        self.layer_module, self.delta, self.mask = plain.model.layers[layer], delta, None

    def hook(self, _module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + self.mask[None, :, None].to(hidden.dtype) * self.delta
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def __enter__(self):
        self.handle = self.layer_module.register_forward_hook(self.hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _reference_greedy(plain, ids: list[int], stops: set[int], positions: str, delta: torch.Tensor) -> list[int]:
    """Greedy decoding of one unpadded row without a KV cache, steered by the policy, cut at a stop id."""
    seq, out = list(ids), []
    with _AddAt(plain, LAYER, delta) as add, torch.no_grad():
        for _ in range(N_NEW):
            add.mask = _in_policy(positions, len(ids), len(seq))
            token = int(plain(torch.tensor([seq])).logits[0, -1].argmax())
            if token in stops:
                break
            out.append(token)
            seq.append(token)
    return out


def _generate(model, **steer) -> list[list[int]]:
    """persona_lens greedy generation of ``PROMPTS`` in one padded batch, steered when ``steer`` is given."""
    def run():
        return [g.response_ids for g in pl.generate_ids(model, PROMPTS, max_new_tokens=N_NEW, batch_size=len(PROMPTS),
                                                        progress=False)]

    if not steer:
        return run()
    with pl.steer(model, steer.pop("vector"), LAYER, **steer):
        return run()


# --------------------------------------------------------------------------- the model itself


def test_tiny_model_is_built_offline_without_touching_the_global_rng(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model = tiny_model("gemma3", n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, chat_template=False)
    assert torch.equal(torch.rand(3), expected)
    assert (n_layers(model), d_model(model)) == (2, 32)
    assert model_id(model) == "persona-lens/tiny-gemma3"
    text = "Any text, even ünïcode."
    assert model.tokenizer.decode(model.tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_unknown_architecture_is_a_named_error():
    with pytest.raises(UnknownModelError, match="gpt2"):
        tiny_model("gpt2")


def test_tiny_vector_is_seeded_and_unit(tiny_model):
    a, b, c = tiny_vector(tiny_model, 0), tiny_vector(tiny_model, 0), tiny_vector(tiny_model, 1)
    assert torch.equal(a.vectors, b.vectors) and not torch.equal(a.vectors, c.vectors)
    assert a.vectors.shape == (3, 64) and a.model_id == "persona-lens/tiny-llama"
    torch.testing.assert_close(a.norms(), torch.ones(3))


def test_same_weights_as_the_plain_reference(engine):
    model, plain = engine.model, engine.plain
    ids = torch.tensor([_ids(model, PROMPTS[0])])
    with torch.no_grad():
        expected = plain(ids).logits
        got = model(ids, return_type="logits")
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- layers and capture


def test_layer_l_is_hf_hidden_states_l_plus_1(engine):
    model, plain = engine.model, engine.plain
    ids = torch.tensor([_ids(model, PROMPTS[0])])
    n = n_layers(model)
    last_layer = []
    handle = plain.model.layers[n - 1].register_forward_hook(lambda _m, _a, out: last_layer.append(out))
    with torch.no_grad():
        hidden = plain(ids, output_hidden_states=True).hidden_states
        _, cache = model.run_with_cache(ids)
    handle.remove()
    for layer in range(n - 1):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], atol=1e-5, rtol=1e-5)
    # HF's last hidden state is taken after the final norm; layer n-1 is the last block's output.
    last = last_layer[0][0] if isinstance(last_layer[0], tuple) else last_layer[0]
    torch.testing.assert_close(cache[f"blocks.{n - 1}.hook_resid_post"], last, atol=1e-5, rtol=1e-5)


def _reference_reductions(model, plain, layer_outputs_of) -> dict[str, torch.Tensor]:
    """``[n, n_layers, d]`` reductions from plain HF, one unpadded row at a time."""
    out = {"response_mean": [], "last_prompt": [], "prompt_mean": []}
    for prompt, response in zip(PROMPTS, RESPONSES):
        p, r = _ids(model, prompt), response_ids(model.tokenizer, response)
        h = layer_outputs_of(p + r)  # [n_layers, pos, d]
        out["response_mean"].append(h[:, len(p):].mean(1))
        out["last_prompt"].append(h[:, len(p) - 1])
        out["prompt_mean"].append(h[:, :len(p)].mean(1))
    return {k: torch.stack(v) for k, v in out.items()}


def _layer_outputs(plain, steer_all: torch.Tensor | None = None):
    """Function: ids -> ``[n_layers, pos, d]``, the outputs of every HF decoder layer (with
    ``steer_all`` added at every position of LAYER)."""
    def run(ids: list[int]) -> torch.Tensor:
        outs = []
        with contextlib.ExitStack() as stack, torch.no_grad():
            if steer_all is not None:
                add = stack.enter_context(_AddAt(plain, LAYER, steer_all))
                add.mask = torch.ones(len(ids), dtype=torch.bool)
            for m in plain.model.layers:  # registered after _AddAt: they see the steered output
                handle = m.register_forward_hook(lambda _m, _a, o: outs.append(o[0] if isinstance(o, tuple) else o))
                stack.callback(handle.remove)
            plain(torch.tensor([ids]))
        return torch.cat(outs)

    return run


def test_capture_matches_plain_transformers(engine):
    model, plain = engine.model, engine.plain
    got = pl.capture(model, PROMPTS, RESPONSES, batch_size=2, progress=False)
    expected = _reference_reductions(model, plain, _layer_outputs(plain))
    assert got.layers == list(range(n_layers(model)))
    for reduction, want in expected.items():
        torch.testing.assert_close(got[reduction], want, atol=1e-5, rtol=1e-5)


def test_capture_under_steer_all_adds_alpha_v_at_the_layer(engine):
    model, plain, vector, alpha = engine.model, engine.plain, engine.vector, engine.alpha()
    delta = alpha * vector.vectors[LAYER]
    with pl.steer(model, vector, LAYER, alpha, positions="all"):
        got = pl.capture(model, PROMPTS, RESPONSES, batch_size=2, progress=False)
    expected = _reference_reductions(model, plain, _layer_outputs(plain, steer_all=delta))
    unsteered = pl.capture(model, PROMPTS, RESPONSES, batch_size=2, progress=False)
    for reduction, want in expected.items():
        torch.testing.assert_close(got[reduction], want, atol=1e-5, rtol=1e-5)
        # at the steered layer itself the shift is exactly alpha * v, for every reduction
        shift = got[reduction][:, LAYER] - unsteered[reduction][:, LAYER]
        torch.testing.assert_close(shift, delta.expand_as(shift), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- steering


@pytest.mark.parametrize("layer", [0, 2])
def test_steer_all_adds_alpha_v_at_resid_post_at_every_position(engine, layer):
    model, plain, vector, alpha = engine.model, engine.plain, engine.vector, engine.alpha(layer)
    ids = torch.tensor([_ids(model, PROMPTS[0])])
    delta = alpha * vector.vectors[layer]
    with torch.no_grad():
        _, before = model.run_with_cache(ids)
        with pl.steer(model, vector, layer, alpha, positions="all"):
            logits, after = model.run_with_cache(ids)
        add = _AddAt(plain, layer, delta)
        add.mask = torch.ones(ids.shape[1], dtype=torch.bool)
        with add:
            expected = plain(ids).logits
    name = f"blocks.{layer}.hook_resid_post"
    shift = after[name] - before[name]
    torch.testing.assert_close(shift, delta.expand_as(shift), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def references(engine):
    """Reference greedy responses for each policy (and unsteered), one list per prompt."""
    model, plain = engine.model, engine.plain
    stops = {model.tokenizer.eos_token_id}
    delta = engine.alpha() * engine.vector.vectors[LAYER]
    refs = {pos: [_reference_greedy(plain, _ids(model, p), stops, pos, delta) for p in PROMPTS] for pos in POSITIONS}
    refs[None] = [_reference_greedy(plain, _ids(model, p), stops, "all", 0 * delta) for p in PROMPTS]
    return refs


def test_the_policies_steer_differently(references):
    """Precondition of the policy test: on these models each policy yields different text."""
    outcomes = [references[p] for p in (None, *POSITIONS)]
    assert all(a != b for i, a in enumerate(outcomes) for b in outcomes[i + 1:])


@pytest.mark.parametrize("positions", POSITIONS)
def test_steered_generation_follows_the_position_policy(engine, references, positions):
    got = _generate(engine.model, vector=engine.vector, alpha=engine.alpha(), positions=positions)
    assert got == references[positions]


@pytest.mark.parametrize("positions", POSITIONS)
def test_alpha_zero_is_exactly_unsteered(engine, references, positions):
    model, vector = engine.model, engine.vector
    ids = torch.tensor([_ids(model, PROMPTS[0])])
    with torch.no_grad():
        plain_logits = model(ids, return_type="logits")
        with pl.steer(model, vector, LAYER, 0.0, positions=positions):
            zero_logits = model(ids, return_type="logits")
            captured = pl.capture(model, PROMPTS, RESPONSES, progress=False)
    assert torch.equal(zero_logits, plain_logits)
    unsteered = pl.capture(model, PROMPTS, RESPONSES, progress=False)
    assert all(torch.equal(captured[r], unsteered[r]) for r in unsteered.data)
    assert _generate(model, vector=vector, alpha=0.0, positions=positions) == _generate(model) == references[None]


def test_per_row_alpha_steers_each_row_by_its_own_alpha(engine, references):
    alpha = engine.alpha()
    got = _generate(engine.model, vector=engine.vector, alpha=[alpha, 0.0, alpha], positions="response")
    assert got == [references["response"][0], references[None][1], references["response"][2]]


def test_steering_ends_with_the_context(engine, references):
    with pl.steer(engine.model, engine.vector, LAYER, engine.alpha(), positions="all"):
        pass
    assert _generate(engine.model) == references[None]
