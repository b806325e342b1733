"""Prompts and steered generation shared by the scripts in ``benchmarks/``.

* ``chat_prompt_of_length``: chat prompts whose templated length is exactly N tokens;
  ``left_padded_chat_prompts``: a batch of them as left-padded ids for HF ``generate``;
* steered generation: ``random_steering`` (a seeded random unit direction at a layer),
  ``generation_parser`` and ``generation_setup`` (the options, model, baseline and steering of
  the steered-generation benchmarks), ``greedy_generate_kwargs`` (exactly N greedy new tokens),
  ``baseline_generate`` (HF ``generate`` on the baseline model).

Arguments and models are in ``_subject.py``; timing, memory and output in ``_measure.py``.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from typing import Any

import torch
from _subject import baseline_hf, benchmark_parser, load_with_baseline  # first: puts the repo on sys.path

from persona_lens.chat import make_messages, prompt_ids  # noqa: E402
from persona_lens.generation import _left_pad, padding_id  # noqa: E402
from persona_lens.models import d_model, n_layers  # noqa: E402
from persona_lens.steering import Steering  # noqa: E402

# --------------------------------------------------------------------------- prompts


COMMON_WORDS = ("time people year way day man thing woman life child world school state family student group "
          "country problem hand part place case week company system program question work government "
          "number night point home water room mother area money story fact month lot right study book "
          "eye job word business issue side kind head house service friend father power hour game line").split()


def chat_prompt_of_length(tokenizer, n_tokens: int, seed: int = 0) -> tuple[list[dict], int]:
    """A one-message chat prompt whose templated ``prompt_ids`` length is ``n_tokens`` (or the
    closest reachable, returned as the second value)."""
    rng = random.Random(seed)
    words: list[str] = []

    def length(ws):
        return len(prompt_ids(tokenizer, make_messages(" ".join(ws) or "x")))

    while length(words) < n_tokens - 2 and len(words) < 4 * n_tokens:  # random common words
        words.append(rng.choice(COMMON_WORDS))
    while length(words) > n_tokens and len(words) > 1:
        words.pop()
    while length(words) < n_tokens and len(words) < 4 * n_tokens:  # top up one short word at a time
        words.append("a")
        if length(words) > n_tokens:
            words.pop()
            break
    return make_messages(" ".join(words) or "x"), length(words)


def left_padded_chat_prompts(tokenizer, batch: int, n_tokens: int, seed: int, pad_id: int, device: str
                             ) -> tuple[list[list[dict]], list[int], torch.Tensor, torch.Tensor]:
    """``batch`` prompts of :func:`chat_prompt_of_length` (row ``i`` seeded ``seed * 1000 + i``):
    ``(messages, sorted distinct lengths, ids, attention_mask)``, ids left-padded on ``device``."""
    made = [chat_prompt_of_length(tokenizer, n_tokens, seed=seed * 1000 + i) for i in range(batch)]
    messages = [m for m, _ in made]
    ids, mask = _left_pad([prompt_ids(tokenizer, m) for m in messages], pad_id)
    return messages, sorted({n for _, n in made}), ids.to(device), mask.to(device)


# --------------------------------------------------------------------------- steered generation


def random_steering(bridge, layer: int | None, alpha: float, positions: str, seed: int) -> tuple[int, Any]:
    """``(layer, Steering)``: a random unit direction (seeded by ``seed``) at ``layer``
    (default ``n_layers // 2``) with coefficient ``alpha``."""
    layer = layer if layer is not None else n_layers(bridge) // 2
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d_model(bridge), generator=g)
    return layer, Steering.from_vector(direction / direction.norm(), layer, alpha, positions=positions)


def generation_parser(doc: str) -> argparse.ArgumentParser:
    """:func:`benchmark_parser` plus the options of the steered-generation benchmarks."""
    p = benchmark_parser(doc, default_repeats=5)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 8 on CPU, 1 32 on a GPU")
    p.add_argument("--layer", type=int, default=None, help="steered layer (default: n_layers // 2)")
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--positions", default="response", choices=["response", "prompt", "all"])
    return p


@dataclass
class GenerationSetup:
    subject: Any
    baseline_model: Any
    batch_sizes: list[int]
    layer: int
    steering: Any
    gen_kwargs: dict[str, Any]


def generation_setup(args, device: str, dtype: torch.dtype) -> GenerationSetup:
    """Model and baseline, batch sizes (1 8 on CPU, 1 32 on a GPU), a random steering and the
    greedy HF ``generate`` kwargs, from :func:`generation_parser`'s options."""
    subject, baseline_model = load_with_baseline(args, device, dtype)
    on_gpu = torch.device(device).type == "cuda"
    layer, steering = random_steering(subject.bridge, args.layer, args.alpha, args.positions, args.seed)
    return GenerationSetup(subject, baseline_model, args.batch_sizes or ([1, 32] if on_gpu else [1, 8]), layer,
                           steering, greedy_generate_kwargs(subject.tokenizer, args.new_tokens))


def greedy_generate_kwargs(tokenizer, n_new: int) -> dict[str, Any]:
    """HF ``generate`` keyword arguments for exactly ``n_new`` greedy tokens per row
    (``min_new_tokens``: no early stop at EOS); ``pad_token_id`` falls back to EOS."""
    return dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, temperature=None, top_p=None,
                top_k=None, pad_token_id=padding_id(tokenizer), eos_token_id=tokenizer.eos_token_id)


def baseline_generate(bridge, baseline_model, ids: torch.Tensor, mask: torch.Tensor, gen_kwargs: dict) -> int:
    """Plain HF ``generate`` on the baseline model (:func:`baseline_hf`), inference mode; returns
    the number of new tokens per row."""
    with torch.inference_mode(), baseline_hf(bridge, baseline_model) as hf:
        out = hf.generate(input_ids=ids, attention_mask=mask, **gen_kwargs)
    return out.shape[1] - ids.shape[1]


