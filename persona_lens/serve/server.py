"""Putting a server together: the backend, the named vectors, and uvicorn on the host asked.

``uvicorn`` binds exactly ``host`` (default ``127.0.0.1``, loopback only); nothing else is
opened. :class:`ServerThread` runs a server in a background thread (tests, benchmarks), on port
0 = a free port chosen by the OS.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ..errors import VectorFileError
from ..interop import load_vector
from ..models import load_model
from ..vectors import PersonaVector
from .backends import HFBackend, ServeBackend


def make_backend(kind: str, model: str, *, device: str | None = None, dtype: str | None = None) -> ServeBackend:
    """``hf``: the model loaded in this process. (``--backend vllm`` serves through vLLM's own
    OpenAI server with persona_lens' plugin instead: :mod:`persona_lens.serve.vllm_launch`.)"""
    if kind == "hf":
        return HFBackend(load_model(model, device=device, dtype=dtype))
    raise ValueError(f"this server runs the hf backend; got {kind!r} (--backend vllm launches vLLM's server)")


def load_vectors(named: dict[str, str | Path], backend: ServeBackend) -> dict[str, PersonaVector]:
    """``{name: file}`` -> ``{name: vector}``, each checked against the served model."""
    vectors = {}
    for name, path in named.items():
        path = Path(path)
        vector = load_vector(path, n_layers=backend.n_layers if path.suffix == ".gguf" else None)
        try:
            backend.check_vector(vector)
        except ValueError as exc:
            raise VectorFileError(f"--vector {name}={path}: {exc}") from None
        vectors[name] = vector
    return vectors


def uvicorn_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info"):
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))


class ServerThread:
    """``with ServerThread(app) as s: s.base_url`` -> ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.server = uvicorn_server(app, host, port, log_level)
        self.thread = threading.Thread(target=self.server.run, name="persona-lens-server", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.servers[0].sockets[0].getsockname()[:2]

    @property
    def base_url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
