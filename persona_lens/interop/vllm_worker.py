"""Per-request steering and capture inside vLLM's continuous batch (the worker side).

:class:`SteeringWorkerExtension` is mixed into vLLM's ``Worker`` through vLLM's own extension
point, ``LLM(..., worker_extension_cls="persona_lens.interop.vllm_worker.SteeringWorkerExtension")``;
``collective_rpc("persona_lens_install")`` then puts PyTorch forward hooks on the model every
rank holds (:func:`install_hooks`; under ``vllm serve`` the plugin
:mod:`persona_lens.serve.vllm_plugin` calls it on every worker as it loads the model). Nothing else of vLLM is replaced: its scheduler, KV cache and batching run as usual.

Each request carries its own steering in ``SamplingParams.extra_args["persona_lens"]``
(:func:`request_payload`): per layer an additive delta (float32, base64) and/or an ``ablate``/``cap``
projection (unit direction and bounds), the position policy, and optionally the prompt length (capture feeds prompt + response as one vLLM prompt) and the
layers to capture. At every engine step a pre-hook on the model reads the step's batch from
the model runner (``input_batch.req_ids`` with ``query_start_loc``: which flat token rows belong
to which request) and the per-token ``positions`` vLLM passes to the model, which are exactly
each token's index in its sequence, so chunked prefill and decode look alike. The one position
policy (:mod:`persona_lens.positions`) turns ``(positions, prompt length)`` into the tokens to
steer; each decoder layer's forward hook applies every selected token's own request operator,
by the one formula of :func:`persona_lens.operators.update` (the HF hook path's).

vLLM's decoder layers return ``(mlp_out, residual)`` and leave the sum to the next layer's fused
add-norm. A steered layer returns ``(mlp_out + residual + change, 0)`` instead: the residual
stream is materialised in the order HF adds (``(residual + mlp_out) + change``), so fp32
generations match HF token for token, and the next fused add is exact (``x + 0``).

Hooks run eagerly: the engine is booted with ``enforce_eager=True`` (no torch.compile / CUDA
graphs), since the per-step token selection is data dependent Python.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..operators import OPEN, update
from ..positions import Positions, check_positions, in_window, window

KEY = "persona_lens"  # the SamplingParams.extra_args entry


def encode_vector(v: Tensor) -> str:
    """A float32 vector as base64 (exact, compact, JSON-safe)."""
    return base64.b64encode(v.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).decode("ascii")


def decode_vector(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.float32)


def request_payload(
    deltas: Mapping[int, Tensor],
    positions: Positions = "response",
    *,
    units: Mapping[int, Tensor] | None = None,
    bounds: Mapping[int, Tensor] | None = None,
    prompt_len: int | None = None,
    capture: Sequence[int] = (),
    capture_key: str | None = None,
) -> dict[str, Any]:
    """The ``extra_args["persona_lens"]`` of one request. ``deltas[l]`` is ``alpha * v[l]``
    (``[d]``); all-zero deltas are dropped (alpha 0 is exactly unsteered). ``units[l]`` (``[d]``
    unit direction) with ``bounds[l]`` (``(lo, hi)``) is an ``ablate``/``cap`` projection
    (:mod:`persona_lens.operators`), sent as ``project: {l: [unit, lo, hi]}`` (``None`` = open side)."""
    payload: dict[str, Any] = {
        "steer": {str(int(l)): encode_vector(d) for l, d in sorted(deltas.items()) if bool(d.any())},
        "positions": check_positions(positions),
    }
    bounds = bounds or {}
    project = {str(int(l)): [encode_vector(u), *(_bound(float(b)) for b in bounds[l])]
               for l, u in sorted((units or {}).items()) if bool(u.any())}
    if project:
        payload["project"] = project
    if prompt_len is not None:
        payload["prompt_len"] = int(prompt_len)
    if capture:
        if capture_key is None:
            raise ValueError("a capturing request needs a capture_key")
        payload["capture"] = sorted({int(l) for l in capture})
        payload["capture_key"] = capture_key
    return payload


def _bound(b: float) -> float | None:
    """A bound for JSON (which has no infinity): ``None`` for an open side."""
    return None if math.isinf(b) else b


def fingerprint(payload: Mapping[str, Any]) -> str:
    """A stable digest of a payload: the request's ``cache_salt``, so KV blocks computed under
    one steering are never reused by a request with another (or none)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class _Request:
    """A payload parsed once per request: per layer ``(delta, unit, lo, hi)`` in float32 on the
    model's device (a zero delta / unit where the layer only projects / only adds)."""

    def __init__(self, payload: Mapping[str, Any], prompt_len: int, device, dtype) -> None:
        self.positions: Positions = check_positions(payload.get("positions", "response"))
        self.prompt_len = int(payload.get("prompt_len", prompt_len))
        deltas = {int(l): decode_vector(v).to(device) for l, v in payload.get("steer", {}).items()}
        project = {int(l): (decode_vector(u).to(device), -math.inf if lo is None else float(lo),
                            math.inf if hi is None else float(hi))
                   for l, (u, lo, hi) in payload.get("project", {}).items()}
        width = next((t.shape[0] for t in [*deltas.values(), *(p[0] for p in project.values())]), 0)
        zero = torch.zeros(width, device=device)
        self.steer: dict[int, tuple[Tensor, Tensor, float, float]] = {
            l: (deltas.get(l, zero), *project.get(l, (zero, *OPEN))) for l in sorted({*deltas, *project})}
        self.capture = [int(l) for l in payload.get("capture", [])]
        self.capture_key = str(payload.get("capture_key", ""))


@dataclass
class LayerSteer:
    """One layer's steered token rows and, per row, the operator's ``delta``/``unit`` (``[n, d]``)
    and projection bounds ``lo``/``hi`` (``[n]``)."""

    rows: Tensor
    delta: Tensor
    unit: Tensor
    lo: Tensor
    hi: Tensor


class StepPlan:
    """What one engine forward does: per layer, the flat token rows to steer with each row's
    operator (:class:`LayerSteer`), and the token rows/positions to capture per request."""

    def __init__(self) -> None:
        self.steer: dict[int, LayerSteer] = {}
        self.capture: dict[int, list[tuple[str, Tensor, Tensor]]] = {}

    @classmethod
    def build(cls, requests: Sequence[_Request | None], query_start_loc: Sequence[int], positions: Tensor) -> StepPlan:
        """``requests[i]`` owns flat rows ``query_start_loc[i]:query_start_loc[i+1]`` of this
        forward; ``positions[row]`` is that token's index in its sequence."""
        plan = cls()
        steer: dict[int, list[list]] = {}
        # A copy: vLLM reuses its positions buffer for the next step (on CPU .to() would alias it).
        pos_cpu = positions.detach().to("cpu", torch.long, copy=True)
        for i, req in enumerate(requests):
            if req is None:
                continue
            start, end = int(query_start_loc[i]), int(query_start_loc[i + 1])
            if end <= start:
                continue
            rows = torch.arange(start, end)
            pos = pos_cpu[start:end]
            if req.steer:
                lo, hi = window(req.positions, torch.tensor([req.prompt_len]))
                chosen = rows[in_window(pos[None], lo, hi)[0]]
                n = len(chosen)
                if n:
                    for layer, (delta, unit_dir, b_lo, b_hi) in req.steer.items():
                        parts = steer.setdefault(layer, [[], [], [], [], []])
                        parts[0].append(chosen)
                        parts[1].append(delta.expand(n, -1))
                        parts[2].append(unit_dir.expand(n, -1))
                        parts[3].append(torch.full((n,), b_lo))
                        parts[4].append(torch.full((n,), b_hi))
            for layer in req.capture:
                plan.capture.setdefault(layer, []).append((req.capture_key, rows, pos))
        device = positions.device
        plan.steer = {l: LayerSteer(*(torch.cat(p).to(device) for p in parts)) for l, parts in steer.items()}
        return plan

    @property
    def empty(self) -> bool:
        return not self.steer and not self.capture


def apply_layer(output: Any, plan: StepPlan, layer: int, store: dict) -> Any:
    """A decoder layer's output, steered (and captured) per ``plan``; unchanged if neither."""
    steer = plan.steer.get(layer)
    captures = plan.capture.get(layer)
    if steer is None and captures is None:
        return output
    fused = isinstance(output, tuple)
    hidden, residual = (output[0], output[1]) if fused else (output, None)
    stream = hidden + residual if residual is not None else hidden.clone()
    if steer is not None:  # the operators' one formula, on the steered rows only
        change = update(stream[steer.rows], steer.delta, steer.unit, steer.lo, steer.hi)
        stream.index_add_(0, steer.rows, change)
    for key, rows, pos in captures or ():
        store.setdefault(key, {}).setdefault(layer, []).append((pos, stream[rows.to(stream.device)].float().cpu()))
    if steer is None:
        return output  # capture only: the layer's output is untouched
    if not fused:
        return stream
    return (stream, torch.zeros_like(residual) if residual is not None else None, *output[2:])


def decoder_layers(model) -> list[tuple[int, torch.nn.Module]]:
    """``(layer index, module)`` for the decoder layers this rank holds (pipeline shards skip
    the rest: vLLM puts parameterless ``PPMissingLayer`` placeholders there)."""
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise RuntimeError(f"{type(model).__name__} has no .model.layers: not a decoder-only vLLM model")
    return [(i, m) for i, m in enumerate(layers) if type(m).__name__ != "PPMissingLayer"]


@dataclass
class _State:
    plan: StepPlan = field(default_factory=StepPlan)
    requests: dict[str, _Request | None] = field(default_factory=dict)  # parsed payloads by vLLM request id
    captures: dict[str, dict[int, list[tuple[Tensor, Tensor]]]] = field(default_factory=dict)
    device: Any = None  # the model's, for the parsed deltas
    dtype: Any = None


def install_hooks(worker) -> list[int]:
    """Hook the model of a vLLM ``Worker`` (idempotent; the state lives on the worker as
    ``_persona_lens``); returns the decoder layers this rank holds. Called by the RPC
    :meth:`SteeringWorkerExtension.persona_lens_install` and by the ``vllm serve`` plugin
    (:mod:`persona_lens.serve.vllm_plugin`) right after the worker loads its weights."""
    runner = worker.model_runner
    if not all(hasattr(runner, a) for a in ("input_batch", "query_start_loc", "requests")):
        raise RuntimeError(f"{type(runner).__name__} is not vLLM's V1 model runner, whose batch layout the "
                           "steering hooks read: set VLLM_USE_V2_MODEL_RUNNER=0")
    if not runner.model_config.enforce_eager:
        raise RuntimeError("the steering hooks are data-dependent Python and must run eagerly: boot vLLM with "
                           "enforce_eager=True (vllm serve --enforce-eager)")
    model = runner.get_model()
    layers = decoder_layers(model)
    if getattr(worker, "_persona_lens", None) is not None:
        return [i for i, _ in layers]
    state = worker._persona_lens = _State()
    param = next(model.parameters())

    def before_forward(_module, args, kwargs):
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        state.plan = _plan(state, runner, positions)

    def after_layer(layer: int):
        def hook(_module, _args, output):
            plan = state.plan
            return output if plan.empty else apply_layer(output, plan, layer, state.captures)
        return hook

    state.device, state.dtype = param.device, param.dtype
    model.register_forward_pre_hook(before_forward, with_kwargs=True)
    for i, module in layers:
        module.register_forward_hook(after_layer(i))
    return [i for i, _ in layers]


def _plan(state: _State, runner, positions: Tensor | None) -> StepPlan:
    """This step's :class:`StepPlan`, from the runner's batch and each request's payload."""
    cache = state.requests
    live = runner.requests
    for rid in [r for r in cache if r not in live]:  # finished requests
        del cache[rid]
    req_ids = [r for r in runner.input_batch.req_ids if r is not None]
    reqs: list[_Request | None] = []
    for rid in req_ids:
        if rid not in cache:
            st = live[rid]
            extra = getattr(st.sampling_params, "extra_args", None) or {}
            payload = extra.get(KEY)
            cache[rid] = (_Request(payload, len(st.prompt_token_ids or ()), state.device, state.dtype)
                          if payload else None)
        reqs.append(cache[rid])
    if positions is None or all(r is None for r in reqs):
        return StepPlan()
    qsl = runner.query_start_loc.np[: len(req_ids) + 1].tolist()
    return StepPlan.build(reqs, qsl, positions)


class SteeringWorkerExtension:
    """Mixed into vLLM's ``Worker`` (methods are ``persona_lens_*`` to avoid collisions)."""

    model_runner: Any  # the Worker's (an annotation only: no attribute to collide with)
    _persona_lens: _State

    def persona_lens_install(self) -> list[int]:
        """Hook the model (idempotent); returns the decoder layers this rank holds."""
        return install_hooks(self)

    def persona_lens_take(self, keys: Sequence[str]) -> dict[str, dict[int, tuple[list[int], bytes]]]:
        """Captured ``[tokens, d]`` residual streams per key and layer (ordered by position),
        removed from the worker, as ``(shape, float32 bytes)`` (:func:`decode_rows`): vLLM's RPC
        channel does not carry tensors as tensors."""
        store = self._persona_lens.captures
        out: dict[str, dict[int, tuple[list[int], bytes]]] = {}
        for key in keys:
            per_layer = store.pop(key, {})
            out[key] = {}
            for layer, chunks in per_layer.items():
                pos = torch.cat([p for p, _ in chunks])
                rows = torch.cat([h for _, h in chunks])
                order = torch.argsort(pos, stable=True)
                pos, rows = pos[order], rows[order]
                keep = torch.ones_like(pos, dtype=torch.bool)  # a re-run position keeps its last value
                keep[:-1] = pos[1:] != pos[:-1]
                rows = rows[keep].contiguous()
                out[key][layer] = (list(rows.shape), rows.numpy().tobytes())
        return out


def decode_rows(shape: Sequence[int], data: bytes) -> Tensor:
    """The tensor :meth:`SteeringWorkerExtension.persona_lens_take` sent."""
    return torch.frombuffer(bytearray(data), dtype=torch.float32).reshape(*shape)


__all__ = ["SteeringWorkerExtension", "StepPlan", "install_hooks", "fingerprint", "request_payload", "apply_layer",
           "decode_rows", "KEY", "LayerSteer"]
