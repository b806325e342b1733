"""The record engine: forward hooks that reduce activations while the forward runs.

Sites (where a hook reads the residual stream), in forward order:

* ``"embed"``: the output of the input embeddings = HF ``hidden_states[0]``;
* layer ``l`` (an int): the output of decoder block ``l`` = TransformerLens
  ``blocks.{l}.hook_resid_post`` = HF ``hidden_states[l + 1]``;
* ``"final_norm"``: the output of the final norm = HF ``hidden_states[n_layers]`` (HF replaces
  the last block's output by the normed one in ``hidden_states``).

:class:`BatchReducer` reduces each ``[batch, pos, d_model]`` activation where it arrives, on the
device of the module that produced it (``device_map="auto"`` spreads layers over devices): its
masks are copied to each device once per batch, and the per-row results are gathered to the CPU
as float32 once per batch. :func:`record` puts the hooks on a model (native mode, inference
mode), stops the forward after the last site needed, and removes every hook on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .chat import TokenBatch
from .models import decoder, decoder_layers, n_layers
from .native import native

EMBED, FINAL_NORM = "embed", "final_norm"
EXTRA_SITES = (EMBED, FINAL_NORM)
Site = int | str

# [n, d_model] per row and site
VECTOR_REDUCTIONS = ("response_mean", "last_prompt", "prompt_mean")
# [n] per row and site: mean over the response tokens of ||h_t|| (the typical residual norm)
SCALAR_REDUCTIONS = ("response_norm",)
RESPONSE_REDUCTIONS = ("response_mean", "response_norm")  # undefined for a zero-token response


def hidden_of(output) -> Tensor:
    """The hidden states in a module's output (decoder blocks may return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def replace_hidden(output, hidden: Tensor):
    """``output`` with its hidden states replaced (the inverse of :func:`hidden_of`)."""
    return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden


def site_order(site: Site, total_layers: int) -> int:
    """Position of ``site`` in the forward: embed < layer 0 < ... < layer n-1 < final_norm."""
    if site == EMBED:
        return -1
    if site == FINAL_NORM:
        return total_layers
    if isinstance(site, int) and not isinstance(site, bool) and 0 <= site < total_layers:
        return site
    raise ValueError(f"unknown site {site!r}: a layer index in 0..{total_layers - 1}, {EMBED!r} or {FINAL_NORM!r}")


def _site_modules(model, sites: Sequence[Site]) -> dict[Site, torch.nn.Module]:
    """The module whose output is each site. Call inside :func:`native` (original HF modules)."""
    layers = decoder_layers(model)
    base: Any = decoder(model)  # an HF PreTrainedModel
    out: dict[Site, torch.nn.Module] = {}
    for site in sites:
        if site == EMBED:
            out[site] = base.get_input_embeddings()
        elif site == FINAL_NORM:
            norm = getattr(base, "norm", None)
            if not isinstance(norm, torch.nn.Module):
                raise ValueError(f"{type(base).__name__} has no final norm module named 'norm': "
                                 f"the {FINAL_NORM!r} site is not available for this architecture")
            out[site] = norm
        else:
            out[site] = layers[int(site)]
    return out


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def record(model, sites: Sequence[Site], on_output: Callable[[Site, Tensor], None]) -> Iterator[Callable[[TokenBatch], None]]:
    """Hooks on ``sites`` of ``model`` for the block; yields ``forward(batch)``.

    Each hook calls ``on_output(site, h)`` with the site's ``[batch, pos, d_model]`` output as
    float32, on the device where that module ran. The forward stops after the last of ``sites``
    (later blocks never run; the LM head never runs). ``batch`` is a
    :class:`~persona_lens.chat.TokenBatch` already on the embedding's device. The hooks are
    removed when the block exits, also on error.
    """
    total = n_layers(model)
    sites = sorted(set(sites), key=lambda s: site_order(s, total))
    if not sites:
        raise ValueError("record needs at least one site")
    last = sites[-1]

    def make_hook(site: Site):
        def hook(_module, _args, output):
            h = hidden_of(output)
            on_output(site, h if h.dtype == torch.float32 else h.float())  # float32 models: no copy
            if site == last:
                raise _StopForward

        return hook

    with native(model), torch.inference_mode():
        base = decoder(model)
        handles = [module.register_forward_hook(make_hook(site)) for site, module in _site_modules(model, sites).items()]

        def forward(batch: TokenBatch) -> None:
            try:
                base(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            except _StopForward:
                pass

        try:
            yield forward
        finally:
            for handle in handles:
                handle.remove()


class BatchReducer:
    """Streaming reductions of one batch at a time, each computed on its activation's device.

    ``start(batch)``, then ``add(site, h)`` from the hooks, then ``gather()`` ->
    ``{reduction: [rows, len(sites), d_model]}`` (``[rows, len(sites)]`` for scalar reductions),
    float32 on the CPU, sites in the order given.
    """

    def __init__(self, reductions: Sequence[str], sites: Sequence[Site]):
        for r in reductions:
            if r not in VECTOR_REDUCTIONS + SCALAR_REDUCTIONS:
                raise ValueError(f"unknown reduction {r!r}; choose from {VECTOR_REDUCTIONS + SCALAR_REDUCTIONS}")
        self.reductions = list(reductions)
        self.sites = list(sites)
        self._batch: TokenBatch | None = None
        self._on_device: dict[torch.device, dict[str, Tensor]] = {}
        self._results: dict[Site, dict[str, Tensor]] = {}

    def start(self, batch: TokenBatch) -> None:
        self._batch, self._on_device, self._results = batch, {}, {}

    def _masks(self, device: torch.device) -> dict[str, Tensor]:
        """The batch's masks on ``device``, copied once per batch and device."""
        if device not in self._on_device:
            assert self._batch is not None, "start(batch) first"
            b = self._batch
            masks: dict[str, Tensor] = {"last": b.last_prompt_index.to(device),
                                        "arange": torch.arange(b.input_ids.shape[0], device=device)}
            for name, mask in (("response", b.response_mask), ("prompt", b.prompt_mask)):
                m = mask.to(device=device, dtype=torch.float32)
                masks[name] = m[:, None, :]  # [b, 1, pos]: a masked mean is one bmm, no [b, pos, d] temporary
                masks[f"{name}_count"] = m.sum(1, keepdim=True)  # [b, 1]
            self._on_device[device] = masks
        return self._on_device[device]

    def add(self, site: Site, h: Tensor) -> None:
        m = self._masks(h.device)
        out: dict[str, Tensor] = {}
        for r in self.reductions:
            if r == "response_mean":
                out[r] = torch.bmm(m["response"], h)[:, 0] / m["response_count"]
            elif r == "prompt_mean":
                out[r] = torch.bmm(m["prompt"], h)[:, 0] / m["prompt_count"]
            elif r == "last_prompt":
                out[r] = h[m["arange"], m["last"]]
            else:  # response_norm
                norms = h.norm(dim=-1, keepdim=True)  # [b, pos, 1]
                out[r] = (torch.bmm(m["response"], norms)[:, 0] / m["response_count"])[:, 0]
        self._results[site] = out

    def gather(self) -> dict[str, Tensor]:
        missing = [s for s in self.sites if s not in self._results]
        if missing:
            raise RuntimeError(f"the forward never reached site(s) {missing}: was the model called differently?")
        gathered: dict[str, Tensor] = {}
        for r in self.reductions:
            # one transfer per device: stack the sites that live together, then move once
            by_device: dict[torch.device, list[int]] = {}
            for i, s in enumerate(self.sites):
                by_device.setdefault(self._results[s][r].device, []).append(i)
            parts: dict[int, Tensor] = {}
            for idx in by_device.values():
                stacked = torch.stack([self._results[self.sites[i]][r] for i in idx], 1).to("cpu", torch.float32)
                parts.update({i: stacked[:, j] for j, i in enumerate(idx)})
            gathered[r] = torch.stack([parts[i] for i in range(len(self.sites))], 1)
        return gathered
