"""A judge (and text generator) for any OpenAI-compatible chat-completions endpoint.

Standard library only (``urllib.request`` + ``json``): no ``openai`` package. Works with the
OpenAI API and with local servers that speak the same protocol (vLLM, llama.cpp, Ollama...).

Scoring follows Persona Vectors: one completion token at temperature 0 with the top-20
logprobs; the score is the probability-weighted mean of the tokens that are integers 0..100,
normalised by their total probability, and ``None`` when that total is below 0.25. When the
server returns no logprobs, the first integer 0..100 of the text is used (REFUSAL -> None).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from ..errors import JudgeError
from .base import MIN_NUMBER_MASS, BaseJudge, parse_text_score, probs_from_top_logprobs, weighted_score
from .cache import JudgeCache, cache_key, default_cache_dir

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_AUTO = "auto"


class OpenAIJudge(BaseJudge):
    """Score prompts 0-100 with an OpenAI-compatible chat model.

    Args:
        model: the model name sent in each request (``gpt-4.1-mini``...).
        base_url: endpoint root; default ``$OPENAI_BASE_URL`` or ``https://api.openai.com/v1``.
        api_key_env: the environment variable holding the API key. It is read at request time,
            sent only in the Authorization header, and never stored, cached or logged. Servers
            other than api.openai.com may need no key.
        max_concurrency: the most requests in flight at once (``score_many`` and across threads).
        max_retries: retries after the first attempt on 429/5xx/timeouts/connection errors,
            with exponential backoff and jitter, honouring ``Retry-After``.
        timeout: seconds per HTTP request.
        cache_dir: folder of the on-disk result cache; ``"auto"`` = ``default_cache_dir()``,
            ``None`` = no cache.
        mode: ``"logprobs"`` (the paper's method) or ``"text"`` (parse the reply; for servers
            without logprobs).
        retry_base_delay / retry_max_delay: backoff base and cap in seconds.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 60.0,
        cache_dir: str | os.PathLike | None = _AUTO,
        *,
        mode: str = "logprobs",
        top_logprobs: int = 20,
        min_mass: float = MIN_NUMBER_MASS,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
    ):
        if not model:
            raise JudgeError("OpenAIJudge needs a model name")
        if mode not in ("logprobs", "text"):
            raise JudgeError(f"unknown scoring mode {mode!r}; expected 'logprobs' or 'text'")
        if max_concurrency < 1:
            raise JudgeError("max_concurrency must be >= 1")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.max_concurrency = int(max_concurrency)
        self.max_retries = int(max_retries)
        self.timeout = float(timeout)
        self.mode = mode
        self.top_logprobs = int(top_logprobs)
        self.min_mass = float(min_mass)
        self.retry_base_delay = float(retry_base_delay)
        self.retry_max_delay = float(retry_max_delay)
        self.name = f"openai:{model}"
        if cache_dir == _AUTO:
            cache_dir = default_cache_dir()
        self.cache = JudgeCache(cache_dir) if cache_dir is not None else None
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._stats_lock = threading.Lock()
        self.n_requests = 0  # HTTP attempts made (retries included)
        self.n_cache_hits = 0

    # ------------------------------------------------------------------ scoring
    @property
    def scoring_mode(self) -> str:
        """Part of the cache key: what was asked of the server."""
        if self.mode == "logprobs":
            return f"logprobs:max_tokens=1:top_logprobs={self.top_logprobs}"
        return "text:max_tokens=16"

    def _payload(self, prompt: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
        }
        if self.mode == "logprobs":
            payload.update(max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
        else:
            payload.update(max_tokens=16)
        return payload

    def _score_value(self, value: dict[str, Any]) -> float | None:
        numbers = value.get("numbers")
        if numbers is not None:
            return weighted_score({int(k): float(p) for k, p in numbers.items()}, self.min_mass)
        return parse_text_score(value.get("content"))

    def _fetch(self, prompt: str) -> dict[str, Any]:
        """Ask the server; returns the cacheable value ``{"numbers": {...} | None, "content": str}``."""
        body = self._post(self._payload(prompt))
        choice = _first_choice(body, self.endpoint)
        message = choice.get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str):
            raise JudgeError(f"malformed response from {self.endpoint}: message content is not a string")
        numbers = None
        logprobs = choice.get("logprobs") if self.mode == "logprobs" else None
        if isinstance(logprobs, dict) and logprobs.get("content"):
            first = logprobs["content"][0]
            if not isinstance(first, dict):
                raise JudgeError(f"malformed response from {self.endpoint}: logprobs.content[0] is not an object")
            top = first.get("top_logprobs")
            if top is None:  # no alternatives: use the sampled token itself
                top = [{"token": first.get("token", ""), "logprob": first.get("logprob", 0.0)}]
            numbers = {str(k): p for k, p in probs_from_top_logprobs(top).items()}
        return {"numbers": numbers, "content": content or ""}

    def score(self, prompt: str) -> float | None:
        key = cache_key(self.model, prompt, self.scoring_mode)
        if self.cache is not None and key in self.cache:
            with self._stats_lock:
                self.n_cache_hits += 1
            return self._score_value(self.cache.get(key))
        value = self._fetch(prompt)
        if self.cache is not None:
            self.cache.put(key, value, model=self.model, mode=self.scoring_mode)
        return self._score_value(value)

    def score_many(self, prompts: Sequence[str], *, progress: bool = False) -> list[float | None]:
        """Scores in input order; up to ``max_concurrency`` requests in flight; duplicates asked once."""
        unique = list(dict.fromkeys(prompts))
        if not unique:
            return []
        results: dict[str, float | None] = {}
        bar = None
        if progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(unique), desc=self.name, leave=False)
            except ImportError:  # pragma: no cover
                bar = None
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(unique))) as pool:
            futures = {pool.submit(self.score, p): p for p in unique}
            try:
                for future in futures:
                    results[futures[future]] = future.result()
                    if bar is not None:
                        bar.update(1)
            finally:
                if bar is not None:
                    bar.close()
        return [results[p] for p in prompts]

    # ------------------------------------------------------------------ generation
    def complete(
        self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 512, **extra: Any
    ) -> str:
        """The assistant's reply text for a chat (no cache: generators want fresh samples)."""
        payload = {"model": self.model, "messages": list(messages), "temperature": temperature, "max_tokens": max_tokens}
        payload.update(extra)
        body = self._post(payload)
        message = _first_choice(body, self.endpoint).get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise JudgeError(f"malformed response from {self.endpoint}: the first choice has no message content")
        return content

    # ------------------------------------------------------------------ HTTP
    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        elif urllib.parse.urlparse(self.base_url).hostname == "api.openai.com":
            raise JudgeError(f"no API key: set the {self.api_key_env} environment variable (or use --base-url)")
        return headers

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env, "").strip()
        return text.replace(key, "***") if key else text

    def _post(self, payload: dict[str, Any]) -> Any:
        data = json.dumps(payload).encode("utf-8")
        last_error = "no attempt made"
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            request = urllib.request.Request(self.endpoint, data=data, headers=self._headers(), method="POST")
            try:
                with self._slots:
                    with self._stats_lock:
                        self.n_requests += 1
                    with urllib.request.urlopen(request, timeout=self.timeout) as response:
                        raw = response.read()
                return _parse_json(raw, self.endpoint)
            except urllib.error.HTTPError as exc:
                detail = self._redact(_error_detail(exc))
                if exc.code not in RETRY_STATUS:
                    raise JudgeError(f"{self.endpoint} answered HTTP {exc.code}: {detail}") from None
                last_error = f"HTTP {exc.code}: {detail}"
                retry_after = _retry_after_seconds(exc.headers.get("Retry-After") if exc.headers else None)
            except (urllib.error.URLError, http.client.HTTPException, socket.timeout, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                last_error = f"{type(exc).__name__}: {self._redact(str(reason))}"
            if attempt < self.max_retries:
                time.sleep(self._backoff(attempt, retry_after))
        raise JudgeError(f"{self.endpoint}: gave up after {self.max_retries + 1} attempts; last error: {last_error}")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_max_delay)
        delay = min(self.retry_base_delay * (2**attempt), self.retry_max_delay)
        return delay * (0.5 + random.random() * 0.5)  # jitter: 50-100 % of the exponential delay


def _parse_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        snippet = raw[:200].decode("utf-8", "replace")
        raise JudgeError(f"malformed response from {where}: body is not JSON (starts with {snippet!r})") from None


def _first_choice(body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise JudgeError(f"malformed response from {where}: expected a JSON object, got {type(body).__name__}")
    if "error" in body and "choices" not in body:
        raise JudgeError(f"{where} returned an error: {str(body['error'])[:300]}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise JudgeError(f"malformed response from {where}: no 'choices' in the body")
    return choices[0]


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read()
    except Exception:
        return str(exc.reason)
    try:
        body = json.loads(raw.decode("utf-8"))
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if err:
            return str(err)[:300]
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        pass
    return raw[:300].decode("utf-8", "replace") or str(exc.reason)


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
