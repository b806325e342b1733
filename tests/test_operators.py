"""Steering operators (add, ablate, cap) in every engine path, against hand-written references.

The reference is an independent plain-transformers model (``persona_lens.testing.tiny_hf_model``:
the same weights as ``tiny_model``, never wrapped) with a forward hook written here: it applies
the operator to the steered rows by the textbook formulas (``h - (h.u)u``; ``h + (clamp(h.u) -
h.u)u``; ``h + alpha v``), at a mask computed here from the attention mask (``all``/``prompt``:
every real token of a prompt forward; ``response``: the last real token). Ours: ``Steering.apply``
(HF hooks), ``Steering.tl_hooks``, ``CompiledSteeredGenerator`` and the vLLM worker's step plan
(on the stand-in runner of ``test_interop_vllm``). The slow tier repeats the exactness checks on
the embedded SmolLM2.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from test_interop_vllm import D as FLAT_D
from test_interop_vllm import FlatModel, Runner, Worker

from persona_lens import testing
from persona_lens.analysis.shift import preventative_steering
from persona_lens.cli import main
from persona_lens.cli.options import Backend
from persona_lens.errors import OperatorError, VectorShapeError
from persona_lens.fast import CompiledSteeredGenerator
from persona_lens.generation import generate_ids
from persona_lens.interop.vllm import steering_payload
from persona_lens.interop.vllm_worker import fingerprint, request_payload
from persona_lens.models import hf_causal_lm
from persona_lens.native import native
from persona_lens.steering import Steering
from persona_lens.vectors import PersonaVector

LAYER = 1
TEXTS = ["a b c d e f g", "hi", "the cat sat on"]
ATOL = 2e-5


# --------------------------------------------------------------------------- hand-written reference


def ref_ablate(u):
    return lambda x: x - (x @ u)[:, None] * u


def ref_cap(u, lo, hi):
    def op(x):
        p = x @ u
        lo_t = torch.full_like(p, -float("inf") if lo is None else lo)
        hi_t = torch.full_like(p, float("inf") if hi is None else hi)
        return x + (torch.minimum(torch.maximum(p, lo_t), hi_t) - p)[:, None] * u
    return op


def ref_add(delta):
    return lambda x: x + delta


def hand_mask(mask: torch.Tensor, positions: str) -> torch.Tensor:
    """Steered tokens of one prompt forward: every real token, or the last real one (response)."""
    real = mask.bool()
    if positions in ("all", "prompt"):
        return real
    out = torch.zeros_like(real)
    for b in range(real.shape[0]):
        out[b, real[b].nonzero()[-1]] = True
    return out


def reference_forward(hf, ids, mask, layer, row_ops, steered):
    """Plain HF forward; at ``layer``'s output row ``b``'s steered tokens go through ``row_ops[b]``."""
    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden.clone()
        for b, op in enumerate(row_ops):
            if op is not None and steered[b].any():
                new[b, steered[b]] = op(hidden[b, steered[b]])
        return (new, *output[1:]) if isinstance(output, tuple) else new

    # prepend: transformers records hidden_states with its own forward hook on the layer
    handle = hf.model.layers[layer].register_forward_hook(hook, prepend=True)
    try:
        with torch.no_grad():
            return hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    finally:
        handle.remove()


def ours_forward(model, ids, mask, steering):
    with torch.no_grad(), steering.apply(model), native(model) as hf:
        return hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)


def encode(model, texts, side):
    tok = model.tokenizer
    old, tok.padding_side = tok.padding_side, side
    try:
        enc = tok(texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture(scope="module")
def ref_hf():
    return testing.tiny_hf_model().eval()


@pytest.fixture(scope="module")
def unit_dir(tiny_model):
    """A direction the residual stream really uses: the mean of layer LAYER's real tokens (a random
    direction would carry too little of it for ablation to matter)."""
    ids, mask = encode(tiny_model, TEXTS, "left")
    h = _unsteered(tiny_model, ids, mask).hidden_states
    v = h[LAYER + 1][mask.bool()].mean(0)
    return v / v.norm()


def _unsteered(model, ids, mask):
    with torch.no_grad(), contextlib.ExitStack() as stack:
        hf = model if isinstance(model, torch.nn.Module) and not hasattr(model, "tokenizer") else \
            stack.enter_context(native(model))
        return hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)


# --------------------------------------------------------------------------- HF hook path


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("positions", ["all", "response"])
def test_ablate_matches_reference(tiny_model, ref_hf, unit_dir, side, positions):
    ids, mask = encode(tiny_model, TEXTS, side)
    steered = hand_mask(mask, positions)
    plain = _unsteered(tiny_model, ids, mask)
    torch.testing.assert_close(plain.logits, _unsteered(ref_hf, ids, mask).logits)  # same weights
    ours = ours_forward(tiny_model, ids, mask, Steering.from_vector(3.0 * unit_dir, LAYER, positions=positions,
                                                                     operator="ablate"))
    ref = reference_forward(ref_hf, ids, mask, LAYER, [ref_ablate(unit_dir)] * len(TEXTS), steered)
    h = ours.hidden_states[LAYER + 1]
    torch.testing.assert_close(h, ref.hidden_states[LAYER + 1], rtol=0, atol=ATOL)
    torch.testing.assert_close(ours.logits, ref.logits, rtol=0, atol=ATOL)
    before = plain.hidden_states[LAYER + 1] @ unit_dir
    assert before[steered].abs().min() > 0.05  # the direction was there...
    assert (h @ unit_dir)[steered].abs().max() < 1e-4  # ...and is gone where steered
    assert torch.equal(h[~steered], plain.hidden_states[LAYER + 1][~steered])  # untouched elsewhere


@pytest.mark.parametrize("sides", ["both", "upper", "lower"])
def test_cap_matches_reference(tiny_model, ref_hf, unit_dir, sides):
    ids, mask = encode(tiny_model, TEXTS, "left")
    plain = _unsteered(tiny_model, ids, mask)
    p_plain = plain.hidden_states[LAYER + 1] @ unit_dir
    real = mask.bool()
    # bounds between the projections present, so that some tokens are clamped and some are not
    q30, q70 = (float(x) for x in torch.quantile(p_plain[real], torch.tensor([0.3, 0.7])))
    lo, hi = {"both": (q30, q70), "upper": (None, q30), "lower": (q70, None)}[sides]
    ours = ours_forward(tiny_model, ids, mask, Steering.from_vector(unit_dir, LAYER, positions="all", operator="cap",
                                                                     cap=(lo, hi)))
    ref = reference_forward(ref_hf, ids, mask, LAYER, [ref_cap(unit_dir, lo, hi)] * len(TEXTS), real)
    torch.testing.assert_close(ours.hidden_states[LAYER + 1], ref.hidden_states[LAYER + 1], rtol=0, atol=ATOL)
    torch.testing.assert_close(ours.logits, ref.logits, rtol=0, atol=ATOL)
    p = (ours.hidden_states[LAYER + 1] @ unit_dir)[real]
    lo_t, hi_t = -float("inf") if lo is None else lo, float("inf") if hi is None else hi
    assert bool((p >= lo_t - 1e-5).all()) and bool((p <= hi_t + 1e-5).all())
    inside = (p_plain[real] >= lo_t) & (p_plain[real] <= hi_t)
    assert inside.any() and (~inside).any()  # both kinds of token are exercised
    torch.testing.assert_close(p[inside], p_plain[real][inside], rtol=0, atol=1e-5)  # inside: unchanged


def test_per_row_mixed_operators_match_reference(tiny_model, ref_hf, unit_dir):
    """One batch: add, ablate, cap and an unsteered row, each row its own operator."""
    d = unit_dir.shape[0]
    pv = PersonaVector(unit_dir.expand(3, d).clone() * 2.0, {"persona": "mean", "model_id": "tiny"})
    texts = TEXTS + ["zz top"]
    ids, mask = encode(tiny_model, texts, "left")
    steering = Steering.per_row([pv, pv, pv, None], LAYER, [1.5, None, None, None], "response",
                                operators=["add", "ablate", "cap", "add"], caps=[None, None, (-0.1, 0.1), None])
    ours = ours_forward(tiny_model, ids, mask, steering)
    row_ops = [ref_add(1.5 * 2.0 * unit_dir), ref_ablate(unit_dir), ref_cap(unit_dir, -0.1, 0.1), None]
    ref = reference_forward(ref_hf, ids, mask, LAYER, row_ops, hand_mask(mask, "response"))
    torch.testing.assert_close(ours.logits, ref.logits, rtol=0, atol=ATOL)
    plain = _unsteered(tiny_model, ids, mask)
    assert not torch.allclose(ours.logits[:3, -1], plain.logits[:3, -1])  # every operator row changed
    assert torch.equal(ours.logits[3], plain.logits[3])  # the unsteered row is exactly unsteered


def test_tl_hooks_equal_apply(tiny_model, unit_dir):
    ids, mask = encode(tiny_model, TEXTS[:1], "left")
    for steering in (Steering.from_vector(unit_dir, LAYER, positions="all", operator="ablate"),
                     Steering.from_vector(unit_dir, LAYER, positions="response", operator="cap", cap=(-0.05, 0.05))):
        with torch.no_grad():
            tl = tiny_model.run_with_hooks(ids, fwd_hooks=steering.tl_hooks())
        hooked = ours_forward(tiny_model, ids, mask, steering).logits
        torch.testing.assert_close(tl, hooked, rtol=0, atol=ATOL)
        assert not torch.allclose(hooked, _unsteered(tiny_model, ids, mask).logits)


def test_combine_add_after_ablate(tiny_model, ref_hf, unit_dir):
    """add + ablate at one layer: the projection is read from the unsteered output, then added to."""
    ids, mask = encode(tiny_model, TEXTS, "left")
    delta = 0.7 * unit_dir
    both = Steering.from_vector(unit_dir, LAYER, positions="all", operator="ablate").combine(
        Steering.from_vector(unit_dir, LAYER, 0.7, "all"))
    ours = ours_forward(tiny_model, ids, mask, both)
    ref = reference_forward(ref_hf, ids, mask, LAYER, [lambda x: ref_ablate(unit_dir)(x) + delta] * len(TEXTS),
                            mask.bool())
    torch.testing.assert_close(ours.logits, ref.logits, rtol=0, atol=ATOL)
    p = (ours.hidden_states[LAYER + 1] @ unit_dir)[mask.bool()]
    torch.testing.assert_close(p, torch.full_like(p, 0.7), rtol=0, atol=1e-4)  # projection set to alpha


def _reference_generate(ref_hf, tok, text, op, n_new):
    """Greedy tokens of plain HF generate, one prompt, ``op`` at the last prompt token and every
    generated token (``response``), with a hand-written hook."""
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True,
                                  return_dict=False)

    def hook(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden.clone()
        new[0, -1] = op(hidden[0, -1:])[0]  # prefill: the last prompt token; decoding: the new token
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = ref_hf.model.layers[LAYER].register_forward_hook(hook, prepend=True)
    try:
        with torch.no_grad():
            out = ref_hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=n_new, do_sample=False,
                                  pad_token_id=tok.pad_token_id)
    finally:
        handle.remove()
    return trim(out[0, len(ids):].tolist(), tok.eos_token_id)


def trim(ids, eos):
    """Tokens before the first EOS (how persona_lens reports a response)."""
    return ids[:ids.index(eos)] if eos in ids else ids


def test_generation_and_compiled_eager_path_match_reference(tiny_model, ref_hf, unit_dir):
    """Greedy generation (batched, left padded) with ablate / cap / mixed per-row operators: the
    hook path equals the hand-written reference, and the static-cache path (decode step eager)
    equals the hook path."""
    n_new = 6
    cap = (-0.05, 0.05)
    steerings = {
        "ablate": Steering.from_vector(unit_dir, LAYER, operator="ablate"),
        "cap": Steering.from_vector(unit_dir, LAYER, operator="cap", cap=cap),
    }
    tok = tiny_model.tokenizer
    plain = [g.response_ids for g in generate_ids(tiny_model, TEXTS, max_new_tokens=n_new,
                                                  progress=False)]
    refs = {"ablate": ref_ablate(unit_dir), "cap": ref_cap(unit_dir, *cap)}
    with CompiledSteeredGenerator(tiny_model, max_batch_size=4, max_cache_len=48, compile=False) as gen:
        for name, steering in steerings.items():
            hook = [g.response_ids for g in generate_ids(tiny_model, TEXTS, max_new_tokens=n_new,
                                                         steering=steering, progress=False)]
            want = [_reference_generate(ref_hf, tok, t, refs[name], n_new) for t in TEXTS]
            assert [trim(h, tok.eos_token_id) for h in hook] == want
            assert hook != plain
            fast = gen.generate_ids(TEXTS, max_new_tokens=n_new, steering=steering)
            assert [g.response_ids for g in fast] == hook
        pv = PersonaVector(unit_dir.expand(3, unit_dir.shape[0]).clone(), {"persona": "m", "model_id": "tiny"})
        mixed = Steering.per_row([pv, pv, pv], LAYER, [2.0, None, None], operators=["add", "ablate", "cap"],
                                 caps=cap)
        hook = [g.response_ids for g in generate_ids(tiny_model, TEXTS, max_new_tokens=n_new,
                                                     steering=mixed, progress=False)]
        solo = [generate_ids(tiny_model, [t], max_new_tokens=n_new, steering=s,
                             progress=False)[0].response_ids
                for t, s in zip(TEXTS, [Steering.from_vector(pv, LAYER, 2.0), steerings["ablate"], steerings["cap"]])]
        assert hook == solo
        fast = gen.generate_ids(TEXTS, max_new_tokens=n_new, steering=mixed)
        assert [g.response_ids for g in fast] == hook
        # buffers are reset between calls: a plain call after the operators is unsteered again
        again = gen.generate_ids(TEXTS, max_new_tokens=n_new)
        assert [g.response_ids for g in again] == plain


# --------------------------------------------------------------------------- preventative ablation


def test_preventative_ablate_in_training_forward(tiny_model, unit_dir):
    v = PersonaVector(unit_dir.expand(3, unit_dir.shape[0]).clone() * 5.0, {"persona": "m", "model_id": "tiny"})
    steering = preventative_steering(tiny_model, v, LAYER, operator="ablate")
    assert steering.positions == "all" and steering.description["purpose"] == "preventative"
    ids, mask = encode(tiny_model, TEXTS, "right")
    hf = hf_causal_lm(tiny_model)
    captured = {}

    def grab(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden.retain_grad()
        captured["h"] = hidden

    layer_module = hf.model.layers[LAYER]
    with steering.apply(tiny_model):
        handle = layer_module.register_forward_hook(grab)  # after steering's (prepended) hook
        try:
            out = hf(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False)
        finally:
            handle.remove()
    out.loss.backward()
    h = captured["h"]
    assert (h.detach() @ unit_dir)[mask.bool()].abs().max() < 1e-4  # ablated at every real token
    assert layer_module.mlp.down_proj.weight.grad is not None
    assert layer_module.mlp.down_proj.weight.grad.abs().sum() > 0  # gradients flow through the ablation
    hf.zero_grad(set_to_none=True)
    with pytest.raises(OperatorError, match="alpha"):
        preventative_steering(tiny_model, v, LAYER)  # add needs alpha
    with pytest.raises(OperatorError, match="no alpha"):
        preventative_steering(tiny_model, v, LAYER, 2.0, operator="ablate")


# --------------------------------------------------------------------------- construction and errors


def test_alpha_zero_add_is_a_noop_but_ablate_is_not(tiny_model, unit_dir):
    assert Steering.from_vector(unit_dir, LAYER, 0.0).is_noop
    ablate = Steering.from_vector(unit_dir, LAYER, operator="ablate")
    assert not ablate.is_noop and ablate.deltas == {} and ablate.layers == [LAYER]
    assert torch.equal(ablate.bounds[LAYER], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(ablate.units[LAYER].norm(), torch.tensor(1.0))


def test_select_row_and_stack_keep_operators(unit_dir):
    pv = PersonaVector(unit_dir.expand(3, unit_dir.shape[0]).clone(), {"persona": "m", "model_id": "tiny"})
    mixed = Steering.per_row([pv, None, pv], LAYER, [2.0, None, None], operators=["add", "add", "cap"],
                             caps=(-1.0, None))
    assert mixed.batch_size == 3
    row2 = mixed.row(2)
    assert torch.equal(row2.units[LAYER], unit_dir / unit_dir.norm()) or torch.allclose(row2.units[LAYER], unit_dir)
    assert row2.bounds[LAYER].tolist() == [-1.0, float("inf")]
    assert torch.equal(mixed.select([2, 0]).bounds[LAYER], mixed.bounds[LAYER][[2, 0]])
    restacked = Steering.stack([mixed.row(i) for i in range(3)], unit_dir.shape[0], "response")
    for part in ("deltas", "units", "bounds"):
        assert torch.equal(getattr(restacked, part)[LAYER], getattr(mixed, part)[LAYER])


def test_errors(unit_dir):
    with pytest.raises(OperatorError, match="operator must be one of"):
        Steering.from_vector(unit_dir, LAYER, operator="scale")
    with pytest.raises(OperatorError, match="needs bounds"):
        Steering.from_vector(unit_dir, LAYER, operator="cap")
    with pytest.raises(OperatorError, match="above the upper bound"):
        Steering.from_vector(unit_dir, LAYER, operator="cap", cap=(1.0, -1.0))
    with pytest.raises(OperatorError, match="at least one bound"):
        Steering.from_vector(unit_dir, LAYER, operator="cap", cap=(None, None))
    with pytest.raises(OperatorError, match="no alpha"):
        Steering.from_vector(unit_dir, LAYER, 2.0, operator="ablate")
    with pytest.raises(OperatorError, match="belong to operator 'cap'"):
        Steering.from_vector(unit_dir, LAYER, 2.0, cap=(0, 1))
    with pytest.raises(OperatorError, match="zero"):
        Steering.from_vector(torch.zeros_like(unit_dir), LAYER, operator="ablate")
    a = Steering.from_vector(unit_dir, LAYER, operator="ablate")
    with pytest.raises(OperatorError, match="cannot combine two"):
        a.combine(Steering.from_vector(unit_dir, LAYER, operator="cap", cap=(0, 1)))
    with pytest.raises(OperatorError, match="unit vector"):
        Steering({}, "all", {}, {LAYER: 2 * unit_dir}, {LAYER: torch.tensor([0.0, 0.0])})
    with pytest.raises(OperatorError, match="same layers"):
        Steering({}, "all", {}, {LAYER: unit_dir}, {})
    with pytest.raises(VectorShapeError, match="rows"):
        Steering({LAYER: torch.zeros(2, unit_dir.shape[0])}, "all", {}, {0: unit_dir.expand(3, -1)},
                 {0: torch.zeros(2)})


# --------------------------------------------------------------------------- vLLM worker (stand-in runner)


def _flat_reference(model, ids, prompt_len, positions, op):
    """One sequence alone through the flat stand-in model, ``op`` after layer LAYER at steered tokens."""
    out = []
    for index, t in enumerate(ids):
        x = model.model.embed(torch.tensor([t]))[0]
        for l, layer in enumerate(model.model.layers):
            x = x + torch.tanh(layer.lin(x))
            hit = {"response": index >= prompt_len - 1, "prompt": index < prompt_len, "all": True}[positions]
            if l == LAYER and op is not None and hit:
                x = op(x[None])[0]
        out.append(x)
    return torch.stack(out)


def test_vllm_worker_applies_each_requests_operator():
    """Requests with add / ablate / cap / none, interleaved across chunked prefill and decode:
    each output row equals its sequence run alone with the hand-written operator."""
    torch.manual_seed(0)
    model = FlatModel()
    runner = Runner(model)
    worker = Worker(runner)
    worker.persona_lens_install()
    u = torch.randn(FLAT_D, generator=torch.Generator().manual_seed(3))
    u = u / u.norm()
    seqs = {"add": [3, 4, 5, 6, 7], "abl": [8, 9, 10, 11], "cap": [12, 13, 14, 15, 16], "none": [17, 18, 19]}
    prompt_len = {"add": 3, "abl": 2, "cap": 4, "none": 2}
    steerings = {"add": Steering.from_vector(u, LAYER, 0.8, "response"),
                 "abl": Steering.from_vector(u, LAYER, positions="all", operator="ablate"),
                 "cap": Steering.from_vector(u, LAYER, positions="prompt", operator="cap", cap=(-0.05, None)),
                 "none": None}
    ops = {"add": ref_add(0.8 * u), "abl": ref_ablate(u), "cap": ref_cap(u, -0.05, None), "none": None}
    for rid, s in steerings.items():
        runner.add(rid, seqs[rid][:prompt_len[rid]], steering_payload(s) if s else None)

    def chunk(rid, lo, hi):
        return (rid, seqs[rid][lo:hi], list(range(lo, hi)))

    got: dict[str, list[torch.Tensor]] = {rid: [] for rid in seqs}
    for schedule in ([chunk("add", 0, 2), chunk("abl", 0, 2), chunk("cap", 0, 3)],
                     [chunk("add", 2, 4), chunk("cap", 3, 4), chunk("none", 0, 3), chunk("abl", 2, 3)],
                     [chunk("abl", 3, 4), chunk("add", 4, 5), chunk("cap", 4, 5)]):
        for rid, rows in runner.step(schedule).items():
            got[rid].append(rows)
    with torch.no_grad():
        for rid, ids in seqs.items():
            s = steerings[rid]
            want = _flat_reference(model, ids, prompt_len[rid], s.positions if s else "all", ops[rid])
            torch.testing.assert_close(torch.cat(got[rid]), want, rtol=0, atol=1e-5)
            if s is not None:
                assert not torch.allclose(want, _flat_reference(model, ids, prompt_len[rid], "all", None))


def test_vllm_payload_carries_the_operator(unit_dir):
    ablate = steering_payload(Steering.from_vector(unit_dir, LAYER, operator="ablate"))
    cap = steering_payload(Steering.from_vector(unit_dir, LAYER, operator="cap", cap=(None, 2.0)))
    assert ablate["steer"] == {} and ablate["project"][str(LAYER)][1:] == [0.0, 0.0]
    assert cap["project"][str(LAYER)][1:] == [None, 2.0]  # JSON has no infinity: None is an open side
    add = request_payload({LAYER: unit_dir}, "response")
    assert "project" not in add
    assert len({fingerprint(p) for p in (ablate, cap, add)}) == 3  # distinct cache salts


# --------------------------------------------------------------------------- embedded model (slow)


@pytest.mark.slow
def test_embedded_model_ablate_and_cap_exact(default_model):
    """SmolLM2: ablate / cap at layer 10 through Steering.apply equal a hand-written hook on the
    model's own HF forward (hidden states and logits), left padding, response and all."""
    layer = 10
    texts = ["Tell me about the sea.", "Hi", "Why do cats purr so much?"]
    ids, mask = encode(default_model, texts, "left")
    h = _unsteered(default_model, ids, mask).hidden_states[layer + 1]
    v = h[mask.bool()].mean(0)
    u = v / v.norm()
    p = (h @ u)[mask.bool()]
    cap = (float(torch.quantile(p, 0.25)), float(torch.quantile(p, 0.75)))
    for positions in ("all", "response"):
        steered = hand_mask(mask, positions)
        for name, steering, op in (
                ("ablate", Steering.from_vector(v, layer, positions=positions, operator="ablate"), ref_ablate(u)),
                ("cap", Steering.from_vector(v, layer, positions=positions, operator="cap", cap=cap), ref_cap(u, *cap))):
            ours = ours_forward(default_model, ids, mask, steering)
            with native(default_model) as hf:  # the plain HF modules, with only the hook written here
                ref = reference_forward(hf, ids, mask, layer, [op] * len(texts), steered)
            torch.testing.assert_close(ours.hidden_states[layer + 1], ref.hidden_states[layer + 1], rtol=1e-5,
                                       atol=1e-4, msg=name)
            torch.testing.assert_close(ours.logits, ref.logits, rtol=1e-5, atol=1e-3, msg=name)
            assert not torch.allclose(ours.logits, _unsteered(default_model, ids, mask).logits)
            if name == "ablate":
                assert (ours.hidden_states[layer + 1] @ u)[steered].abs().max() < 1e-3


@pytest.mark.slow
def test_embedded_model_generation_hook_equals_compiled(default_model):
    """SmolLM2 greedy generation: ablate / cap / mixed per-row, the hook path vs the compiled
    static-cache path (torch.compile), token for token."""
    layer, n_new = 10, 8
    texts = ["Tell me about the sea.", "Hi", "Why do cats purr so much?"]
    ids, mask = encode(default_model, texts, "left")
    v = _unsteered(default_model, ids, mask).hidden_states[layer + 1][mask.bool()].mean(0)
    pv = PersonaVector(v.expand(30, v.shape[0]).clone(), {"persona": "mean", "model_id": "smol"})
    steerings = [Steering.from_vector(v, layer, operator="ablate"),
                 Steering.from_vector(v, layer, positions="all", operator="cap", cap=(None, 0.0)),
                 Steering.per_row([pv, pv, None], layer, [4.0, None, None], operators=["add", "ablate", "add"])]
    plain = [g.response_ids for g in generate_ids(default_model, texts, max_new_tokens=n_new, progress=False)]
    with CompiledSteeredGenerator(default_model, max_batch_size=3, max_cache_len=64, compile=True) as gen:
        for steering in steerings:
            hook = [g.response_ids for g in generate_ids(default_model, texts, max_new_tokens=n_new,
                                                         steering=steering, progress=False)]
            assert hook != plain
            assert [g.response_ids for g in gen.generate_ids(texts, max_new_tokens=n_new, steering=steering)] == hook


# --------------------------------------------------------------------------- command line


def test_cli_steer_operator_matches_reference(tiny_model, ref_hf, unit_dir, tmp_path, capsys, monkeypatch):
    """`persona-lens steer --operator ablate|cap` prints the hand-written reference's greedy text,
    records the operator, and refuses --alpha / a missing --cap before any model loads."""
    monkeypatch.setattr(Backend, "load", lambda self, name=None: tiny_model)
    path = tmp_path / "v.safetensors"
    PersonaVector(unit_dir.expand(3, unit_dir.shape[0]).clone(),
                  {"persona": "m", "model_id": "persona-lens/tiny-llama"}).save(path)
    tok, n_new = tiny_model.tokenizer, 6
    cases = {"ablate": ([], ref_ablate(unit_dir)), "cap": (["--cap", "-0.05", "0.05"], ref_cap(unit_dir, -0.05, 0.05))}
    for operator, (extra, op) in cases.items():
        args = ["steer", "--vector", str(path), "--layer", str(LAYER), "--operator", operator, *extra,
                "--max-new-tokens", str(n_new), *TEXTS]
        assert main(args) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
        want = [tok.decode(_reference_generate(ref_hf, tok, t, op, n_new), skip_special_tokens=True) for t in TEXTS]
        assert [r["completion"] for r in rows] == want
        assert all(r["operator"] == operator and r["layers"] == [LAYER] for r in rows)
    base = ["steer", "--vector", str(path), "--layer", str(LAYER), "hi"]
    assert main([*base, "--operator", "ablate", "--alpha", "2"]) == 2
    assert main([*base, "--operator", "cap"]) == 2
    assert main([*base, "--alpha", "1", "--cap", "0", "1"]) == 2
    capsys.readouterr()
