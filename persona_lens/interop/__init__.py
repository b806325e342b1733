"""Interoperability with other runtimes and file formats.

* :mod:`persona_lens.interop.gguf` — persona vectors as llama.cpp / Ollama GGUF control vectors
  (``export_gguf``, ``load_gguf_control_vector``).
* :mod:`persona_lens.interop.vllm` — per-request steering and activation capture on a real
  vLLM engine (``VLLMBackend``; ``vllm`` itself is imported only when an engine boots: see
  ``scripts/setup_vllm.sh``).
* :func:`load_vector` — any vector file by suffix: ``.safetensors`` (ours), ``.pt`` (Persona
  Vectors), ``.gguf`` (control vectors).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import VectorFileError
from ..vectors import PersonaVector
from .gguf import export_gguf, load_gguf_control_vector
from .vllm import VLLMBackend

__all__ = ["VLLMBackend", "export_gguf", "load_gguf_control_vector", "load_vector"]


def load_vector(path: str | os.PathLike, n_layers: int | None = None) -> PersonaVector:
    """A persona vector from a ``.safetensors``, ``.pt`` or ``.gguf`` file.

    ``n_layers``: for ``.gguf`` files only (see :func:`load_gguf_control_vector`).
    """
    path = Path(path)
    if not path.exists():
        raise VectorFileError(f"vector file not found: {path}")
    if path.suffix == ".gguf":
        return load_gguf_control_vector(path, n_layers=n_layers)
    if n_layers is not None:
        raise ValueError(f"n_layers applies to .gguf files only, not {path.name}")
    return PersonaVector.load(path)
