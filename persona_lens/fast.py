"""Opt-in fast steered generation: a static KV cache, a ``torch.compile``d decode step, steering
as buffers added inside the compiled graph.

Why this path exists. ``persona_lens.generation`` runs Hugging Face ``generate`` with a dynamic KV
cache and steers through forward hooks; that is exactly as fast as plain HF eager generation,
which on a GPU is bound by Python and kernel-launch overhead at small batch sizes. Compiling the
decode step removes that overhead, but only if every step has the same shapes and no Python runs
inside the step:

* **static shapes** — a transformers ``StaticCache`` of ``[max_batch_size, heads,
  max_cache_len, head_dim]`` per layer, written in place; every decode step feeds
  ``[max_batch_size, 1]`` ids, ``[max_batch_size, 1]`` positions and one fixed
  ``[max_batch_size, max_cache_len]`` attention mask (future slots are hidden by causality).
  Smaller batches are padded up to ``max_batch_size`` (set it to the batch you will run), so
  there is one graph, compiled once, which on CUDA (``mode="reduce-overhead"``) is replayed as a
  CUDA graph: one launch per token instead of hundreds;
* **steering as buffers** — each decoder layer is wrapped (only while a call runs) in a small
  module that adds ``gate * delta`` to the layer's output (``blocks.{l}.hook_resid_post``):
  ``delta`` is a preallocated ``[max_batch_size, d_model]`` buffer per layer (one vector per row
  for free; a ``[d_model]`` vector is broadcast into it), and ``gate`` is computed with tensor
  ops from the position ids the layer receives and two per-row thresholds, so the
  ``"response"``/``"prompt"``/``"all"`` semantics of :class:`persona_lens.steering.Steering`
  hold in prefill and in decoding without any Python branch. The operators (``add``,
  ``ablate``, ``cap``: :mod:`persona_lens.operators`) are one formula over per-row buffers
  (``delta``, ``unit``, ``bounds``), so rows may mix them. Every layer is always wrapped (zero
  deltas and units where unsteered), so changing the vector, alpha, operator, layer or positions
  between calls is a ``copy_`` into buffers: the same graph, no recompilation, and alpha = 0
  gives exactly the unsteered output of this path.

Positions. Rows are left padded to a common width ``W`` and given HF's position ids (``cumsum``
of the mask minus one), which are then each token's index among its row's real tokens: row ``i``
with ``n_i`` prompt tokens has its last prompt token at position ``n_i - 1`` and generated tokens
at ``n_i, n_i + 1, ...``. A layer adds ``delta`` where ``lo_i <= position < hi_i``, with the
window taken from :func:`persona_lens.positions.window` — the one position policy the hook path
and the vLLM path use too.

(Padding tokens are masked out of attention, so whether they are steered changes nothing.)

The prefill runs eagerly (a new prompt width would otherwise mean a new graph, as in HF's own
compiled generation); the per-token decode step is compiled. Greedy decoding and seeded
sampling (``temperature``, ``top_p``) follow ``persona_lens.generation.generate_ids``: same
left padding, same position ids, the model's ``min_new_tokens`` and ``repetition_penalty``, the
same transformers logits warpers and one ``torch.multinomial`` over the real rows per step,
stop at any eos id. With the decode step eager (``compile=False``) the tokens equal
``generate_ids``' (tested, steered and unsteered); compiled kernels may round differently, so a
near-tie can in principle resolve differently (the tests see identical tokens on SmolLM2).
Sliding-window models (Gemma 3) get full-length static layers with the window applied by the
mask, because transformers' sliding static layer recompiles at every step.

Use::

    with CompiledSteeredGenerator(model, max_batch_size=8, max_cache_len=512) as gen:
        out = gen.generate_ids(prompts, max_new_tokens=64, steering=Steering.from_vector(v, 12, 4.0))
        out = gen.generate_ids(prompts, max_new_tokens=64, steering=other)   # no recompile

The model is left untouched: the wrappers are put in for the duration of one call (inside
``persona_lens.native.native``) and taken out after it; ``close()`` (or leaving the ``with``
block) frees the cache and the compiled step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .chat import Messages, as_messages, prompt_ids
from .errors import FastPathLimitError, LayerOutOfRangeError, VectorShapeError
from .fast_graph import GateState, SteeredLayer, own_code, static_cache
from .generation import Generation, _left_pad, eos_ids, padding_id, seeded_rng, to_generation
from .models import check_layer, d_model, decoder, decoder_layers, hf_causal_lm, model_device, model_dtype, n_layers
from .native import native
from .positions import window
from .steering import Steering

__all__ = ["CompiledSteeredGenerator", "FastPathLimitError"]

class CompiledSteeredGenerator:
    """Static-cache, compiled, steered generation for one persona_lens model.

    ``max_batch_size``: rows per call (smaller batches are padded to it: one static shape).
    ``max_cache_len``: prompt width (after left padding) + ``max_new_tokens`` must fit.
    ``compile``: ``torch.compile`` the decode step (False: the same static-cache loop eagerly,
    for debugging and exact comparisons). ``mode``: the ``torch.compile`` mode (default
    ``"reduce-overhead"`` on CUDA, i.e. CUDA graphs; torch's default elsewhere).
    ``fullgraph``/``backend``: passed to ``torch.compile`` (a model whose forward does not compile
    to one graph needs ``fullgraph=False``; ``backend="aot_eager"`` helps to debug numerics).
    ``layers``: the decoder layers that can be steered (default: all; fewer layers = fewer adds).
    ``stop_check_every``: decode steps between checks whether every row has hit eos (each check
    is a device sync; default 1 on CPU, 8 on GPU — extra steps after the last eos are discarded).
    """

    def __init__(
        self,
        model,
        *,
        max_batch_size: int = 8,
        max_cache_len: int = 512,
        compile: bool = True,
        mode: str | None = None,
        layers: Sequence[int] | None = None,
        fullgraph: bool = True,
        backend: str = "inductor",
        stop_check_every: int | None = None,
    ):
        if max_batch_size < 1 or max_cache_len < 2:
            raise ValueError("max_batch_size must be >= 1 and max_cache_len >= 2")
        self.model = model
        self.hf = hf_causal_lm(model)
        self.tokenizer = model.tokenizer
        self.device = model_device(model)
        self.dtype = model_dtype(model)
        self.max_batch_size = int(max_batch_size)
        self.max_cache_len = int(max_cache_len)
        self.n_layers = n_layers(model)
        self.width = d_model(model)
        self.layers = tuple(range(self.n_layers)) if layers is None else tuple(sorted({check_layer(model, l) for l in layers}))
        self.compiled = bool(compile)
        if mode is None and self.device.type == "cuda" and backend == "inductor":
            mode = "reduce-overhead"
        self.mode = mode if self.compiled else None
        self.stop_check_every = stop_check_every or (1 if self.device.type == "cpu" else 8)
        self.pad_id = padding_id(self.tokenizer)
        self.stops = eos_ids(model)

        originals = decoder_layers(model)
        self._state = GateState(self.max_batch_size, self.device)
        self._wrappers = {l: SteeredLayer(originals[l], self._state, self.max_batch_size, self.width, self.device)
                          for l in self.layers}
        b, L = self.max_batch_size, self.max_cache_len
        # Step inputs live at fixed addresses and are updated in place (no per-step allocation;
        # CUDA graphs read them without a copy).
        self._ids = torch.zeros((b, 1), dtype=torch.long, device=self.device)
        self._pos = torch.zeros((b, 1), dtype=torch.long, device=self.device)
        self._mask = torch.ones((b, L), dtype=torch.long, device=self.device)
        for t in [self._ids, self._pos, self._mask, self._state.lo, self._state.hi,
                  *(b for w in self._wrappers.values() for b in (w.delta, w.unit, w.bounds))]:
            torch._dynamo.mark_static_address(t)
        self._cache = None
        self._step: Callable[[Tensor, Tensor, Tensor], Tensor] | None = self._decode
        if self.compiled:
            options: dict[str, Any] = dict(fullgraph=fullgraph, backend=backend, dynamic=False)
            if self.mode is not None:
                options["mode"] = self.mode
            self._step = torch.compile(own_code(self._decode), **options)
        self._closed = False

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> CompiledSteeredGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Free the KV cache and the compiled step. The model itself is never left modified."""
        self._closed = True
        self._cache = None
        self._step = None
        self._wrappers = {}

    def __repr__(self) -> str:
        return (f"CompiledSteeredGenerator(max_batch_size={self.max_batch_size}, max_cache_len={self.max_cache_len}, "
                f"compile={self.compiled}, mode={self.mode!r}, layers={len(self.layers)}/{self.n_layers})")

    # ------------------------------------------------------------------ steering buffers
    def _load_steering(self, steering: Steering | None, batch: int, lengths: Sequence[int]) -> None:
        with torch.no_grad():
            for w in self._wrappers.values():
                w.clear()
            positions = "all" if steering is None else steering.positions
            n = torch.tensor(list(lengths) + [1] * (self.max_batch_size - batch), dtype=torch.long)
            lo, hi = window(positions, n)
            self._state.lo.copy_(lo)
            self._state.hi.copy_(hi)
            if steering is None:
                return
            for layer in steering.layers:
                if layer not in self._wrappers:
                    raise LayerOutOfRangeError(
                        f"layer {layer} is not steerable by this generator (built with layers={list(self.layers)})")
            # [d] / [2] broadcast to every row; [batch, ...] (per row) was checked against batch by _check
            for part, name in ((steering.deltas, "delta"), (steering.units, "unit"), (steering.bounds, "bounds")):
                for layer, t in part.items():
                    buf = getattr(self._wrappers[layer], name)
                    buf[:batch].copy_(t.to(device=self.device, dtype=torch.float32).expand(batch, -1))

    def steering_buffers(self) -> dict[int, Tensor]:
        """The live per-layer float32 delta buffers (``[max_batch_size, d_model]``), for inspection
        (the projection's are each wrapper's ``unit`` and ``bounds``)."""
        return {l: w.delta for l, w in self._wrappers.items()}

    # ------------------------------------------------------------------ model plumbing
    @contextlib.contextmanager
    def _installed(self) -> Iterator[Any]:
        """Native mode with every steerable decoder layer replaced by its wrapper; undone on exit."""
        with native(self.model) as hf:
            container = decoder(self.model).layers
            keys = list(container._modules.keys())
            swapped = []
            try:
                for layer, wrapper in self._wrappers.items():
                    key = keys[layer]
                    if container._modules[key] is not wrapper.layer:
                        raise RuntimeError(f"decoder layer {layer} is not the module this generator was built on")
                    container._modules[key] = wrapper
                    swapped.append((key, wrapper.layer))
                yield hf
            finally:
                for key, original in swapped:
                    container._modules[key] = original

    def _forward(self, input_ids: Tensor, position_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _decode(self, input_ids: Tensor, position_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self._forward(input_ids, position_ids, attention_mask)

    # ------------------------------------------------------------------ generation
    def _check(self, n_rows: int, width: int, max_new_tokens: int, steering: Steering | None) -> None:
        if self._closed:
            raise RuntimeError("this CompiledSteeredGenerator is closed")
        if n_rows == 0:
            raise ValueError("no prompts")
        if n_rows > self.max_batch_size:
            raise FastPathLimitError(
                f"{n_rows} prompts exceed max_batch_size={self.max_batch_size}: split them, or build the generator "
                "with a larger max_batch_size")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if width + max_new_tokens > self.max_cache_len:
            raise FastPathLimitError(
                f"prompt width {width} + max_new_tokens {max_new_tokens} = {width + max_new_tokens} exceeds "
                f"max_cache_len={self.max_cache_len}")
        if steering is not None:
            steering.validate(self.model)  # layer range and vector width, as the hook path checks
            if steering.batch_size not in (None, n_rows):
                raise VectorShapeError(f"per-row steering has {steering.batch_size} rows for {n_rows} prompts")

    def generate_ids(
        self,
        prompts: Sequence[str | Messages],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        steering: Steering | None = None,
        min_new_tokens: int | None = None,
        repetition_penalty: float | None = None,
    ) -> list[Generation]:
        """Like :func:`persona_lens.generation.generate_ids` with ``batch_size=max_batch_size``.

        Prompts are generated in batches of ``max_batch_size`` (one compiled graph serves all);
        a per-row steering is split with them. Greedy when ``temperature == 0``, otherwise
        sampling (``temperature``, ``top_p``) seeded with ``seed + batch index``, as
        ``generate_ids`` does (top-k off), so both paths give the same samples.
        ``min_new_tokens`` and ``repetition_penalty`` default to the model's
        ``generation_config`` (which HF ``generate``, hence ``generate_ids``, applies too); other
        ``generation_config`` logits processors (n-gram blocking, bad words, ...) are not applied.
        """
        tok = self.tokenizer
        ids = [prompt_ids(tok, as_messages(p)) for p in prompts]
        if steering is not None and steering.batch_size not in (None, len(ids)):
            raise VectorShapeError(f"per-row steering has {steering.batch_size} rows for {len(ids)} prompts")
        out: list[Generation] = []
        for b, start in enumerate(range(0, len(ids), self.max_batch_size)):
            rows = range(start, min(start + self.max_batch_size, len(ids)))
            out += self.generate_from_ids(
                ids[rows.start:rows.stop], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                seed=None if seed is None else seed + b, steering=None if steering is None else steering.select(rows),
                min_new_tokens=min_new_tokens, repetition_penalty=repetition_penalty)
        return out

    def generate(self, prompts: Sequence[str | Messages], **kwargs) -> list[str]:
        """Completions (text); see :meth:`generate_ids`."""
        return [g.text for g in self.generate_ids(prompts, **kwargs)]

    def generate_from_ids(
        self,
        chunk: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        steering: Steering | None = None,
        min_new_tokens: int | None = None,
        repetition_penalty: float | None = None,
    ) -> list[Generation]:
        """One batch (at most ``max_batch_size`` rows) of already tokenized prompts (token ids,
        no padding), sampling seeded with ``seed`` itself."""
        chunk = [list(map(int, p)) for p in chunk]
        if any(len(p) == 0 for p in chunk):
            raise ValueError("empty prompt")
        batch = len(chunk)
        width = max(len(p) for p in chunk) if chunk else 0
        self._check(batch, width, max_new_tokens, steering)
        step_fn = self._step
        assert step_fn is not None  # _check refuses a closed generator
        config = self.hf.generation_config
        if min_new_tokens is None:
            min_new_tokens = int(getattr(config, "min_new_tokens", None) or 0)
        if repetition_penalty is None:
            repetition_penalty = float(getattr(config, "repetition_penalty", None) or 1.0)
        sampling = temperature > 0
        warpers = self._warpers(temperature, top_p) if sampling else []
        stop_list = sorted(self.stops)
        stops = torch.tensor(stop_list or [-1], dtype=torch.long, device=self.device)

        # Left-pad the real rows; rows up to max_batch_size are dummies (one valid pad token each).
        ids, mask = _left_pad(chunk + [[self.pad_id]] * (self.max_batch_size - batch), self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        full_mask = torch.ones((self.max_batch_size, self.max_cache_len), dtype=torch.long, device=self.device)
        full_mask[:, :width] = mask
        penalty = None
        if repetition_penalty != 1.0:  # as HF builds it: the padding of each row is ignored
            from transformers import RepetitionPenaltyLogitsProcessor

            penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty,
                                                       prompt_ignore_length=(mask != 0).int().argmax(dim=1))

        rng = seeded_rng(seed, self.device) if sampling and seed is not None else contextlib.nullcontext()
        with torch.inference_mode(), self._installed(), rng:
            self._load_steering(steering, batch, [len(p) for p in chunk])
            if self._cache is None:
                self._cache = static_cache(self.hf.config, self.max_cache_len)
            else:
                self._cache.reset()
            self._mask.copy_(full_mask)
            finished = torch.zeros(self.max_batch_size, dtype=torch.bool, device=self.device)
            finished[batch:] = True
            # prompt (padded) + generated ids: the history a repetition penalty looks at
            history = torch.cat([ids, torch.full((self.max_batch_size, max_new_tokens), self.pad_id,
                                                 dtype=torch.long, device=self.device)], dim=1)
            pad = torch.tensor(self.pad_id, dtype=torch.long, device=self.device)

            logits = self._forward(ids, position_ids, full_mask[:, :width])  # eager prefill
            self._pos.copy_(position_ids[:, -1:])
            n_done = max_new_tokens
            for step in range(max_new_tokens):
                if step > 0:
                    if self.compiled and self.device.type == "cuda":
                        torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed
                    logits = step_fn(self._ids, self._pos, self._mask)
                if penalty is not None:
                    logits = penalty(history[:, :width + step], logits)
                if step < min_new_tokens and stop_list:
                    logits[:, stop_list] = float("-inf")
                nxt = self._pick(logits, batch, sampling, warpers)
                nxt = torch.where(finished, pad, nxt)
                history[:, width + step] = nxt
                finished |= torch.isin(nxt, stops)
                self._ids.copy_(nxt[:, None])
                self._pos.add_(1)
                if step + 1 < max_new_tokens and (step + 1) % self.stop_check_every == 0 and bool(finished.all()):
                    n_done = step + 1
                    break
            rows = history[:batch, width:width + n_done].tolist()

        return [to_generation(self.tokenizer, p, row, self.stops) for p, row in zip(chunk, rows)]

    @staticmethod
    def _warpers(temperature: float, top_p: float) -> list:
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        warpers: list = []
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        return warpers

    @staticmethod
    def _pick(logits: Tensor, batch: int, sampling: bool, warpers: list) -> Tensor:
        """Next token per row: argmax, or one multinomial draw over the real rows (as HF does)."""
        if not sampling:
            return torch.argmax(logits, dim=-1)
        scores = logits[:batch]
        for warp in warpers:
            scores = warp(None, scores)
        drawn = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        nxt = torch.argmax(logits, dim=-1)  # dummy rows: anything
        nxt[:batch] = drawn
        return nxt
