"""Interoperability with other runtimes.

* :mod:`persona_lens.interop.gguf` — persona vectors as llama.cpp / Ollama GGUF control vectors
  (``export_gguf``, ``load_gguf_control_vector``).
* :mod:`persona_lens.interop.vllm` — steering and activation capture on vLLM through
  TransformerLens 4's ``RemoteBridge.boot_vllm`` (``VLLMBackend``; needs ``persona-lens[vllm]``).

Nothing heavy is imported here: each submodule imports its own dependencies when used.
"""

from __future__ import annotations

__all__ = ["export_gguf", "load_gguf_control_vector", "VLLMBackend"]


def __getattr__(name: str):
    if name in ("export_gguf", "load_gguf_control_vector"):
        from . import gguf as _gguf

        return getattr(_gguf, name)
    if name == "VLLMBackend":
        from .vllm import VLLMBackend

        return VLLMBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
