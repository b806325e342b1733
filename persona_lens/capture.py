"""Activation capture with streaming reductions inside the forward hooks.

For each (prompt, response) pair and each layer, the hooks on ``blocks.{l}.hook_resid_post``
reduce the batch's activations as the forward runs to

* ``response_mean``: mean over the response tokens;
* ``last_prompt``:   the last prompt token (the Persona Vectors monitoring position);
* ``prompt_mean``:   mean over the prompt tokens,

so memory is ``O(n x layers x d_model)`` and never ``[batch, pos, layers, d_model]``. The LM
head is never run, and the forward stops after the deepest requested layer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .chat import Messages, as_messages, make_batch, prompt_ids, response_ids
from .errors import EmptyResponseError
from .models import check_layer, d_model, decoder, decoder_layers, model_device, n_layers, native
from .steering import Steering, _hidden

REDUCTIONS = ("response_mean", "last_prompt", "prompt_mean")


class _StopForward(Exception):
    pass


@dataclass
class Captured:
    """``data[reduction]`` is ``[n, len(layers), d_model]`` float32 on the CPU."""

    layers: list[int]
    data: dict[str, Float[Tensor, "n layers d_model"]]

    def __getitem__(self, reduction: str) -> Tensor:
        return self.data[reduction]

    def at(self, reduction: str, layer: int) -> Float[Tensor, "n d_model"]:
        return self.data[reduction][:, self.layers.index(layer)]


@contextlib.contextmanager
def resid_hooks(model, layers: Sequence[int], on_resid: Callable[[int, Tensor], None]) -> Iterator[Callable]:
    """Native and inference mode, with a forward hook on the decoder block of each of ``layers``.

    Each hook calls ``on_resid(layer, h)`` with the block's output (``hook_resid_post``,
    ``[batch, pos, d_model]``) as float32, and the forward stops after the deepest of ``layers``
    (the later blocks and the LM head never run). Yields ``forward(batch)``, which runs the
    decoder on a :class:`~persona_lens.chat.Batch` already on the model's device.
    """
    deepest = max(layers)
    layer_modules = decoder_layers(model)

    def make_hook(layer: int):
        def hook(_module, _args, output):
            h = _hidden(output)
            if h.dtype != torch.float32:  # float32 models: no copy
                h = h.float()
            on_resid(layer, h)
            if layer == deepest:
                raise _StopForward

        return hook

    with native(model), torch.inference_mode():
        base = decoder(model)

        def forward(batch) -> None:
            try:
                base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            except _StopForward:
                pass

        handles = [layer_modules[l].register_forward_hook(make_hook(l)) for l in layers]
        try:
            yield forward
        finally:
            for h in handles:
                h.remove()


def prepare_inputs(
    tokenizer,
    prompts: Sequence[str | Messages],
    responses: Sequence[str] | None,
    layers: Iterable[int] | None,
    reductions: Sequence[str],
    *,
    n_layers: int,
    check_layer: Callable[[int], int],
) -> tuple[list[int], list[str], list[list[int]], list[list[int]] | None]:
    """The checked inputs of a capture: ``(layers, reductions, prompt_ids, response_ids)``.

    ``layers``: sorted and checked (``None``: all ``n_layers``); ``reductions``: validated, less
    ``response_mean`` when there are no responses; ids per row (``response_ids`` is ``None``
    without responses). Raises ``ValueError`` for an unknown reduction or mismatched lengths and
    :class:`EmptyResponseError` when ``response_mean`` is asked of a zero-token response.
    Shared by :func:`capture` and the vLLM backend's ``capture``.
    """
    layers = list(range(n_layers)) if layers is None else sorted({check_layer(l) for l in layers})
    for r in reductions:
        if r not in REDUCTIONS:
            raise ValueError(f"unknown reduction {r!r}; choose from {REDUCTIONS}")
    reductions = [r for r in reductions if not (responses is None and r == "response_mean")]
    p_ids = [prompt_ids(tokenizer, as_messages(p)) for p in prompts]
    r_ids = None
    if responses is not None:
        if len(responses) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        r_ids = [response_ids(tokenizer, r) for r in responses]
        empty = [i for i, r in enumerate(r_ids) if not r]
        if empty and "response_mean" in reductions:
            raise EmptyResponseError(
                f"{len(empty)} response(s) have zero tokens (first: row {empty[0]}, text {responses[empty[0]]!r}); "
                "drop them or generate longer responses")
    return layers, reductions, p_ids, r_ids


def capture(
    model,
    prompts: Sequence[str | Messages],
    responses: Sequence[str] | None = None,
    *,
    layers: Iterable[int] | None = None,
    reductions: Sequence[str] = REDUCTIONS,
    batch_size: int = 8,
    steering: Steering | None = None,
    progress: bool = True,
    desc: str = "capture",
) -> Captured:
    """Reduced ``hook_resid_post`` activations for prompts (and optional responses).

    With ``responses=None`` only prompt reductions are available. With ``steering``, the
    forward is steered at the positions that generation would have steered (``response``:
    last prompt token + response tokens; ``prompt``: prompt tokens; ``all``: every token).
    """
    tok = model.tokenizer
    layers, reductions, p_ids, r_ids = prepare_inputs(tok, prompts, responses, layers, reductions,
                                                      n_layers=n_layers(model),
                                                      check_layer=lambda l: check_layer(model, l))
    n, width = len(prompts), d_model(model)
    out = {r: torch.zeros(n, len(layers), width, dtype=torch.float32) for r in reductions}
    layer_pos = {l: i for i, l in enumerate(layers)}
    state: dict = {}

    def on_resid(layer: int, h: Tensor) -> None:
        i, buf = layer_pos[layer], state["buf"]
        # Masked means as one batched matmul ([b,1,pos] @ [b,pos,d]): no [b,pos,d] temporary.
        # Results stay on the model's device until the batch ends (one transfer per batch,
        # no per-layer device sync).
        for r, (m, count) in state["means"].items():
            buf[r][:, i] = torch.bmm(m, h)[:, 0] / count
        if "last_prompt" in buf:
            buf["last_prompt"][:, i] = h[state["arange"], state["last"]]

    device = model_device(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    bar = tqdm(total=n, desc=desc, disable=not progress or n <= batch_size, leave=False)
    with resid_hooks(model, layers, on_resid) as forward:
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            batch = make_batch(p_ids[sl], r_ids[sl] if r_ids else None, pad,
                               require_response="response_mean" in reductions).to(device)
            rows = sl.stop - sl.start
            masks = {"response_mean": batch.response_mask, "prompt_mean": batch.prompt_mask}
            state.update(last=batch.last_prompt_index, arange=torch.arange(rows, device=device),
                         means={r: (masks[r][:, None, :].float(), masks[r].sum(1, keepdim=True).float())
                                for r in out if r in masks},
                         buf={r: torch.zeros(rows, len(layers), width, dtype=torch.float32, device=device)
                              for r in out})
            ctx = contextlib.nullcontext()
            if steering is not None:
                steer_mask = {
                    "all": batch.attention_mask.bool(),
                    "prompt": batch.prompt_mask,
                    "response": batch.response_mask | _one_hot(batch.last_prompt_index, batch.input_ids.shape[1]),
                }[steering.positions]
                ctx = contextlib.ExitStack()
                # the mask must sit on the object whose hooks run: select() returns a copy
                # for per-row steering
                selected = steering.select(range(sl.start, sl.stop))
                ctx.enter_context(selected.apply(model))
                ctx.enter_context(selected.position_mask(steer_mask))
            with ctx:
                forward(batch)
            for r, b in state["buf"].items():
                out[r][sl] = b.cpu()
            bar.update(sl.stop - sl.start)
    bar.close()
    return Captured(layers, out)


def _one_hot(index: Tensor, width: int) -> Tensor:
    m = torch.zeros(index.shape[0], width, dtype=torch.bool, device=index.device)
    m[torch.arange(index.shape[0], device=index.device), index] = True
    return m
