"""The record engine (persona_lens.hooks) on a tiny random-weight model: every site against plain
transformers' ``hidden_states``, early stop, hook removal, and per-device masks."""

from __future__ import annotations

import pytest
import torch

from persona_lens.activations import capture
from persona_lens.chat import make_batch, make_messages, prompt_ids, response_ids
from persona_lens.hooks import EMBED, FINAL_NORM, BatchReducer, record
from persona_lens.models import decoder, decoder_layers
from persona_lens.native import native
from persona_lens.testing import tiny_hf_model, tiny_model

PROMPTS = ["hello there", "a much longer question about cats and dogs"]
RESPONSES = ["yes", "no they sleep all day long"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(n_layers=3), tiny_hf_model(n_layers=3)


def _reference(hf, tok):
    """Per row: hidden_states of a single unpadded forward of plain transformers."""
    out = []
    for p, r in zip(PROMPTS, RESPONSES):
        pi, ri = prompt_ids(tok, make_messages(p)), response_ids(tok, r)
        with torch.no_grad():
            hs = hf(torch.tensor([pi + ri]), output_hidden_states=True).hidden_states
        out.append((len(pi), hs))
    return out


def test_every_site_matches_hidden_states(tiny):
    model, hf = tiny
    cap = capture(model, PROMPTS, RESPONSES, reductions=["response_mean", "last_prompt", "prompt_mean", "response_norm"],
                  extra_sites=[FINAL_NORM, EMBED, EMBED], batch_size=2, progress=False)  # padded batch
    assert cap.layers == [0, 1, 2] and sorted(cap.extra) == [EMBED, FINAL_NORM]
    assert cap["response_norm"].shape == (2, 3)
    for i, (n_p, hs) in enumerate(_reference(hf, model.tokenizer)):
        sites = {EMBED: hs[0], FINAL_NORM: hs[3], **{l: hs[l + 1] for l in range(2)}}  # hs[3] is after the norm
        for site, h in sites.items():
            h = h[0]
            torch.testing.assert_close(cap.at("response_mean", site)[i], h[n_p:].mean(0), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cap.at("last_prompt", site)[i], h[n_p - 1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cap.at("prompt_mean", site)[i], h[:n_p].mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cap["response_norm"][i, 1], hs[2][0, n_p:].norm(dim=-1).mean(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="extra site"):
        capture(model, PROMPTS, RESPONSES, extra_sites=["lm_head"], progress=False)


def test_early_stop_and_hook_removal(tiny):
    model, _ = tiny
    tok = model.tokenizer
    batch = make_batch([prompt_ids(tok, make_messages(p)) for p in PROMPTS],
                       [response_ids(tok, r) for r in RESPONSES], tok.pad_token_id)
    for sites, expect_last_layer_runs in (([0], False), ([0, FINAL_NORM], True), ([EMBED], False)):
        seen: list = []
        ran: list = []
        with native(model):
            spy = decoder_layers(model)[2].register_forward_hook(lambda *_, ran=ran: ran.append(True))
            try:
                with record(model, sites, lambda site, h, seen=seen: seen.append(site)) as forward:
                    forward(batch)
            finally:
                spy.remove()
            modules = [decoder(model).get_input_embeddings(), decoder(model).norm, *decoder_layers(model)]
            assert all(not m._forward_hooks for m in modules)  # every hook removed
        assert seen == sites and bool(ran) == expect_last_layer_runs


def test_masks_follow_each_outputs_device():
    """Layers on several devices (device_map="auto"): each site is reduced with masks on its own
    device, copied once per device and batch. "meta" stands in for a second device on CPU."""
    batch = make_batch([[1, 2, 3], [4, 5]], [[6], [7, 8, 9]], 0)
    reducer = BatchReducer(["response_mean", "last_prompt", "response_norm"], [0, 1])
    reducer.start(batch)
    h_cpu = torch.randn(2, 5, 8)
    reducer.add(0, h_cpu)
    reducer.add(1, torch.randn(2, 5, 8, device="meta"))
    assert set(reducer._on_device) == {torch.device("cpu"), torch.device("meta")}
    assert all(m.device.type == "meta" for m in reducer._on_device[torch.device("meta")].values())
    assert all(t.device.type == "meta" for t in reducer._results[1].values())
    expected = torch.stack([h_cpu[0, 3:4].mean(0), h_cpu[1, 2:5].mean(0)])  # padding excluded
    torch.testing.assert_close(reducer._results[0]["response_mean"], expected)
    torch.testing.assert_close(reducer._results[0]["last_prompt"], torch.stack([h_cpu[0, 2], h_cpu[1, 1]]))
    with pytest.raises(RuntimeError, match="never reached"):
        BatchReducer(["response_mean"], [0, 1]).gather()
