"""Per-request persona steering through vLLM's own OpenAI server (runs inside ``vllm serve``).

Both pieces sit on vLLM's extension points (the command line that wires them is
:func:`persona_lens.serve.vllm_launch.vllm_serve_command`):

* :class:`PersonaSteering`, a logits processor (``--logits-processors``). vLLM runs its
  ``validate_params`` in the API server on every request before admitting it: the steering
  fields of ``vllm_xargs`` (vLLM copies them into ``SamplingParams.extra_args``) are read by the
  same rules as ``persona-lens serve`` (:func:`persona_lens.serve.protocol.read_steering`) and
  become per-layer deltas in ``extra_args["persona_lens"]``, which the workers' hooks apply per
  token. ``operator`` (``add``, ``ablate``, ``cap``) and ``cap`` (``[lo, hi]``, ``null`` = open
  side) choose the operator (:mod:`persona_lens.operators`; ``ablate``/``cap`` take no ``alpha``). A bad request raises ``VLLMValidationError``, which vLLM answers with HTTP 400 and the
  message; the engine never sees it. vLLM also builds one instance in every worker, as the model
  runner starts and before it loads the weights: that instance calls :func:`register`, which
  makes the worker hook its decoder layers (:func:`persona_lens.interop.vllm_worker.install_hooks`)
  right after loading them, and fail the boot if the named vectors do not fit the model. It
  leaves the logits alone.
* :class:`SteeringCacheSalt`, an ASGI middleware (``--middleware``): a steered request's
  ``cache_salt`` becomes a digest of its steering (and of any salt the client sent), so prefix
  caching reuses KV blocks only between requests with the same steering. ``validate_params``
  cannot do this: ``cache_salt`` is a field of the prompt, not of ``SamplingParams``.

:func:`register` is not a ``vllm.general_plugins`` entry point on purpose: vLLM would import
persona_lens in every process of every engine in the environment, and entry points are found
through package metadata, which a stale ``persona_lens.egg-info`` in the working directory
shadows (the hooks were then silently missing). The logits processor is named on the command
line and imported by exactly the engines that serve steering.

The model's shape seen by the API server is the vectors' shape (``[n_layers, d_model]``, all
equal); every worker checks it against the model it loads.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import torch
from vllm.exceptions import VLLMValidationError
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from ..errors import OperatorError, VectorShapeError
from ..interop import load_vector
from ..interop.vllm import steering_payload
from ..interop.vllm_worker import KEY, fingerprint, install_hooks
from ..steering import Steering
from ..vectors import PersonaVector
from .protocol import STEERING_FIELDS, RequestError, read_monitor, read_steering
from .vllm_launch import VECTORS_ENV, parse_vectors

REQUEST_FIELDS = ("persona", "vector", *STEERING_FIELDS, "monitor", "monitor_layer", "operator", "cap")
SALTED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


class VectorShape:
    """The served model's ``n_layers`` and ``d_model`` as the loaded vectors give them."""

    supports_monitor = False  # per-token projections need the hf backend

    def __init__(self, n_layers: int, d_model: int) -> None:
        self.n_layers, self.d_model = n_layers, d_model

    def validate(self, steering: Steering) -> None:
        for delta in [*steering.deltas.values(), *steering.units.values()]:
            if delta.shape[-1] != self.d_model:
                raise VectorShapeError(f"steering vector width {delta.shape[-1]} does not match the model's "
                                       f"d_model {self.d_model}")


@functools.cache
def served_vectors() -> tuple[dict[str, PersonaVector], VectorShape]:
    """The vectors ``PERSONA_LENS_VECTORS`` names (loaded once per process) and their shape."""
    vectors = {name: load_vector(path) for name, path in parse_vectors(os.environ.get(VECTORS_ENV, "")).items()}
    if not vectors:
        raise VectorShapeError(f"{VECTORS_ENV} names no vector: give at least one NAME=FILE")
    shapes = {(v.n_layers, v.d_model) for v in vectors.values()}
    if len(shapes) > 1:
        raise VectorShapeError(f"{VECTORS_ENV}: the vectors disagree in shape ([n_layers, d_model]: "
                               f"{ {n: (v.n_layers, v.d_model) for n, v in vectors.items()} })")
    (n_layers, d_model), = shapes
    return vectors, VectorShape(n_layers, d_model)


def steering_fields(extra_args: Any) -> dict[str, Any]:
    """The persona_lens fields of a request's ``vllm_xargs`` / ``extra_args``."""
    if not isinstance(extra_args, dict):
        return {}
    return {k: extra_args[k] for k in REQUEST_FIELDS if k in extra_args}


# --------------------------------------------------------------------------- worker side


def _check_model(worker) -> None:
    _, shape = served_vectors()
    config = worker.model_runner.model_config.hf_text_config
    model = (int(config.num_hidden_layers), int(config.hidden_size))
    if (shape.n_layers, shape.d_model) != model:
        raise VectorShapeError(f"{VECTORS_ENV}: the vectors are [{shape.n_layers}, {shape.d_model}] but the model "
                               f"has {model[0]} layers of width {model[1]}")


def register() -> None:
    """With ``PERSONA_LENS_VECTORS`` set, vLLM's workers in this process hook their layers as they
    load the model (``Worker.load_model`` is wrapped once, however often this is called)."""
    if VECTORS_ENV not in os.environ:
        return
    from vllm.v1.worker.gpu_worker import Worker  # the CPU worker subclasses it

    if getattr(Worker, "_persona_lens_hooks_on_load", False):
        return
    load_model = Worker.load_model

    @functools.wraps(load_model)
    def load_and_hook(self, *args, **kwargs):
        load_model(self, *args, **kwargs)
        _check_model(self)
        install_hooks(self)

    Worker.load_model = load_and_hook  # type: ignore[method-assign]
    Worker._persona_lens_hooks_on_load = True  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- API server side


def resolve(extra_args: dict[str, Any]) -> dict[str, Any] | None:
    """The ``extra_args["persona_lens"]`` payload of a request's steering fields (``None``: no
    steering asked); a :class:`~persona_lens.serve.protocol.RequestError` names a bad field."""
    fields = steering_fields(extra_args)
    if not fields:
        return None
    vectors, shape = served_vectors()
    operator, cap = fields.pop("operator", None), fields.pop("cap", None)
    projecting = operator not in (None, "add")
    if (operator is not None or cap is not None) and fields.get("persona") is None and fields.get("vector") is None:
        raise RequestError("operator/cap were given without persona (or vector): nothing to steer with",
                           "operator" if operator is not None else "cap")
    if projecting:
        for name in ("alpha", "strength"):
            if fields.get(name) is not None:
                raise RequestError(f"operator {operator!r} sets the projection on the vector and takes no {name}", name)
        fields["alpha"] = 1.0  # the direction itself: ablate/cap read its unit vector
    steering, described = read_steering(fields, vectors, shape)
    read_monitor(fields, vectors, shape, described.get("layers", []))
    if steering is None:
        return None
    try:
        steering = steering.as_operator(operator or "add", cap)
    except OperatorError as exc:
        raise RequestError(str(exc), "cap" if cap is not None and operator in (None, "cap") else "operator") from None
    return steering_payload(steering)


class PersonaSteering(LogitsProcessor):
    """Checks and resolves the steering of each request in the API server (``validate_params``)
    and hooks the workers (``__init__``); does nothing to the logits."""

    @classmethod
    def validate_params(cls, sampling_params) -> None:
        extra = sampling_params.extra_args
        try:
            payload = resolve(extra or {})
        except RequestError as exc:
            raise VLLMValidationError(exc.message, parameter=f"vllm_xargs.{exc.param}" if exc.param else None) from None
        if payload is not None:
            sampling_params.extra_args = {**extra, KEY: payload}

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        register()  # built by the worker's model runner, before the worker loads the model

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass


def salted(body: bytes) -> bytes:
    """A request body with ``cache_salt`` = digest of its steering (and the client's salt); bodies
    without steering (or not JSON: vLLM reports those) are returned as they are."""
    try:
        request = json.loads(body)
    except ValueError:
        return body
    fields = steering_fields(request.get("vllm_xargs")) if isinstance(request, dict) else {}
    if not fields:
        return body
    request["cache_salt"] = fingerprint({"steering": fields, "client_salt": request.get("cache_salt")})
    return json.dumps(request).encode()


class SteeringCacheSalt:
    """ASGI middleware: :func:`salted` request bodies on the generation endpoints."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") not in SALTED_PATHS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nothing to answer
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = salted(b"".join(chunks))
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


__all__ = ["PersonaSteering", "SteeringCacheSalt", "register", "resolve", "salted", "served_vectors"]
