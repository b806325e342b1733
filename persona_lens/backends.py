"""Generation backends: who turns prompts (and steering) into tokens, behind one protocol.

A :class:`GenerationBackend` has a ``name``, the ``model_id`` of the checkpoint it serves and
``generate_ids(prompts, *, max_new_tokens, temperature, top_p, seed, batch_size, steering,
progress) -> list[Generation]``. ``steering`` is one :class:`~persona_lens.steering.Steering`
(for every row, or per-row with ``[batch, d]`` deltas) or None.

* ``hf`` (:class:`HFBackend`): :func:`persona_lens.generation.generate_ids` on a loaded model.
* ``vllm`` (:class:`persona_lens.interop.vllm.VLLMBackend`): a real vLLM engine with
  per-request steering, every row in one engine call (``batch_size`` and ``progress`` are not
  used: the engine schedules its own batches).

What stays on the HF model whatever the backend: capture (exact HF hooks) and the weights
fingerprint of resumable runs (:func:`persona_lens.generation.backend_generation` checks that a
backend serves the model's checkpoint). Greedy decoding is the same on both backends (token for
token in fp32; bf16 kernels may round differently); sampling with a seed is reproducible on
each but draws differently: HF seeds each batch (``seed + batch``), vLLM each row (``seed + row``
of the call), so sampled rows in resume stores record which backend drew them.

:func:`make_backend` builds one by name from the :data:`BACKENDS` registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from .chat import Messages
from .generation import HF, Generation, generate_ids
from .interop.vllm import VLLMBackend
from .models import model_dtype, model_id
from .steering import Steering


class GenerationBackend(Protocol):
    name: str

    @property
    def model_id(self) -> str: ...

    def generate_ids(self, prompts: Sequence[str | Messages], *, max_new_tokens: int, temperature: float,
                     top_p: float, seed: int | None, batch_size: int, steering: Steering | None,
                     progress: bool) -> list[Generation]: ...


class HFBackend:
    """Generation on a loaded persona_lens model (:func:`persona_lens.generation.generate_ids`)."""

    name = HF

    def __init__(self, model):
        self.model = model

    @property
    def model_id(self) -> str:
        return model_id(self.model)

    def generate_ids(self, prompts: Sequence[str | Messages], **kwargs: Any) -> list[Generation]:
        return generate_ids(self.model, prompts, **kwargs)


def _hf(model, model_name: str, dtype: str | torch.dtype | None, **engine_kwargs: Any) -> HFBackend:
    if engine_kwargs:
        raise TypeError(f"the hf backend takes no engine options, got {sorted(engine_kwargs)}")
    return HFBackend(model)


def _vllm(model, model_name: str, dtype: str | torch.dtype | None, **engine_kwargs: Any) -> VLLMBackend:
    # The engine loads the checkpoint persona_lens loaded as ``model``, in the same dtype
    # (float32 on CPU: the dtype in which vLLM's greedy tokens equal HF's).
    return VLLMBackend(model_name, dtype=dtype if dtype is not None else model_dtype(model), **engine_kwargs)


#: name -> factory(model, model_name, dtype, **engine_kwargs)
BACKENDS: dict[str, Callable[..., GenerationBackend]] = {"hf": _hf, "vllm": _vllm}


def make_backend(name: str, model, *, model_name: str, dtype: str | torch.dtype | None = None,
                 **engine_kwargs: Any) -> GenerationBackend:
    """The ``name`` backend for ``model`` (a loaded persona_lens model, loaded from
    ``model_name``). ``vllm`` boots its engine on first use, in ``dtype`` (default: ``model``'s);
    ``engine_kwargs`` pass through to ``vllm.LLM`` (``tensor_parallel_size``, ``max_model_len``...)."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown generation backend {name!r}; choose from {sorted(BACKENDS)}") from None
    return factory(model, model_name, dtype, **engine_kwargs)


__all__ = ["BACKENDS", "GenerationBackend", "HFBackend", "make_backend"]
