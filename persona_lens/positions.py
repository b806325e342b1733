"""The one position policy: which token positions a steering intervention touches.

Every engine path asks this module and nothing else: the HF hook path (``steering.py``), the
compiled static-cache path (``fast.py``), the vLLM path (``interop/vllm.py``) and capture.

Positions are counted as a token's **index among its row's real tokens** (0 = the first real
token), computed from the attention mask, so padding on either side, ``use_cache=False`` and a
forward that continues from a non-empty KV cache all see the same numbers. With ``n`` the number
of prompt tokens of a row, a policy is a half-open window ``lo <= index < hi``:

* ``"response"`` (Persona Vectors' default): ``[n - 1, inf)`` — the last prompt token and every
  generated token;
* ``"prompt"``: ``[0, n)`` — prompt tokens only, never a generated token;
* ``"all"``: ``[0, inf)`` — every real token.

For forwards whose prompt lengths nobody passed in (plain HF ``generate`` inside
``with pl.steer(...)``), :class:`PromptTracker` infers them from the sequence of forwards: a
forward that continues the tracked sequence by exactly one token per row is a decoding step
(with a KV cache: one new token; without: the whole sequence again, one token longer, same
prefix); any other forward starts a new prompt, which ends at its last real token. This is the
rule the official Persona Vectors ``ActivationSteerer`` applies by tensor shape, made exact for
padding, cache-less decoding and multi-turn continuation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import Tensor

Positions = Literal["all", "prompt", "response"]
POSITIONS: tuple[Positions, ...] = ("all", "prompt", "response")
UNBOUNDED = 2**62  # "no upper bound" for a window


def check_positions(positions: str) -> Positions:
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    return cast(Positions, positions)


def window(positions: Positions, prompt_lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row ``(lo, hi)`` (long tensors like ``prompt_lengths``): steer where ``lo <= index < hi``."""
    n = torch.as_tensor(prompt_lengths, dtype=torch.long)
    zero, inf = torch.zeros_like(n), torch.full_like(n, UNBOUNDED)
    if positions == "response":
        return n - 1, inf
    if positions == "prompt":
        return zero, n
    if positions == "all":
        return zero, inf
    raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")


def in_window(index: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``[batch, pos]`` bool: ``lo[b] <= index[b, p] < hi[b]`` (padding has index -1: never)."""
    return (index >= lo[:, None]) & (index < hi[:, None]) & (index >= 0)


def token_index(attention_mask: Tensor) -> Tensor:
    """Index of each token among its row's real tokens; ``-1`` for padding. Any padding side."""
    real = attention_mask.bool()
    return (real.long().cumsum(-1) - 1).masked_fill(~real, -1)


def steer_mask(positions: Positions, attention_mask: Tensor, prompt_lengths: Tensor | Sequence[int]) -> Tensor:
    """``[batch, pos]`` bool for a full-sequence forward (prompt + response, e.g. capture)."""
    lengths = torch.as_tensor(prompt_lengths, dtype=torch.long, device=attention_mask.device)
    lo, hi = window(positions, lengths)
    return in_window(token_index(attention_mask), lo, hi)


@dataclass
class _Sequence:
    prompt_lengths: Tensor  # [batch] real tokens in the prompt
    seen: Tensor  # [batch] real tokens seen so far
    input_ids: Tensor | None  # the last forward's ids, when it fed the whole sequence


class PromptTracker:
    """Turns each decoder forward into a ``[batch, q]`` steering mask under one policy.

    ``prompt_lengths`` given: every forward is read against them (capture: one forward over
    prompt + response). Otherwise they are inferred per forward, see the module docstring.
    """

    def __init__(self, positions: Positions, prompt_lengths: Sequence[int] | Tensor | None = None):
        self.positions = check_positions(positions)
        self.fixed = None if prompt_lengths is None else torch.as_tensor(prompt_lengths, dtype=torch.long)
        self._seq: _Sequence | None = None

    def mask(
        self,
        q_len: int,
        *,
        attention_mask: Tensor | None = None,
        input_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache_position: Tensor | None = None,
        batch: int = 1,
    ) -> Tensor:
        """The steering mask of one forward over ``q_len`` new tokens per row.

        ``attention_mask`` is HF's 2D mask over cached + new tokens (the normal case); without
        one, the token index is taken from ``position_ids``, else ``cache_position``, else
        ``0..q_len-1`` — the positions HF itself uses then.
        """
        if attention_mask is not None and attention_mask.dim() == 2:
            index = token_index(attention_mask)[:, -q_len:]
        elif position_ids is not None:
            index = position_ids.expand(batch, q_len).long()
        elif cache_position is not None:
            index = cache_position.expand(batch, q_len).long()
        else:
            device = input_ids.device if input_ids is not None else None
            index = torch.arange(q_len, device=device).expand(batch, q_len)
        index = index.to(torch.long)
        end = index.max(dim=1).values + 1  # real tokens up to and including this forward
        if self.fixed is not None:
            lengths = self.fixed.to(index.device)
        else:
            lengths = self._update(index, end, input_ids, q_len)
        lo, hi = window(self.positions, lengths)
        return in_window(index, lo, hi)

    def _update(self, index: Tensor, end: Tensor, input_ids: Tensor | None, q_len: int) -> Tensor:
        seq = self._seq
        whole = bool((index[:, 0] <= 0).all())  # this forward feeds each row from its start
        if seq is not None and self._continues(seq, end, input_ids, q_len, whole):
            lengths = seq.prompt_lengths.to(end.device)
        else:
            lengths = end  # a new prompt: it ends at this forward's last real token
        self._seq = _Sequence(lengths, end, input_ids if whole else None)
        return lengths

    @staticmethod
    def _continues(seq: _Sequence, end: Tensor, input_ids: Tensor | None, q_len: int, whole: bool) -> bool:
        if seq.seen.shape != end.shape or not bool((end == seq.seen.to(end.device) + 1).all()):
            return False
        if q_len == 1:
            return True  # one new token per row after the cache: a decoding step
        # No KV cache: the whole sequence again, one token longer, with the same prefix.
        prev = seq.input_ids
        if not whole or input_ids is None or prev is None or prev.shape[1] + 1 != input_ids.shape[1]:
            return False
        return bool((input_ids[:, :-1] == prev.to(input_ids.device)).all())
