"""The one position policy: unit rules, then which tokens steering really touches in HF generate.

The generation tests record, at every forward, the difference between the steered layer's output
after and before persona_lens' hook (two plain forward hooks on the same HF decoder layer, one run
before ours and one after), and compare the set of touched (row, token) positions with the
definition written out here: ``response`` = last prompt token + every generated token, ``prompt``
= prompt tokens only (never a generated token), ``all`` = every real token.
"""

from __future__ import annotations

import pytest
import torch

import persona_lens as pl
from persona_lens.errors import VectorShapeError
from persona_lens.models import decoder_layers, hf_causal_lm
from persona_lens.native import native
from persona_lens.positions import PromptTracker, steer_mask, token_index, window

LAYER = 1
# The position tests add a large all-ones delta so every touched token shows; its strength warning
# is tested on its own below.
pytestmark = pytest.mark.filterwarnings("ignore::persona_lens.steering.SteeringStrengthWarning")


# --------------------------------------------------------------------------- unit rules


def test_token_index_ignores_padding_on_either_side():
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert token_index(left).tolist() == [[-1, -1, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert token_index(right).tolist() == [[0, 1, 2, -1, -1], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("positions, expected", [
    ("response", [[0, 1, 1, 1, 0], [0, 1, 1, 1, 1]]),
    ("prompt", [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]]),
    ("all", [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
])
def test_steer_mask_full_sequence(positions, expected):
    # row 0: prompt of 2, response of 2, one right pad; row 1: prompt of 2, response of 3
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert steer_mask(positions, mask, [2, 2]).int().tolist() == expected


def test_window_values():
    n = torch.tensor([3, 5])
    lo, hi = window("response", n)
    assert lo.tolist() == [2, 4] and (hi > 10**9).all()
    lo, hi = window("prompt", n)
    assert lo.tolist() == [0, 0] and hi.tolist() == [3, 5]


def test_tracker_decoding_with_cache_then_new_prompt():
    t = PromptTracker("prompt")
    am = torch.tensor([[0, 1, 1, 1]])  # left padded prompt of 3
    assert t.mask(4, attention_mask=am).int().tolist() == [[0, 1, 1, 1]]
    am = torch.tensor([[0, 1, 1, 1, 1]])  # one decoding step
    assert t.mask(1, attention_mask=am).int().tolist() == [[0]]
    # a new 2-token turn on top of the cache: a new prompt, steered as a whole
    am = torch.tensor([[0, 1, 1, 1, 1, 1, 1]])
    assert t.mask(2, attention_mask=am).int().tolist() == [[1, 1]]


def test_tracker_without_cache_recognises_decoding_by_prefix():
    t = PromptTracker("response")
    ids = torch.tensor([[5, 6, 7]])
    assert t.mask(3, attention_mask=torch.ones(1, 3), input_ids=ids).int().tolist() == [[0, 0, 1]]
    ids2 = torch.tensor([[5, 6, 7, 8]])
    assert t.mask(4, attention_mask=torch.ones(1, 4), input_ids=ids2).int().tolist() == [[0, 0, 1, 1]]
    other = torch.tensor([[9, 9, 9, 9, 9]])  # not a continuation: a new prompt of 5
    assert t.mask(5, attention_mask=torch.ones(1, 5), input_ids=other).int().tolist() == [[0, 0, 0, 0, 1]]


# --------------------------------------------------------------------------- real generation


class _Recorder:
    """Per forward: the [batch, q] positions whose layer output persona_lens' hook changed."""

    def __init__(self, layer_module):
        self.before: list[torch.Tensor] = []
        self.touched: list[torch.Tensor] = []
        self.handles = [
            layer_module.register_forward_hook(self._pre, prepend=True),  # registered first: runs after ours
            layer_module.register_forward_hook(self._post),
        ]

    def _pre(self, _m, _a, out):
        self.before.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    def _post(self, _m, _a, out):
        after = (out[0] if isinstance(out, tuple) else out).detach()
        self.touched.append((after - self.before[len(self.touched)]).abs().amax(-1) > 0)

    def close(self):
        for h in self.handles:
            h.remove()


def _steered_generate(model, delta, positions, gen_kwargs):
    layer = decoder_layers(model)[LAYER]
    steering = pl.Steering({LAYER: delta}, positions)
    with steering.apply(model):
        rec = _Recorder(layer)  # after steering's prepended hook: wraps it on both sides
        try:
            with torch.no_grad():
                hf_causal_lm(model).generate(**gen_kwargs)
        finally:
            rec.close()
    return rec.touched


def _delta(model):
    width = hf_causal_lm(model).config.hidden_size
    return torch.ones(width)


def _gen_kwargs(model, texts, padding_side, **extra):
    tok = model.tokenizer
    old = tok.padding_side
    tok.padding_side = padding_side
    try:
        enc = tok(texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old
    pad = tok.pad_token_id
    return dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=3,
                min_new_tokens=3, do_sample=False, pad_token_id=pad, **extra), enc["attention_mask"]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("positions", ["response", "prompt", "all"])
def test_hf_generate_steers_the_right_tokens(tiny_model, padding_side, positions):
    kwargs, am = _gen_kwargs(tiny_model, ["a b c d e f", "a b"], padding_side)
    touched = _steered_generate(tiny_model, _delta(tiny_model), positions, kwargs)
    assert len(touched) == 3  # prefill + 2 decoding steps (the 3rd token needs no forward)
    prefill = touched[0]
    real = am.bool()
    last = torch.zeros_like(real)
    for b in range(real.shape[0]):
        last[b, real[b].nonzero().max()] = True
    expected = {"response": last, "prompt": real, "all": real}[positions]
    assert torch.equal(prefill, expected), (prefill.int().tolist(), expected.int().tolist())
    for step in touched[1:]:  # one generated token per row and forward
        assert step.shape[1] == 1
        assert bool(step.all()) == (positions != "prompt") and bool(step.any()) == (positions != "prompt")


@pytest.mark.parametrize("positions", ["response", "prompt"])
def test_hf_generate_without_cache(tiny_model, positions):
    kwargs, am = _gen_kwargs(tiny_model, ["a b c d e f", "a b"], "left", use_cache=False)
    touched = _steered_generate(tiny_model, _delta(tiny_model), positions, kwargs)
    n_prompt = am.sum(1)
    for step, t in enumerate(touched):  # every forward runs the whole sequence again
        width = am.shape[1] + step
        pad = am.shape[1] - n_prompt  # left padding per row
        for b in range(2):
            index = torch.arange(width) - pad[b]
            if positions == "response":
                expected = index >= n_prompt[b] - 1
            else:
                expected = (index >= 0) & (index < n_prompt[b])
            assert t[b].tolist() == expected.tolist(), (step, b)


@pytest.mark.parametrize("positions", ["response", "prompt"])
def test_continuing_from_a_non_empty_cache(tiny_model, positions):
    hf = hf_causal_lm(tiny_model)
    tok = tiny_model.tokenizer
    first = tok(["a b c"], return_tensors="pt")["input_ids"]
    with torch.no_grad(), native(tiny_model):  # turn one, unsteered, fills the cache
        cache = hf(input_ids=first, use_cache=True).past_key_values
    assert cache.get_seq_length() == first.shape[1]
    second = tok(["d e f g"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    full = torch.cat([first, second], dim=1)
    kwargs = dict(input_ids=full, attention_mask=torch.ones_like(full), past_key_values=cache,
                  max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    touched = _steered_generate(tiny_model, _delta(tiny_model), positions, kwargs)
    new = second.shape[1]
    assert touched[0].shape == (1, new)  # only the uncached turn-two tokens are run
    if positions == "prompt":
        assert bool(touched[0].all()) and not any(bool(t.any()) for t in touched[1:])
    else:
        assert touched[0].int().tolist() == [[0] * (new - 1) + [1]] and all(bool(t.all()) for t in touched[1:])


def test_load_model_pads_left(tiny_model):
    assert tiny_model.tokenizer.padding_side == "left"


def test_per_row_alpha_count_must_match():
    v = pl.PersonaVector(torch.randn(3, 8), {"persona": "x"})
    with pytest.raises(VectorShapeError, match="alpha"):
        pl.Steering.per_row([v, v, None], 1, alphas=[1.0, 2.0])


def test_seeded_sampling_leaves_the_global_rng_untouched(tiny_model):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = pl.generate(tiny_model, ["a b", "c d"], max_new_tokens=4, temperature=1.0, seed=7, progress=False)
    assert torch.equal(torch.rand(3), expected)  # the caller's stream continues as if untouched
    b = pl.generate(tiny_model, ["a b", "c d"], max_new_tokens=4, temperature=1.0, seed=7, progress=False)
    assert a == b


def test_too_strong_steering_warns_once_and_a_mild_one_does_not(tiny_model):
    import warnings

    from persona_lens.steering import SteeringStrengthWarning

    v = torch.randn(hf_causal_lm(tiny_model).config.hidden_size, generator=torch.Generator().manual_seed(0))
    v = v / v.norm()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pl.generate(tiny_model, ["a b c"], max_new_tokens=3, progress=False,
                    steering=pl.Steering.from_vector(v, LAYER, 1e-4, "all"))
    assert not [w for w in caught if issubclass(w.category, SteeringStrengthWarning)]
    with pytest.warns(SteeringStrengthWarning, match=r"alpha\*\|\|v\|\|/\|\|h\|\|") as record:
        pl.generate(tiny_model, ["a b c"], max_new_tokens=3, progress=False,
                    steering=pl.Steering.from_vector(v, LAYER, 1e5, "all"))
    assert len([w for w in record if issubclass(w.category, SteeringStrengthWarning)]) == 1


def test_context_window_is_checked_before_generating(tiny_model):
    from persona_lens.errors import ContextLengthError

    with pytest.raises(ContextLengthError, match="context window of 1024"):
        pl.generate(tiny_model, ["a b c"], max_new_tokens=5000, progress=False)


def test_capture_refuses_a_row_beyond_the_context_window(tiny_model):
    from persona_lens.errors import ContextLengthError

    with pytest.raises(ContextLengthError, match="prompt \\+ response 1 has"):
        pl.capture(tiny_model, ["a", "b"], ["c", "x " * 600], layers=[0], progress=False)
