"""Fine-tuning shift (hand-computed, and a real fine-tuned copy of SmolLM2) and preventative steering."""

import json

import numpy as np
import pytest
import torch
from conftest import HUMOROUS_LAYER

from persona_lens import testing
from persona_lens.analysis import shift
from persona_lens.analysis.shift import ShiftConfig, ShiftResult, preventative_steering, shift_from_activations
from persona_lens.viz import shift as shift_viz


def test_shift_from_activations_by_hand():
    # n=2 prompts, L=2 layers, d=2; u[0] = (1, 0), u[1] = (0.6, 0.8) (from raw (3, 4))
    a_base = torch.tensor([[[1.0, 5.0], [0.0, 0.0]], [[2.0, 0.0], [1.0, 1.0]]])
    a_ft = torch.tensor([[[2.0, -1.0], [3.0, 4.0]], [[5.0, 9.0], [1.0, 1.0]]])
    units = torch.tensor([[2.0, 0.0], [3.0, 4.0]])
    s = shift_from_activations(a_base, a_ft, units)
    # layer 0: base proj [1, 2], ft proj [2, 5] -> diffs [1, 3]: mean 2, std 1
    # layer 1: base proj [0, 1.4], ft proj [5, 1.4] -> diffs [5, 0]: mean 2.5, std 2.5
    np.testing.assert_allclose(s["shift"], [2.0, 2.5])
    np.testing.assert_allclose(s["std"], [1.0, 2.5])
    np.testing.assert_allclose(s["base_projection"], [1.5, 0.7])
    np.testing.assert_allclose(s["finetuned_projection"], [3.5, 3.2])



def test_shift_config_round_trip():
    cfg = ShiftConfig(layers=(1, 2), position="last_prompt", responses_from="base", max_new_tokens=7)
    assert ShiftConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="position"):
        ShiftConfig(position="prompt_mean")
    with pytest.raises(ValueError, match="responses_from"):
        ShiftConfig(responses_from="judge")


def test_shift_run_on_tiny_models_and_save_load(tiny_model, tmp_path):
    other = testing.tiny_model(seed=1)
    vec = testing.tiny_vector(tiny_model)
    prompts = ["Name a colour.", "Say hi."]
    same = shift.run(tiny_model, ShiftConfig(max_new_tokens=3), finetuned=tiny_model, vector=vec, prompts=prompts,
                     progress=False)
    assert same.config.layers == (0, 1, 2) and same.n == 2 and len(same.responses) == 2
    np.testing.assert_allclose(same.shift, 0.0, atol=1e-6)  # a model against itself
    res = shift.run(tiny_model, ShiftConfig(layers=(2,), position="last_prompt"), finetuned=other, vector=vec,
                    prompts=prompts, progress=False)
    assert res.layers == [2] and res.responses == [] and res.settings["responses_from"] is None
    np.testing.assert_allclose(res.shift, res.finetuned_projection - res.base_projection, atol=1e-9)
    back = ShiftResult.load(res.save(tmp_path))
    assert back.config == res.config and back.to_dict() == res.to_dict() and back.responses == res.responses
    assert (tmp_path / "shift.csv").exists() and set(shift_viz.figures(back)) == {"shift"}


@pytest.mark.slow
@pytest.mark.parametrize("native_mode", [True, False])
def test_preventative_steering_adds_alpha_v_in_training_forward(default_model, humorous_extraction, native_mode):
    import contextlib

    from persona_lens.chat import prompt_ids
    from persona_lens.models import decoder_layers, hf_causal_lm
    from persona_lens.native import native

    vec, _, _ = humorous_extraction
    layer, alpha = 5, 3.0
    st = preventative_steering(default_model, vec, layer, alpha)
    assert st.positions == "all" and st.description["purpose"] == "preventative"
    ids = torch.tensor([prompt_ids(default_model.tokenizer, [{"role": "user", "content": "Tell me a joke."}])
                        + default_model.tokenizer("Why did the chicken cross the road?")["input_ids"]])
    seen = []
    hook = decoder_layers(default_model)[layer + 1].register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone()),
        with_kwargs=True)
    hf = hf_causal_lm(default_model)
    ctx = (lambda: native(default_model)) if native_mode else contextlib.nullcontext
    try:
        with ctx(), torch.enable_grad():
            plain = hf(input_ids=ids, labels=ids, use_cache=False)
            with st.apply(default_model):
                steered = hf(input_ids=ids, labels=ids, use_cache=False)
            if native_mode:  # a training step's backward runs through the steered forward
                steered.loss.backward()
                grad = hf.get_input_embeddings().weight.grad
                assert grad is not None and torch.isfinite(grad).all()
    finally:
        hook.remove()
        for p in hf.parameters():
            p.grad = None
    assert len(seen) == 2
    diff = seen[1] - seen[0]  # the input of layer l+1 is hook_resid_post of layer l
    expected = (alpha * vec.layer(layer)).expand_as(diff)
    torch.testing.assert_close(diff, expected, atol=1e-4, rtol=1e-4)  # every position, exactly alpha*v
    assert steered.loss.item() != pytest.approx(plain.loss.item())
    # once the context is left the model is unsteered again
    with ctx(), torch.no_grad():
        again = hf(input_ids=ids, labels=ids, use_cache=False)
    assert again.loss.item() == pytest.approx(plain.loss.item(), abs=1e-5)


def _finetune_copy(rows, out_dir, steps=6, lr=1e-4, batch=10, seed=0):
    """A fresh SmolLM2 fine-tuned on (user question -> humorous response) rows, saved to out_dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from persona_lens.chat import make_batch, prompt_ids, response_ids
    from persona_lens.models import resolve_model_name

    torch.manual_seed(seed)
    _, src, _ = resolve_model_name("default")
    tok = AutoTokenizer.from_pretrained(src)
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=lr)
    p_ids = [prompt_ids(tok, [{"role": "user", "content": r["question"]}]) for r in rows]
    r_ids = [response_ids(tok, r["response"]) + [tok.eos_token_id] for r in rows]
    losses = []
    for step in range(steps):
        sl = [(step * batch + i) % len(rows) for i in range(batch)]
        b = make_batch([p_ids[i] for i in sl], [r_ids[i] for i in sl], tok.pad_token_id or 0)
        labels = b.input_ids.masked_fill(~b.response_mask, -100)
        loss = hf(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=labels, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    hf.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return losses


@pytest.mark.slow
def test_finetuning_shift_positive_after_humorous_finetune(default_model, humorous_extraction, tmp_path):
    from persona_lens.models import load_model

    vec, rows, spec = humorous_extraction
    humorous = [r for r in rows if r["polarity"] == "pos"]
    losses = _finetune_copy(humorous, tmp_path / "ft")
    assert losses[-1] < losses[0]
    ft = load_model(str(tmp_path / "ft"), device="cpu")
    layers = [4, 8, 12, HUMOROUS_LAYER, 20, 24]
    prompts = spec.eval_questions[:8]  # held-out questions
    res = shift.run(default_model, ShiftConfig(layers=tuple(layers), max_new_tokens=24, batch_size=8), finetuned=ft,
                    vector=vec, prompts=prompts, progress=False)
    print("fine-tuning shift along humorous:", dict(zip(layers, np.round(res.shift, 3))), "losses", losses)
    print("fine-tuned responses:", res.responses[:2])
    assert res.at(HUMOROUS_LAYER) > 0
    assert res.settings["responses_from"] == "finetuned" and res.n == 8
    # sanity: a model against itself has zero shift, exactly
    zero = shift.run(default_model, ShiftConfig(layers=tuple(layers), position="last_prompt"), finetuned=default_model,
                     vector=vec, prompts=prompts[:3], progress=False)
    np.testing.assert_allclose(zero.shift, 0.0, atol=1e-6)
    out = res.save(tmp_path / "out")
    assert json.loads((out / "result.json").read_text())["layers"] == layers
    assert "layer,shift" in (out / "shift.csv").read_text()


@pytest.mark.slow
def test_cli_shift(default_model, humorous_extraction, tmp_path, monkeypatch, capsys):
    """CLI plumbing (base vs itself, base responses: the shift is zero at every layer)."""
    from persona_lens.cli import main

    vec, _, _ = humorous_extraction
    vpath = vec.save(tmp_path / "h.safetensors")
    monkeypatch.setattr("persona_lens.models.load_model", lambda *a, **k: default_model)
    out = tmp_path / "shift"
    assert main(["shift", "--base", "default", "--finetuned", "default", "--vector", str(vpath), "--persona",
                 "humorous", "--n", "2", "--responses-from", "base", "--max-new-tokens", "4", "--out", str(out)]) == 0
    d = json.loads((out / "result.json").read_text())
    assert len(d["layers"]) == 30 and np.allclose(d["shift"], 0.0, atol=1e-6)
    assert d["settings"]["responses_from"] == "base" and d["settings"]["position"] == "response_mean"
    assert (out / "shift.html").exists()
    assert len(json.loads((out / "responses.json").read_text())) == 2
