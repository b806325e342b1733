"""Chat formatting and token masks (persona_lens.chat).

* SmolLM2's chat template writes ``<|im_start|>`` (its BOS) itself: no doubled BOS.
* A template that does not write BOS gets exactly one from the tokenizer's convention.
* The response mask marks exactly the response tokens (hand-checked, also with a real tokenizer).
* Gemma-3-270M (a base model, no chat template) falls back to the plain-text format.
"""

from __future__ import annotations

import copy

import pytest
import torch

from persona_lens.chat import (
    as_messages,
    has_chat_template,
    make_batch,
    make_messages,
    plain_text_prompt,
    prompt_ids,
    prompt_text,
    response_ids,
)
from persona_lens.errors import EmptyResponseError

# --------------------------------------------------------------------------- no model needed


def test_make_messages_and_as_messages():
    assert make_messages("hi") == [{"role": "user", "content": "hi"}]
    assert make_messages("hi", "be nice") == [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi"},
    ]
    assert as_messages("hi") == make_messages("hi")
    msgs = make_messages("q", "s")
    out = as_messages(msgs)
    assert out == msgs and out is not msgs  # a copy, never the caller's list


def test_plain_text_prompt_format():
    msgs = make_messages("What is rain?", "You are terse.")
    assert plain_text_prompt(msgs) == "You are terse.\n\nUser: What is rain?\nAssistant:"
    assert plain_text_prompt(make_messages("Hi")) == "User: Hi\nAssistant:"
    multi = msgs + [{"role": "assistant", "content": "Water."}, {"role": "user", "content": "More?"}]
    assert plain_text_prompt(multi) == (
        "You are terse.\n\nUser: What is rain?\nAssistant: Water.\nUser: More?\nAssistant:"
    )


def test_make_batch_hand_checked():
    # prompt [5, 6, 7] + response [9, 10]; prompt [8] + response [11, 12, 13]; pad = 0, right padded.
    b = make_batch([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    assert b.input_ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert b.prompt_mask.tolist() == [[True, True, True, False, False], [True, False, False, False, False]]
    assert b.response_mask.tolist() == [[False, False, False, True, True], [False, True, True, True, False]]
    assert b.last_prompt_index.tolist() == [2, 0]
    assert b.response_mask.dtype == torch.bool and b.prompt_mask.dtype == torch.bool
    # masks never overlap and never cover padding
    assert not (b.response_mask & b.prompt_mask).any()
    assert not ((b.response_mask | b.prompt_mask) & (b.attention_mask == 0)).any()


def test_make_batch_without_responses_and_errors():
    b = make_batch([[1, 2], [3]], None, pad_id=7, require_response=False)
    assert b.input_ids.tolist() == [[1, 2], [3, 7]]
    assert not b.response_mask.any()
    assert b.last_prompt_index.tolist() == [1, 0]
    with pytest.raises(EmptyResponseError, match="response 1 has zero tokens"):
        make_batch([[1], [2]], [[3], []], pad_id=0)
    with pytest.raises(ValueError, match="zero tokens"):
        make_batch([[1], []], [[3], [4]], pad_id=0)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        make_batch([[1], [2]], [[3]], pad_id=0)


# --------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_single_bos(default_model):
    tok = default_model.tokenizer
    assert has_chat_template(tok)
    bos = tok.bos_token_id
    assert bos is not None
    # the trap: the template text starts with BOS and the tokenizer adds one by default
    text = prompt_text(tok, make_messages("Hi"))
    assert tok(text)["input_ids"][:2] == [bos, bos]
    for msgs in (make_messages("Hi"), make_messages("What is rain?", "You are terse.")):
        ids = prompt_ids(tok, msgs)
        assert ids[0] == bos and ids[1] != bos, "doubled or missing BOS"
        # exactly what the tokenizer's own chat templating gives
        ref = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ids == list(ref)
        assert tok.decode(ids).endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_template_without_bos_gets_exactly_one(default_model):
    tok = copy.deepcopy(default_model.tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    ids = prompt_ids(tok, make_messages("Hi"))
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert ids[1:] == tok("user: Hi\n", add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_response_mask_marks_exactly_the_response(default_model):
    tok = default_model.tokenizer
    msgs = make_messages("Say hi.")
    p = prompt_ids(tok, msgs)
    r = response_ids(tok, "Hello there, friend!")
    assert r and tok.bos_token_id not in r and tok.eos_token_id not in r  # no special tokens added
    p2 = prompt_ids(tok, make_messages("A longer question, with several more words in it?"))
    r2 = response_ids(tok, "Ok.")
    b = make_batch([p, p2], [r, r2], pad_id=tok.pad_token_id)
    for row, (pp, rr, text) in enumerate(((p, r, "Hello there, friend!"), (p2, r2, "Ok."))):
        mask = b.response_mask[row]
        assert mask.sum().item() == len(rr)
        assert b.input_ids[row][mask].tolist() == rr
        assert tok.decode(b.input_ids[row][mask].tolist()) == text
        assert b.input_ids[row][b.prompt_mask[row]].tolist() == pp
        assert b.last_prompt_index[row].item() == len(pp) - 1
        # the response starts right after the generation prompt
        assert mask.nonzero()[0].item() == len(pp)


# --------------------------------------------------------------------------- Gemma (no chat template)


@pytest.mark.slow
def test_gemma_plain_text_fallback(gemma_model):
    tok = gemma_model.tokenizer
    assert not has_chat_template(tok)
    msgs = make_messages("What is rain?", "You are terse.")
    text = prompt_text(tok, msgs)
    assert text == "You are terse.\n\nUser: What is rain?\nAssistant:"
    ids = prompt_ids(tok, msgs)
    bos = tok.bos_token_id
    assert ids[0] == bos and ids[1] != bos
    assert ids == [bos] + tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[1:]) == text
