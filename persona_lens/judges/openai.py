"""A judge (and text generator) for any OpenAI-compatible chat-completions endpoint.

Requests go through the official ``openai`` client, which owns retries (429, 408, 409, 5xx,
timeouts and dropped connections, exponential backoff with jitter, ``Retry-After`` honoured)
and timeouts. Works with the OpenAI API and with local servers that speak the same protocol
(vLLM, llama.cpp, Ollama...).

Scoring follows Persona Vectors: one completion token at temperature 0 with the top-20
logprobs; the score is the probability-weighted mean of the tokens that are integers 0..100,
normalised by their total probability, and ``None`` when that total is below 0.25. When the
server returns no logprobs, the first integer 0..100 of the text is used (REFUSAL -> None).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
from tqdm.auto import tqdm

from ..errors import JudgeError
from .base import MIN_NUMBER_MASS, PromptJudge, parse_text_score, probs_from_top_logprobs, weighted_score
from .cache import JudgeCache, cache_key, default_cache_dir

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_AUTO = "auto"


class OpenAIJudge(PromptJudge):
    """Score prompts 0-100 with an OpenAI-compatible chat model.

    Args:
        model: the model name sent in each request (``gpt-4.1-mini``...).
        base_url: endpoint root; default ``$OPENAI_BASE_URL`` or ``https://api.openai.com/v1``.
        api_key_env: the environment variable holding the API key. It is read at request time,
            sent only in the Authorization header, and never stored, cached or logged. Servers
            other than api.openai.com may need no key.
        max_concurrency: the most requests in flight at once (``score_many`` and across threads).
        max_retries: the client's retries after the first attempt.
        timeout: seconds per HTTP request.
        cache_dir: folder of the on-disk result cache; ``"auto"`` = ``default_cache_dir()``,
            ``None`` = no cache.
        mode: ``"logprobs"`` (the paper's method) or ``"text"`` (parse the reply; for servers
            without logprobs).
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
        self.name = f"openai:{model}"
        if cache_dir == _AUTO:
            cache_dir = default_cache_dir()
        self.cache = JudgeCache(cache_dir) if cache_dir is not None else None
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        # api_key is a callable: the client reads the key from the environment for each request
        self._client = openai.OpenAI(base_url=self.base_url, api_key=self._api_key, max_retries=self.max_retries,
                                     timeout=self.timeout)

    # ------------------------------------------------------------------ scoring
    @property
    def scoring_mode(self) -> str:
        """Part of the cache key: what was asked of the server."""
        if self.mode == "logprobs":
            return f"logprobs:max_tokens=1:top_logprobs={self.top_logprobs}"
        return "text:max_tokens=16"

    def _request(self, prompt: str) -> dict[str, Any]:
        request: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}], "temperature": 0}
        if self.mode == "logprobs":
            request.update(max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
        else:
            request.update(max_tokens=16)
        return request

    def _score_value(self, value: dict[str, Any]) -> float | None:
        numbers = value.get("numbers")
        if numbers is not None:
            return weighted_score({int(k): float(p) for k, p in numbers.items()}, self.min_mass)
        return parse_text_score(value.get("content"))

    def _fetch(self, prompt: str) -> dict[str, Any]:
        """Ask the server; returns the cacheable value ``{"numbers": {...} | None, "content": str}``."""
        choice = _first_choice(self._create(**self._request(prompt)), self.endpoint)
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
        key = cache_key(endpoint=self.endpoint, model=self.model, prompt=prompt, settings=self.scoring_mode)
        if self.cache is not None and key in self.cache:
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
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(unique))) as pool, \
                tqdm(total=len(unique), desc=self.name, leave=False, disable=not progress) as bar:
            futures = {pool.submit(self.score, p): p for p in unique}
            for future in futures:
                results[futures[future]] = future.result()
                bar.update(1)
        return [results[p] for p in prompts]

    # ------------------------------------------------------------------ generation
    def complete(self, messages: list[dict], temperature: float = 0.0, max_tokens: int = 512, **extra: Any) -> str:
        """The assistant's reply text for a chat (no cache: generators want fresh samples)."""
        body = self._create(messages=list(messages), temperature=temperature, max_tokens=max_tokens, **extra)
        message = _first_choice(body, self.endpoint).get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise JudgeError(f"malformed response from {self.endpoint}: the first choice has no message content")
        return content

    # ------------------------------------------------------------------ HTTP (the openai client)
    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/chat/completions"

    def _api_key(self) -> str:
        return os.environ.get(self.api_key_env, "").strip()

    def _redact(self, text: str) -> str:
        key = self._api_key()
        return text.replace(key, "***") if key else text

    def _create(self, **request: Any) -> Any:
        """One chat completion, the parsed JSON body (validated by the caller)."""
        extra_headers = None
        if not self._api_key():
            if urllib.parse.urlparse(self.base_url).hostname == "api.openai.com":
                raise JudgeError(f"no API key: set the {self.api_key_env} environment variable (or use --base-url)")
            extra_headers = {"Authorization": openai.Omit()}  # a keyless local server: send no credentials
        try:
            with self._slots:
                raw = self._client.chat.completions.with_raw_response.create(
                    model=self.model, extra_headers=extra_headers, **request)
        except openai.APIStatusError as exc:
            detail = self._redact(_error_detail(exc))
            raise JudgeError(f"{self.endpoint} answered HTTP {exc.status_code} "
                             f"(max_retries={self.max_retries}): {detail}") from None
        except openai.APIConnectionError as exc:  # includes timeouts
            cause = f"{exc.message} {exc.__cause__!r}" if exc.__cause__ is not None else exc.message
            raise JudgeError(f"{self.endpoint}: gave up after {self.max_retries + 1} attempts; "
                             f"last error: {self._redact(cause)}") from None
        return _parse_json(raw.http_response.content, self.endpoint)


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


def _error_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])[:300]
    if error:
        return str(error)[:300]
    return exc.response.text[:300] or exc.message
