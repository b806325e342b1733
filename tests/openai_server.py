"""A scripted OpenAI-compatible chat-completions server for tests (standard library only).

Runs on 127.0.0.1 with a random port in a background thread and answers
``POST <base>/chat/completions``. What it answers is scripted per test:

- a queue of replies (``server.push(reply, ...)``), used first, in order;
- then ``server.responder(request) -> reply`` if set (a function of the request);
- otherwise an HTTP 500 saying nothing was scripted.

A reply is a :class:`Reply` (status, JSON or raw body, headers, delay, or ``drop=True`` to close
the connection without answering), a ``dict`` (a 200 JSON body), a ``str`` (a completion with
that content) or ``bytes`` (a raw 200 body). Helpers build the usual ones: :func:`completion`,
:func:`logprob_reply`, :func:`error_reply`, :func:`malformed_reply`.

Every request is recorded (``server.requests``: method, path, headers (case-insensitive ``get``),
raw body, parsed JSON),
and ``server.max_in_flight`` is the most requests that were being handled at once.

Use it as a context manager or through the ``openai_server`` pytest fixture::

    from openai_server import openai_server, logprob_reply  # noqa: F401  (fixture import)

    def test_x(openai_server):
        openai_server.push(logprob_reply({"10": -0.1}))
        judge = OpenAIJudge("m", base_url=openai_server.base_url, cache_dir=None)
"""

from __future__ import annotations

import email.message
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union

import pytest

# ------------------------------------------------------------------------------ replies


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list: JSON-encoded; str/bytes: sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    drop: bool = False  # close the connection without sending anything

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


def chat_body(
    content: str | None = "",
    *,
    top_logprobs: Mapping[str, float] | Iterable[tuple[str, float]] | None = None,
    model: str = "test-model",
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """An OpenAI chat.completion object; with ``top_logprobs`` ({token: logprob}) a logprobs block."""
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": finish_reason,
        "logprobs": None,
    }
    if top_logprobs is not None:
        items = list(top_logprobs.items()) if isinstance(top_logprobs, Mapping) else list(top_logprobs)
        entries = [{"token": t, "logprob": float(lp), "bytes": list(t.encode("utf-8"))} for t, lp in items]
        best = max(entries, key=lambda e: e["logprob"]) if entries else {"token": "", "logprob": 0.0}
        choice["logprobs"] = {
            "content": [{"token": best["token"], "logprob": best["logprob"], "bytes": best.get("bytes", []),
                         "top_logprobs": entries}]
        }
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def completion(content: str = "", **kwargs: Any) -> Reply:
    """A 200 reply with this content (and optional ``top_logprobs=``, ``model=``)."""
    delay = kwargs.pop("delay", 0.0)
    return Reply(200, chat_body(content, **kwargs), delay=delay)


def logprob_reply(top: Mapping[str, float] | Iterable[tuple[str, float]], content: str | None = None,
                  delay: float = 0.0) -> Reply:
    """A 200 one-token reply whose top_logprobs are ``top`` ({token: logprob})."""
    items = list(top.items()) if isinstance(top, Mapping) else list(top)
    if content is None:
        content = max(items, key=lambda kv: kv[1])[0] if items else ""
    return Reply(200, chat_body(content, top_logprobs=items), delay=delay)


def error_reply(status: int, message: str = "scripted error", retry_after: float | str | None = None) -> Reply:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Reply(status, {"error": {"message": message, "type": "test_error", "code": status}}, headers=headers)


def malformed_reply(raw: Union[bytes, str, dict] = b"<html>this is not JSON</html>", status: int = 200) -> Reply:
    """A reply whose body is not a usable completion (raw text, or a JSON object without choices)."""
    return Reply(status, raw)


ReplyLike = Union[Reply, dict, str, bytes]


def _as_reply(value: ReplyLike) -> Reply:
    if isinstance(value, Reply):
        return value
    if isinstance(value, dict):
        return Reply(200, value)
    if isinstance(value, str):
        return completion(value)
    if isinstance(value, bytes):
        return Reply(200, value)
    raise TypeError(f"cannot turn {type(value).__name__} into a reply")


# ------------------------------------------------------------------------------ requests


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: email.message.Message  # HTTP header names are case-insensitive: .get("Authorization")
    body: bytes
    json: Any = None

    @property
    def messages(self) -> list[dict]:
        return list((self.json or {}).get("messages") or [])

    @property
    def prompt(self) -> str:
        """The content of the last user message ('' if none)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""

    @property
    def text(self) -> str:
        """All message contents joined (handy for 'does the request mention X')."""
        return "\n".join(str(m.get("content", "")) for m in self.messages)


# ------------------------------------------------------------------------------ server


class OpenAITestServer:
    def __init__(self, responder: Callable[[RecordedRequest], ReplyLike] | None = None):
        self.responder = responder
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._queue: deque[ReplyLike] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting
    def push(self, *replies: ReplyLike) -> OpenAITestServer:
        with self._lock:
            self._queue.extend(replies)
        return self

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.max_in_flight = 0

    @property
    def request_count(self) -> int:
        return len(self.requests)

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- lifecycle
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> OpenAITestServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                self._respond(Reply(404, {"error": {"message": "only POST /v1/chat/completions"}}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    parsed = json.loads(raw.decode("utf-8")) if raw else None
                except (UnicodeDecodeError, json.JSONDecodeError):
                    parsed = None
                request = RecordedRequest("POST", self.path, self.headers, raw, parsed)
                with server._lock:
                    server.requests.append(request)
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    if not self.path.rstrip("/").endswith("/chat/completions"):
                        reply = Reply(404, {"error": {"message": f"no route {self.path}"}})
                    else:
                        reply = server._next_reply(request)
                    if reply.delay:
                        time.sleep(reply.delay)
                finally:
                    # Out of flight before the answer leaves: once the client has it, it may send its
                    # next request at once, and this thread must not still count the old one.
                    with server._lock:
                        server._in_flight -= 1
                if reply.drop:
                    self.close_connection = True
                    return
                self._respond(reply)

            def _respond(self, reply: Reply) -> None:
                payload = reply.encoded()
                try:
                    self.send_response(reply.status)
                    headers = {"Content-Type": "application/json", **reply.headers}
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-test-server", daemon=True)
        self._thread.start()
        return self

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            queued = self._queue.popleft() if self._queue else None
        if queued is not None:
            return _as_reply(queued)
        if self.responder is not None:
            return _as_reply(self.responder(request))
        return Reply(500, {"error": {"message": "openai test server: no scripted reply left"}})

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@pytest.fixture
def openai_server():
    """A started :class:`OpenAITestServer` (stopped after the test)."""
    with OpenAITestServer() as server:
        yield server
