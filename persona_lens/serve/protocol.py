"""The request side of the OpenAI-compatible server: JSON bodies checked and turned into rows.

Everything a request can get wrong is found here, before it is queued, and raised as a
:class:`RequestError` naming the field (``param``), which the app answers with OpenAI's 400 body
``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``.

Steering fields (top level of the body; the official ``openai`` client sends them through
``extra_body``):

* ``persona``: a loaded vector's name, or a list of names blended with
  :func:`persona_lens.blend.blend` (``blend``: the method, default ``mean``, or ``weighted`` when
  ``weights`` are given); or ``vector``: one inline direction (``d_model`` floats) used at every
  steered layer;
* ``alpha`` (required with a persona, unless ``strength``), ``layer`` or ``layers``, ``positions``
  (``response`` | ``prompt`` | ``all``; default ``response``);
* ``strength`` instead of ``alpha``: the calibrated dose (:mod:`persona_lens.dose`; the fraction
  of the measured unsteered-to-positive-prompt trait gap) of one persona whose vector has a dose
  card; mapped to ``alpha`` at ``layer`` (default: the card's layer; positions default to the
  card's) and echoed with the ``alpha`` used;
* ``monitor``: names of loaded vectors; the response then carries each generated token's
  projection on ``v[layer] / ||v[layer]||`` at ``monitor_layer`` (default: the steered layer).

A request without ``persona`` / ``vector`` is a plain generation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..blend import BLEND_METHODS, blend
from ..chat import Messages
from ..dose import alpha_for_strength, read_card
from ..errors import (
    LayerOutOfRangeError,
    ModelMismatchError,
    NoDoseCardError,
    NonFiniteError,
    OperatorError,
    StrengthOutOfRangeError,
    VectorShapeError,
)
from ..operators import OPERATORS, check_operator
from ..positions import POSITIONS
from ..steering import Steering
from ..vectors import PersonaVector

ROLES = ("system", "user", "assistant")
STEERING_FIELDS = ("alpha", "strength", "operator", "cap", "layer", "layers", "positions", "weights", "blend")


class RequestError(Exception):
    """A request the server refuses, with the OpenAI error fields."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400,
                 code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.kind = message, param, status, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class ModelShape(Protocol):
    """What request checking needs to know of the served model (a backend)."""

    n_layers: int
    d_model: int
    supports_monitor: bool

    def validate(self, steering: Steering) -> None: ...


@dataclass(frozen=True)
class Sampling:
    """Decoding settings a batch shares. ``temperature == 0`` is greedy (seed and top_p unused)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Monitor:
    layer: int
    vectors: dict[str, PersonaVector]


@dataclass
class Row:
    """One prompt to answer: the unit the batcher packs into a generate call."""

    prompt: Messages
    max_tokens: int
    steering: Steering | None = None
    monitor: Monitor | None = None


@dataclass
class ParsedRequest:
    kind: str  # "chat" or "completion"
    rows: list[Row]
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    steering: dict = field(default_factory=dict)  # echoed in the response


# --------------------------------------------------------------------------- field readers


def _number(body: dict, name: str, default: float, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {value!r}", name)
    value = float(value)
    if not math.isfinite(value):
        raise RequestError(f"{name} must be finite, got {value!r}", name)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise RequestError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value}", name)
    if hi is not None and value > hi:
        raise RequestError(f"{name} must be <= {hi}, got {value}", name)
    return value


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}", name)
    return value


def _names(value: Any, name: str) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise RequestError(f"{name} must be a vector name or a non-empty list of names, got {value!r}", name)
    return names


def _content(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def read_messages(body: dict) -> Messages:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages is required: a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with role and content", f"messages[{i}]")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {ROLES}, got {m.get('role')!r}",
                               f"messages[{i}].role")
        out.append({"role": role, "content": _content(m.get("content"), i)})
    return out


def read_prompts(body: dict) -> list[Messages]:
    """``prompt`` of ``/v1/completions``: a string or a list of strings, each answered as the user
    turn of a chat, as ``persona-lens steer PROMPT`` does."""
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt is required: a string or a non-empty list of strings", "prompt")
    return [[{"role": "user", "content": p}] for p in prompts]


# --------------------------------------------------------------------------- steering


def _layers(body: dict) -> list[int]:
    if "layer" in body and "layers" in body:
        raise RequestError("give either layer or layers, not both", "layers")
    if body.get("layer") is not None:
        return [_integer(body["layer"], "layer")]
    layers = body.get("layers")
    if layers is None:
        raise RequestError("steering needs a layer (or layers)", "layer")
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, list) or not layers:
        raise RequestError(f"layers must be a non-empty list of integers, got {layers!r}", "layers")
    return [_integer(l, "layers") for l in layers]


def _check_layers(layers: Sequence[int], shape: ModelShape, param: str) -> None:
    for l in layers:
        if not 0 <= l < shape.n_layers:
            raise RequestError(f"{param} {l} is out of range: this model has layers 0..{shape.n_layers - 1}", param)


def _direction(body: dict, vectors: dict[str, PersonaVector]) -> tuple[PersonaVector | torch.Tensor, dict]:
    """The request's steering direction and how it was chosen."""
    if body.get("vector") is not None and body.get("persona") is not None:
        raise RequestError("give either persona or vector, not both", "vector")
    if body.get("persona") is None:
        values = body["vector"]
        if not isinstance(values, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in values):
            raise RequestError("vector must be a list of numbers (one direction of width d_model)", "vector")
        t = torch.tensor(values, dtype=torch.float32)
        if not torch.isfinite(t).all():
            raise RequestError("vector holds NaN or inf", "vector")
        return t, {"vector": f"inline[{len(values)}]"}
    names = _names(body["persona"], "persona")
    unknown = [n for n in names if n not in vectors]
    if unknown:
        raise RequestError(f"unknown persona {unknown[0]!r}; loaded: {sorted(vectors)}", "persona",
                           code="persona_not_found")
    weights = body.get("weights")
    method = body.get("blend", "weighted" if weights is not None else "mean")
    if method not in BLEND_METHODS:
        raise RequestError(f"blend must be one of {BLEND_METHODS}, got {method!r}", "blend")
    if len(names) == 1 and weights is None and method == "mean":
        return vectors[names[0]], {"persona": names[0]}
    if weights is not None and (not isinstance(weights, list) or len(weights) != len(names)
                                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)):
        raise RequestError(f"weights must be a list of {len(names)} numbers, one per persona", "weights")
    try:
        blended = blend([vectors[n] for n in names], method, weights)
    except NonFiniteError as exc:
        raise RequestError(str(exc), "weights") from None
    except (ModelMismatchError, VectorShapeError, ValueError) as exc:
        raise RequestError(f"cannot blend {names}: {exc}", "persona") from None
    return blended, {"persona": names, "blend": method, "weights": blended.metadata["weights"]}


def _calibrated(body: dict, direction: PersonaVector | torch.Tensor, blended: bool,
                shape: ModelShape) -> tuple[float, list[int], str, dict]:
    """``strength`` through the persona's dose card: (alpha, [layer], positions, what to echo)."""
    if body.get("alpha") is not None:
        raise RequestError("give either alpha or strength, not both", "strength")
    strength = _number(body, "strength", 0.0)
    if not isinstance(direction, PersonaVector) or blended:
        raise RequestError("strength needs one persona whose vector has a dose card (not an inline vector or a "
                           "blend)", "strength")
    layer = None
    if body.get("layer") is not None or body.get("layers") is not None:
        given = _layers(body)
        if len(given) != 1:
            raise RequestError("strength steers at one layer (the dose card's curve is per layer)", "layers")
        _check_layers(given, shape, "layer" if "layer" in body else "layers")
        layer = given[0]
    try:
        card = read_card(direction, source=f"persona {direction.name!r}")
        layer, alpha = alpha_for_strength(card, strength, layer)
    except NoDoseCardError as exc:
        raise RequestError(str(exc), "strength", code="no_dose_card") from None
    except StrengthOutOfRangeError as exc:
        raise RequestError(str(exc), "strength", code="strength_out_of_range") from None
    positions = body.get("positions", card.positions)
    return alpha, [layer], positions, {"strength": strength, "dose_judge": card.judge}


def read_steering(body: dict, vectors: dict[str, PersonaVector], shape: ModelShape) -> tuple[Steering | None, dict]:
    """The request's :class:`Steering` (``None``: a plain generation) and its description."""
    if body.get("persona") is None and body.get("vector") is None:
        stray = [f for f in STEERING_FIELDS if body.get(f) is not None]
        if stray:
            raise RequestError(f"{stray[0]} was given without persona (or vector): nothing to steer with", stray[0])
        return None, {}
    direction, described = _direction(body, vectors)
    operator = body.get("operator", "add")
    if operator not in OPERATORS:
        raise RequestError(f"operator must be one of {OPERATORS}, got {operator!r}", "operator")
    if operator != "add":
        return _projecting(body, direction, described, operator, shape)
    if body.get("cap") is not None:
        raise RequestError("cap is for operator 'cap'", "cap")
    if body.get("strength") is not None:
        alpha, layers, positions, dose = _calibrated(body, direction, "blend" in described, shape)
        described = {**described, **dose}
    else:
        if body.get("alpha") is None:
            raise RequestError("steering needs alpha (the coefficient of h += alpha * v) or strength (a calibrated "
                               "dose)", "alpha")
        alpha = _number(body, "alpha", 0.0)  # present: checked above
        layers = _layers(body)
        _check_layers(layers, shape, "layer" if "layer" in body else "layers")
        positions = body.get("positions", "response")
    if positions not in POSITIONS:
        raise RequestError(f"positions must be one of {POSITIONS}, got {positions!r}", "positions")
    param = "vector" if isinstance(direction, torch.Tensor) else "persona"
    try:
        steering = Steering.from_vector(direction, layers, alpha, positions)
        shape.validate(steering)
    except LayerOutOfRangeError as exc:  # a layer the vector does not hold (MissingLayerError)
        raise RequestError(str(exc), "layer" if "layer" in body else "layers") from None
    except VectorShapeError as exc:
        raise RequestError(str(exc), param) from None
    return steering, {**described, "alpha": alpha, "layers": layers, "positions": positions}


def _projecting(body: dict, direction, described: dict, operator: str, shape: ModelShape) -> tuple[Steering, dict]:
    """``operator`` ablate / cap: they set the projection on the vector, so take no alpha or strength."""
    for name in ("alpha", "strength"):
        if body.get(name) is not None:
            raise RequestError(f"operator {operator!r} sets the projection on the vector and takes no {name}", name)
    cap = body.get("cap")
    if operator == "cap" and (not isinstance(cap, list) or len(cap) != 2):
        raise RequestError("operator 'cap' needs cap: [lo, hi] (null leaves a side open)", "cap")
    if operator == "ablate" and cap is not None:
        raise RequestError("cap is for operator 'cap'", "cap")
    layers = _layers(body)
    _check_layers(layers, shape, "layer" if "layer" in body else "layers")
    positions = body.get("positions", "response")
    if positions not in POSITIONS:
        raise RequestError(f"positions must be one of {POSITIONS}, got {positions!r}", "positions")
    try:
        steering = Steering.from_vector(direction, layers, None, positions, operator=check_operator(operator),
                                        cap=tuple(cap) if cap is not None else None)
        shape.validate(steering)
    except OperatorError as exc:
        raise RequestError(str(exc), "cap" if operator == "cap" else "operator") from None
    except LayerOutOfRangeError as exc:
        raise RequestError(str(exc), "layer" if "layer" in body else "layers") from None
    except VectorShapeError as exc:
        raise RequestError(str(exc), "vector" if isinstance(direction, torch.Tensor) else "persona") from None
    return steering, {**described, "operator": operator, "layers": layers, "positions": positions,
                      **({"cap": cap} if cap is not None else {})}


def read_monitor(body: dict, vectors: dict[str, PersonaVector], shape: ModelShape,
                 steered_layers: Sequence[int]) -> Monitor | None:
    if body.get("monitor") is None:
        if body.get("monitor_layer") is not None:
            raise RequestError("monitor_layer was given without monitor", "monitor_layer")
        return None
    if not shape.supports_monitor:
        raise RequestError("monitor needs the hf backend (per-token activations are read by HF hooks)", "monitor")
    names = _names(body["monitor"], "monitor")
    unknown = [n for n in names if n not in vectors]
    if unknown:
        raise RequestError(f"unknown monitor vector {unknown[0]!r}; loaded: {sorted(vectors)}", "monitor")
    if body.get("monitor_layer") is not None:
        layer = _integer(body["monitor_layer"], "monitor_layer")
    elif len(steered_layers) == 1:
        layer = steered_layers[0]
    else:
        raise RequestError("monitor needs monitor_layer unless the request steers exactly one layer", "monitor_layer")
    _check_layers([layer], shape, "monitor_layer")
    for n in names:
        if layer in vectors[n].missing_layers:
            raise RequestError(f"vector {n!r} does not hold layer {layer}", "monitor_layer")
    return Monitor(layer, {n: vectors[n] for n in names})


# --------------------------------------------------------------------------- whole requests


def read_request(kind: str, body: Any, *, model_name: str, vectors: dict[str, PersonaVector], shape: ModelShape,
                 default_max_tokens: int) -> ParsedRequest:
    """A checked ``/v1/chat/completions`` (``kind="chat"``) or ``/v1/completions`` body."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None)
    if body.get("model") != model_name:
        raise RequestError(f"model {body.get('model')!r} is not served here; this server serves {model_name!r}",
                           "model", status=404, code="model_not_found")
    prompts = [read_messages(body)] if kind == "chat" else read_prompts(body)
    if body.get("n") not in (None, 1):
        raise RequestError("n must be 1 (ask several times, or give several prompts to /v1/completions)", "n")
    if body.get("stop") is not None:
        raise RequestError("stop sequences are not supported: a response ends at the model's EOS or max_tokens",
                           "stop")
    if body.get("logprobs") not in (None, False):
        raise RequestError("logprobs are not supported", "logprobs")
    tokens_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(tokens_field)
    max_tokens = default_max_tokens if max_tokens is None else _integer(max_tokens, tokens_field)
    if max_tokens < 1:
        raise RequestError(f"{tokens_field} must be >= 1, got {max_tokens}", tokens_field)
    temperature = _number(body, "temperature", 0.0, lo=0.0, hi=2.0)
    top_p = _number(body, "top_p", 1.0, lo=0.0, hi=1.0, lo_open=True)
    seed = body.get("seed")
    seed = None if seed is None else _integer(seed, "seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    steering, described = read_steering(body, vectors, shape)
    monitor = read_monitor(body, vectors, shape, described.get("layers", []))
    rows = [Row(p, max_tokens, steering, monitor) for p in prompts]
    return ParsedRequest(kind, rows, Sampling(temperature, top_p, seed), stream,
                         bool(options.get("include_usage", False)), described)
