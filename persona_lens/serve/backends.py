"""Engines behind the server: one ``generate(rows, sampling, on_text)`` call answers a batch.

A batch mixes requests with different personas, alphas, layers and positions. It runs as ONE
generate call: :func:`batch_steerings` turns the rows' own steerings into one per-row
:class:`~persona_lens.steering.Steering` per position mode present (row ``r`` carries its own
``alpha * v[l]``, every other row zeros, and ``h + 0`` is exactly ``h``), so each row gets the
add it would get alone. Greedy rows with different ``max_tokens`` share the call: a greedy row's
first ``k`` tokens do not depend on how long the batch runs.

* :class:`HFBackend`: persona_lens' HF generation (:func:`persona_lens.generation.generate_ids`),
  streaming through a transformers streamer, and per-token monitoring through HF hooks.

(``persona-lens serve --backend vllm`` serves through vLLM's own OpenAI server with persona_lens'
plugin instead: :mod:`persona_lens.serve.vllm_plugin`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from transformers.generation.streamers import BaseStreamer

from ..chat import make_batch
from ..generation import eos_ids, generate_ids, padding_id, to_generation
from ..hooks import record
from ..models import d_model, model_device, model_id, n_layers
from ..native import native
from ..positions import POSITIONS
from ..steering import Steering
from ..vectors import PersonaVector
from .protocol import Monitor, Row, Sampling

OnText = Callable[[int, str], None]  # (row index in the batch, new text)


@dataclass
class RowResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS) or "length" (max_tokens)
    monitor: dict | None = None


class ServeBackend(Protocol):
    name: str
    model_id: str
    n_layers: int
    d_model: int
    supports_monitor: bool

    def validate(self, steering: Steering) -> None: ...

    def check_vector(self, vector: PersonaVector) -> None: ...

    def generate(self, rows: Sequence[Row], sampling: Sampling, on_text: OnText | None = None) -> list[RowResult]: ...


def batch_steerings(steerings: Sequence[Steering | None], width: int) -> list[Steering]:
    """The rows' steerings as one per-row Steering per position mode (see the module docstring).

    Each row's own steering has one ``[d]`` delta per layer (one request, one alpha)."""
    out = []
    for positions in POSITIONS:
        members = {i for i, s in enumerate(steerings) if s is not None and s.positions == positions and not s.is_noop}
        if not members:
            continue
        stacked = Steering.stack([s if i in members else None for i, s in enumerate(steerings)], width, positions)
        stacked.description["rows"] = sorted(members)  # operators (ablate/cap) ride along in units/bounds
        out.append(stacked)
    return out


def finish_reason(n_tokens: int, max_tokens: int) -> str:
    return "length" if n_tokens >= max_tokens else "stop"


class TextStream(BaseStreamer):
    """Per-row incremental text from ``generate``'s streamer calls.

    The first ``put`` is the padded prompt; each later one holds every row's new token. A row
    stops at its first stop id or its own ``max_tokens``. The text sent is always a prefix of the
    final text (``to_generation``'s: special tokens skipped, stripped): leading and trailing
    whitespace and an unfinished UTF-8 character are held back until later text decides them.
    """

    def __init__(self, tokenizer, stops: set[int], limits: Sequence[int], on_text: OnText):
        self.tokenizer, self.stops, self.limits, self.on_text = tokenizer, stops, list(limits), on_text
        self.ids: list[list[int]] = [[] for _ in self.limits]
        self.sent = [""] * len(self.limits)
        self.done = [False] * len(self.limits)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for r, tokens in enumerate(value.reshape(len(self.limits), -1).tolist()):
            for t in tokens:
                if self.done[r] or t in self.stops:
                    self.done[r] = True
                    break
                self.ids[r].append(t)
                self.done[r] = len(self.ids[r]) >= self.limits[r]
            text = self.tokenizer.decode(self.ids[r], skip_special_tokens=True).strip().rstrip("\ufffd").rstrip()
            self._send(r, text)

    def end(self) -> None:
        pass

    def finish(self, r: int, final: str) -> None:
        self._send(r, final)

    def _send(self, r: int, text: str) -> None:
        if len(text) > len(self.sent[r]) and text.startswith(self.sent[r]):
            self.on_text(r, text[len(self.sent[r]):])
            self.sent[r] = text


class HFBackend:
    """Generation on a persona_lens (TransformerLens-wrapped HF) model in this process."""

    name = "hf"
    supports_monitor = True

    def __init__(self, model):
        self.model = model
        self.model_id = model_id(model)
        self.n_layers, self.d_model = n_layers(model), d_model(model)
        self.stops = eos_ids(model)

    def validate(self, steering: Steering) -> None:
        steering.validate(self.model)

    def check_vector(self, vector: PersonaVector) -> None:
        vector.check_model(self.model)

    def generate(self, rows: Sequence[Row], sampling: Sampling, on_text: OnText | None = None) -> list[RowResult]:
        tok = self.model.tokenizer
        limits = [r.max_tokens for r in rows]
        stream = TextStream(tok, self.stops, limits, on_text) if on_text is not None else None
        with native(self.model), contextlib.ExitStack() as stack:
            for steering in batch_steerings([r.steering for r in rows], self.d_model):
                stack.enter_context(steering.apply(self.model))
            gens = generate_ids(self.model, [r.prompt for r in rows], max_new_tokens=max(limits),
                                temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                                batch_size=len(rows), progress=False, streamer=stream)
        results = []
        for i, (row, g) in enumerate(zip(rows, gens)):
            cut = to_generation(tok, g.prompt_ids, g.response_ids[:row.max_tokens], self.stops)
            if stream is not None:
                stream.finish(i, cut.text)
            monitor = self.monitor(row.monitor, row.steering, cut.prompt_ids, cut.response_ids) if row.monitor else None
            results.append(RowResult(cut.text, len(cut.prompt_ids), len(cut.response_ids),
                                     finish_reason(len(g.response_ids), row.max_tokens), monitor))
        return results

    def monitor(self, monitor: Monitor, steering: Steering | None, prompt: list[int], response: list[int]) -> dict:
        """Each generated token's ``blocks.{layer}.hook_resid_post`` projected on ``v[layer] / ||v[layer]||``,
        read in one forward over prompt + response, steered as the generation was."""
        tok = self.model.tokenizer
        batch = make_batch([prompt], [response], padding_id(tok), require_response=False).to(model_device(self.model))
        seen: dict = {}
        with record(self.model, [monitor.layer], lambda site, h: seen.__setitem__(site, h)) as forward:
            ctx = steering.apply(self.model, prompt_lengths=batch.last_prompt_index + 1) if steering is not None \
                else contextlib.nullcontext()
            with ctx:
                forward(batch)
        h = seen[monitor.layer][0, len(prompt):len(prompt) + len(response)].double().cpu()
        return {"layer": monitor.layer, "token_ids": list(response), "tokens": [tok.decode([t]) for t in response],
                "projections": {name: (h @ v.unit(monitor.layer).double()).tolist()
                                for name, v in monitor.vectors.items()}}
