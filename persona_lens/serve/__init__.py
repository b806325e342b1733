"""An OpenAI-compatible steering server: each request names its persona, alpha, layers and
positions, concurrent requests are batched into one generate call with per-row steering.

* :func:`create_app` (:mod:`.app`): the FastAPI app over a backend and named vectors;
* :mod:`.protocol`: request checking (OpenAI 400 errors naming the field);
* :mod:`.batcher`: the background batcher; :mod:`.backends`: the HF and vLLM engines;
* :mod:`.server`: building a backend, loading ``NAME=FILE`` vectors, running uvicorn
  (``persona-lens serve``).
"""

from .app import create_app
from .backends import HFBackend, RowResult, ServeBackend, batch_steerings
from .batcher import Batcher, Job
from .protocol import RequestError, Row, Sampling, read_request
from .server import ServerThread, load_vectors, make_backend, uvicorn_server

__all__ = ["Batcher", "HFBackend", "Job", "RequestError", "Row", "RowResult", "Sampling",
           "ServeBackend", "ServerThread", "batch_steerings", "create_app", "load_vectors",
           "make_backend", "read_request", "uvicorn_server"]
