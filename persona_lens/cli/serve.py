"""``persona-lens serve``: the OpenAI-compatible steering server (:mod:`persona_lens.serve`)."""

from __future__ import annotations

import importlib.util
import subprocess
from typing import Any

import click

from ..interop.vllm import INSTALL_HINT
from ..models import resolve_model_name
from ..serve import create_app, load_vectors, make_backend, uvicorn_server
from ..serve.vllm_launch import vllm_serve_command
from .options import INPUT_FILE, backend_options, max_new_tokens_option


class NamedFile(click.ParamType):
    """``NAME=FILE``: a name requests use, and an existing vector file."""

    name = "NAME=FILE"

    def convert(self, value: Any, param, ctx) -> tuple[str, Any]:
        if isinstance(value, tuple):
            return value
        name, sep, path = str(value).partition("=")
        if not sep or not name.strip() or not path:
            self.fail(f"{value!r} is not NAME=FILE", param, ctx)
        return name.strip(), INPUT_FILE.convert(path, param, ctx)


@click.command("serve", short_help="an OpenAI-compatible server; each request picks its persona steering")
@click.option("--vector", "vectors", type=NamedFile(), multiple=True,
              help="a persona vector requests may name (persona / monitor); repeat for several")
@click.option("--host", default="127.0.0.1", help="the only address bound (127.0.0.1: this machine only)")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="TCP port (0: any free port)")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=32, help="rows per generate call, at most")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=10.0,
              help="how long the batcher waits for more requests to join a batch")
@max_new_tokens_option(128, help="max_tokens of a request that gives none")
@backend_options(batch_size=None, engine=True)
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def serve_command(vectors, host, port, max_batch_size, batch_wait_ms, max_new_tokens, backend, vllm_args) -> int:
    """Serve --model at http://HOST:PORT/v1 (/chat/completions, /completions, /models). A request
    steers with body fields persona (a --vector NAME or a list to blend, with weights), alpha,
    layer(s) and positions, and may ask monitor: [NAMES] for per-token projections. With a
    vector calibrated by `persona-lens calibrate`, strength (a calibrated dose) replaces alpha.

    --backend vllm runs vLLM's own OpenAI server with persona_lens' plugin instead (the steering
    fields go in the body's vllm_xargs; no monitor); arguments after -- go to vLLM as given, e.g.
    -- --tensor-parallel-size 2 --max-model-len 4096."""
    names = [name for name, _ in vectors]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise click.BadParameter(f"the name {repeated[0]!r} is given twice", param_hint="'--vector'")
    if backend.engine == "vllm":
        return _serve_with_vllm(dict(vectors), host, port, max_batch_size, max_new_tokens, backend, vllm_args)
    if vllm_args:
        raise click.BadParameter("arguments after -- are for vLLM: use them with --backend vllm",
                                 param_hint="VLLM_ARGS")
    served = make_backend(backend.engine, backend.model, device=backend.device, dtype=backend.dtype)
    app = create_app(served, load_vectors(dict(vectors), served), model_name=backend.model,
                     max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, default_max_tokens=max_new_tokens)
    click.echo(f"serving {backend.model!r} ({backend.engine}) with personas {names} at http://{host}:{port}/v1", err=True)
    uvicorn_server(app, host, port).run()
    return 0


def _serve_with_vllm(vectors, host, port, max_batch_size, max_new_tokens, backend, vllm_args) -> int:
    """vLLM's OpenAI server with the steering plugin, in a child process (its exit code is ours)."""
    if importlib.util.find_spec("vllm") is None:
        raise click.ClickException(f"--backend vllm needs vLLM in this Python: {INSTALL_HINT}")
    if not vectors:
        raise click.BadParameter("--backend vllm needs at least one --vector NAME=FILE", param_hint="'--vector'")
    argv, env = vllm_serve_command(resolve_model_name(backend.model)[1], backend.model, vectors, host=host, port=port,
                                   dtype=backend.dtype, max_num_seqs=max_batch_size,
                                   default_max_tokens=max_new_tokens, extra_args=vllm_args)
    click.echo(f"serving {backend.model!r} through vLLM's OpenAI server with personas {list(vectors)} at "
               f"http://{host}:{port}/v1", err=True)
    return subprocess.call(argv, env=env)
