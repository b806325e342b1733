"""Activation capture with streaming reductions inside the forward hooks.

For each (prompt, response) pair and each layer, the hooks on ``blocks.{l}.hook_resid_post``
reduce the batch's activations as the forward runs to

* ``response_mean``: mean over the response tokens;
* ``last_prompt``:   the last prompt token (the Persona Vectors monitoring position);
* ``prompt_mean``:   mean over the prompt tokens;
* ``response_norm``: mean over the response tokens of ``||h_t||`` (``[n, layers]``; not a default),

so memory is ``O(n x layers x d_model)`` and never ``[batch, pos, layers, d_model]``. The LM
head is never run, and the forward stops after the deepest requested layer. ``extra_sites``
adds the embedding output (``"embed"``, HF ``hidden_states[0]``) and the final-norm output
(``"final_norm"``, HF ``hidden_states[n_layers]``). The hooks and reductions are
:mod:`persona_lens.hooks`' (the one record engine).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .chat import Messages, as_messages, make_batch, prompt_ids, response_ids
from .errors import EmptyResponseError
from .hooks import (
    EXTRA_SITES,
    RESPONSE_REDUCTIONS,
    SCALAR_REDUCTIONS,
    BatchReducer,
    Site,
    record,
)
from .models import check_context, check_layer, d_model, model_device, n_layers
from .steering import Steering

REDUCTIONS = ("response_mean", "last_prompt", "prompt_mean")  # the default: [n, layers, d_model] each


@dataclass
class Captured:
    """``data[reduction]`` is ``[n, len(layers), d_model]`` float32 on the CPU
    (``[n, len(layers)]`` for ``response_norm``); ``extra[site][reduction]`` the same without the
    layer axis for each captured extra site (``"embed"``, ``"final_norm"``)."""

    layers: list[int]
    data: dict[str, Float[Tensor, "n layers d_model"]]
    extra: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def __getitem__(self, reduction: str) -> Tensor:
        return self.data[reduction]

    def at(self, reduction: str, layer: int | str) -> Float[Tensor, "n d_model"]:
        """One layer's (or one extra site's: ``"embed"``, ``"final_norm"``) reduction."""
        if isinstance(layer, str):
            if layer not in self.extra:
                raise KeyError(f"site {layer!r} was not captured (pass extra_sites=[{layer!r}])")
            return self.extra[layer][reduction]
        return self.data[reduction][:, self.layers.index(layer)]


def prepare_inputs(
    tokenizer,
    prompts: Sequence[str | Messages],
    responses: Sequence[str] | None,
    layers: Iterable[int] | None,
    reductions: Sequence[str],
    *,
    n_layers: int,
    check_layer: Callable[[int], int],
    supported: Sequence[str] = REDUCTIONS,
) -> tuple[list[int], list[str], list[list[int]], list[list[int]] | None]:
    """The checked inputs of a capture: ``(layers, reductions, prompt_ids, response_ids)``.

    ``layers``: sorted and checked (``None``: all ``n_layers``); ``reductions``: validated against
    ``supported``, less the response reductions when there are no responses; ids per row
    (``response_ids`` is ``None`` without responses). Raises ``ValueError`` for an unknown
    reduction or mismatched lengths and :class:`EmptyResponseError` when a response reduction is
    asked of a zero-token response. Shared by :func:`capture` and the vLLM backend's ``capture``.
    """
    layers = list(range(n_layers)) if layers is None else sorted({check_layer(l) for l in layers})
    for r in reductions:
        if r not in supported:
            raise ValueError(f"unknown reduction {r!r}; choose from {tuple(supported)}")
    reductions = [r for r in reductions if not (responses is None and r in RESPONSE_REDUCTIONS)]
    p_ids = [prompt_ids(tokenizer, as_messages(p)) for p in prompts]
    r_ids = None
    if responses is not None:
        if len(responses) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        r_ids = [response_ids(tokenizer, r) for r in responses]
        empty = [i for i, r in enumerate(r_ids) if not r]
        if empty and any(r in RESPONSE_REDUCTIONS for r in reductions):
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
    extra_sites: Sequence[str] = (),
) -> Captured:
    """Reduced ``hook_resid_post`` activations for prompts (and optional responses).

    With ``responses=None`` only prompt reductions are available. With ``steering``, the
    forward is steered at the positions that generation would have steered (``response``:
    last prompt token + response tokens; ``prompt``: prompt tokens; ``all``: every token).
    ``extra_sites``: any of ``"embed"``, ``"final_norm"``, read into :attr:`Captured.extra`.
    """
    tok = model.tokenizer
    layers, reductions, p_ids, r_ids = prepare_inputs(tok, prompts, responses, layers, reductions,
                                                      n_layers=n_layers(model),
                                                      check_layer=lambda l: check_layer(model, l),
                                                      supported=REDUCTIONS + SCALAR_REDUCTIONS)
    check_context(model, [len(p) + len(r_ids[i] if r_ids else []) for i, p in enumerate(p_ids)],
                  what="prompt + response")
    extras = list(dict.fromkeys(extra_sites))
    for site in extras:
        if site not in EXTRA_SITES:
            raise ValueError(f"unknown extra site {site!r}; choose from {EXTRA_SITES}")
    sites: list[Site] = [*layers, *extras]
    n = len(prompts)
    collected: list[dict[str, Tensor]] = []
    reducer = BatchReducer(reductions, sites)
    device = model_device(model)  # the embedding's device: where the input ids go
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    bar = tqdm(total=n, desc=desc, disable=not progress or n <= batch_size, leave=False)
    with record(model, sites, reducer.add) as forward:
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            batch = make_batch(p_ids[sl], r_ids[sl] if r_ids else None, pad,
                               require_response=any(r in RESPONSE_REDUCTIONS for r in reductions)).to(device)
            ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
            if steering is not None:
                # the positions generation would have steered, from the one position policy
                ctx = steering.select(range(sl.start, sl.stop)).apply(
                    model, prompt_lengths=batch.last_prompt_index + 1)
            reducer.start(batch)
            with ctx:
                forward(batch)
            collected.append(reducer.gather())
            bar.update(sl.stop - sl.start)
    bar.close()
    full = {r: torch.cat([c[r] for c in collected]) if collected
            else torch.zeros(0, len(sites), *(() if r in SCALAR_REDUCTIONS else (d_model(model),)))
            for r in reductions}
    n_l = len(layers)
    data = {r: t[:, :n_l].contiguous() for r, t in full.items()}
    extra = {site: {r: t[:, n_l + i] for r, t in full.items()} for i, site in enumerate(extras)}
    return Captured(layers, data, extra)

