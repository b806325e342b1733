"""The OpenAI-compatible HTTP app (FastAPI): ``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``.

Handlers check the body (:mod:`.protocol`), hand the rows to the :class:`~.batcher.Batcher`
and answer when the batch is done, or stream server-sent events (``data: {chunk}`` lines, then
``data: [DONE]``) as the batch generates. Every refusal is OpenAI's error body with status 400
(404 for an unknown model); a failure while generating is a 500 body, or an ``error`` event
inside a stream that has started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..dose import CARD_KEY
from ..vectors import PersonaVector
from .backends import RowResult, ServeBackend
from .batcher import Batcher, Job
from .protocol import ParsedRequest, RequestError, read_request


def _error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _server_error(exc: BaseException) -> dict:
    return {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "param": None,
                      "code": None}}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class Responder:
    """Shapes results as OpenAI chat / text completion objects and chunks."""

    def __init__(self, parsed: ParsedRequest, model_name: str):
        self.parsed, self.model = parsed, model_name
        self.chat = parsed.kind == "chat"
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def usage(results: list[RowResult]) -> dict:
        p, c = sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _extras(self, result: RowResult) -> dict:
        return {"monitor": result.monitor} if result.monitor is not None else {}

    def whole(self, results: list[RowResult]) -> dict:
        choices = []
        for i, r in enumerate(results):
            body = {"message": {"role": "assistant", "content": r.text}} if self.chat \
                else {"text": r.text, "logprobs": None}
            choices.append({"index": i, **body, "finish_reason": r.finish_reason, **self._extras(r)})
        out = {**self._envelope(False), "choices": choices, "usage": self.usage(results)}
        if self.parsed.steering:
            out["steering"] = self.parsed.steering
        return out

    def chunk(self, index: int, text: str | None = None, result: RowResult | None = None, *,
              first: bool = False) -> dict:
        if self.chat:
            delta: dict = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            choice: dict = {"index": index, "delta": delta}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None}
        choice["finish_reason"] = result.finish_reason if result is not None else None
        if result is not None:
            choice.update(self._extras(result))
        return {**self._envelope(True), "choices": [choice]}

    def usage_chunk(self, results: list[RowResult]) -> dict:
        return {**self._envelope(True), "choices": [], "usage": self.usage(results)}


def create_app(backend: ServeBackend, vectors: dict[str, PersonaVector], *, model_name: str,
               max_batch_size: int = 32, batch_wait_ms: float = 10.0, default_max_tokens: int = 128) -> FastAPI:
    """The app serving ``backend`` as ``model_name`` with the named persona vectors (each already
    checked against the model). The batcher runs while the app's lifespan does."""
    for vector in vectors.values():
        backend.check_vector(vector)
    batcher = Batcher(backend, max_batch_size=max_batch_size, wait_s=batch_wait_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="persona-lens", lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def refused(_request: Request, exc: RequestError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:  # unknown path, wrong method
        return JSONResponse({"error": {"message": str(exc.detail), "type": "invalid_request_error", "param": None,
                                       "code": None}}, status_code=exc.status_code)

    async def parse(kind: str, request: Request) -> ParsedRequest:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}") from None
        return read_request(kind, body, model_name=model_name, vectors=vectors, shape=backend,
                            default_max_tokens=default_max_tokens)

    def submit(parsed: ParsedRequest) -> asyncio.Queue:
        loop, events = asyncio.get_running_loop(), asyncio.Queue[tuple]()

        def emit(event) -> None:  # on the batcher's thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, event)

        batcher.submit(Job(parsed.rows, parsed.sampling, emit, parsed.stream))
        return events

    async def answer(kind: str, request: Request):
        parsed = await parse(kind, request)
        events = submit(parsed)
        responder = Responder(parsed, model_name)
        if parsed.stream:
            return StreamingResponse(stream(parsed, responder, events), media_type="text/event-stream")
        while True:
            event = await events.get()
            if event[0] == "done":
                return JSONResponse(responder.whole(event[1]))
            if event[0] == "error":
                return JSONResponse(_server_error(event[1]), status_code=500)

    async def stream(parsed: ParsedRequest, responder: Responder, events: asyncio.Queue) -> AsyncIterator[str]:
        if responder.chat:
            for i in range(len(parsed.rows)):
                yield _sse(responder.chunk(i, first=True))
        while True:
            event = await events.get()
            if event[0] == "text":
                yield _sse(responder.chunk(event[1], event[2]))
            elif event[0] == "error":
                yield _sse(_server_error(event[1]))
                break
            else:
                results = event[1]
                for i, result in enumerate(results):
                    yield _sse(responder.chunk(i, result=result))
                if parsed.include_usage:
                    yield _sse(responder.usage_chunk(results))
                break
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer("completion", request)

    @app.get("/v1/models")
    async def list_models():
        personas = [{"name": name, "n_layers": v.n_layers, "d_model": v.d_model, "model_id": v.model_id,
                     "missing_layers": v.missing_layers, "dose_card": CARD_KEY in v.metadata}
                    for name, v in vectors.items()]  # dose_card: requests may ask for a calibrated strength
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": 0, "owned_by": "persona-lens",
            "backend": backend.name, "n_layers": backend.n_layers, "d_model": backend.d_model,
            "persona_vectors": personas}]}

    return app
