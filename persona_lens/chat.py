"""Chat formatting and token masks.

A prompt is a list of chat messages (``{"role": "system"|"user"|"assistant", "content": str}``).
``prompt_ids`` renders it with the tokenizer's chat template (generation prompt appended) and
tokenizes with BOS exactly once: chat templates that write BOS themselves (Llama 3, Gemma) are
not given a second one, and tokenizers whose template does not (SmolLM2) get none added.
A tokenizer without a chat template (base models such as Gemma-3-270M) gets a plain-text format.

``TokenBatch`` holds a right-padded batch of prompt + response ids with exact masks: the response
mask marks the response tokens only, never padding, never prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .errors import EmptyResponseError

Messages = list[dict]


def make_messages(user: str, system: str | None = None) -> Messages:
    messages = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user})
    return messages


def as_messages(prompt: str | Messages) -> Messages:
    return make_messages(prompt) if isinstance(prompt, str) else list(prompt)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_text_prompt(messages: Messages) -> str:
    """Format for models without a chat template: the system text, then User/Assistant turns."""
    parts = []
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "system":
            parts.append(f"{content}\n\n")
        elif role == "user":
            parts.append(f"User: {content}\nAssistant:")
        else:
            parts.append(f" {content}\n")
    return "".join(parts)


def prompt_text(tokenizer, messages: Messages) -> str:
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return plain_text_prompt(messages)


def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def prompt_ids(tokenizer, messages: Messages) -> list[int]:
    text = prompt_text(tokenizer, messages)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    # BOS once: only the tokenizer's own convention adds it, and only if the text lacks it.
    if _adds_bos(tokenizer) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def response_text(tokenizer, response: str) -> str:
    """The response as it stands after the prompt: the plain-text format writes ``"Assistant:"``
    and the model's first token carries the separating space (" Paris"), which ``generate``
    strips from the text; put it back so that capture sees the tokens that were generated."""
    if response and not has_chat_template(tokenizer) and not response[0].isspace():
        return " " + response
    return response


def response_ids(tokenizer, response: str) -> list[int]:
    return tokenizer(response_text(tokenizer, response), add_special_tokens=False)["input_ids"]


@dataclass
class TokenBatch:
    """Right-padded prompt+response ids. Right padding keeps HF's default positions exact."""

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    prompt_mask: Bool[Tensor, "batch pos"]
    response_mask: Bool[Tensor, "batch pos"]
    last_prompt_index: Int[Tensor, " batch"]

    def to(self, device) -> TokenBatch:
        return TokenBatch(*(t.to(device) for t in (
            self.input_ids, self.attention_mask, self.prompt_mask, self.response_mask, self.last_prompt_index)))


def make_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]] | None,
    pad_id: int,
    require_response: bool = True,
) -> TokenBatch:
    responses = responses if responses is not None else [[] for _ in prompts]
    if len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has zero tokens")
        if require_response and len(r) == 0:
            raise EmptyResponseError(f"response {i} has zero tokens: a response mean is undefined")
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    width = max(lengths)
    b = len(prompts)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    prompt_mask = torch.zeros((b, width), dtype=torch.bool)
    response_mask = torch.zeros((b, width), dtype=torch.bool)
    last = torch.zeros(b, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n_p, n = len(p), len(p) + len(r)
        input_ids[i, :n] = torch.tensor(list(p) + list(r), dtype=torch.long)
        attention[i, :n] = 1
        prompt_mask[i, :n_p] = True
        response_mask[i, n_p:n] = True
        last[i] = n_p - 1
    return TokenBatch(input_ids, attention, prompt_mask, response_mask, last)
