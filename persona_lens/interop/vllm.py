"""Steering and activation capture on vLLM, through TransformerLens 4's ``RemoteBridge.boot_vllm``.

``VLLMBackend(model_name, tensor_parallel_size=1, pipeline_parallel_size=1, **engine_kwargs)``
boots the engine lazily on first use (``vllm`` is imported only then; install it with
``pip install persona-lens[vllm]``, Linux + CUDA). It speaks persona_lens' vocabulary:

* ``generate(prompts, steering=None, ...)`` -> ``list[str]``: chat prompts rendered with
  persona_lens' own template handling, steered by a :class:`~persona_lens.steering.Steering`.
* ``capture(prompts, responses=None, layers=..., reductions=...)`` -> the same
  :class:`~persona_lens.capture.Captured` that :func:`persona_lens.capture.capture` returns.

How our requests map onto TransformerLens' declarative vLLM interventions
-------------------------------------------------------------------------
persona_lens layer ``l`` is TransformerLens ``blocks.{l}.hook_resid_post``. In TL 4 that name is
an alias (``BlockBridge.hook_aliases``: ``hook_resid_post -> hook_out``) of the canonical
``blocks.{l}.hook_out``, and the vLLM overlay (``sources/vllm/overlays/decoder_only.py``) serves
exactly ``blocks.{l}.hook_out`` on ``model.layers.{l}``, materialising vLLM's fused
``(mlp_delta, residual)`` output into the full residual stream, i.e. the output of decoder
layer ``l`` (HF ``hidden_states[l + 1]``). The driver only accepts canonical names for
interventions, so specs and captures use ``blocks.{l}.hook_out``.

A steering delta ``alpha * v[l]`` becomes ``{"blocks.{l}.hook_out": {"op": "add", "value": [...]}}``,
validated with TL's own ``validate_spec`` (width-checked). The worker applies it as the affine
``out * 1 + bias`` on every forward the engine runs, prefill and decode alike. Position modes:

* ``"all"``: expressible everywhere (a spec without ``pos``).
* ``"prompt"`` / ``"response"`` in *capture* (one full-sequence forward per row): expressible
  with ``pos`` lists (``prompt``: rows ``0..P-1``; ``response``: ``P-1..end``, the last prompt
  token plus the response, as in persona_lens' capture), which needs
  ``enable_position_interventions=True`` and the compiled (non-batched) path.
* ``"prompt"`` / ``"response"`` in *generation*: **not expressible**. ``pos`` indexes the token
  rows of each engine forward, so during decode (one row per step) row 0 would alias the first
  prompt token of the prefill; TL exposes no prefill/decode switch. These raise
  ``NotImplementedError``; ``positions="all"`` differs from ``"response"`` only on the prompt
  tokens before the last one.
* Per-row steering (``Steering.per_row``): TL's specs are global to a forward, so ``generate``
  runs one engine call per distinct row vector (rows sharing a vector run together).

Multi-GPU: ``tensor_parallel_size`` / ``pipeline_parallel_size`` pass to ``boot_vllm``;
``distributed_executor_backend`` (e.g. ``"ray"`` for multi-node) passes to ``vllm.LLM``. TL
documents its TP/PP support as single-node (its capture-spec channel is an environment variable
inside the booting process); on Ray workers that miss it, TL's boot-time hook-coverage check
fails loudly rather than serving zeros.

Generation uses the same worker RPCs (``tl_set_interventions`` / ``tl_set_batched_interventions``)
that TL's ``VLLMDriver.forward`` uses, on the engine the bridge owns, because TL 4.3's driver
forward is single-token (``max_new_tokens=1``); interventions are reset after every call.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Iterable, Sequence

import torch

from ..capture import REDUCTIONS, Captured, prepare_inputs
from ..chat import Messages, as_messages, make_batch, prompt_ids
from ..errors import LayerOutOfRangeError, VectorShapeError
from ..steering import Steering

INSTALL_HINT = "pip install persona-lens[vllm]"


def resid_post_hook(layer: int) -> str:
    """The canonical TL-vLLM hook for persona_lens layer ``l`` (alias ``blocks.{l}.hook_resid_post``)."""
    return f"blocks.{layer}.hook_out"


def _validate_spec(hook: str, spec: dict, width: int | None) -> dict:
    from transformer_lens.model_bridge.sources.vllm.intervention_specs import validate_spec

    return validate_spec(hook, spec, width=width)


def _require_vllm() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise ImportError(
            f"the vLLM backend needs vLLM (Linux + CUDA): {INSTALL_HINT} "
            "(TransformerLens' boot_vllm is validated against vllm 0.20.x)")


def _vllm_types():
    """``(SamplingParams, TokensPrompt)``; a seam for tests."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    return SamplingParams, TokensPrompt


class VLLMBackend:
    """persona_lens steering/capture on a vLLM engine booted by ``RemoteBridge.boot_vllm``.

    ``enable_batching=True`` selects TL's eager batched path (many sequences per forward: the
    capture throughput path; no ``pos`` specs). The default compiled path runs CUDA graphs and is
    the fast path for generation; its captures are one sequence per forward.
    ``enable_position_interventions=True`` allows ``prompt``/``response`` steering in capture.
    Remaining keyword arguments go to ``boot_vllm`` and on to ``vllm.LLM`` (e.g. ``max_model_len``,
    ``gpu_memory_utilization``, ``distributed_executor_backend``).
    """

    def __init__(
        self,
        model_name: str,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        *,
        dtype: torch.dtype | str | None = None,
        max_num_batched_tokens: int = 2048,
        enable_batching: bool = False,
        enable_position_interventions: bool = False,
        bridge: Any = None,
        **engine_kwargs: Any,
    ) -> None:
        for name, size in (("tensor_parallel_size", tensor_parallel_size),
                           ("pipeline_parallel_size", pipeline_parallel_size)):
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"{name} must be a positive int, got {size!r}")
        if enable_batching and (tensor_parallel_size > 1 or pipeline_parallel_size > 1):
            raise ValueError("enable_batching=True is incompatible with tensor/pipeline parallelism in "
                             "TransformerLens' vLLM source; use the compiled path")
        if enable_batching and enable_position_interventions:
            raise ValueError("enable_position_interventions needs the compiled path (enable_batching=False)")
        self.model_name = model_name
        self.tensor_parallel_size = tensor_parallel_size
        self.pipeline_parallel_size = pipeline_parallel_size
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.max_num_batched_tokens = max_num_batched_tokens
        self.enable_batching = enable_batching
        self.enable_position_interventions = enable_position_interventions
        self.engine_kwargs = engine_kwargs
        self._bridge = bridge  # injected (tests, or an already booted RemoteBridge)
        self._stops: list[int] | None = None

    # ------------------------------------------------------------------ engine
    @property
    def bridge(self):
        """The ``RemoteBridge``; boots vLLM on first access."""
        if self._bridge is None:
            _require_vllm()
            from transformer_lens.model_bridge import RemoteBridge

            self._bridge = RemoteBridge.boot_vllm(
                self.model_name,
                dtype=self.dtype,
                max_num_batched_tokens=self.max_num_batched_tokens,
                enable_batching=self.enable_batching,
                enable_position_interventions=self.enable_position_interventions,
                tensor_parallel_size=self.tensor_parallel_size,
                pipeline_parallel_size=self.pipeline_parallel_size,
                **self.engine_kwargs,
            )
            tok = self._bridge.tokenizer
            if tok is not None and tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
        return self._bridge

    @property
    def booted(self) -> bool:
        return self._bridge is not None

    @property
    def tokenizer(self):
        return self.bridge.tokenizer

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    def _engine(self):
        """The ``vllm.LLM`` the bridge's driver owns (for multi-token generation)."""
        llm = getattr(getattr(self.bridge, "_driver", None), "_llm", None)
        if llm is None:
            raise RuntimeError("the vLLM bridge has no live engine (closed?)")
        return llm

    def close(self) -> None:
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None

    def __enter__(self) -> "VLLMBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ specs
    def _width(self) -> int | None:
        return self.d_model if self.booted else None

    def _check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise LayerOutOfRangeError(f"layer must be a non-negative int, got {layer!r}")
        if self.booted and layer >= self.n_layers:
            raise LayerOutOfRangeError(f"layer {layer} is out of range: this model has layers 0..{self.n_layers - 1}")
        return layer

    def capture_specs(self, layers: Iterable[int]) -> tuple[str, ...]:
        """Hook names to capture for persona_lens layers (sorted, unique)."""
        return tuple(resid_post_hook(self._check_layer(l)) for l in sorted(set(layers)))

    def steer_specs(
        self,
        steering: Steering | None,
        *,
        prompt_len: int | None = None,
        seq_len: int | None = None,
    ) -> dict[str, dict]:
        """TL intervention specs for a steering (``{}`` for none / alpha 0).

        Without ``prompt_len``/``seq_len`` the specs are for generation (only ``positions="all"``
        is expressible); with them, for one full-sequence forward of ``seq_len`` tokens whose
        first ``prompt_len`` are the prompt (capture).
        """
        if steering is None or steering.is_noop:
            return {}
        width = self._width()
        pos: list[int] | None = None
        if steering.positions != "all":
            if prompt_len is None or seq_len is None:
                raise NotImplementedError(
                    f"positions={steering.positions!r} cannot be expressed for vLLM generation: "
                    "TransformerLens' vLLM interventions apply to every token of every engine forward "
                    "(a 'pos' index would hit decode tokens and the first prompt tokens alike). "
                    "Use positions='all', or the HF backend (persona_lens.generate).")
            if self.enable_batching or not self.enable_position_interventions:
                raise NotImplementedError(
                    f"positions={steering.positions!r} in capture needs per-position interventions: "
                    "VLLMBackend(..., enable_position_interventions=True) on the compiled path "
                    "(enable_batching=False). Or use positions='all'.")
            if not 0 < prompt_len <= seq_len:
                raise ValueError(f"bad prompt_len={prompt_len} for seq_len={seq_len}")
            pos = (list(range(prompt_len)) if steering.positions == "prompt"
                   else list(range(prompt_len - 1, seq_len)))
        specs: dict[str, dict] = {}
        for layer, delta in sorted(steering.deltas.items()):
            hook = resid_post_hook(self._check_layer(layer))
            if delta.ndim == 2:
                if not bool((delta == delta[:1]).all()):
                    raise NotImplementedError(
                        "per-row steering (a different vector per batch row) has no single TL spec; "
                        "VLLMBackend.generate groups rows by vector, or select() one row first")
                delta = delta[0]
            if width is not None and delta.shape[-1] != width:
                raise VectorShapeError(f"steering vector width {delta.shape[-1]} does not match d_model {width}")
            if not bool(delta.any()):
                continue
            spec: dict[str, Any] = {"op": "add", "value": delta.to(torch.float32).tolist()}
            if pos is not None:
                spec["pos"] = pos
            specs[hook] = _validate_spec(hook, spec, width)
        return specs

    # ------------------------------------------------------------------ generation
    def _stop_ids(self) -> list[int]:
        if self._stops is not None:
            return self._stops
        tok = self.tokenizer
        ids: set[int] = set()
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        try:
            from transformers import GenerationConfig

            # local_files_only: boot_vllm has already fetched the model; never reach a hub here.
            eos = GenerationConfig.from_pretrained(self.model_name, local_files_only=True).eos_token_id
            if eos is not None:
                ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
        except Exception:  # no generation_config.json: the tokenizer's EOS is enough
            pass
        self._stops = sorted(ids)
        return self._stops

    def _set_interventions(self, specs: dict) -> None:
        method = "tl_set_batched_interventions" if self.enable_batching else "tl_set_interventions"
        self._engine().collective_rpc(method, args=(specs,))

    def generate(
        self,
        prompts: Sequence[str | Messages],
        steering: Steering | None = None,
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        """Completions for chat prompts (greedy at ``temperature=0``), steered on every token."""
        tok = self.tokenizer
        ids = [prompt_ids(tok, as_messages(p)) for p in prompts]
        if steering is not None and steering.batch_size not in (None, len(ids)):
            raise ValueError(f"per-row steering has {steering.batch_size} rows for {len(ids)} prompts")
        groups = self._groups(steering, len(ids))
        SamplingParams, TokensPrompt = _vllm_types()
        stops = self._stop_ids()
        params = SamplingParams(
            max_tokens=int(max_new_tokens), temperature=float(temperature),
            top_p=float(top_p) if temperature > 0 else 1.0, seed=seed,
            stop_token_ids=stops, detokenize=False)  # boot_vllm runs vLLM without a tokenizer
        texts: list[str | None] = [None] * len(ids)
        engine = self._engine()
        for rows, specs in groups:
            try:
                self._set_interventions(specs)
                outputs = engine.generate([TokensPrompt(prompt_token_ids=ids[r]) for r in rows], params,
                                          use_tqdm=False)
            finally:
                self._set_interventions({})
                if self.enable_batching:  # the eager hooks accumulate every forward's activations
                    engine.collective_rpc("tl_reset_accumulators")
            for r, out in zip(rows, outputs):
                resp = []
                for t in out.outputs[0].token_ids:
                    if t in stops:
                        break
                    resp.append(int(t))
                texts[r] = tok.decode(resp, skip_special_tokens=True).strip()
        return texts  # type: ignore[return-value]

    @staticmethod
    def _row_groups(steering: Steering, n: int) -> list[list[int]]:
        """Rows of a per-row steering that share identical deltas at every layer."""
        groups: dict[bytes, list[int]] = {}
        for r in range(n):
            key = b"".join(d[r].numpy().tobytes() if d.ndim == 2 else d.numpy().tobytes()
                           for _, d in sorted(steering.deltas.items()))
            groups.setdefault(key, []).append(r)
        return list(groups.values())

    def _groups(self, steering: Steering | None, n: int) -> list[tuple[list[int], dict]]:
        """Rows that share one set of interventions, with those specs (generation)."""
        if steering is None or steering.batch_size is None:
            return [(list(range(n)), self.steer_specs(steering))]
        return [(rows, self.steer_specs(steering.select([rows[0]]))) for rows in self._row_groups(steering, n)]

    # ------------------------------------------------------------------ capture
    def _run_with_cache(self, input_ids, names: Sequence[str], intervene: dict) -> dict[str, torch.Tensor]:
        _, cache = self.bridge.run_with_cache(
            input_ids, names_filter=list(names), return_type=None, intervene=intervene, return_logits=False)
        return {n: cache[n] for n in names}

    def capture(
        self,
        prompts: Sequence[str | Messages],
        responses: Sequence[str] | None = None,
        *,
        layers: Iterable[int] | None = None,
        reductions: Sequence[str] = REDUCTIONS,
        batch_size: int = 8,
        steering: Steering | None = None,
    ) -> Captured:
        """Reduced ``blocks.{l}.hook_resid_post`` activations, as :func:`persona_lens.capture.capture`.

        The engine returns full ``[batch, pos, d_model]`` activations for the requested hooks;
        they are reduced on arrival, batch by batch, so host memory stays
        ``O(n x layers x d_model)`` plus one batch. Compiled path: one sequence per forward.
        """
        tok = self.tokenizer
        layers, reductions, p_ids, r_ids = prepare_inputs(tok, prompts, responses, layers, reductions,
                                                          n_layers=self.n_layers, check_layer=self._check_layer)
        if steering is not None and steering.batch_size not in (None, len(p_ids)):
            raise ValueError(f"per-row steering has {steering.batch_size} rows for {len(p_ids)} prompts")
        names = self.capture_specs(layers)
        n, width = len(p_ids), self.d_model
        out = {r: torch.zeros(n, len(layers), width, dtype=torch.float32) for r in reductions}
        step = batch_size if self.enable_batching else 1
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        for start in range(0, n, step):
            rows = list(range(start, min(start + step, n)))
            seqs = [p_ids[i] + (r_ids[i] if r_ids else []) for i in rows]
            batch = make_batch([p_ids[i] for i in rows], [r_ids[i] for i in rows] if r_ids else None, pad,
                               require_response="response_mean" in reductions)
            sub = steering.select(rows) if steering is not None else None
            if sub is not None and sub.batch_size is not None:
                if len(self._row_groups(sub, len(rows))) > 1:
                    raise NotImplementedError(
                        "per-row steering with different vectors inside one batched forward has no TL spec: "
                        "use batch_size=1 or the compiled path")
                sub = sub.select([0])
            specs = self.steer_specs(sub, prompt_len=len(p_ids[rows[0]]), seq_len=len(seqs[0]))
            cache = self._run_with_cache(seqs if self.enable_batching else seqs[0], names, specs)
            self._reduce(cache, names, batch, rows, out)
        return Captured(layers, out)

    @staticmethod
    def _reduce(cache: dict, names: Sequence[str], batch, rows: list[int], out: dict) -> None:
        width = batch.input_ids.shape[1]
        sl = slice(rows[0], rows[-1] + 1)
        masks = {"response_mean": batch.response_mask, "prompt_mean": batch.prompt_mask}
        for i, name in enumerate(names):
            h = torch.as_tensor(cache[name])
            if h.ndim == 2:
                h = h[None]
            h = h[:, :width].to(torch.float32)
            if h.shape[:2] != batch.input_ids.shape:
                raise RuntimeError(f"{name}: captured shape {tuple(h.shape)} does not match the batch "
                                   f"{tuple(batch.input_ids.shape)}")
            for r, mask in masks.items():
                if r in out:
                    m = mask.to(h.dtype)
                    out[r][sl, i] = torch.bmm(m[:, None, :], h)[:, 0] / m.sum(1, keepdim=True)
            if "last_prompt" in out:
                out["last_prompt"][sl, i] = h[torch.arange(h.shape[0]), batch.last_prompt_index]


__all__ = ["VLLMBackend", "resid_post_hook", "INSTALL_HINT"]
